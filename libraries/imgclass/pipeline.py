"""The pipeline's steps as plain functions: what scripts 1-5 (and notebooks) call.

Each step reads the previous step's files through :class:`DatasetLayout`,
does its work with the single-purpose modules (splits, backbones, featurize,
svm, metrics, plots) and writes its own files atomically. Steps return small
report objects; printing is left to the scripts.
"""

from __future__ import annotations

import csv
import io
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import joblib
import numpy as np

from imgclass.atomic import atomic_path, write_json, write_text
from imgclass.backbones import load_pretrained_extractor
from imgclass.dedup import StraddlingPair, find_straddling_duplicates, hash_cache_path
from imgclass.errors import ImgClassError, MissingArtifactError
from imgclass.featurize import FeatureWriter, Featurizer, ImageFileDataset, effective_workers, extract_features
from imgclass.featurize_cache import cache_index_path, file_stamp, find_reusable_features, make_recipe, write_cache_index
from imgclass.layout import DatasetLayout, require
from imgclass.parameters import Parameters
from imgclass.refine import RefineConfig, RefineResult, refine
from imgclass.runtime import default_workers, featurize_workers, resolve_device, resolve_precision
from imgclass.splits import (TEST, TRAIN, SplitRow, counts_per_class, list_dataset, read_dedicated_test_images,
                             read_split, split_dataset, write_split)
from imgclass.svm import TrainedSvm, train_svm


# --- step 1 -------------------------------------------------------------------------------
@dataclass
class PrepareReport:
    rows: list[SplitRow]
    labels: list[str]
    counts: dict[str, dict[str, int]]
    skipped_files: list[str]
    used_dedicated_test_file: bool
    #: near-duplicate images that the split put on both sides (they inflate the test accuracy)
    straddling_duplicates: list[StraddlingPair] = field(default_factory=list)


def prepare_data(params: Parameters) -> PrepareReport:
    """Step 1: list ``images/<ds>/``, split each class, write ``split.csv`` and ``labels.json``.

    Also looks for near-duplicates (dhash, ``dedup_*`` parameters) that the
    split puts into both training and test; hashes are cached in ``proc/<ds>/``.
    """
    layout = DatasetLayout.from_parameters(params)
    listing = list_dataset(layout.images_dir)
    dedicated = None
    if layout.dedicated_test_tsv.is_file():
        dedicated = read_dedicated_test_images(layout.dedicated_test_tsv, listing)
    rows = split_dataset(listing, params.ratioTrainTest, params.randomSeed, params.imagesSplitBy, dedicated)
    write_split(rows, listing.labels, layout.split_csv, layout.labels_json)
    straddling = find_straddling_duplicates(((r.path, r.split) for r in rows), layout.images_dir,
                                            params.dedup_hashSize, params.dedup_maxDistance,
                                            hash_cache_path(layout, params.dedup_hashSize))
    return PrepareReport(rows, listing.labels, counts_per_class(rows), listing.skipped_files, dedicated is not None,
                         straddling)


def read_labels(layout: DatasetLayout) -> list[str]:
    return json.loads(require(layout.labels_json, "scripts/1_prepareData.py").read_text(encoding="utf-8"))


# --- step 2 -------------------------------------------------------------------------------
@dataclass
class BuildReport:
    featurizer: Featurizer
    refinement: RefineResult | None = None


