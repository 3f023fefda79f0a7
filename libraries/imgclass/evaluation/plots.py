"""Evaluation plots written as PNG files: ROC curves, confusion matrix, accuracies, examples.

Every function draws on its own :class:`matplotlib.figure.Figure` (rendered by
the Agg backend, never through ``pyplot``), so nothing depends on a display, no
global figure state is shared with a notebook or another thread, and no window
is ever opened. The PNG is written atomically (temporary file + rename), and
the figure is cleared afterwards so that its memory is freed at once.

The numbers come from :mod:`imgclass.evaluation.metrics`; this module only draws them.
"""

from __future__ import annotations

import math
import os
from typing import Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from imgclass.io.atomic import atomic_path
from imgclass.io.images import UnreadableImageError, load_rgb, shrink_to_max_side
from imgclass.evaluation.metrics import RocCurves

__all__ = [
    "plot_confusion_matrix",
    "plot_example_images",
    "plot_per_class_accuracy",
    "plot_roc_curves",
]

#: Title and border colour of a correctly / wrongly classified example.
RIGHT_COLOR = "#1a9641"
WRONG_COLOR = "#d7191c"
#: Background of a tile whose image could not be decoded.
UNREADABLE_COLOR = "#bdbdbd"

#: Pixel resolution of saved figures.
DPI = 100
#: Longer side, in pixels, of example thumbnails (keeps big grids light).
THUMBNAIL_SIDE = 256
#: Labels longer than this are shortened on axes and in legends.
MAX_LABEL_CHARS = 24


def _short(label: str, max_chars: int = MAX_LABEL_CHARS) -> str:
    label = str(label)
    return label if len(label) <= max_chars else label[: max_chars - 1] + "\u2026"


def _save(fig: Figure, path: str | os.PathLike[str]) -> None:
    """Write ``fig`` as a PNG to ``path`` atomically, then release its contents."""
    try:
        with atomic_path(path, suffix=".png") as tmp:
            fig.savefig(tmp, format="png", dpi=DPI)
    finally:
        fig.clear()


def _check_labels(labels: Sequence[str], n_classes: int, what: str) -> list[str]:
    labels = [str(label) for label in labels]
    if len(labels) != n_classes:
        raise ValueError(f"got {len(labels)} labels for {n_classes} classes in {what}")
    return labels


# --- ROC -----------------------------------------------------------------------------


def plot_roc_curves(curves: RocCurves, labels: Sequence[str], path: str | os.PathLike[str]) -> None:
    """Plot each class's one-vs-rest ROC curve and the micro and macro averages.

    Parameters
    ----------
    curves:
        Output of :func:`imgclass.evaluation.metrics.roc_curves`.
    labels:
        The K class names, in class-id order.
    path:
        PNG file to write.

    Classes without a defined curve (no test samples) are listed in the legend
    with "AUC n/a" so that their absence is visible rather than silent.
    """
    labels = _check_labels(labels, curves.n_classes, "the ROC curves")
    n_classes = len(labels)
    many = n_classes > 10
    fig = Figure(figsize=(11.0, 7.0) if many else (8.0, 7.0), layout="constrained")
    ax = fig.add_subplot()
    cmap = _class_colormap(n_classes)
    for k, label in enumerate(labels):
        auc_k = float(curves.auc[k])
        if math.isnan(auc_k):
            ax.plot([], [], color=cmap(k), lw=1.2, ls=":", label=f"{_short(label)} (AUC n/a)")
        else:
            ax.plot(curves.fpr[k], curves.tpr[k], color=cmap(k), lw=1.2, alpha=0.8,
                    label=f"{_short(label)} (AUC {auc_k:.3f})")
    ax.plot(curves.fpr_micro, curves.tpr_micro, color="black", lw=2.5, ls="--",
            label=f"micro-average (AUC {curves.auc_micro:.3f})")
    if not math.isnan(curves.auc_macro):
        ax.plot(curves.fpr_macro, curves.tpr_macro, color="navy", lw=2.5, ls=":",
                label=f"macro-average (AUC {curves.auc_macro:.3f})")
    ax.plot([0, 1], [0, 1], color="grey", lw=1, ls="-", alpha=0.5, label="chance")
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_aspect("equal")
    ax.set_xlabel("False positive rate")
    ax.set_ylabel("True positive rate")
    ax.set_title("ROC curves (one class vs rest)")
    ax.grid(True, alpha=0.3)
    if many:
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize="x-small",
                  ncol=1 if n_classes <= 25 else 2, frameon=False)
    else:
        ax.legend(loc="lower right", fontsize="small")
    _save(fig, path)


def _class_colormap(n_classes: int):
    """Distinct colours for up to 20 classes, a continuous map beyond."""
    from matplotlib import colormaps

    if n_classes <= 10:
        return colormaps["tab10"]
    if n_classes <= 20:
        return colormaps["tab20"]
    base = colormaps["turbo"]
    return lambda k: base(k / max(n_classes - 1, 1))


