"""Interpreting an optimal convex head: heads used, token similarities, token clusters.

* **Spectrum / heads used.** Every singular pair of a block of ``Z*`` is one head
  (neuron) of the recovered nonconvex network, with weight decay
  ``1/2 (||W1j||^2 + ||W2j||^2) = sigma_j``.  :func:`spectrum` lists the ``sigma_j``
  (with their block), :func:`effective_rank` counts ``sigma_j > tol * max sigma``.
* **Token similarity** ``S_ij (s, s)`` of head ``j`` on sample ``i``
  (:func:`token_similarity`):

  - self-attention (``linear``): ``S = X W1j X^T``; ``gated``/``relu``:
    ``S = D_j(X) * (X W1j X^T)`` with the gate ``D_j = 1{X H_j X^T >= 0}``;
  - MLP-Mixer: the token-mixing matrix ``W1j`` (sample-independent); gated:
    ``W1j[t, u] * mbar_ij[t]`` with ``mbar`` the fraction of open channel gates
    at output token ``t``;
  - FNO: ``Re(h[t] conj(h[u]))`` with ``h = F^H(e_l Xhat[l] W1j)`` the token response
    of the head (frequency ``l``): tokens that respond in phase are similar;
  - token-wise MLP: ``a[t] a[u]`` with ``a`` the head's activation per token.

* **Token clusters** (:func:`token_clusters`): the sign of a head is not
  identifiable (``(W1, W2)`` and ``(-W1, -W2)`` give the same ``Z``), so the affinity
  is sign-invariant: ``A_i = sum_j sigma_j |S_ij + S_ij^T| / 2`` over the heads
  kept by ``rtol``, scaled to max 1, plus ``1e-6`` (keeps the graph connected);
  tokens are clustered per sample by ``sklearn.cluster.SpectralClustering``
  with ``affinity="precomputed"``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from dualattn.convex.heads.base import ConvexHead

__all__ = [
    "spectrum", "effective_rank", "head_weights", "token_similarity", "token_affinity",
    "cluster_affinity", "token_clusters", "plot_token_clusters", "plot_spectrum",
]


def _head_and_Z(fit) -> tuple[ConvexHead, Tensor | None]:
    """Accept a :class:`~dualattn.convex.ConvexFit` or a ``(head, Z)`` pair (``Z`` is None for
    factorised fits: their factors are used without forming ``Z``)."""
    if isinstance(fit, tuple) and len(fit) == 2:
        head, Z = fit
    elif getattr(fit, "is_factorised", False):
        return fit.head, None
    else:
        head, Z = getattr(fit, "head", None), getattr(fit, "Z", None)
    if not isinstance(head, ConvexHead) or not isinstance(Z, Tensor):
        raise TypeError(f"fit must be a ConvexFit or a (ConvexHead, Z) pair, got {type(fit).__name__}")
    return head, Z


def _factors(fit, rtol: float) -> tuple[Tensor, Tensor, Tensor]:
    """``head.factors`` of the solution: from the stored factors of a factorised fit, else from ``Z``."""
    head, Z = _head_and_Z(fit)
    if Z is None:
        return fit.head_factors(rtol=rtol)
    return head.factors(Z, rtol=rtol)


def _check_X(head: ConvexHead, X) -> Tensor:
    if isinstance(X, np.ndarray):
        X = torch.from_numpy(X)
    if not isinstance(X, Tensor) or not X.is_floating_point():
        raise TypeError("X must be a float torch.Tensor or numpy array of shape (n, s, d)")
    head.check_X(X)
    return X.to(device=head.device, dtype=head.dtype)


def spectrum(fit) -> tuple[Tensor, Tensor]:
    """All nonzero singular values ``sigma (m,)`` of the blocks of ``Z*`` (descending) and their block index."""
    a, b, gate = _factors(fit, 0.0)
    sigma = a.norm(dim=1) * b.norm(dim=1)
    order = torch.argsort(sigma, descending=True)
    return sigma[order], gate[order]


def effective_rank(fit, tol: float = 1e-3) -> int:
    """Number of heads actually used: singular values ``> tol * sigma_max`` over all blocks."""
    if not (0.0 <= float(tol) < 1.0):
        raise ValueError(f"tol must be in [0, 1), got {tol}")
    sigma, _ = spectrum(fit)
    if sigma.numel() == 0:
        return 0
    return int((sigma > tol * sigma[0]).sum())


def head_weights(fit, rtol: float = 1e-3) -> tuple[dict[str, Tensor], Tensor]:
    """Recovered nonconvex weights of the heads with ``sigma_j > rtol * sigma_max`` and their ``sigma_j``."""
    head, _ = _head_and_Z(fit)
    a, b, gate = _factors(fit, rtol)
    # unlift, not recover: the gated factorisation (ReLU heads are realised from it; their own
    # recover needs the training data and splits every head into two)
    return head.unlift(a, b, gate), a.norm(dim=1) * b.norm(dim=1)


def token_similarity(fit, X, *, rtol: float = 1e-3) -> tuple[Tensor, Tensor]:
    """Per-sample, per-head token similarity ``S (n, m, s, s)`` and head weights ``sigma (m,)``.

    See the module docstring for the definition used by each head type.
    """
    head, _ = _head_and_Z(fit)
    X = _check_X(head, X)
    w, sigma = head_weights(fit, rtol=rtol)
    name = head.name
    if name in ("linear", "gated", "relu"):
        S = torch.einsum("nsa,hab,ntb->nhst", X, w["W1"].to(X), X)
        if "H" in w:
            S = S * (torch.einsum("nsa,hab,ntb->nhst", X, w["H"].to(X), X) >= 0)
    elif name == "mixer-linear":
        S = w["W1"].to(X)[None].expand(X.shape[0], -1, -1, -1)
    elif name == "mixer-gated":
        G = w["G"].to(X)[w["gate_index"]]
        frac = (torch.einsum("jtu,nue->njte", G, X) >= 0).to(X.dtype).mean(dim=3)  # (n, m, s)
        S = w["W1"].to(X)[None] * frac[..., None]
    elif name == "fno":
        s = X.shape[1]
        W1 = torch.complex(w["W1re"], w["W1im"]).to(torch.complex128)
        Xhat = torch.fft.fft(X.to(torch.float64), dim=1, norm="ortho")
        coef = torch.einsum("njd,jd->nj", Xhat[:, w["freq"]], W1)  # (n, m)
        t = torch.arange(s, dtype=torch.float64)
        phase = torch.exp(2j * torch.pi * w["freq"].to(torch.float64)[:, None] * t[None] / s) / s**0.5  # (m, s)
        h = coef[..., None] * phase[None]  # (n, m, s)
        S = (h[..., :, None] * h[..., None, :].conj()).real.to(X.dtype)
    elif name in ("mlp-gated", "mlp-relu"):
        act = X @ w["W1"].to(X).T  # (n, s, m)
        if "h" in w:
            act = act * (X @ w["h"].to(X).T >= 0)
        else:
            act = torch.relu(act)
        act = act.transpose(1, 2)
        S = act[..., :, None] * act[..., None, :]
    else:
        raise ValueError(f"token_similarity is not defined for head {name!r}")
    return S, sigma.to(S.dtype)


def token_affinity(S: Tensor, sigma: Tensor | None = None) -> Tensor:
    """Sign-invariant affinity ``A_i = sum_j sigma_j |S_ij + S_ij^T| / 2``, scaled to max 1, plus 1e-6."""
    if not isinstance(S, Tensor) or S.ndim != 4 or S.shape[-1] != S.shape[-2]:
        raise ValueError(f"S must be a tensor of shape (n, m, s, s), got {getattr(S, 'shape', type(S))}")
    if sigma is None:
        sigma = torch.ones(S.shape[1], dtype=S.dtype, device=S.device)
    if sigma.shape != (S.shape[1],):
        raise ValueError(f"sigma must have shape (m={S.shape[1]},), got {tuple(sigma.shape)}")
    A = torch.einsum("nmst,m->nst", (0.5 * (S + S.transpose(-1, -2))).abs(), sigma.to(S))
    A = A / A.amax(dim=(1, 2), keepdim=True).clamp_min(torch.finfo(A.dtype).tiny)
    return A + 1e-6


def cluster_affinity(A: Tensor, n_clusters: int, *, seed: int = 0) -> np.ndarray:
    """Spectral clustering of one ``(s, s)`` nonnegative symmetric affinity into ``n_clusters`` labels."""
    from sklearn.cluster import SpectralClustering

    A = np.asarray(A.detach().cpu().double() if isinstance(A, Tensor) else A, dtype=np.float64)
    if A.ndim != 2 or A.shape[0] != A.shape[1] or (A < 0).any():
        raise ValueError(f"A must be a nonnegative square (s, s) matrix, got shape {A.shape}")
    if not (isinstance(n_clusters, int) and 1 <= n_clusters <= A.shape[0]):
        raise ValueError(f"n_clusters must be an int in [1, s={A.shape[0]}], got {n_clusters!r}")
    if n_clusters == 1:
        return np.zeros(A.shape[0], dtype=np.int64)
    sc = SpectralClustering(n_clusters=n_clusters, affinity="precomputed", random_state=seed,
                            assign_labels="cluster_qr")
    return sc.fit_predict(0.5 * (A + A.T)).astype(np.int64)


def token_clusters(fit, X, n_clusters: int, *, rtol: float = 1e-3, seed: int = 0,
                   progress: bool = False) -> np.ndarray:
    """``(n, s)`` integer cluster labels of the tokens of every sample (see module docstring)."""
    from tqdm.auto import tqdm

    S, sigma = token_similarity(fit, X, rtol=rtol)
    if S.shape[1] == 0:
        raise ValueError("the fitted head uses no heads (Z* = 0): nothing to cluster; decrease beta")
    A = token_affinity(S, sigma)
    labels = [cluster_affinity(A[i], n_clusters, seed=seed) for i in tqdm(range(A.shape[0]), disable=not progress,
                                                                          desc="token clusters")]
    return np.stack(labels)


# ----------------------------------------------------------------------- plots
def _save(fig, path):
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120, bbox_inches="tight")
    return fig


def plot_token_clusters(labels, grid: tuple[int, int] | None = None, images=None, path=None, *,
                        sequences=None, titles=None, max_samples: int = 8, alpha: float = 0.5):
    """Draw token cluster labels ``(n, s)``: over an ``h x w`` patch grid (optionally on ``images``) or along a sequence.

    ``images``: ``(n, H, W)``, ``(n, H, W, 3)`` or ``(n, 3, H, W)`` (the label map is stretched over each
    image); ``sequences``: ``(n, s)`` or ``(n, s, C)`` values drawn as lines coloured by cluster
    (sequence mode only).  Saves to ``path`` if given; returns the figure.
    """
    import matplotlib

    if path is not None:
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    labels = np.asarray(labels.cpu() if isinstance(labels, Tensor) else labels)
    if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be an integer array of shape (n, s), got {labels.dtype} {labels.shape}")
    n, s = labels.shape
    if grid is not None:
        h, w = grid
        if h * w != s:
            raise ValueError(f"grid {grid} has {h * w} cells but labels have s={s} tokens")
    k = min(n, max_samples)
    cmap = plt.get_cmap("tab20", max(int(labels.max()) + 1, 2))
    if grid is not None:
        fig, axes = plt.subplots(1, k, figsize=(2.6 * k, 2.8), squeeze=False)
        for i, ax in enumerate(axes[0]):
            lab = labels[i].reshape(h, w)
            if images is not None:
                img = np.asarray(images[i].cpu() if isinstance(images[i], Tensor) else images[i], dtype=np.float64)
                if img.ndim == 3 and img.shape[0] in (1, 3) and img.shape[-1] not in (1, 3):
                    img = np.moveaxis(img, 0, -1)
                img = (img - img.min()) / max(img.max() - img.min(), 1e-12)
                H, W = img.shape[:2]
                ax.imshow(img.squeeze(), cmap="gray" if img.ndim == 2 or img.shape[-1] == 1 else None)
                ax.imshow(lab, cmap=cmap, alpha=alpha, extent=(0, W, H, 0), interpolation="nearest",
                          vmin=0, vmax=cmap.N - 1)
            else:
                ax.imshow(lab, cmap=cmap, interpolation="nearest", vmin=0, vmax=cmap.N - 1)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(titles[i] if titles is not None else f"sample {i}", fontsize=9)
    else:
        fig, axes = plt.subplots(k, 1, figsize=(8, 1.3 * k + 0.4), squeeze=False)
        for i, ax in enumerate(axes[:, 0]):
            if sequences is not None:
                seq = np.asarray(sequences[i].cpu() if isinstance(sequences[i], Tensor) else sequences[i])
                seq = seq.reshape(s, -1)
                for ch in range(seq.shape[1]):
                    ax.plot(np.arange(s), seq[:, ch], color="0.6", lw=0.8)
                ax.scatter(np.arange(s), seq[:, 0], c=labels[i], cmap=cmap, s=14, vmin=0, vmax=cmap.N - 1, zorder=3)
            else:
                ax.imshow(labels[i][None], cmap=cmap, aspect="auto", interpolation="nearest", vmin=0, vmax=cmap.N - 1)
                ax.set_yticks([])
            ax.set_ylabel(titles[i] if titles is not None else f"#{i}", fontsize=8)
        axes[-1, 0].set_xlabel("token")
    fig.suptitle("token clusters")
    fig.tight_layout()
    return _save(fig, path)


def plot_spectrum(fit, path=None, *, tol: float = 1e-3):
    """Singular values of ``Z*`` (all blocks, log scale, threshold ``tol * sigma_max``) and heads per block."""
    import matplotlib

    if path is not None:
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    head, _ = _head_and_Z(fit)
    sigma, gate = spectrum(fit)
    rank = effective_rank(fit, tol)
    sig = sigma.detach().cpu().double().numpy()
    P = int(head.variable_shape()[0])
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    ax = axes[0]
    if sig.size:
        ax.semilogy(np.arange(1, sig.size + 1), np.maximum(sig, 1e-300), marker="o", ms=3)
        ax.axhline(tol * sig[0], color="r", ls="--", lw=1, label=f"{tol:g} x max")
        ax.legend(fontsize=8)
    ax.set_xlabel("index")
    ax.set_ylabel("singular value")
    ax.set_title(f"{head.name}: spectrum of Z* (heads used: {rank})")
    ax.grid(True, which="both", alpha=0.3)
    ax = axes[1]
    keep = sigma > (tol * sigma[0] if sigma.numel() else 0)
    counts = torch.bincount(gate[keep].cpu(), minlength=P).numpy() if sigma.numel() else np.zeros(P, dtype=int)
    ax.bar(np.arange(P), counts)
    ax.yaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel("block (gate / frequency)")
    ax.set_ylabel("heads used")
    ax.set_title("effective rank per block")
    fig.tight_layout()
    return _save(fig, path)
