"""Experiment configuration: pydantic models loaded from YAML plus dotted overrides.

Every model uses ``extra="forbid"`` so a typo such as ``optim.lr_rate`` is an
error naming the field, raised before any data is loaded or any training starts.
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

BaseModelT = TypeVar("BaseModelT", bound=BaseModel)


def __getattr__(name: str):
    # ``VARIANTS``: the registered attention variants (a live view of dualattn.functional.registry),
    # resolved lazily so that importing this module does not import torch.
    if name == "VARIANTS":
        from dualattn.functional.registry import VARIANT_NAMES

        return VARIANT_NAMES
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Strict):
    """Which dataset to load and how to batch it (``dualattn.data.load_dataset``)."""

    name: str = Field(min_length=1)
    root: str | None = None
    cache_dir: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)
    seed: int = Field(default=0, ge=0)  # data split/generation seed, fixed across model seeds
    batch_size: int = Field(default=16, ge=1)
    eval_batch_size: int | None = Field(default=None, ge=1)
    num_workers: int = Field(default=0, ge=0)


class ModelConfig(_Strict):
    """Encoder classifier (``kind="sequence"``) or small ViT (``kind="vit"``)."""

    kind: Literal["sequence", "vit"] = "sequence"
    variant: str = "softmax"
    variant_options: dict[str, Any] = Field(default_factory=dict)
    dim: int = Field(default=64, ge=1)
    depth: int = Field(default=2, ge=1)
    num_heads: int = Field(default=4, ge=1)
    mlp_ratio: float = Field(default=4.0, gt=0)
    mlp_hidden: int | None = Field(default=None, ge=1)
    dropout: float = Field(default=0.1, ge=0.0, lt=1.0)
    embed_dim: int | None = Field(default=None, ge=1)
    max_len: int | None = Field(default=None, ge=1)
    # ViT only
    image_size: int | None = Field(default=None, ge=1)
    patch_size: int = Field(default=2, ge=1)
    channels: int = Field(default=1, ge=1)

    @field_validator("variant")
    @classmethod
    def _known_variant(cls, v: str) -> str:
        from dualattn.functional.registry import get_variant

        get_variant(v)  # ValueError listing the registered names
        return v

    @model_validator(mode="after")
    def _shapes(self) -> "ModelConfig":
        if self.dim % self.num_heads:
            raise ValueError(f"model.dim={self.dim} must be divisible by model.num_heads={self.num_heads}")
        # the variant's own option validators (the registry's), e.g. bn's eps > 0, sh's factors per head
        from dualattn.functional.registry import get_variant

        try:
            get_variant(self.variant).validate_options(
                self.variant_options, num_heads=self.num_heads, name=f"model.variant_options (variant {self.variant!r})"
            )
        except TypeError as exc:  # pydantic turns only ValueError/AssertionError into validation errors
            raise ValueError(str(exc)) from None
        if self.kind == "vit" and self.image_size is not None and self.image_size % self.patch_size:
            raise ValueError(
                f"model.image_size={self.image_size} must be divisible by model.patch_size={self.patch_size}"
            )
        return self

    @property
    def effective_mlp_ratio(self) -> float:
        """``mlp_hidden / dim`` when ``mlp_hidden`` is set, else ``mlp_ratio``."""
        return self.mlp_hidden / self.dim if self.mlp_hidden else self.mlp_ratio


class OptimConfig(_Strict):
    """Optimizer and learning-rate schedule."""

    name: Literal["radam", "adam", "adamw", "sgd"] = "radam"
    lr: float = Field(default=1e-3, gt=0)
    weight_decay: float = Field(default=0.0, ge=0)
    scheduler: Literal["none", "cosine"] = "none"
    warmup_epochs: int = Field(default=0, ge=0)
    grad_clip: float | None = Field(default=None, gt=0)
    label_smoothing: float = Field(default=0.0, ge=0, lt=1)
    # Primal-Attention (variant "primal"): loss = CE + ksvd_weight * KSVD regulariser.
    ksvd_weight: float = Field(default=0.1, ge=0)


class TrainerConfig(_Strict):
    """Lightning Trainer settings (early stopping, devices, precision, DDP)."""

    max_epochs: int = Field(default=100, ge=1)
    min_epochs: int = Field(default=1, ge=0)
    patience: int | None = Field(default=10, ge=1)
    # Early stopping: a change of the monitored value smaller than min_delta is no improvement.
    min_delta: float = Field(default=0.0, ge=0)
    monitor: Literal["val_acc", "val_loss"] = "val_acc"
    accelerator: Literal["auto", "cpu", "gpu", "cuda"] = "auto"
    devices: int | Literal["auto"] = 1
    num_nodes: int = Field(default=1, ge=1)
    strategy: Literal["auto", "ddp", "ddp_spawn", "ddp_notebook"] = "auto"
    ddp_backend: Literal["auto", "gloo", "nccl"] = "auto"
    precision: Literal["32", "16-mixed", "bf16-mixed"] = "32"
    deterministic: bool = True
    num_threads: int | None = Field(default=None, ge=1)  # torch CPU threads (None = torch default)
    progress: Literal["auto", "rich", "tqdm", "none"] = "auto"
    limit_train_batches: float | int | None = None
    eval_test: bool = True
    redundancy_samples: int = Field(default=64, ge=1)
    # Testing hook: interrupt the run inside epoch N (after N checkpointed epochs).
    crash_after_epochs: int | None = Field(default=None, ge=1)
    crash_mode: Literal["raise", "sigint", "sigkill"] = "raise"

    @model_validator(mode="after")
    def _epochs(self) -> "TrainerConfig":
        if self.min_epochs > self.max_epochs:
            raise ValueError(f"trainer.min_epochs={self.min_epochs} > trainer.max_epochs={self.max_epochs}")
        return self


class RunConfig(_Strict):
    """One training run: data + model + optimizer + trainer + seed."""

    name: str = "run"
    seed: int = Field(default=0, ge=0)
    data: DataConfig
    model: ModelConfig = Field(default_factory=ModelConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    trainer: TrainerConfig = Field(default_factory=TrainerConfig)


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the offending field."""