# --- confusion matrix ------------------------------------------------------------------


def _matrix_panel(ax: Axes, values: np.ndarray, texts: list[list[str]], labels: list[str],
                  title: str, vmax: float, fontsize: float) -> None:
    n = len(labels)
    tick_fontsize = 10.0 if n <= 10 else 8.0
    shown = np.ma.masked_invalid(values)
    image = ax.imshow(shown, cmap="Blues", vmin=0.0, vmax=vmax if vmax > 0 else 1.0,
                      interpolation="nearest")
    threshold = 0.5 * (vmax if vmax > 0 else 1.0)
    for i in range(n):
        for j in range(n):
            if texts[i][j]:
                dark = np.isfinite(values[i, j]) and values[i, j] > threshold
                ax.text(j, i, texts[i][j], ha="center", va="center", fontsize=fontsize,
                        color="white" if dark else "black")
    short = [_short(label) for label in labels]
    ax.set_xticks(range(n), short, rotation=45 if n <= 10 else 90,
                  ha="right" if n <= 10 else "center", fontsize=tick_fontsize)
    if n <= 10:
        for tick in ax.get_xticklabels():
            tick.set_rotation_mode("anchor")
    ax.set_yticks(range(n), short, fontsize=tick_fontsize)
    ax.set_xlabel("Predicted class")
    ax.set_ylabel("True class")
    ax.set_title(title)
    ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04)


def plot_confusion_matrix(cm: np.ndarray, labels: Sequence[str], path: str | os.PathLike[str]) -> None:
    """Plot the confusion matrix as counts and as row-normalised fractions, side by side.

    Parameters
    ----------
    cm:
        (K, K) counts, rows = true class (see :func:`imgclass.evaluation.metrics.confusion_matrix`).
    labels:
        The K class names, in class-id order.
    path:
        PNG file to write.

    The normalised panel shows each row as fractions of that class's test
    samples, so small classes are as readable as large ones; a class without
    samples has an empty row. Above 10 classes zero cells are left blank so the
    few confusions that matter stand out.
    """
    cm = np.asarray(cm)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"the confusion matrix must be square (K, K), got shape {cm.shape}")
    labels = _check_labels(labels, cm.shape[0], "the confusion matrix")
    n = len(labels)
    support = cm.sum(axis=1, keepdims=True).astype(np.float64)
    normalised = np.full(cm.shape, np.nan)
    np.divide(cm, support, out=normalised, where=support > 0)

    hide_zeros = n > 10
    count_texts = [["" if (hide_zeros and c == 0) else f"{int(c)}" for c in row] for row in cm]
    norm_texts = [
        ["" if not np.isfinite(v) or (hide_zeros and v == 0) else f"{v:.2f}" for v in row]
        for row in normalised
    ]
    fontsize = float(np.clip(220.0 / max(n, 1), 7.0, 11.0))  # fits "0.97" in a 0.38" cell
    panel = max(4.5, 0.38 * n + 2.5)  # inches per panel: about 0.38" per cell
    fig = Figure(figsize=(2 * panel + 1.5, panel + 0.8), layout="constrained")
    ax_counts, ax_norm = fig.subplots(1, 2)
    _matrix_panel(ax_counts, cm.astype(np.float64), count_texts, labels, "Counts",
                  float(cm.max()) if cm.size else 0.0, fontsize)
    _matrix_panel(ax_norm, normalised, norm_texts, labels, "Normalised by true class (row)",
                  1.0, fontsize)
    _save(fig, path)


# --- per-class accuracy ----------------------------------------------------------------


def plot_per_class_accuracy(per_class_accuracy: np.ndarray, labels: Sequence[str],
                            path: str | os.PathLike[str]) -> None:
    """Bar chart of each class's accuracy, with their mean (class-averaged accuracy).

    Parameters
    ----------
    per_class_accuracy:
        (K,) values in [0, 1]; NaN for a class without test samples, drawn as
        "n/a" instead of a bar.
    labels:
        The K class names, in class-id order.
    path:
        PNG file to write.

    Bars are horizontal so that long class names stay readable for many classes.
    """
    acc = np.asarray(per_class_accuracy, dtype=np.float64)
    if acc.ndim != 1:
        raise ValueError(f"per_class_accuracy must be 1-D, got shape {acc.shape}")
    labels = _check_labels(labels, acc.size, "the per-class accuracies")
    n = len(labels)
    fig = Figure(figsize=(8.0, max(2.5, 0.32 * n + 1.5)), layout="constrained")
    ax = fig.add_subplot()
    positions = np.arange(n)
    defined = np.isfinite(acc)
    ax.barh(positions, np.where(defined, acc, 0.0), color="#4c72b0", height=0.7)
    fontsize = "small" if n <= 15 else "x-small"
    for y, value in zip(positions, acc):
        text = f"{value:.2f}" if np.isfinite(value) else "n/a"
        ax.text((value if np.isfinite(value) else 0.0) + 0.01, y, text, va="center", fontsize=fontsize)
    title = "Per-class accuracy"
    if defined.any():
        mean = float(np.mean(acc[defined]))
        ax.axvline(mean, color="black", ls="--", lw=1)
        title += f" (dashed: class-averaged {mean:.3f})"
    ax.set_yticks(positions, [_short(label) for label in labels], fontsize=fontsize)
    ax.invert_yaxis()  # class 0 at the top, like the confusion matrix
    ax.set_xlim(0.0, 1.12)
    ax.set_xlabel("Accuracy (fraction of the class's test images classified correctly)")
    ax.set_title(title)
    ax.grid(True, axis="x", alpha=0.3)
    _save(fig, path)