def build_featurizer(params: Parameters, pretrained: bool = True, progress: bool = True,
                     log: Callable[[str], None] = print,
                     on_epoch_end: Callable[[dict[str, float]], None] | None = None) -> BuildReport:
    """Step 2: the network step 3 runs, saved as ``featurizer.pth``.

    ``classifier='svm'``: the pretrained backbone, fixed. ``'dnn'`` and
    ``'svmDnnRefined'``: the backbone refined on the training images (see
    :mod:`imgclass.refine`); ``'dnn'`` then outputs class scores, and
    ``'svmDnnRefined'`` the refined penultimate features for the SVM.
    """
    layout = DatasetLayout.from_parameters(params)
    config = RefineConfig.from_parameters(params)  # bad rf_* values fail here, before any work
    if params.classifier == "dnn" and config.max_epochs == 0:
        raise ImgClassError("classifier='dnn' needs refinement: set rf_maxEpochs >= 1")
    extractor, source = load_pretrained_extractor(params.rf_pretrainedModelFilename, params.rf_inputResolution,
                                                  pretrained=pretrained)
    if params.classifier == "svm" or config.max_epochs == 0:
        featurizer = Featurizer(extractor, params.rf_resizeMode, source)
        featurizer.save(layout.featurizer_pth)
        return BuildReport(featurizer)

    rows = [r for r in read_split(require(layout.split_csv, "scripts/1_prepareData.py")) if r.split == TRAIN]
    labels = read_labels(layout)
    label_ids = {label: i for i, label in enumerate(labels)}
    device = resolve_device(params.run_device)
    result = refine(extractor, params.rf_resizeMode, config, [layout.images_dir / r.path for r in rows],
                    [label_ids[r.label] for r in rows], labels, layout.refinement_checkpoint, device,
                    resolve_precision(params.run_precision, device),
                    default_workers(params.run_workers, device), progress, log, on_epoch_end)
    _write_training_log(result.history, layout)
    model = result.model
    featurizer = Featurizer(model.extractor, params.rf_resizeMode,
                            f"{source}, refined {len(result.history)} epochs, best epoch {result.best_epoch}",
                            model.head, labels, "logits" if params.classifier == "dnn" else "features")
    featurizer.save(layout.featurizer_pth)
    return BuildReport(featurizer, result)


def _write_training_log(history: list[dict[str, float]], layout: DatasetLayout) -> None:
    from imgclass import plots

    columns = ["epoch", "learning_rate", "train_loss", "train_error", "validation_loss", "validation_error",
               "seconds"]
    buffer = io.StringIO()
    out = csv.writer(buffer, lineterminator="\n")
    out.writerow(columns)
    out.writerows([row[c] for c in columns] for row in history)
    write_text(layout.training_csv, buffer.getvalue())
    plots.plot_training_curves(history, layout.training_png)


# --- step 3 -------------------------------------------------------------------------------
@dataclass
class FeaturizeReport:
    n_images: int
    feature_dim: int
    failures: list[tuple[str, str]]
    seconds: float
    device: str
    precision: str
    workers: int
    #: images whose stored features were reused (unchanged file, featurizer and precision)
    n_reused: int = 0

    @property
    def n_featurized(self) -> int:
        """Images that went through the network in this run."""
        return self.n_images - self.n_reused


def featurize_dataset(params: Parameters, progress: bool = True) -> FeaturizeReport:
    """Step 3: features of every image in ``split.csv`` -> ``features.npy`` + ``features.csv`` + ``.json``.

    Features of images that are unchanged since the last run (same path, size
    and mtime) and were made by the same featurizer (weights and input
    recipe) at the same precision are copied from the previous
    ``features.npy`` instead of recomputed (see :mod:`imgclass.featurize_cache`).
    Rows are written batch by batch at their offsets in the file, so memory does
    not grow with the number of images.
    """
    layout = DatasetLayout.from_parameters(params)
    rows = read_split(require(layout.split_csv, "scripts/1_prepareData.py"))
    featurizer = Featurizer.load(layout.featurizer_pth)
    device = resolve_device(params.run_device)
    dtype = resolve_precision(params.run_precision, device)
    workers = featurize_workers(params.run_workers, device)
    precision = str(dtype).replace("torch.", "")
    start = time.perf_counter()
    paths = [r.path for r in rows]
    stamps = [file_stamp(layout.images_dir / p) for p in paths]
    recipe = make_recipe(featurizer.fingerprint(), precision)
    reusable = find_reusable_features(cache_index_path(layout), layout.features_npy, paths, stamps, recipe,
                                      featurizer.output_dim)
    todo = reusable.missing(len(rows))
    failures: list[tuple[int, str]] = []
    workers = effective_workers(len(todo), params.run_mbSize, workers, device)
    with FeatureWriter(layout.features_npy, len(rows), featurizer.output_dim) as writer:
        reusable.copy_into(writer)
        if len(todo):
            dataset = ImageFileDataset([layout.images_dir / paths[i] for i in todo], featurizer.transform)
            failures = [(int(todo[i]), message) for i, message in extract_features(
                featurizer.network, dataset, lambda batch, values: writer(todo[batch], values), params.run_mbSize,
                device, dtype, workers, progress)]
    seconds = time.perf_counter() - start
    failed = {index for index, _ in failures}
    buffer = io.StringIO()
    table = csv.writer(buffer, lineterminator="\n")
    table.writerow(["row", "path", "label", "split", "ok"])
    table.writerows((i, r.path, r.label, r.split, int(i not in failed)) for i, r in enumerate(rows))
    write_text(layout.features_csv, buffer.getvalue())
    write_json(layout.features_json, {**featurizer.describe(), "classifier": params.classifier,
                                      "precision": precision, "n_images": len(rows),
                                      "n_unreadable": len(failures), "n_reused_from_cache": len(reusable)})
    write_cache_index(cache_index_path(layout), layout.features_npy, recipe, paths, stamps,
                      (i not in failed for i in range(len(rows))))
    return FeaturizeReport(len(rows), featurizer.output_dim,
                           [(rows[i].path, message) for i, message in sorted(failures)],
                           seconds, str(device), precision, workers, len(reusable))


