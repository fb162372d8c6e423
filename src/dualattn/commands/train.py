"""`dualattn train`, `dualattn report` and `dualattn reproduce`."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import List, Optional

import typer


def _fail(msg: str, code: int = 2) -> None:
    typer.secho(f"error: {msg}", fg="red", err=True)
    raise typer.Exit(code)


def _split_csv(values: Optional[List[str]]) -> Optional[List[str]]:
    if not values:
        return None
    out = [v.strip() for item in values for v in item.split(",") if v.strip()]
    return out or None


def register(app: typer.Typer) -> None:
    """Add ``train``, ``report`` and ``reproduce`` to *app*."""

    @app.command()
    def train(
        config: Path = typer.Argument(..., help="YAML run config (see configs/)."),
        overrides: Optional[List[str]] = typer.Argument(None, help="Dotted overrides, e.g. optim.lr=3e-4 model.variant=bn"),
        run_dir: Optional[Path] = typer.Option(None, "--run-dir", help="Run directory (default runs/<name>/<dataset>/<variant>/seed<k>)."),
        out: Path = typer.Option(Path("runs"), "--out", help="Root for the default run directory."),
        resume: bool = typer.Option(False, "--resume", help="Continue from RUN_DIR/checkpoints/last.ckpt."),
        report: bool = typer.Option(True, "--report/--no-report", help="Write report.md into the run directory."),
    ) -> None:
        """Train one model from CONFIG (validated before anything runs)."""
        from dualattn.train.config import ConfigError, load_config
        from dualattn.train.data import DataError

        try:
            cfg = load_config(config, overrides or [])
        except ConfigError as exc:
            _fail(str(exc))
        from dualattn.train.module import NonFiniteLossError
        from dualattn.train.run import RunError, default_run_dir, is_rank_zero, resume_checkpoint, train_run

        rd = run_dir or default_run_dir(cfg, out)
        if resume and is_rank_zero():
            ckpt = resume_checkpoint(rd)
            if ckpt.is_file():
                typer.echo(f"resuming from {ckpt}", err=True)
            else:
                typer.secho(f"note: --resume given but {ckpt} does not exist; starting {rd} from scratch",
                            fg="yellow", err=True)
        try:
            summary = train_run(cfg, rd, resume=resume)
        except (ConfigError, DataError, RunError) as exc:
            _fail(str(exc))
        except NonFiniteLossError as exc:
            _fail(f"training stopped: {exc} (recorded in {rd / 'summary.json'})", 1)
        if not is_rank_zero():
            return
        typer.echo(
            f"{cfg.data.name} / {cfg.model.variant} / seed {cfg.seed}: test acc {summary['test_acc']:.4f}, "
            f"val acc {summary['val_acc']:.4f}, {summary['epochs']} epochs, {summary['time_per_epoch_s']:.2f} s/epoch"
        )
        if report:
            from dualattn.report import generate_report

            typer.echo(f"report: {generate_report(rd)}")
        typer.echo(f"run dir: {rd}")

    @app.command()
    def report(
        run_dirs: List[Path] = typer.Argument(..., help="Run directories (any level: runs/<name> or one seed); several are merged."),
        out: Optional[Path] = typer.Option(None, "--out", help="Where report.md, runs.csv and plots go (default: the first RUN_DIR)."),
        efficiency: Optional[Path] = typer.Option(None, "--efficiency", help="CSV of `dualattn bench train-step` for the memory verdict."),
    ) -> None:
        """Aggregate every summary.json under RUN_DIRS into report.md (+ statistics, verdicts, PNG plots).

        Several folders (e.g. the shards of `reproduce --shard i/k`) are merged; a run found twice
        (same name/dataset/variant/seed) is counted once and listed in the report.
        """
        from dualattn.report import generate_report
        from dualattn.report.markdown import collect_runs

        if efficiency is not None and not efficiency.is_file():
            _fail(f"--efficiency: file not found: {efficiency}")
        try:
            _, dups = collect_runs(run_dirs)
            path = generate_report(run_dirs, out_dir=out, efficiency_csv=efficiency)
        except FileNotFoundError as exc:
            _fail(str(exc))
        for d in dups:
            typer.secho(f"warning: {d}", fg="yellow", err=True)
        from dualattn.report.aggregate import validate_runs

        for rd in run_dirs:  # invalid summaries are listed in report.md; say so on the console too
            for err in validate_runs(rd)[1]:
                typer.secho(f"warning: invalid run summary {err.path}: {err.message}", fg="yellow", err=True)
        typer.echo(f"report: {path}")

    @app.command()
    def reproduce(
        quick: bool = typer.Option(False, "--quick", help="CPU demo protocol (built-in reproduce-quick.yaml), the default."),
        full: bool = typer.Option(False, "--full", help="Paper-scale protocol for a GPU (built-in reproduce-full.yaml)."),
        paper: bool = typer.Option(False, "--paper", help="Paper recipe on 8 real time-series sets + LRA/ViT at CPU scale (reproduce-paper.yaml)."),
        protocol: Optional[Path] = typer.Option(None, "--protocol", help="Protocol YAML (e.g. configs/reproduce-paper.yaml)."),
        datasets: Optional[List[str]] = typer.Option(None, "--datasets", help="Subset of the protocol's datasets (comma-separated or repeated)."),
        variants: Optional[List[str]] = typer.Option(None, "--variants", help="Attention variants (comma-separated or repeated)."),
        seeds: Optional[int] = typer.Option(None, "--seeds", min=1, help="Seeds per (dataset, variant); default from the protocol."),
        name: Optional[str] = typer.Option(None, "--name", help="Run name (default: the protocol's name)."),
        out: Path = typer.Option(Path("runs"), "--out", help="Runs are written to OUT/<name>/."),
        override: Optional[List[str]] = typer.Option(None, "--set", help="Extra dotted override for every run, e.g. --set trainer.max_epochs=5"),
        jobs: int = typer.Option(1, "--jobs", "-j", min=1, help="Worker processes running independent runs in parallel (threads split between them)."),
        shard: Optional[str] = typer.Option(None, "--shard", help="Run only shard i of k (0 <= i < k), e.g. 0/4, for cluster job arrays; merge with `dualattn report DIR...`."),
        estimate_only: bool = typer.Option(False, "--estimate", help="Print the plan and time estimate, then exit."),
        write_report: bool = typer.Option(True, "--report/--no-report", help="Write OUT/<name>/report.md at the end (shards: merge later with `dualattn report`)."),
    ) -> None:
        """Run a protocol (variants x datasets x seeds), resumable, and write OUT/<name>/report.md."""
        from dualattn.train.config import ConfigError
        from dualattn.train.data import DataError
        from dualattn.train.reproduce import builtin_protocol, estimate, execute, parse_shard, plan_runs, preflight

        if sum([quick, full, paper, protocol is not None]) > 1:
            _fail("choose one of --quick, --full, --paper and --protocol")
        try:
            if protocol is None:
                protocol = builtin_protocol("full" if full else "paper" if paper else "quick")
            shard_t = parse_shard(shard) if shard else None
            proto, runs = plan_runs(protocol, out=out, name=name, datasets=_split_csv(datasets),
                                    variants=_split_csv(variants), seeds=seeds, overrides=override or [],
                                    shard=shard_t)
        except ConfigError as exc:
            _fail(str(exc))
        root = out / (name or proto.name)
        where = f" (shard {shard})" if shard else ""
        typer.echo(f"reproduce: {len(runs)} runs{where} from {protocol} -> {root}", err=True)
        est = estimate(runs, jobs)
        typer.echo(est.describe(), err=True)
        if proto.estimate_note:
            typer.echo(f"  ({proto.estimate_note})", err=True)
        if estimate_only:
            return
        t0 = time.perf_counter()
        try:
            preflight(runs, log=lambda m: typer.echo(m, err=True))
        except DataError as exc:
            _fail(str(exc))
        outcomes = execute(runs, jobs=jobs, show_progress=True)
        wall = time.perf_counter() - t0
        from dualattn.report import generate_report

        n_fail = sum(o.status == "failed" for o in outcomes)
        if not write_report:
            typer.echo(f"{len(runs)} runs ({n_fail} failed) in {wall / 60:.1f} min; report skipped "
                       f"(dualattn report {root} ...)", err=True)
            raise typer.Exit(1 if n_fail else 0)
        cmd = "dualattn " + " ".join(sys.argv[1:]) if sys.argv and "reproduce" in sys.argv else "dualattn reproduce"
        extra = [
            f"Command: `{cmd}` — {len(runs)} runs ({sum(o.status == 'skipped' for o in outcomes)} reused, "
            f"{n_fail} failed), wall time {wall / 60:.1f} min this invocation with --jobs {jobs}.",
            "",
        ]
        path = generate_report(root, title=f"dualattn reproduce: {root.name}", extra=extra)
        _print_summary(root)
        typer.echo(f"report: {path}")
        if n_fail:
            raise typer.Exit(1)


def _print_summary(root: Path) -> None:
    """Compact console table: test accuracy and head distance per (dataset, variant)."""
    from rich.console import Console
    from rich.table import Table

    from dualattn.report import find_runs, group_runs

    table = Table(title=f"{root}: test accuracy (mean ± std over seeds) and head distance")
    for col in ("dataset", "variant", "seeds", "test acc (%)", "head distance"):
        table.add_column(col)
    for ds, gs in group_runs(find_runs(root)).items():
        for g in gs:
            m, sd, n = g.stat("test_acc")
            r, rs, _ = g.redundancy_mean()
            acc = "failed" if n == 0 else f"{100 * m:.1f} ± {100 * sd:.1f}"
            red = "n/a" if n == 0 or r != r else f"{r:.3f} ± {rs:.3f}"
            table.add_row(ds, g.variant, f"{n}/{len(g.runs)}", acc, red)
    Console(stderr=True).print(table)
