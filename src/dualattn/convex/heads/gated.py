"""Gated-ReLU and ReLU self-attention heads (globally average-pooled).

Gated-ReLU head ``j`` with fixed gate matrix ``H_j`` (sampled, seeded)::

    f(X) = sum_j (D_j(X) ∘ X W1j X^T) X W2j,       D_j(X) = 1{X H_j X^T >= 0}  (s x s).

Pooling gives ``fbar(X)[e] = sum_{a,b,l} T_j[a,b,l] W1j[a,b] W2j[l,e]`` with the
per-sample, per-gate third-order statistic

    T_g[a, k, l] = (1/s) sum_{t,u} D_g[t,u] X[t,a] X[u,k] X[u,l]   ( = (1/s) X^T D_g (X ⊙_row X) ).

For ``D = 1`` this is ``xbar[a] G[k,l]`` (the linear head).  Grouping the heads
that share gate ``g`` into ``Z_g = sum_{j: g_j = g} vec_c(W1j) vec_r(W2j)^T`` (the
same ``(d^2, dc)`` block layout as :mod:`.linear`) gives the exact convex program

    min_{Z_1..Z_P}  L( sum_g <T_g, Z_g>, y ) + beta sum_g ||Z_g||_*.

ReLU head ``f(X) = sum_j relu(X W1j X^T) X W2j``: the exact convex program
constrains every ``W1`` factor of ``Z_g`` to the cone
``K_g = {W : (2 D_g - 1) ∘ (X_i W X_i^T) >= 0 for all i}``.  We solve the gated
program (a relaxation over the sampled gates) and realise it with ReLU heads by
the cone decomposition ``W = W+ - W-``, ``W+ = W + tau H_g``, ``W- = tau H_g``
(both in ``K_g`` for the smallest such ``tau``): then
``D_g ∘ (X W X^T) = relu(X W+ X^T) - relu(X W- X^T)`` on the training data, so the
ReLU network ``{(W+, W2), (W-, -W2)}`` reproduces the gated predictions exactly
with a larger weight decay (the SOCP ``min ||W+|| + ||W-||`` picks the cheapest
split, see :mod:`dualattn.convex.cone`).  :meth:`ReLUAttentionHead.fit_report` reports the
cone violation of the gated factors and the ReLU network's objective.
"""

from __future__ import annotations

import torch
from torch import Tensor

from dualattn.convex.cone import relu_split, violation
from dualattn.convex.heads import register_head
from dualattn.convex.heads.base import ConvexHead, Weights


