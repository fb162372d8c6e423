"""Two-layer (gated-)ReLU MLP heads applied per token and average-pooled: the scnn baseline.

Gated-ReLU MLP with fixed gate vectors ``h_j`` (sampled, seeded)::

    fbar(X) = (1/s) sum_t sum_j 1{x_t^T h_j >= 0} (x_t^T w1_j) w2_j^T,   w1_j in R^d, w2_j in R^c.

With ``m_g(X) = (1/s) sum_t 1{x_t^T h_g >= 0} x_t`` and ``Z_g = sum_{j: g_j = g} w1_j w2_j^T``
(``d x c``) the weight-decayed problem is exactly

    min_Z L( sum_g m_g(X_i)^T Z_g, y ) + beta sum_g ||Z_g||_*

(for ``c = 1`` the nuclear norm is the group-lasso norm ``||z_g||_2`` that scnn
solves; with ``s = 1`` this is exactly scnn's gated-ReLU / ReLU MLP).  The ReLU
MLP (``relu(x_t^T w1_j)``) is realised from the gated solution by a cone
decomposition ``w = p - q`` (:mod:`dualattn.convex.cone`) as in :mod:`.gated`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from dualattn.convex.heads import register_head
from dualattn.convex.cone import relu_split, rows_preacts
from dualattn.convex.heads.gated import relu_report
from dualattn.convex.heads.base import ConvexHead, Weights


@register_head("mlp-gated")
class GatedMLPHead(ConvexHead):
    """Token-wise gated-ReLU MLP with ``num_gates`` Gaussian gate vectors, average-pooled."""

    def __init__(self, num_gates: int = 16, *, seed: int = 0) -> None:
        super().__init__(seed=seed)
        if not (isinstance(num_gates, int) and num_gates >= 1):
            raise ValueError(f"num_gates must be a positive int, got {num_gates!r}")
        self.num_gates = num_gates
        self.h: Tensor | None = None

    def get_config(self) -> dict:
        return {"num_gates": self.num_gates, "seed": self.seed}

    def _setup(self, generator: torch.Generator) -> None:
        self._h_cpu = torch.randn(self.num_gates, self.d, generator=generator, dtype=torch.float64)

    def _move(self) -> None:
        self.h = self._h_cpu.to(device=self.device, dtype=self.dtype)

    def get_gates(self) -> Tensor:
        """The gate vectors ``h (P, d)`` (float64, CPU)."""
        self._require_setup()
        return self._h_cpu.clone()

    def set_gates(self, h: Tensor) -> None:
        """Replace the gate vectors (changes the program; e.g. gate re-fitting for ReLU heads)."""
        self._require_setup()
        shape = (self.num_gates, self.d)
        if not isinstance(h, Tensor) or tuple(h.shape) != shape or not torch.isfinite(h).all():
            raise ValueError(f"h must be a finite tensor of shape {shape}, got {getattr(h, 'shape', type(h))}")
        self._h_cpu = h.detach().to("cpu", torch.float64).clone()
        self._move()

    def variable_shape(self) -> tuple[int, int, int]:
        self._require_setup()
        return (self.num_gates, self.d, self.c)

    def features(self, X: Tensor) -> dict[str, Tensor]:
        """``M (n, P*d)``: ``M[g] = (1/s) sum_t 1{x_t^T h_g >= 0} x_t``.

        With one token (``s = 1``, scnn's MLP on vectors) the features are kept as ``x (n, d)``
        and the gate mask ``D (n, P)`` instead: ``A(Z)_i = sum_g D_ig x_i^T Z_g`` then costs
        one ``(n, d) x (d, P c)`` product that stays in cache, where ``M`` (``n P d`` numbers)
        would be streamed from memory on every product.
        """
        X = X.to(device=self.device, dtype=self.dtype)
        D = (X @ self.h.T >= 0).to(X.dtype)  # (n, s, P)
        if X.shape[1] == 1:
            return {"x": X[:, 0], "D": D[:, 0]}
        M = torch.einsum("nsg,nsd->ngd", D, X) / X.shape[1]
        return {"M": M.reshape(X.shape[0], -1)}

    def apply(self, Z: Tensor, feats: dict[str, Tensor]) -> Tensor:
        """``A(Z)_i[k] = sum_{g,a} M_i[g, a] Z[g, a, k]`` (``= sum_g D_ig x_i^T Z[g, :, k]`` for ``s = 1``)."""
        if "M" in feats:
            return feats["M"] @ Z.reshape(-1, self.c)
        x, D = feats["x"], feats["D"]
        P, c = self.num_gates, self.c
        XZ = x @ Z.permute(1, 0, 2).reshape(self.d, P * c)  # (n, P c): x_i^T Z_g
        # row-wise D_i^T XZ_i as one batched (1 x P)(P x c) product: no (n, P, c) temporary
        return torch.bmm(D[:, None, :], XZ.view(-1, P, c))[:, 0]

    def adjoint(self, V: Tensor, feats: dict[str, Tensor]) -> Tensor:
        """``A^*(V)[g, a, k] = sum_i M_i[g, a] V_i[k]`` (``= sum_i D_ig x_ia V_ik`` for ``s = 1``)."""
        P, c = self.num_gates, self.c
        if "M" in feats:
            return (feats["M"].transpose(0, 1) @ V).reshape(P, self.d, c)
        x, D = feats["x"], feats["D"]
        # D^T (x_i V_i^T): the elementwise product is (n, d c), not (n, P c) (P > d usually)
        xV = (x[:, :, None] * V[:, None, :]).reshape(x.shape[0], self.d * c)
        return (D.transpose(0, 1) @ xV).view(P, self.d, c)

    def channel_features(self, feats: dict[str, Tensor]) -> Tensor:
        """``M`` (formed from ``x`` and ``D`` for ``s = 1``): ``A(Z)_i = M_i^T Z.reshape(P*d, c)``."""
        if "M" in feats:
            return feats["M"]
        x, D = feats["x"], feats["D"]
        return (D[:, :, None] * x[:, None, :]).reshape(x.shape[0], -1)

    def unlift(self, a: Tensor, b: Tensor, gate: Tensor) -> Weights:
        return {"W1": a.contiguous(), "W2": b.contiguous(), "h": self.h[gate].clone()}

    def nonconvex_forward(self, weights: Weights, X: Tensor) -> Tensor:
        W1, W2, h = weights["W1"], weights["W2"], weights["h"]
        X = X.to(W1.dtype)
        act = (X @ W1.T) * (X @ h.T >= 0)  # (n, s, m)
        return act.mean(dim=1) @ W2

    def init_nonconvex(self, m: int, *, generator: torch.Generator | None = None, scale: float = 0.1) -> Weights:
        self._require_setup()
        gate = torch.arange(m) % self.num_gates
        W1 = torch.randn(m, self.d, generator=generator, dtype=self.dtype) * scale
        W2 = torch.randn(m, self.c, generator=generator, dtype=self.dtype) * scale
        return {"W1": W1.to(self.device), "W2": W2.to(self.device), "h": self.h[gate.to(self.device)].clone()}


def mlp_constraints(X: Tensor) -> Tensor:
    """Rows ``x_t`` for every sample and token: ``(n*s, d)`` (pre-activations ``x_t^T w``)."""
    return X.reshape(-1, X.shape[-1])


@register_head("mlp-relu")
class ReLUMLPHead(GatedMLPHead):
    """Token-wise ReLU MLP, solved through the gated program + cone decomposition."""

    def __init__(self, num_gates: int = 16, *, seed: int = 0, decomposition: str = "min-norm") -> None:
        super().__init__(num_gates, seed=seed)
        if decomposition not in ("min-norm", "closed-form"):
            raise ValueError(f"decomposition must be 'min-norm' or 'closed-form', got {decomposition!r}")
        self.decomposition = decomposition

    def get_config(self) -> dict:
        return super().get_config() | {"decomposition": self.decomposition}

    def recover(self, Z: Tensor, *, rtol: float = 1e-8, X: Tensor | None = None) -> Weights:
        if X is None:
            raise ValueError("mlp-relu head: recover(Z, X=...) needs the training inputs X for the cone decomposition")
        g = super().recover(Z, rtol=rtol)
        W1, W2 = relu_split(X.to(g["W1"]), mlp_constraints, g["W1"], g["h"], g["W2"], method=self.decomposition)
        return {"W1": W1, "W2": W2}

    def nonconvex_forward(self, weights: Weights, X: Tensor) -> Tensor:
        W1, W2 = weights["W1"], weights["W2"]
        X = X.to(W1.dtype)
        return torch.relu(X @ W1.T).mean(dim=1) @ W2

    def init_nonconvex(self, m: int, *, generator: torch.Generator | None = None, scale: float = 0.1) -> Weights:
        w = super().init_nonconvex(m, generator=generator, scale=scale)
        return {"W1": w["W1"], "W2": w["W2"]}

    gate_key = "h"

    def gated_weights(self, Z: Tensor) -> Weights:
        """The gated-ReLU neurons of ``Z`` (before the cone decomposition)."""
        return GatedMLPHead.recover(self, Z)

    def fit_report(self, fit) -> dict:
        return super().fit_report(fit) | relu_report(self, self.gated_weights(fit.Z), "h",
                                                     rows_preacts(mlp_constraints), fit)


@register_head("mlp-relu-cone")
class ConeReLUMLPHead(GatedMLPHead):
    """Scalar-output ReLU MLP as the cone-constrained convex program (Pilanci & Ergen 2020; scnn's ConvexReLU):

        min_{u, v} L( sum_g m_g(X_i)^T (u_g - v_g), y ) + beta sum_g (||u_g|| + ||v_g||)
        s.t.  (2 D_g - 1) ∘ (X u_g) >= 0,  (2 D_g - 1) ∘ (X v_g) >= 0   for every token,

    exact for ReLU MLPs whose activation patterns are among the ``P`` sampled gates.
    ``Z`` stacks ``(u_1..u_P, v_1..v_P)`` as ``(2P, d, 1)``; solve with ``solver="auglag"``
    (augmented Lagrangian).  Each nonzero ``u_g`` (``v_g``) is one ReLU neuron
    ``w1 = u_g / sqrt||u_g||``, ``w2 = +sqrt||u_g||`` (``-sqrt||v_g||``).
    """

    def _setup(self, generator: torch.Generator) -> None:
        if self.c != 1:
            raise ValueError(f"mlp-relu-cone supports scalar outputs only (c = 1), got c = {self.c}")
        super()._setup(generator)

    def variable_shape(self) -> tuple[int, int, int]:
        self._require_setup()
        return (2 * self.num_gates, self.d, 1)

    def features(self, X: Tensor) -> dict[str, Tensor]:
        X = X.to(device=self.device, dtype=self.dtype)
        S = torch.where(X @ self.h.T >= 0, 1.0, -1.0).to(X.dtype)  # (n, s, P) gate signs
        M = torch.einsum("nsg,nsd->ngd", (S > 0).to(X.dtype), X) / X.shape[1]
        return {"M": M.reshape(X.shape[0], -1), "X": X, "S": S}

    def apply(self, Z: Tensor, feats: dict[str, Tensor]) -> Tensor:
        P = self.num_gates
        return feats["M"] @ (Z[:P] - Z[P:]).reshape(-1, 1)

    def adjoint(self, V: Tensor, feats: dict[str, Tensor]) -> Tensor:
        g = (feats["M"].transpose(0, 1) @ V).reshape(self.num_gates, self.d, 1)
        return torch.cat([g, -g])

    def constraints(self, Z: Tensor, feats: dict[str, Tensor]) -> Tensor:
        """``G(Z) (n, s, 2P)``: signed pre-activations; feasible iff ``G(Z) >= 0``."""
        S = feats["S"]
        pre = feats["X"] @ Z[..., 0].T  # (n, s, 2P)
        return pre * torch.cat([S, S], dim=-1)

    def constraints_adjoint(self, Lam: Tensor, feats: dict[str, Tensor]) -> Tensor:
        """``G^*(Lam)``: ``sum_{i,t} x_it (sign ∘ Lam)_{it,g}`` for every block ``g``."""
        S = feats["S"]
        W = Lam * torch.cat([S, S], dim=-1)
        return torch.einsum("nsd,nsg->gd", feats["X"], W)[..., None]

    def repair(self, Z: Tensor, op) -> Tensor:
        """Feasible point with the same outputs: ``u_g + tau_g h_g``, ``v_g + tau_g h_g`` with the
        smallest ``tau_g >= 0`` (``h_g`` is strictly inside its cone; ``u_g - v_g`` is unchanged)."""
        P = self.num_gates
        tau = torch.zeros(2 * P, dtype=Z.dtype, device=Z.device)
        for _, _, f in op.chunks():
            GZ = self.constraints(Z, f)
            Gh = (f["X"] @ self.h.T).abs()
            Gh = torch.cat([Gh, Gh], dim=-1)
            ok = Gh > 0
            need = torch.where(ok, torch.clamp(-GZ, min=0) / torch.where(ok, Gh, torch.ones_like(Gh)), 0.0)
            tau = torch.maximum(tau, need.flatten(0, 1).max(dim=0).values)
        t = torch.maximum(tau[:P], tau[P:]) * (1.0 + 1e-9)
        shift = (t[:, None] * self.h)[..., None]
        return torch.cat([Z[:P] + shift, Z[P:] + shift])

    def recover(self, Z: Tensor, *, rtol: float = 1e-8, X: Tensor | None = None) -> Weights:
        P = self.num_gates
        norms = Z[..., 0].norm(dim=1)
        keep = norms > rtol * norms.max().clamp_min(torch.finfo(Z.dtype).tiny)
        idx = torch.nonzero(keep).flatten()
        root = norms[idx].sqrt()
        W1 = Z[idx, :, 0] / root[:, None]
        sign = torch.where(idx < P, 1.0, -1.0).to(Z.dtype)
        return {"W1": W1, "W2": (sign * root)[:, None]}

    def nonconvex_forward(self, weights: Weights, X: Tensor) -> Tensor:
        W1, W2 = weights["W1"], weights["W2"]
        X = X.to(W1.dtype)
        return torch.relu(X @ W1.T).mean(dim=1) @ W2

    def init_nonconvex(self, m: int, *, generator: torch.Generator | None = None, scale: float = 0.1) -> Weights:
        w = super().init_nonconvex(m, generator=generator, scale=scale)
        return {"W1": w["W1"], "W2": w["W2"]}

    def fit_report(self, fit) -> dict:
        out = super().fit_report(fit)
        if fit.X_train is None:
            return out
        module = self.nonconvex_module(fit.nonconvex_weights())
        with torch.no_grad():
            obj = float(fit.loss.value(module(fit.X_train), fit.Y_train) + fit.beta * module.penalty())
        return out | {"relu_objective": obj, "relu_excess": obj - fit.objective}
