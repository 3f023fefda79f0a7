"""The trained model as an MLflow pyfunc model: what the pipeline logs and registers, what
``mlflow models serve`` runs, and how the service and batch scoring load a model by its URI.

A model folder (:func:`save_model`) holds the files steps 2-4 wrote
(``featurizer.pth``, ``svm.joblib`` + ``svm.json`` unless the refined network
classifies itself, ``labels.json``), a signature, an input example, the pip
requirements, and our own inference code: the model is *code*
(MLflow's models-from-code, :data:`MODEL_CODE`), so nothing of this package is
pickled into it, and a snapshot of the ``imgclass`` package travels in its
``code/`` folder so that an old version keeps running the code it was made
with. :class:`ImgClassModel` predicts with
:class:`~imgclass.model.predictor.Predictor`, the same code the service, batch
scoring and Spark use.

``predict`` takes a pandas DataFrame with the original tutorial's request
column ``'image base64 string'`` (PNG or JPEG, a ``data:`` URL is accepted) or
a ``'path'`` column of image files, and answers one row per input row:
``label``, ``score`` (its calibrated probability), ``allScores`` (every class's
probability, in class-id order) and ``error`` (``''``, or why this row's image
could not be classified: a bad image fails its row, never the batch). Served
over HTTP (``mlflow models serve``), the ``path`` column is refused: it would
let any client make the server open its files.

Where models and runs are recorded (:func:`resolve_tracking_uri`) is decided
here rather than in :mod:`imgclass.tracking` because serving needs it too
(``models:/`` URIs are looked up in the registry of that store), and the
serving layer sits below tracking.

Importing this module is cheap: MLflow, pandas and torch load inside the
functions that need them.
"""

from __future__ import annotations

import base64
import functools
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from imgclass.errors import ImgClassError, MissingArtifactError
from imgclass.layout import DatasetLayout
from imgclass.parameters import Parameters
from imgclass.serve.client import SCORE_IMAGE_FIELD

if TYPE_CHECKING:
    import pandas as pd

    from imgclass.model.predictor import Predictor

#: The other input column: image files on the machine that runs the model.
PATH_FIELD = "path"
#: Output columns, one row per input row.
OUTPUT_COLUMNS = ("label", "score", "allScores", "error")
#: ``mlflow_trackingUri`` that means "the environment's MLFLOW_TRACKING_URI, else a SQLite file under rootDir".
AUTO = "auto"
TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"
#: The default store's file and its artifact folder, beside each other under ``rootDir``.
DEFAULT_DB_NAME = "mlflow.db"
ARTIFACTS_DIR_NAME = "mlartifacts"
#: Name of the model's folder inside a run's artifacts (``runs:/<run id>/model``).
MODEL_ARTIFACT_PATH = "model"
#: The model's artifacts: name in MLflow's ``context.artifacts`` -> file name.
ARTIFACT_FILES = {"featurizer": "featurizer.pth", "svm_joblib": "svm.joblib", "svm_json": "svm.json",
                  "labels": "labels.json"}
#: ``model_config`` keys :class:`ImgClassModel` understands (``mlflow.pyfunc.load_model(uri, model_config=...)``).
CONFIG_DEFAULTS = {"run_device": "auto", "run_precision": "fp32", "batch_size": 32, "allow_paths": None}
#: Images per forward pass when a request carries many.
CHUNK = 32

#: The model's code file (models-from-code): MLflow copies it into the model and runs it on loading.
MODEL_CODE = '''"""The imgclass image classifier: featurizer + classifier (see imgclass.serve.pyfunc)."""
from mlflow.models import set_model

from imgclass.serve.pyfunc import python_model

set_model(python_model())
'''

