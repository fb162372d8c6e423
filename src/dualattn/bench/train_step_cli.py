"""The ``train-step`` benchmark command, shared by ``dualattn bench train-step`` and
``benchmarks/lra_train_step.py``."""

from __future__ import annotations

import sys
from pathlib import Path

import typer


def _floats(text: str, name: str) -> list[float]:
    try:
        vals = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise typer.BadParameter(f"{name}: expected comma-separated numbers, got {text!r}") from None
    if not vals:
        raise typer.BadParameter(f"{name}: expected at least one number")
    return vals


def train_step(
    tasks: str = typer.Option("listops,text,retrieval,pathfinder,image", "--tasks",
                              help="Comma list of LRA tasks: listops (2K), text (4K), retrieval (2x4K), pathfinder (1K), image (1K)."),
    fractions: str = typer.Option("0.25,0.5,1", "--fractions", help="Sequence lengths as fractions of each task's LRA length."),
    batch: int = typer.Option(1, "--batch", min=1, help="Examples per step (retrieval: pairs)."),
    repeats: int = typer.Option(3, "--repeats", min=1, help="Timed steps per cell (median reported)."),
    threads: int = typer.Option(2, "--threads", min=1, help="torch CPU threads in the worker."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda."),
    variants: str = typer.Option("softmax,linear,bn,sh,bn+sh", "--variants"),
    paths: str = typer.Option("reference,fused", "--paths", help="reference (materialised N x N weights), fused, or both."),
    out: Path = typer.Option(Path("benchmarks/results/lra-train-step"), "--out", help="Output folder (CSV + markdown)."),
    timeout_s: float = typer.Option(900.0, "--timeout-s", min=1.0, help="Limit per (task, N) worker; a slower cell is recorded as failed."),
    resume: bool = typer.Option(True, "--resume/--no-resume",
                                help="Keep the (task, N) cells already in OUT/train_step.csv and measure only the others."),
) -> None:
    """Time and peak memory of one training step (fwd + bwd + AdamW) of the LRA models, per variant and path."""
    from dualattn.bench.train_step import markdown_table, memory_claim_lines, run_train_step_benchmark, write_csv

    split = lambda s: [x.strip() for x in s.split(",") if x.strip()]  # noqa: E731
    from dualattn.bench.train_step import TASKS, add_saved_mb, lengths_for, read_csv

    rows: list = read_csv(out / "train_step.csv") if resume and (out / "train_step.csv").is_file() else []
    done = {(r["task"], int(r["seq_len"])) for r in rows if r.get("status") == "ok"}
    rows = [r for r in rows if (r["task"], int(r["seq_len"])) in done]
    kept = sorted(done)
    csv_path = out / "train_step.csv"
    for task in split(tasks):  # the CSV is rewritten after each task, so an interrupted sweep keeps its cells
        fr = _floats(fractions, "--fractions")
        if task in TASKS:
            todo = [n / TASKS[task].seq_len for n in lengths_for(TASKS[task], fr) if (task, n) not in done]
            if not todo:
                continue
            if len(todo) < len(fr):
                typer.echo(f"{task}: reusing {len(fr) - len(todo)} measured length(s) from {csv_path}", err=True)
            fr = todo
        try:
            prev = list(rows)
            rows = prev + run_train_step_benchmark(
                [task], fr, batch=batch, repeats=repeats, threads=threads, device=device, variants=split(variants),
                paths=split(paths), timeout_s=timeout_s, on_case=lambda new: write_csv(prev + new, csv_path))
        except ValueError as exc:
            typer.secho(f"error: {exc}", fg="red", err=True)
            raise typer.Exit(2)
        csv_path = write_csv(rows, out / "train_step.csv")
    rows = add_saved_mb(rows, device)
    csv_path = write_csv(rows, out / "train_step.csv")
    cmd = "dualattn bench train-step " + " ".join(a for a in sys.argv[1:] if a not in ("bench", "train-step"))
    failed = [r for r in rows if r.get("status") != "ok"]
    md = [f"# LRA training step: time and peak memory per attention variant", "",
          f"Command: `{cmd.strip()}`" + (
              f" (plus {len(kept)} (task, N) cells kept from earlier calls into this folder: "
              + ", ".join(f"{t} {n}" for t, n in kept) + ")" if kept else ""), "",
          "One step = forward + cross-entropy + backward + AdamW on one batch of the LRA model (2 layers, d_model 64, "
          "2 heads, FFN 128). Ratios are to softmax on the same path, measured in the same process "
          "(peak memory: process RSS high-water mark growth on CPU, one sample, noisy by a few MB; saved activations: "
          "bytes autograd keeps for backward in one forward, deterministic) "
          "(timing round-robin over the variants). `reference` = every variant materialises the N x N weights "
          "(the paper's implementation); `fused` = the library's fast paths.", "",
          markdown_table(rows), "", "## Memory claim (SH / BN+SH up to 47 % less memory)", ""]
    md += memory_claim_lines(rows) + [""]
    if failed:
        md += ["## Failed cells", ""] + [f"- {r.get('task')} N={r.get('seq_len')} {r.get('variant', '')} "
                                         f"{r.get('path', '')}: {r.get('error')}" for r in failed] + [""]
    (out / "train_step.md").write_text("\n".join(md))
    typer.echo(markdown_table(rows))
    typer.echo("\n".join(memory_claim_lines(rows)))
    typer.echo(f"wrote {csv_path} and {out / 'train_step.md'}")
