"""Training the nonconvex heads directly (the baseline the convex programs certify).

``train_nonconvex`` minimises ``sum_i loss(f_W(X_i), y_i) + beta/2 sum ||W||^2``
with full-batch Adam from a random (seeded) or given initialisation.  By the
convex equivalence its final objective can never go below the convex optimum
(up to the solver tolerance) for the exact heads.
"""

from __future__ import annotations

import torch
from torch import Tensor
from tqdm.auto import tqdm

from dualattn.convex.api import as_features, as_targets
from dualattn.convex.heads import ConvexHead, get_head
from dualattn.convex.heads.base import NonconvexHead
from dualattn.convex.losses import check_beta, get_loss


def train_nonconvex(
    head: str | ConvexHead,
    X,
    y,
    beta: float,
    *,
    m: int = 8,
    loss: str = "squared",
    steps: int = 2000,
    lr: float = 1e-2,
    seed: int = 0,
    init: dict[str, Tensor] | None = None,
    scale: float = 0.1,
    num_classes: int | None = None,
    dtype: torch.dtype = torch.float64,
    verbose: bool = False,
) -> tuple[NonconvexHead, list[float]]:
    """Adam on the weight-decayed nonconvex objective; returns ``(module, objective per step)``."""
    head = get_head(head)
    lossf = get_loss(loss)
    beta = check_beta(beta)
    if not (isinstance(steps, int) and steps >= 1):
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    X = as_features(X, dtype=dtype)
    Y, c = lossf.targets(as_targets(y), X.shape[0], num_classes)
    Y = Y if lossf.name == "cross_entropy" else Y.to(dtype)
    head.setup(int(X.shape[2]), c, s=head.s, dtype=dtype)
    if init is None:
        init = head.init_nonconvex(m, generator=torch.Generator().manual_seed(seed), scale=scale)
    module = head.nonconvex_module(init)
    opt = torch.optim.Adam(module.parameters(), lr=lr)
    hist: list[float] = []
    for _ in tqdm(range(steps), disable=not verbose, desc="adam", leave=False):
        opt.zero_grad()
        obj = lossf.value(module(X), Y) + beta * module.penalty()
        if not torch.isfinite(obj):
            raise FloatingPointError(f"nonconvex objective diverged ({float(obj)}); lower lr")
        obj.backward()
        opt.step()
        hist.append(float(obj.detach()))
    with torch.no_grad():
        hist.append(float(lossf.value(module(X), Y) + beta * module.penalty()))
    return module, hist