# MLflow's own defaults retry an unreachable server for minutes and report usage over the network;
# a training step that only records its results should neither wait nor call out. A value the user
# set in the environment wins.
MLFLOW_ENV_DEFAULTS = {"MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
                       "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
                       "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}


class ModelUriError(ImgClassError):
    """A model URI that does not lead to a model: unknown registered model, version or alias, bad path."""


# --------------------------------------------------------------------------- where runs and models live
def default_tracking_uri(root: Path) -> str:
    """``sqlite:///<root>/mlflow.db``: the embedded store, no server needed."""
    return f"sqlite:///{(Path(root) / DEFAULT_DB_NAME).as_posix()}"


def resolve_tracking_uri(value: str, root: Path, environ: Mapping[str, str] | None = None) -> str:
    """The tracking/registry URI that ``mlflow_trackingUri = value`` means; ``''`` = tracking off.

    ``'auto'``: ``$MLFLOW_TRACKING_URI`` if set, else :func:`default_tracking_uri`
    under ``root``. Any other value is the URI itself.
    """
    environ = os.environ if environ is None else environ
    if value == AUTO:
        return environ.get(TRACKING_URI_ENV, "").strip() or default_tracking_uri(root)
    return value.strip()


def sqlite_path(tracking_uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (None for other stores)."""
    match = re.fullmatch(r"sqlite:///(.+?)(\?.*)?", tracking_uri)
    return Path(match.group(1)).expanduser().resolve() if match else None


def artifact_location(tracking_uri: str, experiment_name: str) -> str | None:
    """Where a new experiment of a SQLite store keeps its artifacts: ``<db folder>/mlartifacts/<name>``.

    MLflow's own default for a database store is ``./mlruns`` under the
    current folder, which scatters artifacts wherever a script was started;
    beside the database they move with it. Other stores (a server) decide
    themselves (None).
    """
    database = sqlite_path(tracking_uri)
    if database is None:
        return None
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", experiment_name).strip("._") or "experiment"
    return (database.parent / ARTIFACTS_DIR_NAME / safe).as_uri()


def import_mlflow() -> Any:
    """``import mlflow`` with this toolkit's defaults: no telemetry, short HTTP retries, quiet INFO logs."""
    for key, value in MLFLOW_ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)
    import mlflow

    for name in ("mlflow", "alembic"):  # schema migrations and store creation log at INFO
        logging.getLogger(name).setLevel(logging.WARNING)
    return mlflow


def prepare_store(tracking_uri: str) -> None:
    """Create the folder of a SQLite store's file (SQLite creates the file, not its folder)."""
    database = sqlite_path(tracking_uri)
    if database is not None:
        database.parent.mkdir(parents=True, exist_ok=True)


# --------------------------------------------------------------------------- the model's inference code
def _present(value: Any) -> bool:
    """A cell with content: not None, NaN or an empty string."""
    return value is not None and value == value and value != ""


@dataclass
class _Row:
    label: str = ""
    score: float = float("nan")
    allScores: list[float] | None = None
    error: str = ""


class ImgClassModel:
    """The pyfunc model: MLflow calls :meth:`load_context` once, then :meth:`predict` per request.

    A plain class; :func:`python_model` makes it an ``mlflow.pyfunc.PythonModel``
    (so this module imports without MLflow). ``model_config`` (see
    :data:`CONFIG_DEFAULTS`): ``run_device``, ``run_precision``, ``batch_size``,
    and ``allow_paths`` (None = allowed except inside MLflow's HTTP scoring server).
    """

    predictor: "Predictor | None" = None
    config: dict[str, Any]

    def load_context(self, context: Any) -> None:
        from imgclass.model.predictor import Predictor
        from imgclass.model.runtime import Runtime

        self.config = {**CONFIG_DEFAULTS, **(getattr(context, "model_config", None) or {})}
        artifacts = context.artifacts
        svm = ("svm_joblib" in artifacts) and Path(artifacts["svm_joblib"]).is_file()
        runtime = Runtime.resolve(self.config["run_device"], self.config["run_precision"], 0)
        self.predictor = Predictor.load(Path(artifacts["featurizer"]),
                                        Path(artifacts["svm_joblib"]) if svm else None,
                                        Path(artifacts["svm_json"]) if svm else None, runtime)

    def _paths_allowed(self) -> bool:
        allowed = self.config.get("allow_paths")
        if allowed is None:  # MLflow's scoring server marks its process; a client must not pick server files
            return os.environ.get("_MLFLOW_IS_IN_SERVING_ENVIRONMENT", "").lower() != "true"
        return bool(allowed)

    def predict(self, context: Any, model_input: Any, params: dict[str, Any] | None = None) -> "pd.DataFrame":
        """One output row per input row: ``label``, ``score``, ``allScores``, ``error``."""
        import pandas as pd

        from imgclass.io.images import (InvalidBase64Error, UnreadableImageError, decode_base64_image,
                                        decode_image_bytes)

        if self.predictor is None:
            raise RuntimeError("load_context was not called")
        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        columns = [c for c in (SCORE_IMAGE_FIELD, PATH_FIELD) if c in frame.columns]
        if not columns:
            raise ImgClassError(f"the input needs a column {SCORE_IMAGE_FIELD!r} (base64 PNG or JPEG) or "
                                f"{PATH_FIELD!r} (image files); it has {list(frame.columns)}")
        rows = [_Row() for _ in range(len(frame))]
        encoded: list[tuple[int, Any]] = []
        files: list[tuple[int, str]] = []
        for i, record in enumerate(frame[columns].itertuples(index=False, name=None)):
            cells = dict(zip(columns, record))
            if _present(cells.get(SCORE_IMAGE_FIELD)):
                encoded.append((i, cells[SCORE_IMAGE_FIELD]))
            elif _present(cells.get(PATH_FIELD)):
                if self._paths_allowed():
                    files.append((i, str(cells[PATH_FIELD])))
                else:
                    rows[i].error = (f"the {PATH_FIELD!r} column is not accepted by a served model (a client must "
                                     f"not open the server's files); send {SCORE_IMAGE_FIELD!r}")
            else:
                rows[i].error = f"row {i} has no image: {' or '.join(map(repr, columns))} is empty"
        draft = getattr(self.predictor.transform, "draft_size", None)
        for start in range(0, len(encoded), CHUNK):  # decoded a chunk at a time: memory does not grow with N
            images: list[tuple[int, Any]] = []
            for i, text in encoded[start:start + CHUNK]:
                try:
                    data = decode_base64_image(text, f"row {i}'s {SCORE_IMAGE_FIELD!r}")
                    images.append((i, decode_image_bytes(data, f"row {i}", draft_size=draft)))
                except (InvalidBase64Error, UnreadableImageError) as exc:  # a bad row, not a failed batch
                    rows[i].error = str(exc)
            if images:
                self._fill(rows, [i for i, _ in images], self.predictor.predict([image for _, image in images]))
        if files:
            self._predict_files(rows, files)
        return pd.DataFrame({"label": [r.label for r in rows], "score": [r.score for r in rows],
                             "allScores": [r.allScores if r.allScores is not None else [] for r in rows],
                             "error": [r.error for r in rows]}, columns=list(OUTPUT_COLUMNS))

    def _predict_files(self, rows: list[_Row], files: list[tuple[int, str]]) -> None:
        where: dict[str, list[int]] = {}
        for i, path in files:
            where.setdefault(path, []).append(i)
        for batch in self.predictor.predict_files(list(where), int(self.config["batch_size"])):
            for path, message in batch.failures:
                for i in where[path]:
                    rows[i].error = message
            indices = [where[path] for path in batch.paths]
            for group, probabilities in zip(indices, batch.predictions.probabilities):
                for i in group:
                    self._set(rows[i], probabilities)

    def _fill(self, rows: list[_Row], indices: list[int], predictions: Any) -> None:
        for i, probabilities in zip(indices, predictions.probabilities):
            self._set(rows[i], probabilities)

    def _set(self, row: _Row, probabilities: Any) -> None:
        best = int(probabilities.argmax())
        row.label = self.predictor.labels[best]
        row.score = float(probabilities[best])
        row.allScores = [float(p) for p in probabilities]


@functools.lru_cache(maxsize=None)
def _python_model_class() -> type:
    from mlflow.pyfunc import PythonModel

    class ImgClassPythonModel(ImgClassModel, PythonModel):
        """:class:`ImgClassModel` as the ``mlflow.pyfunc.PythonModel`` MLflow expects."""

    return ImgClassPythonModel


def python_model() -> Any:
    """A new :class:`ImgClassModel` that is an ``mlflow.pyfunc.PythonModel`` (what :data:`MODEL_CODE` sets)."""
    return _python_model_class()()


# --------------------------------------------------------------------------- saving a model folder
def signature() -> Any:
    """Input: either image column (each optional per row); output: label, score, allScores, error."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, DataType, Schema
    from mlflow.types.schema import Array

    inputs = Schema([ColSpec(DataType.string, SCORE_IMAGE_FIELD, required=False),
                     ColSpec(DataType.string, PATH_FIELD, required=False)])
    outputs = Schema([ColSpec(DataType.string, "label"), ColSpec(DataType.double, "score"),
                      ColSpec(Array(DataType.double), "allScores"), ColSpec(DataType.string, "error")])
    return ModelSignature(inputs, outputs)


def example_image_base64(path: Path, side: int = 64) -> str:
    """A small JPEG thumbnail of ``path`` as base64: the model's input example (kept small on purpose)."""
    import io

    from imgclass.io.images import load_rgb

    image = load_rgb(path)
    image.thumbnail((side, side))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def pip_requirements() -> list[str]:
    """The libraries the model's code imports, pinned to the versions it was saved with.

    Given explicitly: MLflow would otherwise infer them by loading the model
    in a subprocess, which costs seconds per logged model.
    """
    from importlib.metadata import PackageNotFoundError, version

    wanted = ("mlflow", "torch", "torchvision", "scikit-learn", "numpy", "pandas", "pillow", "joblib",
              "efficientnet-lite-pytorch")
    pins = []
    for name in wanted:
        try:
            pins.append(f"{name}=={version(name)}")
        except PackageNotFoundError:
            continue
    return pins


def model_files(layout: DatasetLayout, classifier: str) -> dict[str, Path]:
    """The files of the dataset's current model (``'dnn'``: no SVM files), checked to exist."""
    files = {"featurizer": layout.featurizer_pth, "labels": layout.labels_json}
    if classifier != "dnn":
        files.update(svm_joblib=layout.svm_joblib, svm_json=layout.svm_json)
    missing = [str(path) for path in files.values() if not path.is_file()]
    if missing:
        raise MissingArtifactError(f"model files missing: {', '.join(missing)}; run steps 1-4 first")
    return files


def _package_snapshot(into: Path) -> Path:
    """A copy of the installed ``imgclass`` package (code only) for the model's ``code/`` folder."""
    import imgclass

    source = Path(imgclass.__file__).resolve().parent
    target = into / "imgclass"
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "static"))
    return target


