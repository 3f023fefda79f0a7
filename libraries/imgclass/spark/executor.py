"""What runs inside Spark's Python workers: decode, shape, run the network, classify.

Spark calls :func:`featurize_partition` and :func:`score_partition` through
``DataFrame.mapInArrow`` with one partition's rows as Arrow record batches.
They are module-level functions (bound to their settings with
:func:`functools.partial`), so Spark pickles them by reference: each Python
worker imports this module, torch and the model code once, and loads a model
once (:func:`functools.lru_cache`) from the file shipped with the job
(:func:`imgclass.spark.session.ship_file`). Python workers are reused across
tasks (Spark's default), so a model is loaded once per worker, not per task.

The work is the local engine's, line for line: files are decoded by
:func:`imgclass.io.images.load_rgb` (bytes of Spark's ``binaryFile`` source by
:func:`~imgclass.io.images.decode_image_bytes`, the same decoder), JPEGs at
the transform's draft scale, written into one ``(B, R, R, 3)`` uint8 batch
(zeros where a file cannot be read, as :class:`~imgclass.model.dataset.ImageDataset`
does) and run through :func:`imgclass.model.inference.run_network` under the
run's precision, batch-invariant as the local loop (so fp32 features are
bit-identical to the local engine's whatever the partitions); classification is :meth:`imgclass.model.predictor.Predictor.predict`.
An unreadable image is a row with ``ok = false`` and its error, never a
failed task.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np

from imgclass.io.images import UnreadableImageError, decode_image_bytes, load_rgb

if TYPE_CHECKING:
    import pyarrow as pa
    import torch
    from PIL import Image

    from imgclass.model.featurizer import Featurizer
    from imgclass.model.predictor import Predictor
    from imgclass.model.transforms import ImageTransform


#: the columns :func:`score_partition` yields (Spark types: see :data:`imgclass.spark.batch.SCORES_SCHEMA`)
SCORE_COLUMNS = ("path", "ok", "error", "label", "score", "scores", "model_name", "model_version")


def shipped_file(name: str) -> str:
    """The local path of a file shipped with :func:`~imgclass.spark.session.ship_file` (on any executor)."""
    from pyspark import SparkFiles

    return SparkFiles.get(name)


def _set_threads(threads: int) -> None:
    import torch

    if threads > 0 and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


@functools.lru_cache(maxsize=2)
def load_featurizer(name: str, device: str) -> "tuple[Featurizer, torch.nn.Module]":
    """Step 2's featurizer, shipped as ``name``, and its network prepared for ``device``: once per Python worker."""
    import torch

    from imgclass.model.featurizer import Featurizer
    from imgclass.model.inference import DevicePlan

    featurizer = Featurizer.load(Path(shipped_file(name)))
    return featurizer, DevicePlan.for_device(torch.device(device)).prepare(featurizer.network.eval())


@functools.lru_cache(maxsize=2)
def load_predictor(featurizer: str, svm_joblib: str, svm_json: str, device: str, precision: str,
                   name_prefix: str) -> "Predictor":
    """The model of steps 2-4 from its shipped files (``''`` for the SVM files of a ``'dnn'`` model)."""
    import torch

    from imgclass.model.predictor import Predictor
    from imgclass.model.runtime import Runtime, resolve_device

    runtime = Runtime(resolve_device(device), getattr(torch, precision), 0)
    return Predictor.load(Path(shipped_file(featurizer)), Path(shipped_file(svm_joblib)) if svm_joblib else None,
                          Path(shipped_file(svm_json)) if svm_json else None, runtime, name_prefix)


def import_model_code(batches: Iterator["pa.RecordBatch"]) -> Iterator["pa.RecordBatch"]:
    """A warm-up task (:func:`imgclass.spark.session.warm_up`): import torch, the model code and scikit-learn
    in this Python worker; consume the rows, return none."""
    import torch  # noqa: F401

    import imgclass.model.featurizer  # noqa: F401
    import imgclass.model.inference  # noqa: F401
    import imgclass.model.predictor  # noqa: F401
    import imgclass.model.svm  # noqa: F401

    for _ in batches:
        pass
    return iter(())


def decode(source: str, content: bytes | None, draft_size: tuple[int, int] | None) -> "tuple[Image.Image | None, str]":
    """One image as RGB and ``''``, or None and why it cannot be read (``content``: the file's bytes, if Spark read them)."""
    try:
        if content is None:
            return load_rgb(source, draft_size=draft_size), ""
        return decode_image_bytes(content, source, draft_size=draft_size), ""
    except UnreadableImageError as exc:
        return None, str(exc)
    except OSError as exc:  # a file that vanished or cannot be opened: the same as an unreadable one
        return None, f"cannot decode {source}: {exc}"


def _sources(batch: "pa.RecordBatch", base_dir: str) -> tuple[list[str], list[bytes | None]]:
    """Where each row's image is (``base_dir`` / ``path``) and its bytes when the input carries them."""
    paths = batch.column(batch.schema.get_field_index("path")).to_pylist()
    sources = [str(Path(base_dir) / p) if base_dir else p for p in paths]
    index = batch.schema.get_field_index("content")
    contents = batch.column(index).to_pylist() if index >= 0 else [None] * len(paths)
    return sources, contents


def features_array(outputs: np.ndarray, ok: np.ndarray) -> "pa.Array":
    """``(B, D)`` float32 outputs -> Arrow ``list<float>`` (Spark's ``array<float>``), null where not ``ok``."""
    import pyarrow as pa

    outputs = np.ascontiguousarray(outputs, dtype=np.float32)
    dim = outputs.shape[1] if outputs.ndim == 2 else 0
    sizes = np.where(ok, dim, 0).astype(np.int32)
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int32)
    values = pa.array(outputs[ok].reshape(-1), type=pa.float32())
    return pa.ListArray.from_arrays(pa.array(offsets, type=pa.int32()), values, mask=pa.array(~ok))


