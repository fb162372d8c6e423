"""Convex FNO head: token mixing by the DFT, per-frequency two-layer channel maps.

Nonconvex head (unitary DFT ``F`` along tokens, ``Xhat = F X``)::

    f(X) = F^H [ Xhat[l, :] W1_l W2_l ]_{l < s},     yhat = r^T f(X),

``W1_l (d, m_l)``, ``W2_l (m_l, c)`` complex and Hermitian-symmetric
(``W_{s-l} = conj(W_l)``, so ``f`` is real), weight decay
``beta/2 sum_{l<s} (||W1_l||^2 + ||W2_l||^2)`` and a FIXED token readout ``r``.
The convex program is block-diagonal in frequency (derivation in
``docs/convex-mixer-fno.md``)::

    min_{Z_l in C^{d x c}}  L( Re sum_l w_l conj(rhat_l) Xhat_i[l] Z_l , y ) + beta sum_l w_l ||Z_l||_*

over the kept ``rfft`` frequencies ``l`` (``w_l = 1`` for ``l = 0`` and ``l = s/2``,
2 otherwise; ``Z_0``, ``Z_{s/2}`` real).  Average pooling (``r = 1/s``) only sees
``l = 0``, so the default readout is the token-0 output (``rhat_l = 1/sqrt(s)``).

Storage in the real block-stack protocol: block ``l`` holds
``V_l = (w_l / 2) E(Z_l)`` with the real embedding ``E(A + iB) = [[A, -B], [B, A]]``
(``||E(Z)||_* = 2 ||Z||_*``), so ``sum_l ||V_l||_*`` is exactly the weighted block
nuclear norm and the generic prox/dual norm/CVXPY code applies unchanged.
``A_X`` reads ``V`` through the orthogonal projection onto embeddings, so any
``V`` maps to a valid model and the optimum is attained on embeddings.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from dualattn.convex.heads import register_head
from dualattn.convex.heads.base import Weights
from dualattn.convex.heads.mixer import TokenMixingHead

READOUTS = ("first", "last", "mean")


@register_head("fno")
class FNOHead(TokenMixingHead):
    """Linear FNO head with the block (per-frequency) nuclear norm; see the module docstring."""

    trainable = ("W1re", "W1im", "W2re", "W2im")

    def __init__(self, *, modes: int | None = None, readout: str | Tensor = "first", seed: int = 0) -> None:
        super().__init__(seed=seed)
        if modes is not None and not (isinstance(modes, int) and modes > 0):
            raise ValueError(f"modes must be a positive int or None, got {modes!r}")
        if isinstance(readout, str):
            if readout not in READOUTS:
                raise ValueError(f"readout must be one of {READOUTS} or a (s,) tensor, got {readout!r}")
        elif not (isinstance(readout, Tensor) and readout.ndim == 1 and readout.is_floating_point()):
            raise TypeError("readout must be a name or a 1-D float tensor of token weights (s,)")
        self.modes = modes
        self.readout = readout

    def get_config(self) -> dict:
        ro = self.readout if isinstance(self.readout, str) else "custom"
        return {"modes": self.modes, "readout": ro, "seed": self.seed}

    # ------------------------------------------------------------------ setup
    def _setup(self, generator: torch.Generator) -> None:
        if self.s is None:  # deferred to bind_tokens
            return
        s = int(self.s)
        n_rfft = s // 2 + 1
        self.L = n_rfft if self.modes is None else min(self.modes, n_rfft)
        if isinstance(self.readout, Tensor):
            if self.readout.shape != (s,):
                raise ValueError(f"readout weights must have shape (s={s},), got {tuple(self.readout.shape)}")
            r = self.readout.detach().to(torch.float64).cpu()
        else:
            r = torch.zeros(s, dtype=torch.float64)
            if self.readout == "first":
                r[0] = 1.0
            elif self.readout == "last":
                r[-1] = 1.0
            else:
                r[:] = 1.0 / s
        self.r = r
        self.rhat = torch.fft.fft(r, norm="ortho")[: self.L]
        l = torch.arange(self.L)
        real = (l == 0) | ((s % 2 == 0) & (l == s // 2))
        self.weights_l = torch.where(real, 1.0, 2.0).to(torch.float64)
        self.complex_mask = (~real).to(torch.float64)

    def _move(self) -> None:
        if self.s is None:
            return
        self.rhat = self.rhat.to(device=self.device)
        self.weights_l = self.weights_l.to(device=self.device, dtype=self.dtype)
        self.complex_mask = self.complex_mask.to(device=self.device, dtype=self.dtype)

    def variable_shape(self) -> tuple[int, int, int]:
        self._require_s()
        return (self.L, 2 * self.d, 2 * self.c)

    # ------------------------------------------------------- complex <-> real
    def decode(self, V: Tensor) -> Tensor:
        """Complex blocks ``Z_l (L, d, c)`` from the stored stack ``V (L, 2d, 2c)`` (projection)."""
        d, c = self.d, self.c
        A = 0.5 * (V[:, :d, :c] + V[:, d:, c:])
        B = 0.5 * (V[:, d:, :c] - V[:, :d, c:]) * self.complex_mask.to(V.dtype)[:, None, None]
        scale = (2.0 / self.weights_l.to(V.dtype))[:, None, None]
        return torch.complex(A * scale, B * scale)

    def encode(self, Z: Tensor) -> Tensor:
        """Stored stack ``V_l = (w_l/2) E(Z_l)`` from complex blocks ``Z (L, d, c)``."""
        A, B = Z.real, Z.imag * self.complex_mask.to(Z.real.dtype)[:, None, None]
        top = torch.cat([A, -B], dim=2)
        bot = torch.cat([B, A], dim=2)
        return torch.cat([top, bot], dim=1) * (self.weights_l.to(A.dtype) / 2.0)[:, None, None]

    # ----------------------------------------------------- the linear operator
    def features(self, X: Tensor) -> dict[str, Tensor]:
        """``psi_il = 2 conj(rhat_l) Xhat_i[l]`` split into real/imag parts, each ``(n, L, d)``."""
        self.check_X(X)
        X = X.to(device=self.device, dtype=self.dtype)
        Xhat = torch.fft.rfft(X, dim=1, norm="ortho")[:, : self.L]
        psi = 2.0 * self.rhat.conj().to(Xhat.dtype)[None, :, None] * Xhat
        return {"psi_re": psi.real.contiguous(), "psi_im": psi.imag.contiguous()}

    def apply(self, Z: Tensor, feats: dict[str, Tensor]) -> Tensor:
        """``yhat_i = sum_l Re(psi_il) A_l - Im(psi_il) B_l`` with ``A + iB`` the projection of ``V_l``."""
        d, c = self.d, self.c
        A = 0.5 * (Z[:, :d, :c] + Z[:, d:, c:])
        B = 0.5 * (Z[:, d:, :c] - Z[:, :d, c:]) * self.complex_mask.to(Z.dtype)[:, None, None]
        return torch.einsum("nld,ldc->nc", feats["psi_re"], A) - torch.einsum("nld,ldc->nc", feats["psi_im"], B)

    def adjoint(self, V: Tensor, feats: dict[str, Tensor]) -> Tensor:
        """Transpose of :meth:`apply`: ``GA = Re(psi)^T V``, ``GB = -Im(psi)^T V`` spread onto the embedding."""
        GA = 0.5 * torch.einsum("nld,nc->ldc", feats["psi_re"], V)
        GB = -0.5 * torch.einsum("nld,nc->ldc", feats["psi_im"], V) * self.complex_mask.to(V.dtype)[:, None, None]
        top = torch.cat([GA, -GB], dim=2)
        bot = torch.cat([GB, GA], dim=2)
        return torch.cat([top, bot], dim=1)

    # ----------------------------------------------------------------- recovery
    def factors(self, Z: Tensor, *, rtol: float = 1e-8) -> tuple[Tensor, Tensor, Tensor]:
        """Complex balanced factors per frequency, ``Z_l = sum_j alpha_j beta_j^T``, as real pairs.

        Returns ``a = [Re alpha; Im alpha] (m, 2d)``, ``b = [Re beta; Im beta] (m, 2c)`` and the
        frequency index of each factor.
        """
        Zc = self.decode(Z)
        U, S, Vh = torch.linalg.svd(Zc, full_matrices=False)
        smax = S.max() if S.numel() else torch.zeros((), dtype=S.dtype)
        keep = S > rtol * smax.clamp_min(torch.finfo(S.dtype).tiny)
        g_idx, j_idx = torch.nonzero(keep, as_tuple=True)
        root = S[g_idx, j_idx].sqrt()
        alpha = U[g_idx, :, j_idx] * root[:, None]
        beta = Vh[g_idx, j_idx, :] * root[:, None]
        a = torch.cat([alpha.real, alpha.imag], dim=1)
        b = torch.cat([beta.real, beta.imag], dim=1)
        return a, b, g_idx

    def factors_from_lowrank(self, A: Tensor, B: Tensor, *, rtol: float = 1e-8) -> tuple[Tensor, Tensor, Tensor]:
        """Complex factors of the stored blocks ``V_l = A_l B_l^T`` (small: ``L x 2d x 2c``)."""
        return self.factors(A @ B.transpose(1, 2), rtol=rtol)

    def unlift(self, a: Tensor, b: Tensor, gate: Tensor) -> Weights:
        """Neuron ``j`` at frequency ``freq_j``: ``W1_j = alpha_j (d,)``, ``W2_j = beta_j (c,)`` (complex, split)."""
        d, c = self.d, self.c
        return {
            "W1re": a[:, :d].contiguous(),
            "W1im": a[:, d:].contiguous(),
            "W2re": b[:, :c].contiguous(),
            "W2im": b[:, c:].contiguous(),
            "freq": gate.to(torch.long),
        }

    def nonconvex_penalty(self, weights: Weights) -> Tensor:
        """``1/2 sum_{l<s} (||W1_l||^2 + ||W2_l||^2)``: each rfft neuron counts ``w_l`` times (mirror)."""
        w = self.weights_l.to(weights["W1re"].dtype)[weights["freq"]]
        sq = sum((weights[k] ** 2).sum(dim=1) for k in self.trainable)
        return 0.5 * (w * sq).sum()

    def nonconvex_forward(self, weights: Weights, X: Tensor) -> Tensor:
        """Literal FNO: ``rfft`` over tokens, per-neuron ``Xhat[l_j] W1_j W2_j``, ``irfft``, readout ``r``."""
        self.check_X(X)
        W1 = torch.complex(weights["W1re"], weights["W1im"])
        W2 = torch.complex(weights["W2re"], weights["W2im"])
        freq = weights["freq"].to(W1.device)
        X = X.to(device=W1.device, dtype=weights["W1re"].dtype)
        s = self._require_s()
        Xhat = torch.fft.rfft(X, dim=1, norm="ortho")
        h = torch.einsum("njd,jd->nj", Xhat[:, freq], W1)
        Hhat = torch.zeros(X.shape[0], s // 2 + 1, self.c, dtype=Xhat.dtype, device=X.device)
        Hhat.index_add_(1, freq, h[:, :, None] * W2[None])
        f = torch.fft.irfft(Hhat, n=s, dim=1, norm="ortho")
        return torch.einsum("ntc,t->nc", f, self.r.to(device=f.device, dtype=f.dtype))

    def init_nonconvex(self, m: int, *, generator: torch.Generator | None = None, scale: float = 0.1) -> Weights:
        self._require_s()
        d, c = self.d, self.c
        freq = torch.arange(m) % self.L
        parts = {k: torch.randn(m, n, generator=generator, dtype=self.dtype) * scale
                 for k, n in (("W1re", d), ("W1im", d), ("W2re", c), ("W2im", c))}
        real = self.complex_mask.cpu()[freq] == 0
        parts["W1im"][real] = 0.0
        parts["W2im"][real] = 0.0
        out = {k: v.to(self.device) for k, v in parts.items()}
        out["freq"] = freq.to(self.device)
        return out
