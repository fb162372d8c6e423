"""ListOps generator (Nangia & Bowman 2018) following the Long Range Arena recipe.

A sample is a nested prefix expression such as ``[MAX 2 9 [MIN 4 7 ] 0 ]``;
the label is its value in 0..9. Operators: ``[MAX``, ``[MIN``, ``[MED``
(``int(median)``, i.e. floor for an even number of arguments, as in LRA) and
``[SM`` (sum modulo 10); ``]`` closes an operator.

Tree recipe (LRA ``listops.py``): at depth ``d < max_depth`` a node is an
operator with probability ``0.25`` (else a digit); at ``max_depth`` it is
always a digit; an operator takes ``randint(2, max_args)`` arguments. Trees are
sampled until ``min_len <= length <= max_len`` (length = number of input
tokens; without parentheses this equals LRA's count) and duplicates are dropped,
so train/val/test never share a sequence.

Vocabulary (fixed, PAD = 0): digits ``0..9`` -> 1..10, ``[MIN [MAX [MED [SM``
-> 11..14, ``]`` -> 15, ``(`` ``)`` -> 16, 17 (only with ``keep_parens=True``).

Generation is deterministic for ``(seed, parameters)``; it runs in chunks that
are cached on disk, so an interrupted generation resumes where it stopped, and
the finished data set is cached as one ``.npz`` keyed by a parameter hash.
"""

from __future__ import annotations

import csv
import hashlib
import os
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from .base import (
    SequenceData,
    build_from_chunks,
    file_stat_key,
    load_npz,
    params_hash,
    register_dataset,
    reject_options,
    resolve_cache_dir,
    save_npz_atomic,
)

PAD = 0
DIGITS = [str(d) for d in range(10)]
OPERATORS = ["[MIN", "[MAX", "[MED", "[SM"]
END, LPAREN, RPAREN = "]", "(", ")"
VOCAB: list[str] = ["<pad>"] + DIGITS + OPERATORS + [END, LPAREN, RPAREN]
TOKEN_ID: dict[str, int] = {tok: i for i, tok in enumerate(VOCAB)}
VOCAB_SIZE = len(VOCAB)
CLASSES = DIGITS
OP_PROB = 0.25  # LRA VALUE_P: P(operator) at depth < max_depth
_DIGIT0 = TOKEN_ID["0"]
_OP0 = TOKEN_ID["[MIN"]
_CACHE_VERSION = 1
_LRA_CACHE_VERSION = 1
LISTOPS_FILES = {"train": "basic_train.tsv", "val": "basic_val.tsv", "test": "basic_test.tsv"}


@dataclass(frozen=True)
class ListOpsConfig:
    """Generator parameters; defaults are LRA's (96k/2k/2k, lengths 500..2000)."""

    n_train: int = 96_000
    n_val: int = 2_000
    n_test: int = 2_000
    min_len: int = 500
    max_len: int = 2_000
    max_depth: int = 10
    max_args: int = 10
    keep_parens: bool = False
    chunk_size: int = 2_000

    def validate(self) -> "ListOpsConfig":
        for f in ("n_train", "n_val", "n_test", "min_len", "max_len", "max_depth", "max_args", "chunk_size"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, int):
                raise TypeError(f"{f}: expected an int, got {v!r}")
        for f in ("n_train", "n_val", "n_test"):
            if getattr(self, f) < 0:
                raise ValueError(f"{f}: expected >= 0, got {getattr(self, f)}")
        if self.n_train + self.n_val + self.n_test == 0:
            raise ValueError("n_train + n_val + n_test: expected at least one sample")
        if self.max_args < 2:
            raise ValueError(f"max_args: expected >= 2, got {self.max_args}")
        if self.max_depth < 2:
            raise ValueError(f"max_depth: expected >= 2 (depth 1 is a single digit), got {self.max_depth}")
        if self.min_len < 1 or self.max_len < self.min_len:
            raise ValueError(f"min_len/max_len: expected 1 <= min_len <= max_len, got {self.min_len}, {self.max_len}")
        shortest = 3 if not self.keep_parens else 9  # "[OP a b ]" (+ parens)
        if self.max_len < shortest:
            raise ValueError(f"max_len: no expression fits in {self.max_len} tokens (need >= {shortest})")
        if self.chunk_size < 1:
            raise ValueError(f"chunk_size: expected >= 1, got {self.chunk_size}")
        return self


