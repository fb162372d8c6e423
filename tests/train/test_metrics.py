import math

import pytest
import torch

from dualattn.train.metrics import PeakMemory, accuracy, count_parameters, estimate_flops, head_redundancy


def _rows(B, H, N, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(B, H, N, N, generator=g), -1)


def test_identical_heads_have_zero_distance():
    w = _rows(2, 1, 5).expand(2, 4, 5, 5).clone()
    assert head_redundancy(w) == pytest.approx(0.0, abs=1e-9)
    assert head_redundancy(w, metric="js") == pytest.approx(0.0, abs=1e-9)


def test_disjoint_heads_have_maximal_distance():
    N = 4
    eye = torch.eye(N)
    shift = torch.roll(eye, 1, dims=1)
    w = torch.stack([eye, shift])[None]  # (1, 2, N, N), rows one-hot on different keys
    assert head_redundancy(w) == pytest.approx(1.0)
    assert head_redundancy(w, metric="js") == pytest.approx(math.log(2))


def test_matches_direct_formula():
    w = _rows(3, 3, 6, seed=1)
    d = []
    for b in range(3):
        for h in range(3):
            for k in range(h + 1, 3):
                d.append((1 - torch.nn.functional.cosine_similarity(w[b, h], w[b, k], dim=-1)).mean())
    assert head_redundancy(w) == pytest.approx(float(torch.stack(d).mean()), rel=1e-6)


def test_padding_is_ignored():
    torch.manual_seed(0)
    N, n = 6, 4
    w = _rows(1, 3, n, seed=2)
    padded = torch.rand(1, 3, N, N)  # junk everywhere
    padded[:, :, :n, :n] = w
    mask = torch.tensor([[True] * n + [False] * (N - n)])
    assert head_redundancy(padded, mask) == pytest.approx(head_redundancy(w), rel=1e-6)
    assert head_redundancy(padded) != pytest.approx(head_redundancy(w), rel=1e-3)


def test_bad_inputs():
    assert math.isnan(head_redundancy(_rows(1, 1, 3)))
    with pytest.raises(ValueError, match="weights"):
        head_redundancy(torch.rand(3, 3, 3))
    with pytest.raises(ValueError, match="mask"):
        head_redundancy(_rows(1, 2, 3), torch.ones(1, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="non-finite"):
        head_redundancy(torch.full((1, 2, 3, 3), float("nan")))
    with pytest.raises(ValueError, match="non-negative"):
        head_redundancy(-_rows(1, 2, 3), metric="js")


def test_accuracy_and_params():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 1.0]])
    assert float(accuracy(logits, torch.tensor([0, 1, 1]))) == pytest.approx(2 / 3)
    with pytest.raises(ValueError):
        accuracy(logits, torch.tensor([0, 1]))
    lin = torch.nn.Linear(5, 3)
    assert count_parameters(lin) == 18


def test_flops_of_linear_layer():
    lin = torch.nn.Linear(8, 4, bias=False)
    assert estimate_flops(lin, torch.randn(3, 8)) == 2 * 3 * 8 * 4


def test_peak_memory_sees_a_large_allocation():
    # In a fresh process: earlier tests in this one may leave freed memory resident (e.g. the
    # benchmark's steady-state allocator settings), which a new 64 MiB tensor would reuse unseen.
    import subprocess
    import sys

    code = (
        "import torch\n"
        "from dualattn.train.metrics import PeakMemory\n"
        "with PeakMemory('cpu') as pm:\n"
        "    x = torch.ones(64 * 2**20 // 4)  # 64 MiB\n"
        "    x += 1\n"
        "print(pm.method, pm.peak_mb)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    method, peak_mb = out[-2], float(out[-1])
    assert peak_mb >= 0
    if method == "VmHWM-delta":
        assert peak_mb > 40


def test_flops_count_cpu_sdpa():
    class M(torch.nn.Module):
        def forward(self, q):
            return torch.nn.functional.scaled_dot_product_attention(q, q, q)

    # QK^T and AV: 2 * (2 * B*H*N*N*D)
    assert estimate_flops(M(), torch.randn(1, 2, 10, 8)) == 4 * 2 * 10 * 10 * 8