@dataclass
class FeatureTable:
    """Features of the readable images with their split rows and class ids."""

    features: np.ndarray
    rows: list[SplitRow]
    y: np.ndarray
    labels: list[str]
    featurizer: dict[str, Any] = field(default_factory=dict)

    def subset(self, split: str) -> tuple[np.ndarray, np.ndarray, list[SplitRow]]:
        mask = np.array([r.split == split for r in self.rows], dtype=bool)
        return self.features[mask], self.y[mask], [r for r, m in zip(self.rows, mask) if m]


def load_features(layout: DatasetLayout) -> FeatureTable:
    """Read step 3's output, dropping the rows of unreadable images."""
    made_by = "scripts/3_runDNN.py"
    features = np.load(require(layout.features_npy, made_by), mmap_mode="r")
    with open(require(layout.features_csv, made_by), newline="", encoding="utf-8") as handle:
        index = list(csv.DictReader(handle))
    if len(index) != len(features):
        raise MissingArtifactError(f"{layout.features_csv} and {layout.features_npy} disagree; re-run {made_by}")
    labels = read_labels(layout)
    label_ids = {label: i for i, label in enumerate(labels)}
    ok = np.array([r["ok"] == "1" for r in index], dtype=bool)
    rows = [SplitRow(r["path"], r["label"], r["split"]) for r, good in zip(index, ok) if good]
    unknown = sorted({r.label for r in rows} - set(label_ids))
    if unknown:
        raise MissingArtifactError(f"labels {unknown} are not in {layout.labels_json}; re-run steps 1-3")
    metadata = json.loads(layout.features_json.read_text(encoding="utf-8")) if layout.features_json.is_file() else {}
    return FeatureTable(np.asarray(features[ok], dtype=np.float32), rows,
                        np.array([label_ids[r.label] for r in rows], dtype=np.int64), labels, metadata)


def load_features_for(params: Parameters) -> FeatureTable:
    """Step 3's output, checked to be what ``params.classifier`` needs (class scores or features)."""
    table = load_features(DatasetLayout.from_parameters(params))
    output = table.featurizer.get("output", "features")
    wanted = "logits" if params.classifier == "dnn" else "features"
    if output != wanted:
        made_for = "classifier='dnn'" if output == "logits" else "classifier='svm' or 'svmDnnRefined'"
        raise MissingArtifactError(f"the stored features were made for {made_for}, but classifier="
                                   f"'{params.classifier}': re-run scripts 2 and 3 with the current parameters")
    return table


# --- step 4 -------------------------------------------------------------------------------
def train_classifier(params: Parameters) -> TrainedSvm | None:
    """Step 4: choose C by CV on the training features, fit, save ``svm.joblib`` + ``svm.json``.

    Returns None for ``classifier='dnn'``: the refined network is the classifier.
    """
    layout = DatasetLayout.from_parameters(params)
    table = load_features_for(params)
    if params.classifier == "dnn":
        return None
    X_train, y_train, _ = table.subset(TRAIN)
    X_test, y_test, _ = table.subset(TEST)
    if len(y_train) == 0:
        raise ImgClassError("no readable training images: check the report of scripts/3_runDNN.py")
    model = train_svm(X_train, y_train, table.labels, table.featurizer, params.svm_CVals, params.svm_cvFolds,
                      params.svm_boL2Normalize, params.randomSeed, params.svm_nJobs, X_test, y_test)
    with atomic_path(layout.svm_joblib) as tmp:
        joblib.dump(model, tmp)
    write_json(layout.svm_json, model.metadata())
    return model