def save_model(layout: DatasetLayout, path: Path, classifier: str, example_image: Path | None = None,
               metadata: Mapping[str, Any] | None = None) -> Path:
    """Write the dataset's current model (steps 2-4's files) as an MLflow pyfunc model folder at ``path``.

    ``classifier``: the ``classifier`` parameter the files were made with
    (``'dnn'``: the network classifies, there is no SVM);
    ``example_image``: an image whose thumbnail becomes the input example;
    ``metadata``: stored in the model's ``MLmodel`` file (dataset, classifier, ...).
    """
    mlflow = import_mlflow()
    import pandas as pd

    files = model_files(layout, classifier)
    with tempfile.TemporaryDirectory(prefix="imgclass-model-") as scratch:
        code_file = Path(scratch) / "imgclass_model.py"
        code_file.write_text(MODEL_CODE, encoding="utf-8")
        package = _package_snapshot(Path(scratch))
        example = None
        if example_image is not None:
            example = pd.DataFrame({SCORE_IMAGE_FIELD: [example_image_base64(example_image)]})
        mlflow.pyfunc.save_model(path=str(path), python_model=str(code_file),
                                 artifacts={name: str(file) for name, file in files.items()},
                                 code_paths=[str(package)], signature=signature(), input_example=example,
                                 pip_requirements=pip_requirements(), metadata=dict(metadata or {}),
                                 model_config=dict(CONFIG_DEFAULTS))
    return Path(path)


