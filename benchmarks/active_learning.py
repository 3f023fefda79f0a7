"""Is least-sure-first worth it? Simulated labeling on the demo data, ordered by uncertainty vs at random.

Two simulations on the same features (EfficientNet-Lite0, 224 px, fp32,
computed once in a scratch root by steps 1-3) and the same split (step 1,
seed 0); the classifier is the project's :class:`~imgclass.model.svm.LinearSvm`
(Platt-calibrated, fixed C, retrained after every batch of labels, as the
labeling page's "retrain" does); the test images are never looked at except
to measure accuracy.

1. **Labeling an unlabeled pool** (``/label`` with an unlabeled folder): the
   training images start unlabeled except ``--seed-per-class`` per class; a
   person labels ``--batch`` images at a time, chosen by the queue's rule
   (least sure first: margin of the calibrated probabilities, or entropy) or
   at random; test accuracy after k labels.
2. **Reviewing a noisy, scraped-like set** (``label_reviewLabeled``): every
   training image has a label, ``--noise`` of them planted wrong (moved to
   another class at random); a person reviews ``--batch`` images at a time
   and corrects the wrong ones. Orders: the queue's default (images the model
   disagrees with, least sure first, then the others least sure first),
   least sure first over all images, and random. Test accuracy and wrong
   labels left after k reviews.

Each is repeated over ``--repeats`` seeds (the starting labels, the planted
noise and the random order change; the split does not); mean and standard
deviation are printed, and the learning curves drawn to ``--plot``.

    python benchmarks/active_learning.py [--repeats=10] [--batch=5] [--noise=0.15] [--plot=PATH]
                                         [--features-cache=PATH.npz]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from imgclass.layout import DatasetLayout
from imgclass.model.scores import uncertainty
from imgclass.model.svm import LinearSvm
from imgclass.parameters import load_parameters
from imgclass.pipeline import build_featurizer, featurize_dataset, prepare_data
from imgclass.pipeline.artifacts import load_features

PROJECT_DIR = Path(__file__).resolve().parents[1]
FEATURE_ARGS = ["--rf_pretrainedModelFilename=efficientnet_lite0", "--rf_inputResolution=224", "--run_precision=fp32",
                "--classifier=svm", "--rf_maxEpochs=0"]


def demo_features(workers: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Features, class ids and train mask of the demo images (steps 1-3 in a scratch root)."""
    base = load_parameters(FEATURE_ARGS + [f"--run_workers={workers}"], project_dir=PROJECT_DIR)
    with tempfile.TemporaryDirectory() as scratch:
        params = base.replace(rootDir=scratch)
        shutil.copytree(base.demo_images_dir, DatasetLayout.from_parameters(params).images_dir)
        prepare_data(params)
        build_featurizer(params, progress=False, log=lambda message: None)
        featurize_dataset(params, progress=False)
        table = load_features(DatasetLayout.from_parameters(params))
        X_train, y_train, _ = table.subset("train")
        X_test, y_test, _ = table.subset("test")
    X = np.concatenate([X_train, X_test]).astype(np.float32)
    y = np.concatenate([y_train, y_test]).astype(int)
    train = np.arange(len(y)) < len(y_train)
    return X, y, train, list(table.labels)


def fit(X: np.ndarray, y: np.ndarray, n_classes: int, C: float) -> LinearSvm:
    return LinearSvm(C=C, cv=3, classes=list(range(n_classes))).fit(X, y)


def accuracy(model: LinearSvm, X: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(model.predict(X) == y))


def pick(model: LinearSvm, X: np.ndarray, candidates: np.ndarray, order: str, k: int, rng: np.random.Generator,
         noisy_labels: np.ndarray | None = None) -> np.ndarray:
    """The next ``k`` images of ``candidates`` in the given order (the labeling queue's rules, or random)."""
    if order == "random":
        return rng.permutation(candidates)[:k]
    method = "entropy" if order == "entropy" else "margin"
    p = model.predict_proba(X[candidates])
    doubt = uncertainty(p, method)
    if order == "disagree":  # the queue's default: images whose label the model contradicts first
        disagree = np.argmax(p, axis=1) != noisy_labels[candidates]
        key = np.lexsort((-doubt, ~disagree))
    else:
        key = np.argsort(-doubt, kind="stable")
    return candidates[key[:k]]


def simulate_pool(X: np.ndarray, y: np.ndarray, train: np.ndarray, n_classes: int, order: str, seed: int,
                  seed_per_class: int, batch: int, C: float) -> tuple[list[int], list[float]]:
    """Simulation 1: test accuracy after each batch of labels taken from the unlabeled pool."""
    rng = np.random.default_rng(seed)
    pool = np.flatnonzero(train)
    labeled = np.concatenate([rng.choice(pool[y[pool] == c], seed_per_class, replace=False)
                              for c in range(n_classes)])
    test = np.flatnonzero(~train)
    counts, accuracies = [], []
    while True:
        model = fit(X[labeled], y[labeled], n_classes, C)
        counts.append(len(labeled))
        accuracies.append(accuracy(model, X[test], y[test]))
        rest = np.setdiff1d(pool, labeled)
        if len(rest) == 0:
            return counts, accuracies
        labeled = np.concatenate([labeled, pick(model, X, rest, order, batch, rng)])


