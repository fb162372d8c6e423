"""Linear self-attention head (Sahiner et al. 2022, Thm 3.1), globally average-pooled.

Nonconvex model with m heads, ``W1j (d, d)``, ``W2j (d, c)``::

    f(X) = sum_j X W1j X^T X W2j,        fbar(X) = (1/s) 1^T f(X) = sum_j xbar^T W1j G W2j,

with ``xbar = X^T 1 / s`` and ``G = X^T X``.  Writing ``X W1 G W2 = sum_{k,l} G[k,l] X w1_k w2_l^T``
(``w1_k`` = column k of W1, ``w2_l`` = row l of W2) gives the lifted variable
``Z = sum_j vec_c(W1j) vec_r(W2j)^T in R^{d^2 x dc}`` made of ``d x c`` blocks
``Z^{(k,l)} = sum_j W1j[:, k] W2j[l, :]``, stored at rows ``k*d:(k+1)*d`` and
columns ``l*c:(l+1)*c``, i.e. ``Z[k*d + a, l*c + e] = sum_j W1j[a, k] W2j[l, e]``.
Then ``fbar(X) = sum_{k,l} G[k,l] xbar^T Z^{(k,l)}`` and weight decay
``beta/2 sum_j (||W1j||^2 + ||W2j||^2)`` becomes ``beta ||Z||_*``.

Recovery: ``Z = sum_j s_j u_j v_j^T`` gives ``W1j = sqrt(s_j) reshape_{d x d}(u_j)^T``
(row-major reshape, then transpose, because rows are indexed ``(k, a)``) and
``W2j = sqrt(s_j) reshape_{d x c}(v_j)``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from dualattn.convex.heads import register_head
from dualattn.convex.heads.base import ConvexHead, Weights


def _to_pooled_basis(Z: Tensor, d: int, c: int) -> Tensor:
    """``Z (1, d^2, dc)`` with entries ``[(k,a),(l,e)]`` -> ``(d^2, dc)`` with ``[(k,l),(a,e)]``."""
    return Z.reshape(d, d, d, c).permute(0, 2, 1, 3).reshape(d * d, d * c)


def _from_pooled_basis(Zp: Tensor, d: int, c: int) -> Tensor:
    """Inverse of :func:`_to_pooled_basis`."""
    return Zp.reshape(d, d, d, c).permute(0, 2, 1, 3).reshape(1, d * d, d * c)


@register_head("linear")
class LinearAttentionHead(ConvexHead):
    """Linear self-attention: ``min_Z L(sum_{k,l} G_i[k,l] xbar_i^T Z^{(k,l)}, y) + beta ||Z||_*``."""

    def variable_shape(self) -> tuple[int, int, int]:
        self._require_setup()
        return (1, self.d * self.d, self.d * self.c)

    def features(self, X: Tensor) -> dict[str, Tensor]:
        """``xbar (n, d)`` and ``G (n, d*d)`` (row-major ``X^T X``); never the lifted ``d^3`` features."""
        X = X.to(device=self.device, dtype=self.dtype)
        xbar = X.mean(dim=1)
        G = torch.einsum("nsk,nsl->nkl", X, X).reshape(X.shape[0], -1)
        return {"xbar": xbar, "G": G}

    def apply(self, Z: Tensor, feats: dict[str, Tensor]) -> Tensor:
        """``fbar_i[e] = sum_{k,l,a} G_i[k,l] xbar_i[a] Z[(k,a),(l,e)]`` via one matmul + one einsum."""
        d, c = self.d, self.c
        xbar, G = feats["xbar"], feats["G"]
        H = (G @ _to_pooled_basis(Z, d, c)).reshape(-1, d, c)
        return torch.einsum("na,nae->ne", xbar, H)

    def adjoint(self, V: Tensor, feats: dict[str, Tensor]) -> Tensor:
        """``A^*(V)[(k,a),(l,e)] = sum_i G_i[k,l] xbar_i[a] V_i[e]``."""
        d, c = self.d, self.c
        xbar, G = feats["xbar"], feats["G"]
        W = (xbar[:, :, None] * V[:, None, :]).reshape(-1, d * c)
        return _from_pooled_basis(G.transpose(0, 1) @ W, d, c)

    # ------------------------------------------------ matrix-free (factored) protocol
    # With ``Z = A B^T``, ``A (1, d^2, r)`` rows ``(k, a)`` and ``B (1, dc, r)`` rows ``(l, e)``,
    # and ``G_i = X_i^T X_i`` applied as ``X_i^T (X_i .)`` (cost ``O(s d)``, not ``O(d^2)``).
    def factored_features(self, X: Tensor) -> dict[str, Tensor]:
        """``xbar (n, d)`` and ``X (n, s, d)`` (``G_i`` is never formed)."""
        X = X.to(device=self.device, dtype=self.dtype)
        return {"xbar": X.mean(dim=1), "X": X}

    def factored_bytes_per_sample(self, s: int, r: int) -> int:
        """``X_i`` plus a few ``(d, r)`` intermediates (``u``, ``G u``)."""
        return (s * self.d + 4 * self.d * r + self.d * self.c) * (torch.finfo(self.dtype).bits // 8)

    def factored_cost_ratio(self, s: int, r: int) -> float:
        """``r (d + 2s + c) / (d^2 c)``: matmul flops of :meth:`factored_apply` (``xbar^T W1`` for every
        column, ``G_i u`` as two ``(s, d)`` products, then ``W2``: ``2 r (d^2 + 2 s d + d c)`` per
        sample) over those of :meth:`apply` (``G_i`` times the pooled ``Z``: ``2 d^3 c``)."""
        return r * (self.d + 2 * s + self.c) / (self.d * self.d * self.c)

    @staticmethod
    def _gram(X: Tensor, T: Tensor) -> Tensor:
        """``G_i T_i = X_i^T (X_i T_i)`` for ``T (n, d, k)``."""
        return X.transpose(1, 2) @ (X @ T)

    def _w(self, A: Tensor, feats: dict[str, Tensor]) -> Tensor:
        """``w_i = G_i W1^T xbar_i`` for every column: ``(n, l, r)``.

        ``u[i, k, j] = sum_a xbar_i[a] A[(k, a), j]`` as ONE GEMM ``xbar (n, d) @ A' (d, d r)`` with
        ``A'[a, (k, j)]`` (a copy of ``A``, ``d^2 r`` floats): 10x faster than ``d`` batched GEMMs
        when ``r`` is small (Lanczos matvecs, ``r = 1``)."""
        d, r = self.d, A.shape[2]
        A_akj = A[0].reshape(d, d, r).transpose(0, 1).reshape(d, d * r)
        u = (feats["xbar"] @ A_akj).reshape(-1, d, r)  # (n, k, r)
        return self._gram(feats["X"], u)

    def factored_apply(self, A: Tensor, B: Tensor, feats: dict[str, Tensor]) -> Tensor:
        """``fbar_i = sum_j xbar_i^T W1j G_i W2j``: ``u = W1^T xbar`` (one GEMM), ``G u``, then ``B``."""
        d, c, r = self.d, self.c, A.shape[2]
        return torch.einsum("ilr,ler->ie", self._w(A, feats), B[0].reshape(d, c, r))

    def factored_vjp(self, A: Tensor, B: Tensor, feats: dict[str, Tensor]):
        """Explicit gradients: ``M^T A = sum_i lam_i ⊗ w_i`` (reuses the forward's ``w``) and
        ``M B = sum_i xbar_i ⊗ G_i (B_mat lam_i)`` (one GEMM)."""
        d, c, r = self.d, self.c, A.shape[2]
        w = self._w(A, feats)
        Bm = B[0].reshape(d, c, r)
        out = torch.einsum("ilr,ler->ie", w, Bm)

        def vjp(lam: Tensor) -> tuple[Tensor, Tensor]:
            gB = torch.einsum("ilr,ie->ler", w, lam).reshape(1, d * c, r)
            return self.adjoint_matmul(lam, B, feats), gB

        return out, vjp

    def adjoint_matmul(self, V: Tensor, W: Tensor, feats: dict[str, Tensor]) -> Tensor:
        """``(M W)[(k,a)] = sum_i xbar_i[a] (G_i W_mat V_i)[k]`` for ``M = A^*(V)``, ``W (1, dc, K)``."""
        d, c = self.d, self.c
        K = W.shape[2]
        t = torch.einsum("ie,leK->ilK", V, W[0].reshape(d, c, K))
        w = self._gram(feats["X"], t)  # (n, k, K)
        out = feats["xbar"].transpose(0, 1) @ w.reshape(-1, d * K)  # (a, k*K)
        return out.reshape(d, d, K).permute(1, 0, 2).reshape(1, d * d, K)

    def adjoint_rmatmul(self, V: Tensor, U: Tensor, feats: dict[str, Tensor]) -> Tensor:
        """``(M^T U)[(l,e)] = sum_i V_i[e] (G_i U_mat^T xbar_i)[l]`` for ``U (1, d^2, K)``."""
        d, c = self.d, self.c
        K = U.shape[2]
        return torch.einsum("ilK,ie->leK", self._w(U, feats), V).reshape(1, d * c, K)

    def unlift(self, a: Tensor, b: Tensor, gate: Tensor) -> Weights:
        d, c = self.d, self.c
        return {"W1": a.reshape(-1, d, d).transpose(1, 2).contiguous(), "W2": b.reshape(-1, d, c).contiguous()}

    def nonconvex_forward(self, weights: Weights, X: Tensor) -> Tensor:
        """Literal formula: ``mean_tokens( sum_j (X W1j X^T) (X W2j) )``."""
        W1, W2 = weights["W1"], weights["W2"]
        X = X.to(W1.dtype)
        scores = torch.einsum("nsa,hab,ntb->nhst", X, W1, X)
        vals = torch.einsum("ntd,hdc->nhtc", X, W2)
        return (scores @ vals).mean(dim=2).sum(dim=1)

    def init_nonconvex(self, m: int, *, generator: torch.Generator | None = None, scale: float = 0.1) -> Weights:
        self._require_setup()
        d, c = self.d, self.c
        W1 = torch.randn(m, d, d, generator=generator, dtype=self.dtype) * scale
        W2 = torch.randn(m, d, c, generator=generator, dtype=self.dtype) * scale
        return {"W1": W1.to(self.device), "W2": W2.to(self.device)}