@register_head("gated")
class GatedAttentionHead(ConvexHead):
    """Gated-ReLU self-attention with ``num_gates`` Gaussian gate matrices ``H_g (d, d)``."""

    trainable = ("W1", "W2")

    def __init__(self, num_gates: int = 8, *, seed: int = 0) -> None:
        super().__init__(seed=seed)
        if not (isinstance(num_gates, int) and num_gates >= 1):
            raise ValueError(f"num_gates must be a positive int, got {num_gates!r}")
        self.num_gates = num_gates
        self.H: Tensor | None = None

    def get_config(self) -> dict:
        return {"num_gates": self.num_gates, "seed": self.seed}

    def _setup(self, generator: torch.Generator) -> None:
        d = self.d
        self._H_cpu = torch.randn(self.num_gates, d, d, generator=generator, dtype=torch.float64) / d

    def _move(self) -> None:
        self.H = self._H_cpu.to(device=self.device, dtype=self.dtype)

    def get_gates(self) -> Tensor:
        """The gate matrices ``H (P, d, d)`` (float64, CPU)."""
        self._require_setup()
        return self._H_cpu.clone()

    def set_gates(self, H: Tensor) -> None:
        """Replace the gate matrices (changes the program; e.g. gate re-fitting for ReLU heads)."""
        self._require_setup()
        shape = (self.num_gates, self.d, self.d)
        if not isinstance(H, Tensor) or tuple(H.shape) != shape or not torch.isfinite(H).all():
            raise ValueError(f"H must be a finite tensor of shape {shape}, got {getattr(H, 'shape', type(H))}")
        self._H_cpu = H.detach().to("cpu", torch.float64).clone()
        self._move()

    def variable_shape(self) -> tuple[int, int, int]:
        self._require_setup()
        return (self.num_gates, self.d * self.d, self.d * self.c)

    @staticmethod
    def gates(X: Tensor, H: Tensor) -> Tensor:
        """``D (n, P, s, s) = 1{X H_g X^T >= 0}`` as ``X``'s dtype."""
        S = torch.einsum("nta,gab,nub->ngtu", X, H, X)
        return (S >= 0).to(X.dtype)

    def features(self, X: Tensor) -> dict[str, Tensor]:
        """``T (n, P*d^3)`` with ``T[g, a, k, l] = (1/s) sum_{t,u} D_g[t,u] X[t,a] X[u,k] X[u,l]``."""
        X = X.to(device=self.device, dtype=self.dtype)
        n, s, d = X.shape
        D = self.gates(X, self.H)
        XX = (X[:, :, :, None] * X[:, :, None, :]).reshape(n, s, d * d)
        R = torch.einsum("ngtu,num->ngtm", D, XX)
        T = torch.einsum("nta,ngtm->ngam", X, R) / s
        return {"T": T.reshape(n, -1)}

    def _as_akl(self, Z: Tensor) -> Tensor:
        """``Z (P, d^2, dc)`` with ``[(k,a),(l,e)]`` -> ``(P*d^3, c)`` rows ``(g, a, k, l)``."""
        d, c = self.d, self.c
        return Z.reshape(-1, d, d, d, c).permute(0, 2, 1, 3, 4).reshape(-1, c)

    def apply(self, Z: Tensor, feats: dict[str, Tensor]) -> Tensor:
        """``fbar_i = sum_g <T_{g,i}, Z_g>`` as one matmul ``T (n, P d^3) @ Z (P d^3, c)``."""
        return feats["T"] @ self._as_akl(Z)

    def adjoint(self, V: Tensor, feats: dict[str, Tensor]) -> Tensor:
        d, c = self.d, self.c
        W = feats["T"].transpose(0, 1) @ V  # (P*d^3, c) rows (g, a, k, l)
        return W.reshape(-1, d, d, d, c).permute(0, 2, 1, 3, 4).reshape(-1, d * d, d * c)

    def factored_features(self, X: Tensor) -> dict[str, Tensor]:
        """``X (n, s, d)``, the gate masks ``D (n, P, s, s)`` and the masked query sums
        ``E (n, P, s, d)``, ``E[i, g, u] = sum_t D_g[t, u] x_t`` (the ``d^3`` statistic ``T`` is never formed)."""
        X = X.to(device=self.device, dtype=self.dtype)
        D = self.gates(X, self.H)
        return {"X": X, "D": D, "E": D.transpose(2, 3) @ X[:, None]}

    def factored_apply(self, A: Tensor, B: Tensor, feats: dict[str, Tensor]) -> Tensor:
        """The gated heads' own forward: ``(1/s) 1^T sum_{g,j} (D_g ∘ X W1gj X^T) X W2gj``."""
        X = feats["X"]
        q = self._pooled_scores(A, feats)  # (n, P, r, s)
        XB = self._values(B, X)  # (n, P, r, s, c)
        return torch.einsum("igru,igrue->ie", q, XB) / X.shape[1]

    # Explicit products (the autograd defaults cost ~2x and keep the whole graph).  With
    # E[i,g,u] = sum_t D_g[t,u] x_t, the pooled gated scores and v[i,g,r,u] = (X W2gr lam_i)[u]:
    #   q[i,g,r,u] = sum_t D_g[t,u] x_t^T W1gr^T x_u = E[i,g,u]^T W1gr^T x_u      (W1gr[k, a] = A[g,(k,a),r])
    #   d<lam, out>/dB[g,l,e,r] = (1/s) sum_i lam_i[e] sum_u X[u,l] q[i,g,r,u]
    #   d<lam, out>/dA[g,k,a,r] = (1/s) sum_{i,u} E[i,g,u,a] v[i,g,r,u] X[i,u,k]
    # so both heavy steps are GEMMs of (n s) rows against d^2 r columns per gate.
    def factored_bytes_per_sample(self, s: int, r: int) -> int:
        """About four ``(P, s, d, r)`` intermediates per sample (``X W1``-type products and their
        gradients): chunks of this size stay in cache, which matters more than their count."""
        return 4 * self.num_gates * s * self.d * r * (torch.finfo(self.dtype).bits // 8)

    def factored_cost_ratio(self, s: int, r: int) -> float:
        """``s r (d^2 + d c + c) / (d^3 c)``: matmul flops of :meth:`factored_apply` (pooled scores
        ``E W1``, values ``X W2`` and their product: ``2 P s r (d^2 + d c + c)`` per sample) over those
        of :meth:`apply` (``T`` times ``Z``: ``2 P d^3 c``)."""
        d, c = self.d, self.c
        return s * r * (d * d + d * c + c) / (d ** 3 * c)

    def _pooled_scores(self, A: Tensor, feats: dict[str, Tensor]) -> Tensor:
        """``q (n, P, r, s)``: column sums over queries ``t`` of the gated scores ``D_g ∘ (X W1 X^T)``."""
        d = self.d
        P, _, r = A.shape
        X, E = feats["X"], feats["E"]
        n, s, _ = X.shape
        W = A.reshape(P, d, d, r).permute(0, 2, 1, 3).reshape(P, d, d * r)  # [g, a, (k, r)]
        Y = E.transpose(0, 1).reshape(P, n * s, d) @ W  # [g, (i, u), (k, r)]
        q = (Y.reshape(P, n, s, d, r) * X[None, :, :, :, None]).sum(dim=3)  # (P, n, s, r)
        return q.permute(1, 0, 3, 2)

    def _values(self, B: Tensor, X: Tensor) -> Tensor:
        """``X W2 (n, P, r, s, c)`` for ``B (P, d c, r)``."""
        P, _, r = B.shape
        return torch.einsum("iul,gler->igrue", X, B.reshape(P, self.d, self.c, r))

    def _grad_A(self, v: Tensor, feats: dict[str, Tensor]) -> Tensor:
        """``(P, d^2, r)`` from ``v (n, P, r, s)`` (formula above): one GEMM per gate."""
        X, E = feats["X"], feats["E"]
        n, P, r, s = v.shape
        d = self.d
        w = (v.permute(1, 0, 3, 2)[..., None] * X[None, :, :, None, :]).reshape(P, n * s, r * d)  # [g, (i,u), (r,k)]
        g = E.transpose(0, 1).reshape(P, n * s, d).transpose(1, 2) @ w  # [g, a, (r, k)]
        return (g.reshape(P, d, r, d).permute(0, 3, 1, 2) / s).reshape(P, d * d, r)

    def _grad_B(self, q: Tensor, V: Tensor, X: Tensor) -> Tensor:
        """``(P, d c, r)`` from the pooled scores ``q (n, P, r, s)`` and ``V (n, c)``."""
        n, P, r, s = q.shape
        y = torch.einsum("iul,igru->igrl", X, q)
        return torch.einsum("igrl,ie->gler", y, V).reshape(P, self.d * self.c, r) / s

    def factored_vjp(self, A: Tensor, B: Tensor, feats: dict[str, Tensor]):
        """``out`` and explicit ``vjp(lam) -> (dA, dB)`` (formulas above; reuses ``q`` and ``X W2``)."""
        X = feats["X"]
        q = self._pooled_scores(A, feats)
        XB = self._values(B, X)
        out = torch.einsum("igru,igrue->ie", q, XB) / X.shape[1]

        def vjp(lam: Tensor) -> tuple[Tensor, Tensor]:
            v = torch.einsum("igrue,ie->igru", XB, lam)
            return self._grad_A(v, feats), self._grad_B(q, lam, X)

        return out, vjp

    def adjoint_matmul(self, V: Tensor, W: Tensor, feats: dict[str, Tensor]) -> Tensor:
        """``M_g W_g`` for ``M = A^*(V)``, ``W (P, d c, K)``: the ``A``-gradient with ``B = W``."""
        v = torch.einsum("igrue,ie->igru", self._values(W, feats["X"]), V)
        return self._grad_A(v, feats)

    def adjoint_rmatmul(self, V: Tensor, U: Tensor, feats: dict[str, Tensor]) -> Tensor:
        """``M_g^T U_g`` for ``M = A^*(V)``, ``U (P, d^2, K)``: the ``B``-gradient with ``A = U``."""
        return self._grad_B(self._pooled_scores(U, feats), V, feats["X"])

    def unlift(self, a: Tensor, b: Tensor, gate: Tensor) -> Weights:
        d, c = self.d, self.c
        return {
            "W1": a.reshape(-1, d, d).transpose(1, 2).contiguous(),
            "W2": b.reshape(-1, d, c).contiguous(),
            "H": self.H[gate].clone(),
        }

    def nonconvex_forward(self, weights: Weights, X: Tensor) -> Tensor:
        """Literal formula: ``mean_tokens( sum_j (D_j ∘ X W1j X^T) X W2j )``."""
        W1, W2, H = weights["W1"], weights["W2"], weights["H"]
        X = X.to(W1.dtype)
        scores = torch.einsum("nsa,hab,ntb->nhst", X, W1, X)
        mask = torch.einsum("nsa,hab,ntb->nhst", X, H, X) >= 0
        vals = torch.einsum("ntd,hdc->nhtc", X, W2)
        return ((scores * mask) @ vals).mean(dim=2).sum(dim=1)

    def init_nonconvex(self, m: int, *, generator: torch.Generator | None = None, scale: float = 0.1) -> Weights:
        self._require_setup()
        d, c = self.d, self.c
        gate = torch.arange(m) % self.num_gates
        W1 = torch.randn(m, d, d, generator=generator, dtype=self.dtype) * scale
        W2 = torch.randn(m, d, c, generator=generator, dtype=self.dtype) * scale
        return {"W1": W1.to(self.device), "W2": W2.to(self.device), "H": self.H[gate.to(self.device)].clone()}


def attention_constraints(X: Tensor) -> Tensor:
    """Rows ``vec(x_t x_u^T)`` for every sample and token pair: ``(n*s*s, d*d)``, so that
    ``rows @ vec(W) = x_t^T W x_u`` (the attention scores, linear in ``W``)."""
    n, s, d = X.shape
    return (X[:, :, None, :, None] * X[:, None, :, None, :]).reshape(n * s * s, d * d)


def attention_preacts(X: Tensor, W: Tensor) -> Tensor:
    """Scores ``x_t^T W_j x_u`` for flattened ``W (m, d*d)``: ``(n*s*s, m)``, without forming the rows."""
    d = X.shape[-1]
    S = torch.einsum("nta,jab,nub->ntuj", X, W.reshape(-1, d, d), X)
    return S.reshape(-1, W.shape[0])


@register_head("relu")
class ReLUAttentionHead(GatedAttentionHead):
    """ReLU self-attention, solved approximately through the gated program + cone decomposition.

    ``decomposition``: ``"min-norm"`` (an SOCP per head, smallest weight decay) or
    ``"closed-form"`` (``W + tau H, tau H``; cheap but larger weight decay).
    """

    def __init__(self, num_gates: int = 8, *, seed: int = 0, decomposition: str = "min-norm") -> None:
        super().__init__(num_gates, seed=seed)
        if decomposition not in ("min-norm", "closed-form"):
            raise ValueError(f"decomposition must be 'min-norm' or 'closed-form', got {decomposition!r}")
        self.decomposition = decomposition

    def get_config(self) -> dict:
        return super().get_config() | {"decomposition": self.decomposition}

    def recover(self, Z: Tensor, *, rtol: float = 1e-8, X: Tensor | None = None) -> Weights:
        """ReLU heads ``(W+, W2), (W-, -W2)`` realising the gated solution on the training ``X``."""
        if X is None:
            raise ValueError("relu head: recover(Z, X=...) needs the training inputs X for the cone decomposition")
        g = super().recover(Z, rtol=rtol)
        X = X.to(g["W1"])
        W1, W2 = relu_split(X, attention_constraints, g["W1"], g["H"], g["W2"], method=self.decomposition,
                            pre_fn=attention_preacts)
        return {"W1": W1, "W2": W2}

    def nonconvex_forward(self, weights: Weights, X: Tensor) -> Tensor:
        """Literal formula: ``mean_tokens( sum_j relu(X W1j X^T) X W2j )``."""
        W1, W2 = weights["W1"], weights["W2"]
        X = X.to(W1.dtype)
        scores = torch.relu(torch.einsum("nsa,hab,ntb->nhst", X, W1, X))
        vals = torch.einsum("ntd,hdc->nhtc", X, W2)
        return (scores @ vals).mean(dim=2).sum(dim=1)

    def init_nonconvex(self, m: int, *, generator: torch.Generator | None = None, scale: float = 0.1) -> Weights:
        w = super().init_nonconvex(m, generator=generator, scale=scale)
        return {"W1": w["W1"], "W2": w["W2"]}

    gate_key = "H"

    def gated_weights(self, Z: Tensor) -> Weights:
        """The gated-ReLU heads of ``Z`` (before the cone decomposition)."""
        return GatedAttentionHead.recover(self, Z)

    def fit_report(self, fit) -> dict:
        """Cone violation of the gated factors and the objective of the decomposed ReLU network."""
        return super().fit_report(fit) | relu_report(self, self.gated_weights(fit.Z), "H",
                                                     attention_preacts, fit)


def relu_report(head: ConvexHead, gated: Weights, gate_key: str, preacts, fit) -> dict:
    """``cone_violation`` (relative, of the gated factors), ``relu_objective`` (nonconvex objective
    of the decomposed ReLU network) and ``relu_excess = relu_objective - gated optimum``."""
    X = fit.X_train
    if X is None or gated["W1"].shape[0] == 0:
        return {"cone_violation": 0.0, "relu_objective": fit.objective, "relu_excess": 0.0}
    viol = violation(X.to(gated["W1"]), preacts, gated["W1"], gated[gate_key])
    module = head.nonconvex_module(fit.nonconvex_weights())
    with torch.no_grad():
        out = torch.cat([module(X[a : a + 256]) for a in range(0, X.shape[0], 256)])
        obj = float(fit.loss.value(out, fit.Y_train) + fit.beta * module.penalty())
    return {"cone_violation": viol, "relu_objective": obj, "relu_excess": obj - fit.objective,
            "relu_heads": module.num_heads}
