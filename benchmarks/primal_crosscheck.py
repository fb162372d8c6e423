"""Print the Primal-Attention cross-check numbers of docs/primal.md.

Uses the port of the authors' code in tests/functional/test_primal_authors.py (same weights).
Run: PYTHONPATH=src python benchmarks/primal_crosscheck.py
"""

import importlib.util
from pathlib import Path

import torch

path = Path(__file__).resolve().parents[1] / "tests" / "functional" / "test_primal_authors.py"
spec = importlib.util.spec_from_file_location("primal_port", path)
t = importlib.util.module_from_spec(spec)
spec.loader.exec_module(t)


def row(case, out, ref, lo, la):
    print(f"| {case} | {(out - ref).abs().max().item():.3g} | {lo.item():.10f} / {la.item():.10f} (diff {(lo - la).item():.2g}) |")


@torch.no_grad()
def main():
    print("| case | max |ours - authors| (forward) | KSVD loss ours / authors |\n|---|---|---|")
    for dtype in (torch.float32, torch.float64):
        for N in (57, 200, 20):
            a = t.ours(dtype)
            x = torch.randn(3, N, t.DIM, dtype=dtype, generator=torch.Generator().manual_seed(N))
            out = a(x)
            ref, sc, lam = t.cv_port(a, N)(x)
            row(f"CV code, B=3, N={N}, {dtype}", out, ref, a.ksvd_loss(), t.authors_ksvd([sc], [lam]))
        a = t.ours(dtype, seed=1)
        x = torch.randn(4, 57, t.DIM, dtype=dtype, generator=torch.Generator().manual_seed(7))
        out = a(x)
        ref, sc, lam = t.lra_port(a)(x, torch.ones(4, 57, dtype=dtype))
        row(f"LRA code, B=4, N=57, {dtype}", out, ref, a.ksvd_loss(), t.authors_ksvd([sc], [lam]))
    dtype = torch.float64
    x = torch.randn(3, 57, t.DIM, dtype=dtype, generator=torch.Generator().manual_seed(57))
    ref, sc, lam = t.cv_port(t.ours(dtype), 57)(x)
    b = t.ours(dtype, positions="round", ksvd_reduction="per-sample")
    row("positions=round + ksvd_reduction=per-sample, N=57, float64", b(x), ref, b.ksvd_loss(), t.authors_ksvd([sc], [lam]))
    a = t.ours(dtype, seed=6)
    port = t.lra_port(a)
    x = torch.randn(1, 45, t.DIM, dtype=dtype, generator=torch.Generator().manual_seed(45))
    xp = torch.cat([x, torch.zeros(1, 19, t.DIM, dtype=dtype)], 1)
    mp = torch.cat([torch.ones(1, 45), torch.zeros(1, 19)], 1).to(dtype)
    alone, _, _ = port(x, torch.ones(1, 45, dtype=dtype))
    padded, _, _ = port(xp, mp)
    ours_diff = (a(xp, key_padding_mask=mp.bool())[:, :45] - a(x)).abs().max().item()
    print(f"\nsequence of 45 alone vs padded to 64, max |diff| at real positions (float64): "
          f"authors' LRA code {(padded[:, :45] - alone).abs().max().item():.3g}, ours {ours_diff:.2g}")


if __name__ == "__main__":
    main()