def simulate_review(X: np.ndarray, y: np.ndarray, train: np.ndarray, n_classes: int, order: str, seed: int,
                    noise: float, batch: int, C: float) -> tuple[list[int], list[float], list[int]]:
    """Simulation 2: test accuracy and wrong labels left after each batch of reviewed training images."""
    rng = np.random.default_rng(seed)
    pool = np.flatnonzero(train)
    labels = y.copy()
    wrong = rng.choice(pool, int(round(noise * len(pool))), replace=False)
    for i in wrong:  # planted: another class, at random
        labels[i] = rng.choice([c for c in range(n_classes) if c != y[i]])
    test = np.flatnonzero(~train)
    reviewed = np.zeros(0, dtype=int)
    counts, accuracies, left = [], [], []
    while True:
        model = fit(X[pool], labels[pool], n_classes, C)
        counts.append(len(reviewed))
        accuracies.append(accuracy(model, X[test], y[test]))
        left.append(int(np.sum(labels[pool] != y[pool])))
        rest = np.setdiff1d(pool, reviewed)
        if len(rest) == 0:
            return counts, accuracies, left
        chosen = pick(model, X, rest, order, batch, rng, labels)
        labels[chosen] = y[chosen]  # the person puts each reviewed image in its right class
        reviewed = np.concatenate([reviewed, chosen])


def summarize(name: str, curves: dict[str, np.ndarray], counts: list[int], marks: list[int], unit: str) -> None:
    print(f"\n{name}: mean ± sd over {len(next(iter(curves.values())))} repeats")
    header = f"{unit:>10s} " + " ".join(f"{order:>16s}" for order in curves)
    print(header)
    for k in marks:
        if k not in counts:
            continue
        j = counts.index(k)
        print(f"{k:10d} " + " ".join(f"{c[:, j].mean():9.3f} ± {c[:, j].std():.3f}" for c in curves.values()))


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--batch", type=int, default=5)
    parser.add_argument("--seed-per-class", type=int, default=2)
    parser.add_argument("--noise", type=float, default=0.15)
    parser.add_argument("--C", type=float, default=0.1, help="SVM C (step 4 chooses 0.1 on the demo)")
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--plot", default=str(PROJECT_DIR / "docs" / "images" / "active_learning.png"))
    parser.add_argument("--features-cache", default="", help="an .npz to keep the features in between runs")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    cache = Path(args.features_cache) if args.features_cache else None
    if cache is not None and cache.is_file():
        stored = np.load(cache)
        X, y, train, labels = stored["X"], stored["y"], stored["train"], list(stored["labels"])
    else:
        X, y, train, labels = demo_features(args.workers)
        if cache is not None:
            np.savez(cache, X=X, y=y, train=train, labels=np.array(labels))
    K = len(labels)
    print(f"demo: {int(train.sum())} training and {int((~train).sum())} test images, {K} classes, "
          f"{X.shape[1]} features ({time.perf_counter() - start:.0f} s to featurize)")

    # Thousands of small fits: one BLAS thread each is several times faster than a contended pool of them.
    limits = threadpool_limits(1)
    pool_curves: dict[str, list[list[float]]] = {"margin": [], "entropy": [], "random": []}
    pool_counts: list[int] = []
    for order in pool_curves:
        for seed in range(args.repeats):
            pool_counts, accuracies = simulate_pool(X, y, train, K, order, seed, args.seed_per_class, args.batch,
                                                    args.C)
            pool_curves[order].append(accuracies)
    pool = {order: np.array(c) for order, c in pool_curves.items()}
    summarize("1. labeling the unlabeled pool: test accuracy after k labels", pool, pool_counts,
              [pool_counts[0], 17, 22, 27, 32, 42, 52, 62, 82, 102, pool_counts[-1]], "k labels")

    review_curves: dict[str, list[list[float]]] = {"disagree": [], "margin": [], "random": []}
    review_left: dict[str, list[list[int]]] = {order: [] for order in review_curves}
    review_counts: list[int] = []
    for order in review_curves:
        for seed in range(args.repeats):
            review_counts, accuracies, left = simulate_review(X, y, train, K, order, seed, args.noise, args.batch,
                                                              args.C)
            review_curves[order].append(accuracies)
            review_left[order].append(left)
    review = {order: np.array(c) for order, c in review_curves.items()}
    wrong = {order: np.array(c, dtype=float) for order, c in review_left.items()}
    marks = [0, 10, 20, 30, 40, 60, 80, 100, review_counts[-1]]
    summarize(f"2. reviewing a set with {args.noise:.0%} planted wrong labels: test accuracy after k reviews",
              review, review_counts, marks, "k reviews")
    summarize("   wrong training labels left after k reviews", wrong, review_counts, marks, "k reviews")

    limits.unregister()
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for ax, (curves, counts, title, ylabel) in zip(axes, [
            (pool, pool_counts, "labeling an unlabeled pool", "test accuracy"),
            (review, review_counts, f"reviewing {args.noise:.0%} planted wrong labels", "test accuracy"),
            (wrong, review_counts, f"reviewing {args.noise:.0%} planted wrong labels", "wrong labels left")]):
        for order, c in curves.items():
            mean, sd = c.mean(axis=0), c.std(axis=0)
            ax.plot(counts, mean, label=order)
            ax.fill_between(counts, mean - sd, mean + sd, alpha=0.15)
        ax.set_title(title)
        ax.set_xlabel("images labeled" if curves is pool else "images reviewed")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend()
    figure.suptitle(f"demo data ({K} classes), EfficientNet-Lite0 features, linear SVM C={args.C}; "
                    f"mean ± sd of {args.repeats} repeats")
    figure.tight_layout()
    Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(args.plot, dpi=80)
    print(f"\nplot: {args.plot}; {time.perf_counter() - start:.0f} s in all")


if __name__ == "__main__":
    main(sys.argv[1:])
