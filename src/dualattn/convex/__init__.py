"""dualattn.convex: convex-duality view of attention heads (Sahiner et al., ICML 2022).

``fit(head, X, y, beta, loss=..., solver=..., tol=...)`` returns a
:class:`ConvexFit` with the globally optimal lifted variable, a duality-gap
certificate, predictions and the equivalent nonconvex ``nn.Module``.
Head types are registered in :data:`dualattn.convex.heads.HEADS`.
"""

from dualattn.convex.api import ConvexFit, beta_max, fit, fit_path, fit_relu, nonconvex_objective
from dualattn.convex.heads import HEADS, ConvexHead, NonconvexHead, get_head, register_head

__all__ = [
    "fit", "fit_path", "fit_relu", "beta_max", "ConvexFit", "nonconvex_objective",
    "HEADS", "ConvexHead", "NonconvexHead", "get_head", "register_head",
]
