"""`dualattn convex ...`: fit convex heads, interpret them, benchmark the solvers.

* ``dualattn convex heads``: list the registered head types.
* ``dualattn convex fit HEAD --data NAME|FILE``: solve a head to a certified gap,
  write ``summary.json``, ``Z.pt`` (``Z``, or ``factors`` (A, B) for a factorised fit), ``history.csv``, ``spectrum.png`` and (with
  ``--clusters K``) ``clusters.png`` to ``--out``.
* ``dualattn convex bench [--quick] [...]``: the solver benchmark of
  :mod:`dualattn.bench.convex` (extra options are passed through; works from an
  installed wheel, ``benchmarks/convex_solvers.py`` is a thin script over it).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import typer

SYNTHETIC = "synthetic"


def _contiguous_labels(y, test):
    """Map the labels of train (and test) to ``0..K-1`` by their sorted union; returns ``(y, test, classes)``.

    Labels such as {0, 1, 5} would otherwise count as 6 classes (``max + 1``), one of them empty.
    """
    import torch

    parts = [y] + ([test[1]] if test is not None else [])
    classes, inverse = torch.unique(torch.cat(parts), sorted=True, return_inverse=True)
    y_new = inverse[: len(y)]
    if test is not None:
        test = (test[0], inverse[len(y):], *test[2:])
    return y_new, test, [int(c) for c in classes]


def _parse_options(items: list[str]) -> dict:
    """``key=value`` pairs -> dict (values parsed as JSON when possible: ints, floats, bools)."""
    out = {}
    for item in items or []:
        if "=" not in item:
            raise typer.BadParameter(f"head option must look like key=value, got {item!r}")
        key, val = item.split("=", 1)
        try:
            out[key] = json.loads(val)
        except json.JSONDecodeError:
            out[key] = val
    return out


def _patchify(x, image_shape: tuple[int, int], patch: int):
    """Pixel tokens ``(n, H*W, C)`` -> non-overlapping ``patch x patch`` tokens ``(n, H*W/p^2, p*p*C)``."""
    n, _, C = x.shape
    H, W = image_shape
    if H % patch or W % patch:
        raise typer.BadParameter(f"--patch {patch} must divide the image shape {image_shape}")
    x = x.reshape(n, H // patch, patch, W // patch, patch, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(n, (H // patch) * (W // patch), patch * patch * C), (H // patch, W // patch)


def _pool_tokens(x, tokens: int):
    """Average ``(n, T, C)`` over ``tokens`` contiguous segments (adaptive average pooling in time)."""
    import torch

    return torch.nn.functional.adaptive_avg_pool1d(x.transpose(1, 2), tokens).transpose(1, 2)


def _synthetic(n: int, s: int, d: int, c: int, seed: int):
    """Planted data: Gaussian tokens, labels of a random rank-2 linear-attention teacher."""
    import torch

    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, s, d, generator=g, dtype=torch.float64) / math.sqrt(d)
    W1 = torch.randn(2, d, d, generator=g, dtype=torch.float64)
    W2 = torch.randn(2, d, c, generator=g, dtype=torch.float64)
    scores = torch.einsum("nsa,hab,ntb->nhst", X, W1, X)
    y = (scores @ torch.einsum("ntd,hdc->nhtc", X, W2)).mean(dim=2).sum(dim=1).argmax(dim=1)
    return X, y


def load_split(data: str, split: str, *, n: int, s: int, d: int, c: int, seed: int, patch: int, tokens: int | None):
    """``(X (n, s, d) float64, y (n,) long, grid or None)`` for a dataset name, a ``.npz``/``.pt`` file or ``synthetic``."""
    import numpy as np
    import torch

    grid = None
    if data == SYNTHETIC:
        X, y = _synthetic(n, s, d, c, seed + {"train": 0, "val": 1, "test": 2}[split])
    elif data.endswith((".npz", ".pt")):
        if split != "train":
            return None
        path = Path(data)
        if not path.exists():
            raise typer.BadParameter(f"--data file {path} does not exist")
        obj = dict(np.load(path)) if data.endswith(".npz") else torch.load(path, weights_only=False)
        if "X" not in obj or "y" not in obj:
            raise typer.BadParameter(f"{path} must contain arrays 'X' (n, s, d) and 'y' (n,)")
        X, y = torch.as_tensor(obj["X"]), torch.as_tensor(obj["y"])
        if X.ndim == 4:  # (n, h, w, d) patch grid
            grid = (int(X.shape[1]), int(X.shape[2]))
            X = X.reshape(X.shape[0], -1, X.shape[-1])
    else:
        from dualattn.data import available_datasets, load_dataset

        if data not in available_datasets():
            raise typer.BadParameter(f"unknown --data {data!r}; use one of {available_datasets()}, "
                                     f"'{SYNTHETIC}', or a .npz/.pt file with X and y")
        ds = load_dataset(data, split, seed=seed)
        if not torch.is_floating_point(ds.x):
            raise typer.BadParameter(f"{data} has token ids; convex heads need continuous token features")
        X, y = ds.x, ds.y
        shape = (ds.meta or {}).get("image_shape")
        if shape is not None:
            grid = tuple(shape)
            if patch > 1:
                X, grid = _patchify(X, grid, patch)
    X = X.to(torch.float64)
    if tokens is not None and tokens < X.shape[1]:
        X, grid = _pool_tokens(X, tokens), None
    if n and X.shape[0] > n:
        X, y = X[:n], y[:n]
    return X, y.long(), grid


def fit_cmd(
    head: str = typer.Argument(..., help="head type, see `dualattn convex heads`"),
    data: str = typer.Option(SYNTHETIC, help="dataset name, 'synthetic', or a .npz/.pt file with X (n,s,d) and y"),
    beta: float = typer.Option(None, help="weight decay; default --beta-frac * beta_max"),
    beta_frac: float = typer.Option(0.1, help="beta as a fraction of beta_max (Z* = 0 above it)"),
    loss: str = typer.Option("cross_entropy", help="squared | cross_entropy"),
    solver: str = typer.Option("auto", help="auto | fista | factorised | admm | cvxpy | auglag (see docs/convex-heads.md)"),
    tol: float = typer.Option(1e-4, help="relative duality gap to stop at"),
    max_time: float = typer.Option(None, help="stop FISTA after this many seconds"),
    option: list[str] = typer.Option(None, "--option", "-o", help="head option key=value (repeatable)"),
    n: int = typer.Option(0, help="use at most n training samples (0 = all; synthetic: number of samples)"),
    s: int = typer.Option(16, help="synthetic: tokens per sample"),
    d: int = typer.Option(8, help="synthetic: features per token"),
    c: int = typer.Option(4, help="synthetic: classes"),
    patch: int = typer.Option(1, help="image datasets: group pixels into patch x patch tokens"),
    tokens: int = typer.Option(None, help="average-pool sequences to this many tokens"),
    clusters: int = typer.Option(0, help="draw token clusters with this many clusters (0 = no)"),
    standardize: bool = typer.Option(True, help="standardize features with training statistics"),
    out: Path = typer.Option(Path("runs/convex"), help="output directory"),
    seed: int = typer.Option(0),
    verbose: bool = typer.Option(False, help="FISTA progress bar"),
) -> None:
    """Fit a convex head to a certified relative gap and write the solution, summary and plots."""
    import csv

    import torch
    from rich.console import Console

    from dualattn.convex import beta_max, fit, get_head
    from dualattn.convex import interpret as I

    console = Console()
    opts = _parse_options(option)
    try:
        get_head(head, **opts)
    except (ValueError, TypeError) as err:
        raise typer.BadParameter(str(err)) from None
    n_train = n or (256 if data == SYNTHETIC else 0)
    X, y, grid = load_split(data, "train", n=n_train, s=s, d=d, c=c, seed=seed, patch=patch, tokens=tokens)
    test = load_split(data, "test", n=n_train if data == SYNTHETIC else 0, s=s, d=d, c=c, seed=seed,
                      patch=patch, tokens=tokens)
    if standardize:
        mu, sd = X.mean(dim=(0, 1)), X.std(dim=(0, 1)).clamp_min(1e-8)
        X = (X - mu) / sd
        if test is not None:
            test = ((test[0] - mu) / sd, test[1], test[2])
    y, test, classes = _contiguous_labels(y, test)
    if classes != list(range(len(classes))):
        console.print(f"labels {classes} remapped to 0..{len(classes) - 1} (recorded as `classes` in summary.json)")
    num_classes = max(len(classes), 2)
    bmax = beta_max(head, X, y, loss=loss, num_classes=num_classes, head_options=opts)
    b = beta if beta is not None else beta_frac * bmax
    console.print(f"{head}: X {tuple(X.shape)}, {num_classes} classes, beta={b:.4g} (beta_max={bmax:.4g})")
    f = fit(head, X, y, b, loss=loss, solver=solver, tol=tol, num_classes=num_classes, max_time=max_time,
            verbose=verbose, head_options=opts)
    out.mkdir(parents=True, exist_ok=True)
    summary = f.summary() | {"classes": classes, "data": data, "n": int(X.shape[0]), "s": int(X.shape[1]), "d": int(X.shape[2]),
                             "beta_max": bmax, "heads_used": I.effective_rank(f),
                             "train_acc": float((f.predict_labels(X) == y).double().mean())}
    if test is not None:
        summary["test_acc"] = float((f.predict_labels(test[0]) == test[1]).double().mean())
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    solution = ({"factors": tuple(t.cpu() for t in f.factors)} if f.is_factorised else {"Z": f.Z.cpu()})
    torch.save(solution | {"head": head, "head_options": opts, "beta": b, "summary": summary}, out / "Z.pt")
    if f.history:
        with open(out / "history.csv", "w", newline="") as fh:
            # rows may differ in keys (e.g. ADMM adds the certified gap only on certificate checks)
            w = csv.DictWriter(fh, fieldnames=list(dict.fromkeys(k for row in f.history for k in row)))
            w.writeheader()
            w.writerows(f.history)
    I.plot_spectrum(f, out / "spectrum.png")
    if clusters > 0:
        if summary["heads_used"] == 0:
            console.print("[yellow]Z* = 0 (no heads used): no token clusters; lower --beta[/yellow]")
        else:
            k = min(8, X.shape[0])
            labels = I.token_clusters(f, X[:k], min(clusters, X.shape[1]), seed=seed)
            I.plot_token_clusters(labels, grid=grid, path=out / "clusters.png",
                                  sequences=X[:k] if grid is None else None)
    console.print(f"objective {f.objective:.8g}, rel. gap {f.rel_gap:.2e} ({f.status}, {f.iterations} iters, "
                  f"{f.time:.2f}s), heads used {summary['heads_used']}, train acc {summary['train_acc']:.3f}"
                  + (f", test acc {summary['test_acc']:.3f}" if "test_acc" in summary else ""))
    console.print(f"wrote {out}")


def heads_cmd() -> None:
    """List the registered convex head types."""
    from dualattn.convex import HEADS

    for name, cls in sorted(HEADS.items()):
        doc = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        typer.echo(f"{name:14s} {doc}")


def bench_cmd(ctx: typer.Context, quick: bool = typer.Option(False, help="tiny sizes (seconds)")) -> None:
    """Solver benchmark (time to relative gap 1e-4): FISTA vs CVXPY (Clarabel, SCS) vs scnn.

    Extra options go to dualattn.bench.convex (see `python -m dualattn.bench.convex --help`);
    results go to --out (default benchmarks/results under the current directory).
    """
    from dualattn.bench.convex import main

    argv = (["--quick"] if quick else []) + list(ctx.args)
    raise typer.Exit(main(argv, prog="dualattn convex bench"))


def register(app: typer.Typer) -> None:
    """Add the ``convex`` group to *app*."""
    convex = typer.Typer(help="Convex attention heads: fit, interpret, benchmark.", no_args_is_help=True)
    convex.command("heads")(heads_cmd)
    convex.command("fit")(fit_cmd)
    convex.command("bench", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(bench_cmd)
    app.add_typer(convex, name="convex")
