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
