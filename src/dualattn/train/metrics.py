"""Metrics: accuracy, head redundancy, parameters, FLOPs and peak memory.

Head redundancy of one layer (the definition used in every report)::

    R = mean_b  mean_{h < h'}  mean_{i valid}  [ 1 - cos( A_b^h[i, K_b], A_b^{h'}[i, K_b] ) ]

where ``A_b^h`` is head ``h``'s attention map for sample ``b`` over the
*original* keys, ``i`` runs over the sample's real (non-padded) queries and
``K_b`` is the set of its real keys. ``R`` is 0 when all heads produce the same
attention rows (maximal redundancy) and grows as heads attend differently
(1 = orthogonal rows; up to 2 for signed maps). ``metric="js"`` uses the
Jensen-Shannon divergence (natural log, in [0, ln 2]) of the rows instead, for
maps whose rows are probability distributions.
"""

from __future__ import annotations

import resource
from typing import Literal

import torch
from torch import Tensor


def accuracy(logits: Tensor, y: Tensor) -> Tensor:
    """Fraction of rows where ``argmax(logits) == y``."""
    if logits.ndim != 2:
        raise ValueError(f"logits must be (B, num_classes), got shape {tuple(logits.shape)}")
    if y.shape != logits.shape[:1]:
        raise ValueError(f"y must be (B,)={tuple(logits.shape[:1])}, got {tuple(y.shape)}")
    return (logits.argmax(-1) == y).float().mean()


def _pairwise_rows(weights: Tensor, metric: str) -> Tensor:
    """Per-pair per-query distance, shape (B, P, N) for P = H(H-1)/2 head pairs."""
    H = weights.shape[1]
    hi, hj = torch.triu_indices(H, H, offset=1)
    a, b = weights[:, hi], weights[:, hj]  # (B, P, N, Nk)
    if metric == "cosine":
        num = (a * b).sum(-1)
        den = a.norm(dim=-1) * b.norm(dim=-1)
        cos = torch.where(den > 0, num / den.clamp_min(1e-30), torch.ones_like(num))
        return 1.0 - cos
    # Jensen-Shannon on probability rows
    m = 0.5 * (a + b)

    def _kl(p: Tensor, q: Tensor) -> Tensor:
        return torch.where(p > 0, p * (p.clamp_min(1e-30).log() - q.clamp_min(1e-30).log()), torch.zeros_like(p)).sum(-1)

    return 0.5 * _kl(a, m) + 0.5 * _kl(b, m)


@torch.no_grad()
def head_redundancy(
    weights: Tensor,
    mask: Tensor | None = None,
    *,
    metric: Literal["cosine", "js"] = "cosine",
) -> float:
    """Mean pairwise distance between heads' attention maps of one layer (see module doc).

    ``weights`` is ``(B, H, N, Nk)``; ``mask`` is ``(B, N)`` bool (True = real
    token) used for both queries and keys when ``N == Nk``. Returns ``nan`` for
    a single head (no pairs).
    """
    if not isinstance(weights, Tensor) or weights.ndim != 4:
        raise ValueError(f"weights must be a (B, H, N, Nk) tensor, got {getattr(weights, 'shape', type(weights))}")
    if metric not in ("cosine", "js"):
        raise ValueError(f"metric must be 'cosine' or 'js', got {metric!r}")
    B, H, N, Nk = weights.shape
    if H < 2:
        return float("nan")
    w = weights.detach().double()
    if not torch.isfinite(w).all():
        raise ValueError("weights contain non-finite values")
    if mask is None:
        qmask = torch.ones(B, N, dtype=torch.bool, device=w.device)
    else:
        if mask.shape != (B, N) or mask.dtype != torch.bool:
            raise ValueError(f"mask must be bool (B, N)=({B}, {N}), got {mask.dtype} {tuple(mask.shape)}")
        qmask = mask.to(w.device)
        if Nk == N:
            w = w * qmask[:, None, None, :].to(w.dtype)
    if metric == "js":
        if (w < -1e-6).any():
            raise ValueError("metric='js' needs non-negative attention rows; use metric='cosine'")
        w = w.clamp_min(0)
        w = w / w.sum(-1, keepdim=True).clamp_min(1e-30)
    d = _pairwise_rows(w, metric)  # (B, P, N)
    qm = qmask[:, None, :].to(d.dtype)
    per_sample = (d * qm).sum(-1) / qm.sum(-1).clamp_min(1)  # (B, P)
    valid = qmask.any(-1)
    return float(per_sample[valid].mean())


def count_parameters(model: torch.nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


@torch.no_grad()
def estimate_flops(model: torch.nn.Module, *inputs, **kwargs) -> int:
    """FLOPs of one forward pass counted by ``torch.utils.flop_counter.FlopCounterMode``.

    Counts matrix products (mm/bmm/addmm/einsum-as-bmm/conv/SDPA) at 2 FLOPs per
    multiply-add; element-wise ops (softmax, norms, pooling) are not counted.
    """
    from torch.utils import flop_counter as fcm

    def _sdpa(q_shape, k_shape, v_shape, *args, out_shape=None, **kw):
        return fcm.sdpa_flop_count(q_shape, k_shape, v_shape)

    # torch's table covers the CUDA SDPA kernels only; count the CPU kernel the same way.
    custom = {}
    for name in ("_scaled_dot_product_flash_attention_for_cpu",):
        op = getattr(torch.ops.aten, name, None)
        if op is not None:
            custom[op] = _sdpa
    was_training = model.training
    model.eval()
    try:
        with fcm.FlopCounterMode(display=False, custom_mapping=custom) as fc:
            model(*inputs, **kwargs)
        return int(fc.get_total_flops())
    finally:
        model.train(was_training)


class PeakMemory:
    """Peak memory of a code region in MiB.

    GPU: ``torch.cuda.max_memory_allocated`` after a reset. CPU: growth of the
    process resident-set high-water mark (``VmHWM``, reset through
    ``/proc/self/clear_refs`` when permitted, else ``ru_maxrss``) over the RSS at
    entry. CPU numbers include allocator caching and are approximate.
    """

    def __init__(self, device: torch.device | str | None = None):
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.peak_mb: float = float("nan")
        self.method = ""

    @staticmethod
    def _status_kb(key: str) -> int | None:
        try:
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith(key + ":"):
                        return int(line.split()[1])
        except OSError:
            return None
        return None

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.method = "cuda.max_memory_allocated"
            return self
        self._reset_ok = False
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self._reset_ok = True
        except OSError:
            pass
        self._rss0 = self._status_kb("VmRSS")
        self._maxrss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        self.method = "VmHWM-delta" if self._reset_ok and self._rss0 is not None else "ru_maxrss-delta"
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_mb = torch.cuda.max_memory_allocated(self.device) / 2**20
            return
        if self.method == "VmHWM-delta":
            hwm = self._status_kb("VmHWM") or 0
            self.peak_mb = max(0, hwm - self._rss0) / 1024
        else:
            self.peak_mb = max(0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - self._maxrss0) / 1024


def saved_activation_mb(model: torch.nn.Module, *inputs, **kwargs) -> float:
    """MiB of tensors autograd saves for backward in one forward (deterministic memory proxy)."""
    total = 0
    seen: set[int] = set()

    def pack(t: Tensor):
        nonlocal total
        key = t.untyped_storage().data_ptr() if t.device.type != "meta" else id(t)
        if key not in seen:
            seen.add(key)
            total += t.untyped_storage().nbytes()
        return t

    was_training = model.training
    model.train()
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = model(*inputs, **kwargs)
        del out
    finally:
        model.train(was_training)
    return total / 2**20