# --------------------------------------------------------------------------- loading a model by its URI
@dataclass(frozen=True)
class RegistryVersion:
    """A registered model version that a ``models:/`` URI names."""

    name: str
    version: str


def parse_registry_uri(model_uri: str) -> tuple[str, str | None, str | None] | None:
    """``models:/<name>/<version>`` -> (name, version, None); ``models:/<name>@<alias>`` -> (name, None, alias)."""
    match = re.fullmatch(r"models:/([^/@]+)(?:/(\d+)|@([\w-]+))/?", model_uri.strip())
    if not model_uri.startswith("models:/"):
        return None
    if not match:
        raise ModelUriError(f"cannot read the model URI {model_uri!r}: use models:/<name>/<version> or "
                            "models:/<name>@<alias>")
    return match.group(1), match.group(2), match.group(3)


def resolve_registry_version(client: Any, model_uri: str) -> RegistryVersion | None:
    """The registered version a ``models:/`` URI names (an alias resolved to its version); None for other URIs.

    Raises :class:`ModelUriError` with what exists instead, e.g. the versions of
    the model or that the alias is not set.
    """
    from mlflow.exceptions import MlflowException

    parsed = parse_registry_uri(model_uri)
    if parsed is None:
        return None
    name, version, alias = parsed
    try:
        client.get_registered_model(name)
    except MlflowException:
        known = [m.name for m in client.search_registered_models(max_results=20)]
        raise ModelUriError(f"no registered model {name!r} in {client.tracking_uri}; registered: "
                            f"{', '.join(known) or 'none'}") from None
    try:
        found = client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, version)
    except MlflowException:
        versions = sorted(int(v.version) for v in client.search_model_versions(f"name = '{name}'"))
        what = f"alias @{alias}" if alias else f"version {version}"
        raise ModelUriError(f"{name!r} has no {what}; its versions: {', '.join(map(str, versions)) or 'none'}"
                            + (" (set an alias with scripts/8_promoteModel.py)" if alias else "")) from None
    return RegistryVersion(name, str(found.version))


