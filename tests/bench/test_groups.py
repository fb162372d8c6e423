from dualattn.bench.runner import timing_groups
from dualattn.bench.worker import Case


def test_reference_paths_are_timed_apart_with_sdpa():
    cases = [Case(m, 512) for m in ("mha", "sdpa", "softmax", "softmax-ref", "bn", "sh-ref", "linear-ref")]
    light, heavy = timing_groups(cases)
    assert [c.method for c in light] == ["mha", "sdpa", "softmax", "bn"]
    assert [c.method for c in heavy] == ["sdpa", "softmax-ref", "sh-ref", "linear-ref"]


def test_groups_without_reference_paths_or_sdpa():
    assert [[c.method for c in g] for g in timing_groups([Case("sdpa", 64), Case("bn", 64)])] == [["sdpa", "bn"]]
    assert [[c.method for c in g] for g in timing_groups([Case("softmax-ref", 64)])] == [["softmax-ref"]]
    assert timing_groups([]) == []
