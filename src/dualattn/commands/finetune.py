"""`dualattn finetune run CONFIG.yaml` and `dualattn finetune report RUN_DIR`."""

from __future__ import annotations

from pathlib import Path

import typer

finetune_app = typer.Typer(help="Fine-tune pretrained transformers with dualattn attention swapped in.",
                           no_args_is_help=True)


@finetune_app.command("run")
def run(
    config: Path = typer.Argument(..., exists=True, dir_okay=False, help="YAML config (see configs/finetune.yaml)"),
    out_dir: str = typer.Option(None, "--out", help="override out_dir from the config"),
    seeds: str = typer.Option(None, "--seeds", help="comma-separated seeds overriding the config, e.g. 0"),
    steps: int = typer.Option(None, "--steps", min=1, help="override every task's fine-tuning steps"),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="show progress bars"),
) -> None:
    """Probe, swap and fine-tune each variant on each task and seed (resumable); write report.md."""
    from dualattn.train.finetune import load_config, run_finetune

    cfg = load_config(config)
    if out_dir:
        cfg.out_dir = out_dir
    if seeds:
        try:
            cfg.seeds = [int(s) for s in seeds.split(",") if s.strip()]
        except ValueError as e:
            raise typer.BadParameter(f"expected comma-separated ints, got {seeds!r}", param_hint="--seeds") from e
    if steps:
        for t in cfg.tasks:
            t.steps = steps
    cfg.progress = progress
    try:
        out = run_finetune(cfg)
    except FileNotFoundError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from e
    typer.echo(f"wrote {out / 'report.md'}")


@finetune_app.command("report")
def report(run_dir: Path = typer.Argument(..., exists=True, file_okay=False, help="a `finetune run` out_dir")) -> None:
    """Rebuild report.md, summary.csv and the plot from results.jsonl."""
    from dualattn.report.finetune import write_report

    try:
        typer.echo(f"wrote {write_report(run_dir)}")
    except FileNotFoundError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from e


def register(app: typer.Typer) -> None:
    """Add the ``finetune`` group to *app*."""
    app.add_typer(finetune_app, name="finetune")