def _format_validation_error(err: ValidationError, source: str) -> str:
    lines = [f"invalid config ({source}):"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "<root>"
        lines.append(f"  {loc}: {e['msg']}")
    return "\n".join(lines)


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``"a.b.c=value"`` into ``(["a","b","c"], yaml.safe_load(value))``."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.sub=value")
    key, raw = text.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"override {text!r} has an empty key component")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({exc})") from exc
    return parts, value


def apply_overrides(raw: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Return a copy of the raw config dict with each ``key.sub=value`` override set."""
    import copy

    out = copy.deepcopy(raw)
    for text in overrides:
        parts, value = parse_override(text)
        node = out
        for p in parts[:-1]:
            child = node.get(p)
            if child is None:
                child = node[p] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override {text!r}: {p!r} is not a section")
            node = child
        node[parts[-1]] = value
    return out


def build_config(raw: dict[str, Any], source: str = "<dict>") -> RunConfig:
    """Validate a raw dict into a :class:`RunConfig` or raise :class:`ConfigError`."""
    if not isinstance(raw, dict):
        raise ConfigError(f"config {source} must be a mapping, got {type(raw).__name__}")
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, source)) from None


def load_yaml_model(path: str | Path, model: type[BaseModelT]) -> BaseModelT:
    """Read a YAML file into the pydantic ``model`` (``FileNotFoundError`` naming a missing file)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config {path} not found")
    return model.model_validate(yaml.safe_load(path.read_text()))


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Load a YAML file, apply dotted overrides and validate."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config {path} is not valid YAML: {exc}") from exc
    return build_config(apply_overrides(raw, overrides), str(path))


def config_differences(saved: dict[str, Any], now: dict[str, Any], ignore: Collection[str] = ()) -> list[str]:
    """``["trainer.min_delta: 0.0 -> 0.001", ...]``: fields of the dumped config ``now`` that ``saved`` differs in.

    Compares top-level fields and each section's fields (``section.key``; nested
    values such as ``data.options`` as a whole); names in ``ignore`` are skipped.
    """
    diffs = []
    for section, val in now.items():
        if isinstance(val, dict):
            old = saved.get(section) or {}
            for k, v in val.items():
                if f"{section}.{k}" not in ignore and old.get(k) != v:
                    diffs.append(f"{section}.{k}: {old.get(k)!r} -> {v!r}")
        elif section not in ignore and saved.get(section) != val:
            diffs.append(f"{section}: {saved.get(section)!r} -> {val!r}")
    return diffs


def dump_config(cfg: RunConfig, path: str | Path) -> None:
    """Write the fully resolved config (defaults included) as YAML."""
    Path(path).write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