def load_classifier(layout: DatasetLayout) -> TrainedSvm:
    model = joblib.load(require(layout.svm_joblib, "scripts/4_trainSVM.py"))
    if not isinstance(model, TrainedSvm):
        raise MissingArtifactError(f"{layout.svm_joblib} is not an imgclass SVM; re-run scripts/4_trainSVM.py")
    return model


# --- step 5 -------------------------------------------------------------------------------
@dataclass
class EvaluationReport:
    metrics: dict[str, Any]
    written: list[Path]


def evaluate(params: Parameters) -> EvaluationReport:
    """Step 5: test-set metrics, ``predictions.csv`` and plots in ``results/<ds>/``."""
    from imgclass import metrics as M
    from imgclass import plots

    layout = DatasetLayout.from_parameters(params)
    table = load_features_for(params)
    X_test, y_test, test_rows = table.subset(TEST)
    if len(y_test) == 0:
        raise ImgClassError("no readable test images to evaluate")
    if params.classifier == "dnn":
        if table.featurizer.get("labels") != table.labels:
            raise MissingArtifactError("the refined DNN was trained on other labels than the current split; "
                                       "re-run scripts 2 and 3")
        scores = softmax(X_test)
        C = None
    else:
        model = load_classifier(layout)
        if model.labels != table.labels:
            raise MissingArtifactError("the SVM was trained on other labels than the current split; "
                                       "re-run scripts/4_trainSVM.py")
        scores = model.decision_scores(X_test)
        C = model.C
    y_pred = np.argmax(scores, axis=1)
    labels = table.labels
    K = len(labels)
    summary = M.summarize(y_test, y_pred, scores, labels)
    summary.update({"classifier": params.classifier, "C": C, "featurizer": table.featurizer})
    results = layout.results_dir
    write_json(layout.metrics_json, summary)

    buffer = io.StringIO()
    out = csv.writer(buffer, lineterminator="\n")
    out.writerow(["path", "label", "predicted", "correct", "score"] + [f"score_{name}" for name in labels])
    for row, pred, s in zip(test_rows, y_pred, scores):
        out.writerow([row.path, row.label, labels[pred], int(labels[pred] == row.label), f"{s[pred]:.6g}"]
                     + [f"{v:.6g}" for v in s])
    write_text(layout.predictions_csv, buffer.getvalue())

    written = [layout.metrics_json, layout.predictions_csv]
    curves = M.roc_curves(y_test, scores, K)
    plots.plot_roc_curves(curves, labels, results / "roc_curves.png")
    plots.plot_confusion_matrix(M.confusion_matrix(y_test, y_pred, K), labels, results / "confusion_matrix.png")
    plots.plot_per_class_accuracy(M.per_class_accuracy(y_test, y_pred, K), labels,
                                  results / "per_class_accuracy.png")
    examples = _example_indices(y_test, y_pred, params.eval_numExampleImages, params.randomSeed)
    plots.plot_example_images([layout.images_dir / test_rows[i].path for i in examples],
                              [labels[y_test[i]] for i in examples], [labels[y_pred[i]] for i in examples],
                              [float(scores[i, y_pred[i]]) for i in examples], results / "examples.png")
    written += [results / n for n in ("roc_curves.png", "confusion_matrix.png", "per_class_accuracy.png",
                                      "examples.png")]
    return EvaluationReport(summary, written)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax, numerically stable."""
    shifted = np.asarray(logits, dtype=np.float64) - np.max(logits, axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def _example_indices(y_true: np.ndarray, y_pred: np.ndarray, count: int, seed: int) -> list[int]:
    """Up to ``count`` test images: every wrong one first (up to half), the rest right ones, seeded."""
    rng = np.random.default_rng(seed)
    wrong = rng.permutation(np.flatnonzero(y_true != y_pred)).tolist()
    right = rng.permutation(np.flatnonzero(y_true == y_pred)).tolist()
    n_wrong = min(len(wrong), max(count // 2, count - len(right)))
    chosen = wrong[:n_wrong] + right[:count - n_wrong]
    return sorted(chosen)