def resolve_model_source(model_uri: str, tracking_uri: str) -> tuple[str, RegistryVersion | None]:
    """``(what MLflow loads, the registered version)`` for ``model_uri``: an alias or version of a registered
    model becomes ``models:/<name>/<version>``; a run or a folder stays as it is (no registered version).

    One-line :class:`ModelUriError` for a registry that cannot be reached, a missing model, version or
    alias, or a URI that names nothing.
    """
    if not tracking_uri and re.match(r"(models|runs):/", model_uri):
        raise ModelUriError(f"deploy_modelUri={model_uri!r} needs a model registry, but mlflow_trackingUri is ''")
    registered = None
    if parse_registry_uri(model_uri) is not None:
        # Only a registry URI opens a store: with no tracking URI MLflow would create its default one,
        # ./mlflow.db, in whatever folder a folder model is scored from.
        import_mlflow()
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException

        client = MlflowClient(tracking_uri or None, tracking_uri or None)
        try:
            registered = resolve_registry_version(client, model_uri)
        except MlflowException as exc:
            raise ModelUriError(f"cannot reach the model registry at {tracking_uri}: {_first_line(exc)}") from None
    source = f"models:/{registered.name}/{registered.version}" if registered else model_uri
    if not re.match(r"[a-z][a-z0-9+.-]*:/", source) and not Path(source).expanduser().is_dir():
        raise ModelUriError(f"model not found: {model_uri!r} is neither a model URI (models:/..., runs:/...) nor "
                            "a model folder")
    return source, registered


def load_model_predictor(model_uri: str, tracking_uri: str, run_device: str = "auto",
                         run_precision: str = "fp32", run_workers: int = 0) -> "Predictor":
    """The :class:`~imgclass.model.predictor.Predictor` inside the MLflow model at ``model_uri``.

    ``model_uri``: ``models:/<name>/<version>``, ``models:/<name>@<alias>``,
    ``runs:/<run id>/model`` or a local model folder; ``models:/`` and
    ``runs:/`` URIs are looked up in ``tracking_uri``. A registered version
    is served under its registry name and version number (what ``/health``
    and batch scoring's rows report).
    """
    import dataclasses

    mlflow = import_mlflow()
    from mlflow.exceptions import MlflowException

    source, registered = resolve_model_source(model_uri, tracking_uri)
    previous = mlflow.get_tracking_uri() if tracking_uri else None
    try:
        if tracking_uri:
            mlflow.set_tracking_uri(tracking_uri)
            mlflow.set_registry_uri(tracking_uri)
        config = {"run_device": run_device, "run_precision": run_precision, "allow_paths": True}
        loaded = mlflow.pyfunc.load_model(source, model_config=config)
    except MlflowException as exc:
        raise ModelUriError(f"cannot load the model {model_uri!r}: {_first_line(exc)}") from None
    finally:
        if previous is not None:
            mlflow.set_tracking_uri(previous)
    model = loaded.unwrap_python_model()
    if not isinstance(model, ImgClassModel) or model.predictor is None:
        raise ModelUriError(f"{model_uri!r} is an MLflow model, but not an imgclass image classifier")
    predictor = model.predictor
    if run_workers:
        predictor.runtime = dataclasses.replace(predictor.runtime, run_workers=run_workers)
    if registered:
        predictor.model_name, predictor.model_version = registered.name, registered.version
    return predictor


def load_deployed_predictor(params: Parameters, run_workers: int = 0) -> "Predictor":
    """What the service and batch scoring classify with: the model ``deploy_modelUri`` names, or
    (``''``) the files steps 2-4 wrote to ``proc/<datasetName>/``."""
    from imgclass.serve.predictor import load_predictor

    tracking_uri = resolve_tracking_uri(params.mlflow_trackingUri, params.root_path)
    layout = DatasetLayout.from_parameters(params)
    if not params.deploy_modelUri:
        return load_predictor(layout, params.run_device, params.run_precision, run_workers)
    return load_model_predictor(params.deploy_modelUri, tracking_uri, params.run_device, params.run_precision,
                                run_workers)


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "message", "") or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


__all__ = ["ImgClassModel", "ModelUriError", "load_deployed_predictor", "load_model_predictor", "python_model",
           "resolve_model_source", "resolve_tracking_uri", "save_model"]
