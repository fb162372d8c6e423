"""Convex MLP-Mixer heads (token mixing ``W1j (s, s)``, then channel mixing ``W2j (d, c)``).

Nonconvex head, globally average-pooled over the ``s`` output tokens::

    f(X) = sum_j sigma(W1j X) W2j,            fbar(X) = (1/s) 1^T f(X),

with weight decay ``beta/2 sum_j (||W1j||^2 + ||W2j||^2)``.  Derivations in
``docs/convex-mixer-fno.md``:

* ``"mixer-linear"`` (``sigma = id``): pooling keeps only ``a_j = W1j^T 1 / s``,
  so the program is ``min L(<X_i, Z>/sqrt(s)) + beta ||Z||_*`` over
  ``Z in R^{s x dc}`` (``Z[u, e*c + k]``), with recovered token mixing
  ``W1j = 1 a_j^T / sqrt(s)`` (all rows equal).
* ``"mixer-gated"`` (gated ReLU, fixed gates ``M_j(X) = 1{G_j X >= 0}``, ``G_j (s, s)``):
  ``fbar_i[k] = (1/s) sum_j sum_{t,u,e} M_j(X_i)[t,e] X_i[u,e] Z_j[(t,u),(e,k)]``
  with the block nuclear norm ``beta sum_j ||Z_j||_*``, ``Z_j in R^{s^2 x dc}``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from dualattn.convex.heads import register_head
from dualattn.convex.heads.base import ConvexHead, Weights


class TokenMixingHead(ConvexHead):
    """Heads whose program depends on the token count ``s``.

    ``s`` comes from ``setup(d, c, s=...)``, or is bound from the first ``X``
    seen by :meth:`check_X` (``fit`` calls ``setup`` without ``s``); gates
    are sampled at that moment, from the head's seed.
    """

    def _require_s(self) -> int:
        self._require_setup()
        if self.s is None:
            raise ValueError(f"head {self.name!r} mixes tokens: call setup(d, c, s=<number of tokens>)")
        return int(self.s)

    def bind_tokens(self, s: int) -> None:
        """Fix ``s`` (and sample the gates) if it is not fixed yet."""
        self._require_setup()
        if self.s is None:
            if not (isinstance(s, int) and s > 0):
                raise ValueError(f"s must be a positive int, got {s!r}")
            self.s = s
            self._setup(torch.Generator().manual_seed(self.seed))
            self._move()

    def check_X(self, X: Tensor) -> None:
        if isinstance(X, Tensor) and X.ndim == 3:
            self.bind_tokens(int(X.shape[1]))
        super().check_X(X)
        if not X.is_floating_point():
            raise TypeError(f"X must be a floating-point tensor, got dtype {X.dtype}")


class _MixerBase(TokenMixingHead):
    """Shared weight checks of the mixer heads."""

    def _check_weights(self, weights: Weights, X: Tensor) -> None:
        for key in ("W1", "W2"):
            if key not in weights:
                raise ValueError(f"weights must contain {key!r} (got keys {sorted(weights)})")
        self.check_X(X)


@register_head("mixer-linear")
class MixerLinearHead(_MixerBase):
    """Linear MLP-Mixer head: ``min_Z L(<X_i, Z_{::k}>/sqrt(s), y) + beta ||Z||_*``, ``Z (1, s, d*c)``."""

    def variable_shape(self) -> tuple[int, int, int]:
        s = self._require_s()
        return (1, s, self.d * self.c)

    def features(self, X: Tensor) -> dict[str, Tensor]:
        """``X / sqrt(s)`` flattened to ``(n, s*d)`` (the pooled head is linear in it)."""
        self.check_X(X)
        s = self._require_s()
        X = X.to(device=self.device, dtype=self.dtype)
        return {"x": X.reshape(X.shape[0], -1) / math.sqrt(s)}

    def apply(self, Z: Tensor, feats: dict[str, Tensor]) -> Tensor:
        """``fbar_i[k] = sum_{u,e} X_i[u,e] Z[u, e*c+k] / sqrt(s)``."""
        return feats["x"] @ Z.reshape(-1, self.c)

    def adjoint(self, V: Tensor, feats: dict[str, Tensor]) -> Tensor:
        """``A^*(V)[u, e*c+k] = sum_i X_i[u,e] V_i[k] / sqrt(s)``."""
        return (feats["x"].transpose(0, 1) @ V).reshape(self.variable_shape())

    def channel_features(self, feats: dict[str, Tensor]) -> Tensor:
        """``X / sqrt(s)`` flattened: ``A(Z)_i = x_i^T Z.reshape(s*d, c)``."""
        return feats["x"]

    def unlift(self, a: Tensor, b: Tensor, gate: Tensor) -> Weights:
        """``W1j = 1 a_j^T / sqrt(s)`` (``||W1j|| = ||a_j||``), ``W2j = reshape(b_j, (d, c))``."""
        s = self._require_s()
        W1 = a[:, None, :].expand(-1, s, -1) / math.sqrt(s)
        return {"W1": W1.contiguous(), "W2": b.reshape(-1, self.d, self.c).contiguous()}

    def nonconvex_forward(self, weights: Weights, X: Tensor) -> Tensor:
        """Literal formula: ``mean_tokens( sum_j W1j X W2j )``."""
        self._check_weights(weights, X)
        W1, W2 = weights["W1"], weights["W2"]
        X = X.to(device=W1.device, dtype=W1.dtype)
        mixed = torch.einsum("jtu,nue->njte", W1, X)
        return torch.einsum("njte,jek->ntk", mixed, W2).mean(dim=1)

    def init_nonconvex(self, m: int, *, generator: torch.Generator | None = None, scale: float = 0.1) -> Weights:
        s = self._require_s()
        d, c = self.d, self.c
        W1 = torch.randn(m, s, s, generator=generator, dtype=self.dtype) * scale
        W2 = torch.randn(m, d, c, generator=generator, dtype=self.dtype) * scale
        return {"W1": W1.to(self.device), "W2": W2.to(self.device)}


@register_head("mixer-gated")
class MixerGatedHead(_MixerBase):
    """Gated-ReLU MLP-Mixer head: block nuclear norm over ``num_gates`` blocks ``Z_j (s^2, d*c)``."""

    def __init__(self, *, num_gates: int = 8, seed: int = 0) -> None:
        super().__init__(seed=seed)
        if not (isinstance(num_gates, int) and num_gates > 0):
            raise ValueError(f"num_gates must be a positive int, got {num_gates!r}")
        self.num_gates = num_gates
        self.G: Tensor | None = None

    def get_config(self) -> dict:
        return {"num_gates": self.num_gates, "seed": self.seed}

    def _setup(self, generator: torch.Generator) -> None:
        if self.s is None:  # deferred to bind_tokens
            self.G = None
            return
        s = int(self.s)
        self.G = torch.randn(self.num_gates, s, s, generator=generator, dtype=torch.float64)

    def _move(self) -> None:
        if self.G is not None:
            self.G = self.G.to(device=self.device, dtype=self.dtype)

    def variable_shape(self) -> tuple[int, int, int]:
        s = self._require_s()
        return (self.num_gates, s * s, self.d * self.c)

    def gates(self, X: Tensor, G: Tensor | None = None) -> Tensor:
        """Gate masks ``M_j(X_i) = 1{G_j X_i >= 0}`` as a float tensor ``(n, P, s, d)``."""
        G = self.G if G is None else G
        X = X.to(device=G.device, dtype=G.dtype)
        return (torch.einsum("jtu,nue->njte", G, X) >= 0).to(G.dtype)

    def features(self, X: Tensor) -> dict[str, Tensor]:
        """``X (n, s, d)`` and the gate masks ``M (n, P, s, d)``."""
        self.check_X(X)
        X = X.to(device=self.device, dtype=self.dtype)
        return {"X": X, "M": self.gates(X)}

    def _blocks(self, Z: Tensor) -> Tensor:
        s = self._require_s()
        return Z.reshape(self.num_gates, s, s, self.d, self.c)

    def apply(self, Z: Tensor, feats: dict[str, Tensor]) -> Tensor:
        """``fbar_i[k] = (1/s) sum_{j,t,u,e} M[i,j,t,e] X[i,u,e] Z_j[t,u,e,k]``."""
        X, M = feats["X"], feats["M"]
        T = torch.einsum("nue,jtuek->njtek", X, self._blocks(Z))
        return torch.einsum("njte,njtek->nk", M, T) / self.s

    def adjoint(self, V: Tensor, feats: dict[str, Tensor]) -> Tensor:
        """``A^*(V)_j[t,u,e,k] = (1/s) sum_i M[i,j,t,e] X[i,u,e] V[i,k]``."""
        X, M = feats["X"], feats["M"]
        MV = torch.einsum("njte,nk->njtek", M, V)
        G = torch.einsum("nue,njtek->jtuek", X, MV) / self.s
        return G.reshape(self.variable_shape())

    def factored_cost_ratio(self, s: int, r: int) -> float:
        """``r (s^2 + c) / (s c (s + 1))``: matmul flops of :meth:`factored_apply` (``W1 X`` for every
        column, an ``(n, P, r, s, d)`` intermediate, then ``W2``: ``2 P r d (s^2 + c)`` per sample)
        over those of :meth:`apply` (``2 P s d c (s + 1)``)."""
        return r * (s * s + self.c) / (s * self.c * (s + 1))

    def factored_apply(self, A: Tensor, B: Tensor, feats: dict[str, Tensor]) -> Tensor:
        """The gated mixer's own forward: ``(1/s) sum_{j,r,t,e} M[j,t,e] (W1jr X)[t,e] W2jr[e,:]``."""
        s = self._require_s()
        P, _, r = A.shape
        X, M = feats["X"], feats["M"]
        pre = torch.einsum("jtur,nue->njrte", A.reshape(P, s, s, r), X) * M[:, :, None]
        return torch.einsum("njrte,jekr->nk", pre, B.reshape(P, self.d, self.c, r)) / s

    def unlift(self, a: Tensor, b: Tensor, gate: Tensor) -> Weights:
        """``W1 = reshape(a, (s, s))`` (rows ``t``, columns ``u``), ``W2 = reshape(b, (d, c))``, plus gates."""
        s = self._require_s()
        return {
            "W1": a.reshape(-1, s, s).contiguous(),
            "W2": b.reshape(-1, self.d, self.c).contiguous(),
            "gate_index": gate.to(torch.long),
            "G": self.G.clone(),
        }

    def nonconvex_forward(self, weights: Weights, X: Tensor) -> Tensor:
        """Literal gated network: ``mean_t sum_j (1{G_{g(j)} X >= 0} * (W1j X)) W2j``."""
        self._check_weights(weights, X)
        W1, W2 = weights["W1"], weights["W2"]
        G = weights.get("G", self.G).to(device=W1.device, dtype=W1.dtype)
        idx = weights["gate_index"].to(W1.device)
        X = X.to(device=W1.device, dtype=W1.dtype)
        masks = (torch.einsum("jtu,nue->njte", G[idx], X) >= 0).to(W1.dtype)
        pre = torch.einsum("jtu,nue->njte", W1, X)
        return torch.einsum("njte,jek->ntk", masks * pre, W2).mean(dim=1)

    def init_nonconvex(self, m: int, *, generator: torch.Generator | None = None, scale: float = 0.1) -> Weights:
        s = self._require_s()
        W1 = torch.randn(m, s, s, generator=generator, dtype=self.dtype) * scale
        W2 = torch.randn(m, self.d, self.c, generator=generator, dtype=self.dtype) * scale
        idx = torch.arange(m) % self.num_gates
        return {"W1": W1.to(self.device), "W2": W2.to(self.device), "gate_index": idx.to(self.device), "G": self.G.clone()}