#: Named presets. ``listops-small`` is short enough for a CPU demo.
PRESETS: dict[str, dict[str, Any]] = {
    "listops": {},
    # shallow (depth <= 3) expressions of 20..64 tokens: a 2-layer d=64 transformer reaches
    # ~40% val accuracy (majority class ~17%) after 6 epochs on 2000 samples, < 1 min CPU
    "listops-small": dict(
        n_train=5_000, n_val=500, n_test=1_000, min_len=20, max_len=64, max_depth=3, max_args=8, chunk_size=1_000
    ),
}


class _TooLong(Exception):
    pass


def evaluate(op: str, args: list[int]) -> int:
    """Value of ``[op args... ]``: MAX, MIN, int(median), sum mod 10."""
    if op == "[MAX":
        return max(args)
    if op == "[MIN":
        return min(args)
    if op == "[MED":
        return int(np.median(args))
    if op == "[SM":
        return sum(args) % 10
    raise ValueError(f"op: unknown ListOps operator {op!r}")


def sample_tree(rnd: random.Random, cfg: ListOpsConfig) -> tuple[list[int], int] | None:
    """One expression as (token ids, value), or None if it exceeded ``max_len`` (early stop)."""
    toks: list[int] = []
    limit, parens = cfg.max_len, cfg.keep_parens
    lp, rp, end = TOKEN_ID[LPAREN], TOKEN_ID[RPAREN], TOKEN_ID[END]

    def node(depth: int) -> int:
        if depth < cfg.max_depth and rnd.random() < OP_PROB:
            k = rnd.randint(2, cfg.max_args)
            op = rnd.randrange(len(OPERATORS))
            if parens:
                toks.extend([lp] * (k + 1))
            toks.append(_OP0 + op)
            vals = []
            for _ in range(k):
                vals.append(node(depth + 1))
                if parens:
                    toks.append(rp)
            toks.append(end)
            if parens:
                toks.append(rp)
            if len(toks) > limit:
                raise _TooLong
            return evaluate(OPERATORS[op], vals)
        v = rnd.randrange(10)
        toks.append(_DIGIT0 + v)
        if len(toks) > limit:
            raise _TooLong
        return v

    try:
        value = node(1)
    except _TooLong:
        return None
    return toks, value


