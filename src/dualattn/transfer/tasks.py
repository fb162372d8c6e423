"""Offline transfer-learning tasks for frozen backbones.

* ``"digits"``: sklearn's 1797 8x8 handwritten digits (10 classes), grey
  images in [0, 1]; the backbone upsamples them to its input size.
* ``"digits-clutter"``: a harder image task built from the same digits: a
  24x24 canvas (3x3 cells) holding the *target* digit at full intensity in a
  random cell plus two distractor digits of other classes at 45 % intensity in
  other cells, each rotated by a random angle in [-35, 35] degrees. Label =
  target digit. Targets are distinct source images.
* ``"text-topics"``: a synthetic labelled corpus (no labelled text corpus
  ships offline): 8 classes = 4 topics (food, film, travel, tech) x 2
  sentiments, from 12 sentence templates. A quarter of the sentences negate
  the adjective ("not", "far from", "anything but"), which flips the
  sentiment; 4 templates contrast the subject with another topic's noun of
  the opposite sentiment ("The movie was awful, but the pasta was superb"),
  so bag-of-words is not enough. Splits hold out whole templates for
  testing, so the test sentences have unseen sentence structures.

:func:`load_task` returns a :class:`TaskData`; :func:`split_indices` gives
per-seed train/test indices (stratified for images, held-out templates for text).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

TASKS = ("digits", "digits-clutter", "text-topics")


@dataclass
class TaskData:
    """Inputs for a backbone (``(n, H, W)`` float images or a list of str), labels and metadata."""

    name: str
    kind: str  # "vision" | "text"
    inputs: Any
    y: np.ndarray
    classes: list[str]
    groups: np.ndarray | None = None  # text: template id per sentence (held out together)
    description: str = ""
    options: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.y)


def load_task(name: str, *, n: int | None = None, seed: int = 0) -> TaskData:
    """Build task ``name`` (see :data:`TASKS`) deterministically from ``seed``; ``n`` caps the size."""
    if name == "digits":
        return _digits(n)
    if name == "digits-clutter":
        return _digits_clutter(n or 1500, seed)
    if name == "text-topics":
        return _text_topics(n or 1200, seed)
    raise ValueError(f"task: expected one of {TASKS}, got {name!r}")


def split_indices(task: TaskData, seed: int, *, n_train: int | None = None,
                  test_fraction: float = 1 / 3) -> tuple[np.ndarray, np.ndarray]:
    """Per-seed ``(train_idx, test_idx)``.

    Vision: stratified random split with ``n_train`` training rows (default
    ``(1 - test_fraction) * n``). Text: a random third of the templates is held
    out as the test set; ``n_train`` subsamples the remaining rows.
    """
    rng = np.random.default_rng(seed)
    n = len(task)
    if task.groups is not None:
        groups = np.unique(task.groups)
        n_test_groups = max(1, int(round(test_fraction * len(groups))))
        test_groups = rng.choice(groups, size=n_test_groups, replace=False)
        is_test = np.isin(task.groups, test_groups)
        train, test = np.flatnonzero(~is_test), np.flatnonzero(is_test)
        if n_train is not None and n_train < len(train):
            train = np.sort(rng.choice(train, size=n_train, replace=False))
        return train, test
    from sklearn.model_selection import train_test_split

    n_train = n_train or int(round((1 - test_fraction) * n))
    if not 0 < n_train < n:
        raise ValueError(f"n_train: must be in (0, {n}), got {n_train}")
    train, test = train_test_split(np.arange(n), train_size=n_train, stratify=task.y, random_state=seed)
    return np.sort(train), np.sort(test)


# --------------------------------------------------------------------------- images
def _digit_images() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.images / 16.0).astype(np.float32), d.target.astype(np.int64)


def _digits(n: int | None) -> TaskData:
    x, y = _digit_images()
    if n is not None:
        x, y = x[:n], y[:n]
    return TaskData("digits", "vision", x, y, [str(i) for i in range(10)],
                    description="sklearn digits, 8x8 grey, upsampled by the backbone")


def _digits_clutter(n: int, seed: int) -> TaskData:
    from scipy.ndimage import rotate

    x, y = _digit_images()
    if n > len(x):
        raise ValueError(f"n: digits-clutter uses distinct targets, so n <= {len(x)}, got {n}")
    rng = np.random.default_rng(seed)
    targets = rng.permutation(len(x))[:n]
    canvas = np.zeros((n, 24, 24), dtype=np.float32)

    def put(img, cell, intensity, i):
        r, c = divmod(int(cell), 3)
        rot = rotate(img, rng.uniform(-35, 35), reshape=False, order=1, mode="constant")
        canvas[i, 8 * r:8 * r + 8, 8 * c:8 * c + 8] = np.clip(rot, 0, 1) * intensity

    for i, t in enumerate(targets):
        cells = rng.choice(9, size=3, replace=False)
        put(x[t], cells[0], 1.0, i)
        for cell in cells[1:]:
            j = rng.choice(np.flatnonzero(y != y[t]))
            put(x[j], cell, 0.45, i)
    return TaskData("digits-clutter", "vision", canvas, y[targets].copy(), [str(i) for i in range(10)],
                    description="target digit (full intensity, rotated) + 2 dimmer distractor digits "
                                "on a 3x3-cell 24x24 canvas", options={"seed": seed})


# --------------------------------------------------------------------------- text
_TOPICS = {
    "food": ["pasta", "soup", "dessert", "breakfast", "curry", "pizza", "salad", "coffee"],
    "film": ["movie", "plot", "soundtrack", "acting", "sequel", "documentary", "screenplay", "finale"],
    "travel": ["hotel room", "flight", "beach resort", "tour guide", "train journey", "hostel",
               "cruise", "campsite"],
    "tech": ["laptop", "phone", "battery", "keyboard", "software update", "camera", "tablet", "charger"],
}
_ADJ = {
    1: ["wonderful", "excellent", "delightful", "superb", "impressive", "lovely", "fantastic", "great"],
    0: ["awful", "terrible", "disappointing", "dreadful", "mediocre", "horrible", "poor", "bad"],
}
_NEGATIONS = ["not {}", "far from {}", "anything but {}", "not at all {}"]
_TEMPLATES = [
    "The {noun} was {adj}.",
    "Honestly, I found the {noun} {adj}.",
    "My friends said the {noun} is {adj}, and I agree.",
    "After last week I can say the {noun} was {adj}.",
    "I would describe the {noun} as {adj}.",
    "Everyone agreed that the {noun} felt {adj}.",
    "We tried the {noun} and it was {adj}.",
    "To be fair, the {noun} seemed {adj} overall.",
    "The {onoun} was {oadj}, but the {noun} was {adj}.",
    "Although the {onoun} seemed {oadj}, the {noun} turned out {adj}.",
    "Compared with the {onoun}, which was {oadj}, the {noun} was {adj}.",
    "Forget the {oadj} {onoun}; the {noun} was {adj}.",
]


def _phrase(rng, sentiment: int, negate_p: float) -> str:
    """An adjective phrase with the given sentiment; negated phrases use the opposite adjective."""
    if rng.random() < negate_p:
        return str(rng.choice(_NEGATIONS)).format(rng.choice(_ADJ[1 - sentiment]))
    return str(rng.choice(_ADJ[sentiment]))


def _text_topics(n: int, seed: int) -> TaskData:
    rng = np.random.default_rng(seed)
    topics = list(_TOPICS)
    texts, labels, groups = [], [], []
    for i in range(n):
        g = i % len(_TEMPLATES)
        topic, sentiment = int(rng.integers(4)), int(rng.integers(2))
        other = int(rng.choice([t for t in range(4) if t != topic]))
        fields = dict(noun=rng.choice(_TOPICS[topics[topic]]), adj=_phrase(rng, sentiment, 0.25),
                      onoun=rng.choice(_TOPICS[topics[other]]), oadj=rng.choice(_ADJ[1 - sentiment]))
        texts.append(_TEMPLATES[g].format(**fields))
        labels.append(2 * topic + sentiment)
        groups.append(g)
    classes = [f"{t}/{s}" for t in topics for s in ("neg", "pos")]
    return TaskData("text-topics", "text", texts, np.array(labels), classes, np.array(groups),
                    description="synthetic 8-class topic x sentiment corpus, 12 templates (negations, "
                                "contrastive clauses); test = held-out templates",
                    options={"seed": seed})
