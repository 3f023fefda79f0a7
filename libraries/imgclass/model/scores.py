"""Turning a classifier's scores into what users read: probabilities and the top-k labels."""

from __future__ import annotations

from typing import Sequence

import numpy as np


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax, numerically stable."""
    shifted = np.asarray(logits, dtype=np.float64) - np.max(logits, axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def top_k(probabilities: np.ndarray, labels: Sequence[str], k: int) -> list[list[tuple[str, float]]]:
    """For each row, the ``k`` most probable labels with their probabilities, best first (ties: lower id first)."""
    k = max(1, min(k, len(labels)))
    order = np.argsort(-np.asarray(probabilities), axis=1, kind="stable")[:, :k]
    return [[(labels[j], float(p[j])) for j in row] for row, p in zip(order, probabilities)]


#: How :func:`uncertainty` measures how unsure the model is about an image.
UNCERTAINTY_METHODS = ("margin", "entropy")


def uncertainty(probabilities: np.ndarray, method: str = "margin") -> np.ndarray:
    """How unsure the model is about each row of calibrated probabilities ``(N, K)``: 0 (sure) to 1.

    ``'margin'``: 1 minus the gap between the two most probable classes (an
    image the model hesitates between two classes about comes first, however
    many classes there are); ``'entropy'``: the Shannon entropy of the row
    divided by its maximum, ``log K`` (it also counts the doubt spread over
    the other classes). Active learning asks a person about the least sure
    images first: they teach the model most per label.
    """
    p = np.asarray(probabilities, dtype=np.float64)
    if p.ndim != 2:
        raise ValueError(f"probabilities must be a 2-d array (images x classes), got shape {p.shape}")
    if method not in UNCERTAINTY_METHODS:
        raise ValueError(f"unknown uncertainty method {method!r}; use one of {', '.join(UNCERTAINTY_METHODS)}")
    n, k = p.shape
    if k < 2 or n == 0:
        return np.zeros(n)
    if method == "margin":
        top2 = np.sort(p, axis=1)[:, -2:]
        return np.clip(1.0 - (top2[:, 1] - top2[:, 0]), 0.0, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, -p * np.log(p), 0.0)
    return np.clip(terms.sum(axis=1) / np.log(k), 0.0, 1.0)


def least_sure_first(probabilities: np.ndarray, method: str = "margin") -> np.ndarray:
    """Row indices ordered from the least sure to the surest (ties: lower index first)."""
    return np.argsort(-uncertainty(probabilities, method), kind="stable")