def generate_chunk(cfg: ListOpsConfig, seed: int, chunk: int, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` accepted samples from the stream seeded by ``(seed, chunk)``: tokens (n, max_len) uint8, lengths, labels."""
    rnd = random.Random(f"listops-{seed}-{chunk}")  # str seeds are hashed with sha512: stable across runs
    tokens = np.zeros((n, cfg.max_len), dtype=np.uint8)
    lengths = np.zeros(n, dtype=np.int64)
    labels = np.zeros(n, dtype=np.int64)
    i = 0
    while i < n:
        out = sample_tree(rnd, cfg)
        if out is None or len(out[0]) < cfg.min_len:
            continue
        toks, value = out
        tokens[i, : len(toks)] = toks
        lengths[i], labels[i] = len(toks), value
        i += 1
    return tokens, lengths, labels


def decode(ids: np.ndarray | list[int]) -> str:
    """Token ids -> space-separated expression (padding dropped)."""
    return " ".join(VOCAB[int(i)] for i in ids if int(i) != PAD)


def encode(text: str, keep_parens: bool = False) -> list[int]:
    """Whitespace-tokenise an expression (LRA TSV ``Source``) into ids; parentheses dropped unless kept."""
    ids = []
    for tok in text.split():
        if tok in (LPAREN, RPAREN) and not keep_parens:
            continue
        if tok not in TOKEN_ID or tok == "<pad>":
            raise ValueError(f"text: unknown ListOps token {tok!r}; expected one of {VOCAB[1:]}")
        ids.append(TOKEN_ID[tok])
    return ids


def evaluate_ids(ids: list[int] | np.ndarray) -> int:
    """Value of a tokenised expression (parentheses ignored); ValueError if malformed."""
    stack: list[list] = []
    result = None
    for i in ids:
        tok = VOCAB[int(i)]
        if tok in (LPAREN, RPAREN, "<pad>"):
            continue
        if tok in OPERATORS:
            stack.append([tok])
        elif tok == END:
            if not stack or len(stack[-1]) < 2:
                raise ValueError("ids: ']' without an open operator with arguments")
            op, *args = stack.pop()
            v = evaluate(op, args)
            if stack:
                stack[-1].append(v)
            else:
                result = v
        else:
            v = int(tok)
            if stack:
                stack[-1].append(v)
            else:
                result = v
    if stack or result is None:
        raise ValueError("ids: unbalanced ListOps expression")
    return result


def generate_listops(
    cfg: ListOpsConfig, seed: int = 0, cache_dir: str | os.PathLike | None = None, *, progress: bool = True
) -> dict[str, np.ndarray]:
    """All splits of a ListOps data set, cached: ``tokens, lengths, labels`` and split sizes.

    Samples come in chunks of ``chunk_size`` (each cached, so generation resumes);
    duplicates are dropped in order; the first ``n_train`` unique samples are
    train, the next ``n_val`` val, then ``n_test`` test.
    """
    cfg.validate()
    key = params_hash({"v": _CACHE_VERSION, "seed": int(seed), **asdict(cfg)})
    final = resolve_cache_dir(cache_dir) / "listops" / f"listops-{key}.npz"
    total = cfg.n_train + cfg.n_val + cfg.n_test
    max_chunks = 50 + 50 * (total // cfg.chunk_size + 1)

    def make_chunk(index: int) -> dict[str, np.ndarray]:
        t, ln, lab = generate_chunk(cfg, seed, index, cfg.chunk_size)
        return {"tokens": t, "lengths": ln, "labels": lab}

    def assemble(chunks) -> dict[str, np.ndarray]:
        seen: set[bytes] = set()
        keep_tok, keep_len, keep_lab = [], [], []
        with tqdm(total=total, desc=f"ListOps (seed {seed})", disable=not progress, unit="seq") as bar:
            for n_chunks, data in enumerate(chunks, start=1):
                for row, ln, lab in zip(data["tokens"], data["lengths"], data["labels"]):
                    digest = hashlib.blake2b(row[:ln].tobytes(), digest_size=16).digest()
                    if digest in seen:
                        continue
                    seen.add(digest)
                    keep_tok.append(row)
                    keep_len.append(ln)
                    keep_lab.append(lab)
                    bar.update(1)
                    if len(keep_lab) == total:
                        break
                if len(keep_lab) == total:
                    break
                if n_chunks > max_chunks:
                    raise ValueError(
                        f"ListOps: found only {len(keep_lab)} of {total} distinct expressions with {cfg}; "
                        "increase max_len/max_depth/max_args or reduce n_train/n_val/n_test"
                    )
        return {
            "tokens": np.stack(keep_tok).astype(np.uint8),
            "lengths": np.asarray(keep_len, dtype=np.int64),
            "labels": np.asarray(keep_lab, dtype=np.int64),
            "sizes": np.array([cfg.n_train, cfg.n_val, cfg.n_test], dtype=np.int64),
        }

    return build_from_chunks(final, make_chunk, assemble)


def listops_split(data: dict[str, np.ndarray], split: str, name: str, meta: dict[str, Any]) -> SequenceData:
    """Cut the generated arrays into a SequenceData for ``split``."""
    n_tr, n_va, n_te = (int(v) for v in data["sizes"])
    lo, hi = {"train": (0, n_tr), "val": (n_tr, n_tr + n_va), "test": (n_tr + n_va, n_tr + n_va + n_te)}[split]
    if hi == lo:
        raise ValueError(f"split={split!r}: this ListOps configuration has no {split} samples (n_{split}=0)")
    tokens = data["tokens"][lo:hi].astype(np.int64)
    lengths = data["lengths"][lo:hi]
    mask = np.arange(tokens.shape[1])[None, :] < lengths[:, None]
    return SequenceData(
        tokens, mask, data["labels"][lo:hi], CLASSES, vocab_size=VOCAB_SIZE, name=name, split=split,
        meta={**meta, "vocab": VOCAB},
    )


@register_dataset("listops")
def _load_listops(name: str, split: str, **kw: Any) -> SequenceData:
    return load_listops(split, preset="listops", **kw)


@register_dataset("listops-small")
def _load_listops_small(name: str, split: str, **kw: Any) -> SequenceData:
    return load_listops(split, preset="listops-small", **kw)


def load_listops(
    split: str,
    *,
    preset: str = "listops",
    root: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    seed: int = 0,
    progress: bool = True,
    **options: Any,
) -> SequenceData:
    """Generated ListOps split (token ids ``(n, max_len)``, PAD = 0).

    ``options`` override the preset's :class:`ListOpsConfig` fields. With
    ``root=`` a folder holding LRA's ``basic_{train,val,test}.tsv`` the official
    files are loaded instead (see :func:`load_lra_listops`).
    """
    if preset not in PRESETS:
        raise ValueError(f"preset: expected one of {sorted(PRESETS)}, got {preset!r}")
    if root is not None:
        return load_lra_listops(split, root=root, cache_dir=cache_dir, **options)
    fields = set(ListOpsConfig.__dataclass_fields__)
    unknown = {k: v for k, v in options.items() if k not in fields}
    reject_options(preset, unknown)
    cfg = ListOpsConfig(**{**PRESETS[preset], **options}).validate()
    data = generate_listops(cfg, seed, cache_dir, progress=progress)
    return listops_split(data, split, preset, {"config": asdict(cfg), "seed": seed})


# --------------------------------------------------------------------------- #
# Official LRA ListOps files
# --------------------------------------------------------------------------- #
def find_listops_dir(root: str | os.PathLike) -> Path:
    """Folder holding the three ``basic_*.tsv`` files; FileNotFoundError naming the missing ones."""
    root = Path(root).expanduser()
    candidates = [root, root / "listops-1000", root / "lra_release" / "listops-1000"]
    for base in candidates:
        if all((base / f).is_file() for f in LISTOPS_FILES.values()):
            return base
    best = next((b for b in candidates if any((b / f).is_file() for f in LISTOPS_FILES.values())), root)
    missing = [str(best / f) for f in LISTOPS_FILES.values() if not (best / f).is_file()]
    raise FileNotFoundError(
        f"LRA ListOps files not found: missing {', '.join(missing)} "
        f"(looked in {', '.join(str(c) for c in candidates)})"
    )


def read_listops_tsv(path: Path, keep_parens: bool, cache_dir: Any = None, cache: bool = True) -> dict[str, np.ndarray]:
    """Parse one TSV into ``ids`` (flat int16), ``lengths`` and ``labels``; cached."""
    cfile = None
    if cache:
        cfile = resolve_cache_dir(cache_dir) / "lra" / f"{path.stem}-{file_stat_key([path], v=_LRA_CACHE_VERSION, parens=keep_parens)}.npz"
        hit = load_npz(cfile)
        if hit is not None:
            return hit
    ids: list[int] = []
    lengths, labels = [], []
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh, delimiter="\t")
        header = next(reader, None)
        if header is None or [h.strip() for h in header[:2]] != ["Source", "Target"]:
            raise ValueError(f"{path}: expected a header 'Source<TAB>Target', got {header!r}")
        for line_no, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) < 2:
                raise ValueError(f"{path}:{line_no}: expected 2 tab-separated columns, got {len(row)}")
            try:
                toks = encode(row[0], keep_parens=keep_parens)
                label = int(row[1])
            except ValueError as exc:
                raise ValueError(f"{path}:{line_no}: {exc}") from exc
            if not 0 <= label <= 9:
                raise ValueError(f"{path}:{line_no}: Target must be 0..9, got {label}")
            if not toks:
                raise ValueError(f"{path}:{line_no}: empty Source")
            ids.extend(toks)
            lengths.append(len(toks))
            labels.append(label)
    if not labels:
        raise ValueError(f"{path}: no examples")
    out = {
        "ids": np.asarray(ids, dtype=np.int16),
        "lengths": np.asarray(lengths, dtype=np.int64),
        "labels": np.asarray(labels, dtype=np.int64),
    }
    if cfile is not None:
        save_npz_atomic(cfile, **out)
    return out


def load_lra_listops(
    split: str,
    *,
    root: str | os.PathLike,
    cache_dir: Any = None,
    keep_parens: bool = False,
    max_len: int | None = None,
    truncate: bool = False,
    cache: bool = True,
    **options: Any,
) -> SequenceData:
    """Official LRA ListOps split as token ids padded to a common length (see module doc)."""
    reject_options("listops (LRA files)", options)
    if max_len is not None and (isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < 1):
        raise ValueError(f"max_len: expected a positive int or None, got {max_len!r}")
    base = find_listops_dir(root)
    parsed = {s: read_listops_tsv(base / f, keep_parens, cache_dir, cache) for s, f in LISTOPS_FILES.items()}
    longest = max(int(p["lengths"].max()) for p in parsed.values())
    t = longest if max_len is None else max_len
    if longest > t and not truncate:
        raise ValueError(
            f"max_len={max_len} is shorter than the longest LRA ListOps sequence ({longest} tokens); "
            "pass truncate=True to crop explicitly or raise max_len"
        )
    p = parsed[split]
    n = len(p["labels"])
    tokens = np.zeros((n, t), dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(p["lengths"])])
    lengths = np.minimum(p["lengths"], t)
    for i in range(n):
        tokens[i, : lengths[i]] = p["ids"][offsets[i] : offsets[i] + lengths[i]]
    mask = np.arange(t)[None, :] < lengths[:, None]
    return SequenceData(
        tokens, mask, p["labels"], CLASSES, vocab_size=VOCAB_SIZE, name="listops", split=split,
        meta={"source": str(base / LISTOPS_FILES[split]), "vocab": VOCAB, "longest": longest},
    )
