"""Typed JSONL records: round trip, validation errors naming file and line, pre-schema upgrade."""

import json

import pytest

from dualattn.transfer.records import (SCHEMA_VERSION, RecordError, TransferResult, append_jsonl, read_beta_selections,
                                       read_results)

GOOD = dict(task="digits", backbone="tiny-vit", seed=0, head="convex:linear", kind="convex", convex_head="linear",
            width=8, full_width=False, tokens=5, n_train=40, n_test=20, loss="cross_entropy", beta=1.0,
            train_acc=0.9, test_acc=0.8, objective=12.5, time_s=0.3, params=10, gap=0.01, rel_gap=8e-4,
            status="optimal", iterations=40, solver="fista", certified=True)


def test_round_trip_keeps_types_and_schema(tmp_path):
    rec = TransferResult(**GOOD)
    append_jsonl(tmp_path / "results.jsonl", rec)
    append_jsonl(tmp_path / "results.jsonl", rec.model_copy(update={"seed": 1}))
    back = read_results(tmp_path)
    assert back[0] == rec and back[1].key == ("digits", 1, "convex:linear", 8)
    assert json.loads((tmp_path / "results.jsonl").read_text().splitlines()[0])["schema_version"] == SCHEMA_VERSION
    assert read_results(tmp_path / "nowhere") == [] and read_beta_selections(tmp_path) == []


@pytest.mark.parametrize("bad, message", [
    ("{not json", "results.jsonl:2: not valid JSON"),
    (json.dumps({**GOOD, "schema_version": 1, "test_acc": 1.5}), "results.jsonl:2: bad TransferResult record: test_acc"),
    (json.dumps({**GOOD, "schema_version": 1, "surprise": 1}), "results.jsonl:2: .*surprise"),
    (json.dumps({**GOOD, "schema_version": 99}), "results.jsonl:2: .*newer than this dualattn"),
    ("[1, 2]", "results.jsonl:2: expected a JSON object"),
])
def test_bad_lines_name_the_file_and_line(tmp_path, bad, message):
    path = tmp_path / "results.jsonl"
    path.write_text(TransferResult(**GOOD).model_dump_json() + "\n" + bad + "\n")
    with pytest.raises(RecordError, match=message):
        read_results(tmp_path)


def test_pre_schema_lines_are_upgraded(tmp_path):
    v0 = {"task": "digits", "backbone": "dinov2-s", "seed": 0, "kind": "convex", "n_train": 1000, "n_test": 797,
          "s": 5, "d": 8, "pca_explained": 0.84, "head": "convex:linear-attn", "train_acc": 0.99, "test_acc": 0.78,
          "objective": 177.0, "time_s": 10.0, "params": 5120, "gap": 43.0,
          "extra": {"rel_gap": 0.24, "solver": "fista", "loss": "cross_entropy", "beta": 1.0, "status": "max_iter",
                    "iterations": 1000, "beta_selected": True, "convex_head": "linear", "cluster_plot": "plots/x.png"}}
    (tmp_path / "results.jsonl").write_text(json.dumps(v0) + "\n")
    (r,) = read_results(tmp_path)
    assert (r.width, r.tokens, r.beta, r.rel_gap, r.status, r.iterations) == (8, 5, 1.0, 0.24, "max_iter", 1000)
    assert r.certified is False and r.convex_head == "linear" and r.extra["cluster_plot"] == "plots/x.png"
    assert r.extra["upgraded_from_schema"] == 0


def test_tasks_json_is_typed_and_pre_schema_files_upgrade(tmp_path):
    from dualattn.transfer.records import TaskInfo, read_tasks, write_tasks

    info = TaskInfo(task="digits", backbone="tiny-vit", n=60, tokens_raw=17, dim_raw=32, tokens=5, widths=[2, 32],
                    grid=[4, 4], cache="/c", load_and_extract_s=1.5)
    write_tasks(tmp_path, {"digits": info})
    assert read_tasks(tmp_path) == {"digits": info}
    old = {k: v for k, v in info.model_dump().items() if k not in ("schema_version", "widths")}
    (tmp_path / "tasks.json").write_text(json.dumps({"digits": {**old, "pca_dim": 8}}))
    assert read_tasks(tmp_path)["digits"].widths == [8]
    (tmp_path / "tasks.json").write_text(json.dumps({"digits": {**old, "pca_dim": 8, "n": "many"}}))
    with pytest.raises(RecordError, match="tasks.json: task 'digits': bad TaskInfo record: n"):
        read_tasks(tmp_path)