# --- example images ----------------------------------------------------------------------


def _thumbnail(path: str | os.PathLike[str]) -> np.ndarray | None:
    """The image as a small RGB array, or None if it cannot be decoded."""
    try:
        image = load_rgb(path, draft_size=(THUMBNAIL_SIDE, THUMBNAIL_SIDE))
    except UnreadableImageError:
        return None
    return np.asarray(shrink_to_max_side(image, THUMBNAIL_SIDE))


def plot_example_images(
    image_paths: Sequence[str | os.PathLike[str]],
    true_labels: Sequence[str],
    predicted_labels: Sequence[str],
    scores: Sequence[float],
    path: str | os.PathLike[str],
    columns: int = 6,
) -> None:
    """Grid of test images, each titled with its predicted label and score.

    Parameters
    ----------
    image_paths:
        Image files to show, in display order. Choose a handful (e.g. the
        worst mistakes); the figure grows with their number.
    true_labels, predicted_labels:
        Class name of each image, and what the classifier predicted.
    scores:
        Score of the predicted class for each image.
    path:
        PNG file to write.
    columns:
        Thumbnails per row.

    The title and border are green when the prediction is right and red when
    it is wrong (then the true label is given too). An image that cannot be
    decoded becomes a grey "unreadable" tile: a plot must not fail because one
    file went bad since evaluation. An empty list writes a small figure saying
    "no images".
    """
    n = len(image_paths)
    if not (len(true_labels) == len(predicted_labels) == len(scores) == n):
        raise ValueError(
            "image_paths, true_labels, predicted_labels and scores must have the same length, "
            f"got {n}, {len(true_labels)}, {len(predicted_labels)} and {len(scores)}"
        )
    if isinstance(columns, bool) or not isinstance(columns, (int, np.integer)) or columns < 1:
        raise ValueError(f"columns must be a positive integer, got {columns!r}")

    if n == 0:
        fig = Figure(figsize=(3.0, 1.5))
        fig.text(0.5, 0.5, "no images", ha="center", va="center", fontsize=14, color="grey")
        _save(fig, path)
        return

    columns = min(int(columns), n)
    rows = math.ceil(n / columns)
    fig = Figure(figsize=(2.3 * columns, 2.6 * rows), layout="constrained")
    axes = fig.subplots(rows, columns, squeeze=False)
    for index, ax in enumerate(axes.ravel()):
        ax.set_xticks([])
        ax.set_yticks([])
        if index >= n:
            ax.set_axis_off()
            continue
        right = str(true_labels[index]) == str(predicted_labels[index])
        color = RIGHT_COLOR if right else WRONG_COLOR
        thumb = _thumbnail(image_paths[index])
        if thumb is None:
            ax.set_facecolor(UNREADABLE_COLOR)
            ax.text(0.5, 0.5, "unreadable", transform=ax.transAxes, ha="center", va="center",
                    fontsize=10, color="black")
        else:
            ax.imshow(thumb, interpolation="antialiased")
        title = f"{_short(predicted_labels[index], 18)} ({float(scores[index]):.2f})"
        if not right:
            title += f"\ntrue: {_short(true_labels[index], 18)}"
        ax.set_title(title, color=color, fontsize=9)
        for spine in ax.spines.values():
            spine.set_visible(True)
            spine.set_color(color)
            spine.set_linewidth(4)
    _save(fig, path)


def plot_training_curves(history: Sequence[dict[str, float]], path: str | os.PathLike[str]) -> None:
    """Refinement progress: training and validation error (left) and loss (right) per epoch."""
    fig = Figure(figsize=(10, 4), layout="constrained")
    error_ax, loss_ax = fig.subplots(1, 2)
    if not history:
        error_ax.text(0.5, 0.5, "no epochs", ha="center", va="center", transform=error_ax.transAxes)
    epochs = [row["epoch"] for row in history]
    for ax, key, title in ((error_ax, "error", "error rate"), (loss_ax, "loss", "cross-entropy loss")):
        ax.plot(epochs, [row[f"train_{key}"] for row in history], marker="o", label="training (augmented)")
        values = [row[f"validation_{key}"] for row in history]
        if any(np.isfinite(values)):
            ax.plot(epochs, values, marker="s", label="validation (held out from training)")
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
    error_ax.set_ylim(bottom=0)
    _save(fig, path)
