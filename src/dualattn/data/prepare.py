"""Pre-build (generate, parse and cache) a dataset and print a summary of its splits.

``python -m dualattn.data.prepare listops --seed 0 -o n_train=1000`` generates
and caches every split so that later training runs start at once. The typer
``app`` here can also be mounted as a ``dualattn data`` command group.
"""

from __future__ import annotations

import ast
from typing import Any, Optional

import typer

from .base import SPLITS, CacheDirError, SequenceData, available_datasets, load_dataset

app = typer.Typer(help="Prepare and inspect dualattn datasets.", no_args_is_help=True, add_completion=False)


def parse_options(items: list[str] | None) -> dict[str, Any]:
    """``["n_train=100", "keep_parens=True"]`` -> ``{"n_train": 100, "keep_parens": True}``.

    Values are read as Python literals when possible, else kept as strings.
    """
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ValueError(f"option: expected KEY=VALUE, got {item!r}")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key.isidentifier():
            raise ValueError(f"option: {key!r} is not a valid option name")
        try:
            out[key] = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            out[key] = raw
    return out


def describe(ds: SequenceData) -> dict[str, Any]:
    """Summary numbers of one split: size, padded length, real lengths, channels/vocab, class counts."""
    lengths = ds.lengths.float()
    return {
        "split": ds.split,
        "n": len(ds),
        "T": ds.seq_len,
        "len_min": int(lengths.min()) if len(ds) else 0,
        "len_mean": round(float(lengths.mean()), 1) if len(ds) else 0.0,
        "len_max": int(lengths.max()) if len(ds) else 0,
        "features": f"vocab {ds.vocab_size}" if ds.is_tokens else f"C={ds.num_channels}",
        "classes": ds.num_classes,
        "class_counts": " ".join(str(c) for c in ds.class_counts().tolist()),
    }


def prepare(name: str, *, root: str | None = None, cache_dir: str | None = None, seed: int = 0,
            splits: tuple[str, ...] = SPLITS, **options: Any) -> dict[str, SequenceData]:
    """Load (and thereby cache) every split of ``name``."""
    return {s: load_dataset(name, s, root=root, cache_dir=cache_dir, seed=seed, **options) for s in splits}


@app.command("prepare")
def prepare_cmd(
    name: str = typer.Argument(..., help="Dataset name (see `list`)."),
    root: Optional[str] = typer.Option(None, help="Folder with UEA .ts files or official LRA files."),
    cache_dir: Optional[str] = typer.Option(None, help="Cache folder (default $DUALATTN_CACHE or ~/.cache/dualattn)."),
    seed: int = typer.Option(0, help="Data seed (generation and validation hold-out)."),
    option: Optional[list[str]] = typer.Option(None, "--option", "-o", help="Loader option KEY=VALUE (repeatable)."),
) -> None:
    """Generate/parse and cache all splits of a dataset, then print a summary."""
    from rich.console import Console
    from rich.table import Table

    try:
        data = prepare(name, root=root, cache_dir=cache_dir, seed=seed, **parse_options(option))
    except (ValueError, TypeError, FileNotFoundError, CacheDirError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    table = Table(title=f"{name} (seed {seed})")
    rows = [describe(d) for d in data.values()]
    for col in rows[0]:
        table.add_column(col, no_wrap=col != "class_counts")
    for r in rows:
        table.add_row(*(str(v) for v in r.values()))
    Console().print(table)


@app.command("list")
def list_cmd() -> None:
    """List the registered dataset names."""
    for n in available_datasets():
        typer.echo(n)


if __name__ == "__main__":
    app()
