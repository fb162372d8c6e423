"""The ``attention`` benchmark command, shared by ``dualattn bench attention`` and
``benchmarks/attention_speed.py``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from dualattn.bench.methods import DEFAULT_METHODS, METHODS
from dualattn.bench.runner import DEFAULT_SEQ_LENS, QUICK_SEQ_LENS


def parse_int_list(text: str, name: str) -> tuple[int, ...]:
    """``"512,1024"`` -> ``(512, 1024)``; BadParameter naming ``name`` otherwise."""
    try:
        vals = tuple(int(x) for x in text.replace(" ", "").split(",") if x)
    except ValueError:
        raise typer.BadParameter(f"{name}: expected comma-separated positive ints, got {text!r}") from None
    if not vals or any(v < 1 for v in vals):
        raise typer.BadParameter(f"{name}: expected comma-separated positive ints, got {text!r}")
    return vals


def parse_methods(text: str) -> tuple[str, ...]:
    """``"sdpa,sh"`` -> names, checked against the registry (``all`` = every method)."""
    if text.strip() == "all":
        return tuple(METHODS)
    names = tuple(x.strip() for x in text.split(",") if x.strip())
    bad = [n for n in names if n not in METHODS]
    if not names or bad:
        raise typer.BadParameter(f"methods: unknown {bad or text!r}; expected a comma list of {sorted(METHODS)}")
    return names


def attention(
    seq_lens: Optional[str] = typer.Option(
        None, "--seq-lens", help=f"Comma list of N [default {','.join(map(str, DEFAULT_SEQ_LENS))}]."),
    methods: str = typer.Option(",".join(DEFAULT_METHODS), "--methods",
                                help=f"Comma list (or 'all') of: {', '.join(METHODS)}."),
    device: str = typer.Option("auto", "--device", help="cpu, cuda[:i], or auto (cuda when available)."),
    repeats: int = typer.Option(5, "--repeats", min=1, help="Maximum timed calls per cell."),
    warmup: int = typer.Option(1, "--warmup", min=1, help="Warm-up calls (the memory-measuring call is the first)."),
    budget_s: float = typer.Option(20.0, "--budget-s", min=0.001,
                                   help="Timing budget per cell: repeats = clamp(budget / first call, min, max)."),
    min_repeats: int = typer.Option(1, "--min-repeats", min=1, help="Minimum timed calls per cell."),
    reuse_first_call_s: float = typer.Option(
        10.0, "--reuse-first-call-s", min=0.0,
        help="If every memory-measuring call of an N took at least this long, count them as the first round."),
    threads: int = typer.Option(2, "--threads", min=1, help="torch CPU threads (torch.set_num_threads)."),
    mem_cap_gb: Optional[float] = typer.Option(
        None, "--mem-cap-gb", help="Skip cells whose estimated peak exceeds this [default: 60% of free memory]."),
    batch: int = typer.Option(1, "--batch", min=1),
    heads: int = typer.Option(8, "--heads", min=1),
    head_dim: int = typer.Option(64, "--head-dim", min=1),
    dtype: str = typer.Option("float32", "--dtype", help="float32, float16, bfloat16 or float64."),
    sdpa_backend: str = typer.Option(
        "auto", "--sdpa-backend",
        help="Restrict every SDPA call (SDPA and our fast paths on it) to one kernel: auto, flash, efficient, "
             "cudnn or math (torch.nn.attention.sdpa_kernel); a call it cannot serve is recorded as an error."),
    out: Path = typer.Option(Path("benchmarks/results"), "--out", help="Output directory (CSV, PNG, MD)."),
    quick: bool = typer.Option(False, "--quick", help=f"Smoke run: N={','.join(map(str, QUICK_SEQ_LENS))}, "
                                                      "3 repeats, 2 s per cell."),
    resume: bool = typer.Option(False, "--resume/--no-resume", help="Keep finished cells of an existing CSV."),
    isolate: bool = typer.Option(True, "--isolate/--in-process",
                                 help="Fresh subprocess per cell (needed for honest CPU peak memory)."),
    cell_timeout_s: float = typer.Option(1800.0, "--cell-timeout-s", min=1.0),
    strict: bool = typer.Option(False, "--strict", help="Exit with code 1 if a target FAILs."),
) -> None:
    """Forward+backward time and peak memory vs N for MHA, SDPA and our attention variants."""
    import torch
    from rich.console import Console

    from dualattn.bench.results import evaluate_targets, rich_table
    from dualattn.bench.runner import BenchConfig, run_benchmark

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    kwargs = dict(methods=parse_methods(methods), device=device, warmup=warmup, min_repeats=min_repeats,
                  threads=threads, mem_cap_gb=mem_cap_gb, reuse_first_call_s=reuse_first_call_s, batch=batch, heads=heads, head_dim=head_dim,
                  dtype=dtype, sdpa_backend=sdpa_backend, out_dir=out, resume=resume, isolate=isolate, cell_timeout_s=cell_timeout_s)
    if seq_lens is not None:
        kwargs["seq_lens"] = parse_int_list(seq_lens, "seq-lens")
    try:
        if quick:
            config = BenchConfig.quick(**kwargs)
        else:
            config = BenchConfig(repeats=repeats, budget_s=budget_s, **kwargs)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    console = Console()
    cap = config.mem_cap_bytes()
    console.print(f"device={config.device} dtype={config.dtype} sdpa_backend={config.sdpa_backend} B={config.batch} H={config.heads} "
                  f"D={config.head_dim} threads={config.threads} N={list(config.seq_lens)} "
                  f"mem cap={'none' if cap is None else f'{cap / 2**30:.1f} GiB'}")
    rows = run_benchmark(config, progress=True)
    console.print(rich_table(rows, title=f"attention fwd+bwd on {config.device} (ratios to SDPA)"))
    failed = False
    for t in evaluate_targets(rows, config.device):
        color = {"PASS": "green", "FAIL": "red"}.get(t.status, "yellow")
        console.print(f"[{color}]{t.status}[/{color}] {t.name}: {t.detail}")
        failed |= t.status == "FAIL"
    console.print(f"wrote {config.csv_path}, {config.stem}_time.png, {config.stem}_memory.png, "
                  f"{config.stem}.md in {config.out_dir}")
    if strict and failed:
        raise typer.Exit(1)
