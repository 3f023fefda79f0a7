"""Time step 4's SVM training (C chosen by cross-validation) on synthetic DNN-like features.

10,000 images x 2,048 features (ResNet-50's width), 10 classes: non-negative
vectors like pooled ReLU activations (a shared base, a sparse class pattern,
noise), overlapping enough that the best C reaches about 0.99 CV accuracy and
the smallest about 0.5. Times what ``scripts/4_trainSVM.py`` runs,
``LinearSvmCV.fit``: the cross-validation over C (``select_C``, 7 C values x 5
folds), then the refit of every C and the calibration, with ``n_jobs=1`` and
``n_jobs=-1``.

    python benchmarks/svm_cv.py [--images=10000] [--dim=2048] [--classes=10] [--jobs=1,-1]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

import imgclass.model.svm
from imgclass.model.svm import LinearSvmCV

C_VALUES = [1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0, 100.0]


def synthetic_features(n: int, dim: int, classes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Pooled-ReLU-like features: a shared base, a class pattern, per-image noise, clipped at zero."""
    rng = np.random.default_rng(seed)
    base = rng.gamma(1.0, 0.5, dim).astype(np.float32)
    patterns = (rng.random((classes, dim)) < 0.05) * rng.gamma(1.0, 0.3, (classes, dim))
    y = rng.integers(0, classes, n)
    X = base + patterns[y].astype(np.float32) + rng.normal(0, 0.9, (n, dim)).astype(np.float32)
    return np.maximum(X, 0, out=X), y


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10000)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--jobs", default="1,-1", help="comma-separated n_jobs values to time")
    args = parser.parse_args()
    X, y = synthetic_features(args.images, args.dim, args.classes)
    print(f"{args.images} x {args.dim} float32 features, {args.classes} classes, C in {C_VALUES}, 5 folds, "
          f"{len(os.sched_getaffinity(0))} CPUs")
    print(f"{'n_jobs':>6s} {'CV over C (s)':>14s} {'refits + calibration (s)':>25s} {'total (s)':>10s} "
          f"{'chosen C':>9s} {'CV acc':>7s}")
    real_select_C = imgclass.model.svm.select_C
    cv_seconds: list[float] = []

    def timed_select_C(*a, **k):  # type: ignore[no-untyped-def]
        start = time.perf_counter()
        result = real_select_C(*a, **k)
        cv_seconds.append(time.perf_counter() - start)
        return result

    imgclass.model.svm.select_C = timed_select_C
    for jobs in (int(j) for j in args.jobs.split(",")):
        start = time.perf_counter()
        model = LinearSvmCV(C_VALUES, cv=5, n_jobs=jobs).fit(X, y)
        total = time.perf_counter() - start
        print(f"{jobs:>6d} {cv_seconds[-1]:14.1f} {total - cv_seconds[-1]:25.1f} {total:10.1f} {model.C_:9g} "
              f"{max(model.cv_results_.cv_accuracy):7.3f}", flush=True)


if __name__ == "__main__":
    main()
