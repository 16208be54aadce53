"""What the row bands blend for each pixel, the scores, and the water class and probability read from them.

A model with two classes is decided by one number per pixel, its water margin (the water logit less the other):
the argmax of two logits is the margin's sign, and their softmax is the margin's logistic function. Blending is
linear, so the margin of the blended logits is the blend of the tiles' margins. One channel is blended, kept and
written instead of two: half the memory of a row band and half the arithmetic per tile. Any other model's scores
are its logits.
"""

from __future__ import annotations

import numpy as np

from ..model_spec import ModelSpec


def channels(spec: ModelSpec) -> int:
    """Scores per pixel: 1 (the water margin) for two classes, else one per class."""
    return 1 if spec.num_classes == 2 else spec.num_classes


def of_tile(logits: np.ndarray, spec: ModelSpec) -> np.ndarray:
    """A tile's scores [channels, h, w] float32 from its float32 logits [num_classes, h, w]."""
    if spec.num_classes != 2:
        return logits
    margin = np.empty((1,) + logits.shape[1:], np.float32)
    np.subtract(logits[spec.water_class], logits[1 - spec.water_class], out=margin[0])
    return margin


def water(scores: np.ndarray, spec: ModelSpec) -> np.ndarray:
    """Water (bool) where the water class has the highest logit; ties go to the lower class, as argmax's do."""
    if spec.num_classes != 2:
        return np.argmax(scores, axis=0) == spec.water_class
    margin = scores[0]
    return margin > 0 if spec.water_class == 1 else margin >= 0


def probability(scores: np.ndarray, spec: ModelSpec) -> np.ndarray:
    """The water class's softmax probability (float32)."""
    if spec.num_classes != 2:
        top = scores.max(axis=0)
        expsum = np.exp(scores - top).sum(axis=0)
        return (np.exp(scores[spec.water_class] - top) / expsum).astype(np.float32)
    p = np.negative(scores[0])
    with np.errstate(over="ignore"):  # exp(-margin) beyond float32: the probability is 0
        np.exp(p, out=p)
    p += 1
    return np.reciprocal(p, out=p)