def network_outputs(network: "torch.nn.Module", transform: "ImageTransform", sources: Sequence[str],
                    contents: Sequence[bytes | None], device: "torch.device",
                    dtype: "torch.dtype") -> tuple[np.ndarray, list[str]]:
    """``(B, D)`` float32 network outputs of one batch (NaN rows: unreadable) and each row's error ('' = ok)."""
    import torch

    from imgclass.model.inference import DevicePlan, run_network
    from imgclass.model.runtime import autocast, release_free_memory

    side = transform.resolution
    images = torch.zeros((len(sources), side, side, 3), dtype=torch.uint8)
    slots = images.numpy()
    errors = []
    for slot, source, content in zip(slots, sources, contents):
        image, error = decode(source, content, transform.draft_size)
        if image is not None:
            transform.to_array(image, slot)
        errors.append(error)
    plan = DevicePlan.for_device(device, batch_invariant=True)  # as the local loop: the same kernels, bit for bit
    with torch.inference_mode(), autocast(device, dtype):
        outputs = run_network(network, images, plan).float().cpu().numpy()
    if device.type == "cpu":
        release_free_memory()
    bad = [i for i, error in enumerate(errors) if error]
    if bad:
        outputs[bad] = np.nan
    return outputs, errors


def chunks(batches: Iterator["pa.RecordBatch"], size: int) -> Iterator["pa.RecordBatch"]:
    """A partition's rows in batches of ``size`` (the last one shorter), whatever sizes Spark's Arrow batches have.

    Memory on an executor stays one batch of decoded images, however Spark
    cut the partition into Arrow batches.
    """
    import pyarrow as pa

    pending: list[pa.RecordBatch] = []
    held = 0
    for batch in batches:
        pending.append(batch)
        held += batch.num_rows
        if held < size:
            continue
        table = pa.Table.from_batches(pending)
        start = 0
        while held - start >= size:
            yield table.slice(start, size).combine_chunks().to_batches()[0]
            start += size
        pending = table.slice(start).to_batches() if start < held else []
        held -= start
    if held:
        yield pa.Table.from_batches(pending).combine_chunks().to_batches()[0]


def featurize_partition(batches: Iterator["pa.RecordBatch"], featurizer_file: str, base_dir: str, device: str,
                        precision: str, batch_size: int, threads: int) -> Iterator["pa.RecordBatch"]:
    """Step 3 on one partition: rows ``path, label, split`` in, the same plus ``ok, error, features`` out.

    ``path`` is relative to ``base_dir`` (the dataset's image folder);
    ``precision`` a torch dtype name (``'float32'``, ``'bfloat16'``,
    ``'float16'``), decided once on the driver so every executor computes
    the same kind of features; ``device`` is ``run_device``, resolved here.
    """
    import pyarrow as pa
    import torch

    from imgclass.model.runtime import resolve_device

    _set_threads(threads)
    where, dtype = resolve_device(device), getattr(torch, precision)
    featurizer, network = load_featurizer(featurizer_file, str(where))
    for chunk in chunks(batches, batch_size):
        sources, contents = _sources(chunk, base_dir)
        outputs, errors = network_outputs(network, featurizer.transform, sources, contents, where, dtype)
        ok = np.array([not error for error in errors], dtype=bool)
        columns = [chunk.column(chunk.schema.get_field_index(name)) for name in ("path", "label", "split")]
        yield pa.RecordBatch.from_arrays(
            [*columns, pa.array(ok), pa.array(errors, type=pa.string()), features_array(outputs, ok)],
            names=["path", "label", "split", "ok", "error", "features"])


def score_partition(batches: Iterator["pa.RecordBatch"], featurizer_file: str, svm_joblib: str, svm_json: str,
                    name_prefix: str, device: str, precision: str, batch_size: int,
                    threads: int) -> Iterator["pa.RecordBatch"]:
    """Batch scoring on one partition: rows ``path`` (and ``content``) in; ``path, ok, error, label, score,
    scores, model_name, model_version`` out (``scores``: every class's calibrated probability)."""
    import pyarrow as pa

    _set_threads(threads)
    predictor = load_predictor(featurizer_file, svm_joblib, svm_json, device, precision, name_prefix)
    labels = predictor.labels
    for chunk in chunks(batches, batch_size):
        sources, contents = _sources(chunk, "")
        decoded = [decode(source, content, predictor.transform.draft_size) for source, content in zip(sources, contents)]
        ok = np.array([image is not None for image, _ in decoded], dtype=bool)
        probabilities = np.zeros((len(sources), len(labels)))
        probabilities[ok] = predictor.predict([image for image, _ in decoded if image is not None]).probabilities
        best = np.argmax(probabilities, axis=1)  # the first of equal maxima, as the local engine's rows
        n = len(sources)
        yield pa.RecordBatch.from_arrays(
            [pa.array(sources, type=pa.string()), pa.array(ok), pa.array([error for _, error in decoded]),
             pa.array([labels[b] if good else None for b, good in zip(best, ok)], type=pa.string()),
             pa.array([float(p[b]) if good else None for p, b, good in zip(probabilities, best, ok)],
                      type=pa.float64()),
             pa.array([list(zip(labels, map(float, p))) if good else None for p, good in zip(probabilities, ok)],
                      type=pa.map_(pa.string(), pa.float64())),
             pa.array([predictor.model_name] * n, type=pa.string()),
             pa.array([predictor.model_version] * n, type=pa.string())],
            names=list(SCORE_COLUMNS))
