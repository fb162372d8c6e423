import struct

import pytest

from dualattn.bench.results import (
    COLUMNS, add_ratios, evaluate_targets, markdown_table, plot, read_csv, rich_table, write_csv,
)


def row(method, n, time_ms, mem_mb, status="ok", device="cpu", **kw):
    r = {c: None for c in COLUMNS}
    r.update(method=method, label=method, n=n, batch=1, heads=8, head_dim=64, device=device, dtype="float32",
             status=status, reason=kw.pop("reason", ""), time_ms=time_ms if status == "ok" else None,
             time_iqr_ms=1.0 if status == "ok" else None, peak_mem_mb=mem_mb if status == "ok" else None)
    r.update(kw)
    return r


def sweep(softmax=1.02, bn=1.05, sh_speed=2.0, shref_mem=0.5, sh_mem=0.9, bnsh_gib=3.0):
    rows = []
    for n in (1024, 4096, 16384):
        rows += [row("sdpa", n, 100.0 * n, 10.0 * n), row("softmax", n, 100.0 * n * softmax, 10.0 * n),
                 row("bn", n, 100.0 * n * bn, 11.0 * n), row("sh", n, 100.0 * n / sh_speed, 10.0 * n * sh_mem)]
        if n < 16384:
            rows += [row("softmax-ref", n, 300.0 * n, 100.0 * n), row("sh-ref", n, 200.0 * n, 100.0 * n * shref_mem)]
        else:
            rows += [row("softmax-ref", n, None, None, status="skipped", reason="estimated peak too big")]
    rows.append(row("bn+sh", 16384, 5e5, bnsh_gib * 1024 - 300, process_peak_mem_mb=bnsh_gib * 1024))
    return add_ratios(rows)


def by(rows, method, n):
    return next(r for r in rows if r["method"] == method and r["n"] == n)


def test_ratios_are_relative_to_sdpa_at_same_n():
    rows = sweep(softmax=1.5)
    assert by(rows, "sdpa", 4096)["time_ratio_sdpa"] == 1.0
    assert by(rows, "softmax", 4096)["time_ratio_sdpa"] == pytest.approx(1.5)
    assert by(rows, "sh-ref", 1024)["mem_ratio_sdpa"] == pytest.approx(5.0)
    assert by(rows, "softmax-ref", 16384)["time_ratio_sdpa"] is None


def test_ratios_missing_without_sdpa():
    rows = add_ratios([row("softmax", 512, 10.0, 1.0)])
    assert rows[0]["time_ratio_sdpa"] is None and rows[0]["mem_ratio_sdpa"] is None


def test_all_targets_pass_on_a_good_sweep():
    res = evaluate_targets(sweep())
    assert len(res) == 6
    assert [t.status for t in res] == ["PASS"] * 6, res


@pytest.mark.parametrize("kw,failing", [
    (dict(softmax=1.06), 0), (dict(bn=1.2), 1), (dict(sh_speed=1.7), 2),
    (dict(shref_mem=0.6), 3), (dict(sh_mem=1.01), 4), (dict(bnsh_gib=25.0), 5),
])
def test_each_target_fails_when_violated(kw, failing):
    res = evaluate_targets(sweep(**kw))
    assert [i for i, t in enumerate(res) if t.status == "FAIL"] == [failing], res


def test_paired_ratio_takes_precedence_for_time_targets():
    rows = sweep(softmax=1.2)
    for r in rows:
        if r["method"] == "softmax":
            r["time_ratio_sdpa_paired"] = 1.01
    assert evaluate_targets(rows)[0].status == "PASS"


def test_targets_not_applicable_when_not_measured():
    rows = [r for r in sweep() if r["n"] == 1024]
    res = {t.name.split()[0] + str(i): t.status for i, t in enumerate(evaluate_targets(rows))}
    assert list(res.values()) == ["PASS", "PASS", "N/A", "PASS", "PASS", "N/A"]


def test_csv_roundtrip(tmp_path):
    rows = sweep()
    path = write_csv(rows, tmp_path / "x.csv")
    back = read_csv(path)
    assert len(back) == len(rows)
    for a, b in zip(rows, back):
        for k in ("method", "n", "status", "time_ms", "peak_mem_mb", "time_ratio_sdpa"):
            assert a[k] == (pytest.approx(b[k]) if isinstance(a[k], float) else b[k])
    assert path.read_text().splitlines()[0].split(",") == list(COLUMNS)


def test_markdown_and_rich_tables_list_every_cell():
    rows = sweep()
    md = markdown_table(rows)
    assert md.count("\n| ") == len(rows)  # header + separator + one line per row
    assert "skipped" in md and "estimated peak too big" in md
    assert rich_table(rows).row_count == len(rows)


def _png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_plot_writes_two_pngs(tmp_path):
    paths = plot(sweep(), tmp_path, "bench")
    assert [p.name for p in paths] == ["bench_time.png", "bench_memory.png"]
    for p in paths:
        w, h = _png_size(p)
        assert w > 300 and h > 200
