"""The model registry: each trained model a new version, tagged with its test metrics; promotion.

A model is logged to its run as ``runs:/<run id>/model`` (the folder
:func:`imgclass.serve.pyfunc.save_model` writes) and registered as a new
version of ``mlflow_registeredModelName`` (default ``imgclass-<datasetName>``).
Step 5 tags that version with ``test_accuracy``, ``class_averaged_accuracy``
and the AUCs. :func:`promote` moves an alias (``champion``) to a version,
refusing one whose test accuracy is below the current champion's unless
forced: ``models:/<name>@champion`` is then what a deployment serves.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from imgclass.errors import ImgClassError
from imgclass.layout import DatasetLayout
from imgclass.parameters import Parameters, StepSpec
from imgclass.serve.pyfunc import MODEL_ARTIFACT_PATH, import_mlflow, resolve_tracking_uri, save_model
from imgclass.tracking.pending import wait_and_show

STEP = StepSpec("promote", "scripts/8_promoteModel.py",
                "make a registered model version @champion (refused if its test accuracy is lower)",
                ("datasetName", "rootDir", "mlflow_trackingUri", "mlflow_registeredModelName"))

#: The alias promotion moves (``models:/<name>@champion``).
CHAMPION = "champion"
#: Tag (of a run) naming the version registered from it, and (of a version) the dataset.
VERSION_TAG = "imgclass.registered_version"


class PromotionRefused(ImgClassError):
    """Promotion would replace a better champion (or the version was never evaluated)."""


def registered_model_name(params: Parameters) -> str:
    """``mlflow_registeredModelName``, or ``imgclass-<datasetName>``."""
    return params.mlflow_registeredModelName or f"imgclass-{params.datasetName}"


def log_and_register(client: Any, run_id: str, layout: DatasetLayout, name: str, classifier: str,
                     example_image: Path | None, tags: Mapping[str, str]) -> str:
    """Save the dataset's current model as a pyfunc, log it to ``run_id`` and register it; its version number."""
    from mlflow.exceptions import MlflowException

    with tempfile.TemporaryDirectory(prefix="imgclass-model-") as scratch:
        folder = save_model(layout, Path(scratch) / MODEL_ARTIFACT_PATH, classifier, example_image,
                            {"dataset": layout.dataset, **tags})
        client.log_artifacts(run_id, str(folder), MODEL_ARTIFACT_PATH)
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, description=f"imgclass image classifier of dataset {layout.dataset}")
    source = f"{client.get_run(run_id).info.artifact_uri}/{MODEL_ARTIFACT_PATH}"
    version = client.create_model_version(name, source, run_id=run_id, tags={"dataset": layout.dataset, **tags})
    client.set_tag(run_id, VERSION_TAG, f"{name}/{version.version}")
    return str(version.version)


def tag_version_with_metrics(client: Any, run_id: str, tags: Mapping[str, str]) -> str | None:
    """Put step 5's metrics on the newest version registered from ``run_id``; ``'name/version'`` or None."""
    versions = client.search_model_versions(f"run_id = '{run_id}'")
    if not versions:
        return None
    newest = max(versions, key=lambda v: int(v.version))
    for key, value in tags.items():
        client.set_model_version_tag(newest.name, newest.version, key, value)
    return f"{newest.name}/{newest.version}"


@dataclass
class PromotionReport:
    """What :func:`promote` did."""

    name: str
    version: str
    accuracy: float | None
    previous: str | None
    previous_accuracy: float | None
    forced: bool
    alias: str = CHAMPION

    def summary(self) -> str:
        """What ``scripts/8_promoteModel.py`` prints."""
        def acc(value: float | None) -> str:
            return "not evaluated" if value is None else f"test accuracy {value:.3f}"

        if self.previous == self.version:
            return f"Version {self.version} of {self.name} ({acc(self.accuracy)}) already is @{self.alias}"
        was = f"was version {self.previous}, {acc(self.previous_accuracy)}" if self.previous else "no version had it"
        forced = " (forced)" if self.forced else ""
        return (f"Version {self.version} of {self.name} ({acc(self.accuracy)}) is now @{self.alias}{forced} ({was})\n"
                f"Serve it: scripts/6_deploy.py --deploy_modelUri=models:/{self.name}@{self.alias}")


def _accuracy(version: Any) -> float | None:
    try:
        return float(version.tags["test_accuracy"])
    except (KeyError, TypeError, ValueError):
        return None


def promote(client: Any, name: str, version: str | None, force: bool = False, alias: str = CHAMPION,
            run_id: str | None = None) -> PromotionReport:
    """Set ``alias`` on ``version`` of ``name`` (default: the version of ``run_id``, else the newest).

    Refused (:class:`PromotionRefused`, nothing changes) when the version has
    no test accuracy yet (step 5 not run) or a lower one than the current
    holder of the alias, unless ``force``. Equal accuracy is promoted.
    """
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException:
        raise ImgClassError(f"no registered model {name!r} in {client.tracking_uri}: run steps 1-4 with tracking "
                            "on first") from None
    versions = {str(v.version): v for v in client.search_model_versions(f"name = '{name}'")}
    if version is None:
        from_run = [v for v in versions.values() if run_id and v.run_id == run_id]
        candidates = from_run or list(versions.values())
        if not candidates:
            raise ImgClassError(f"{name!r} has no versions yet")
        version = str(max(int(v.version) for v in candidates))
    if version not in versions:
        known = ", ".join(sorted(versions, key=int)) or "none"
        raise ImgClassError(f"{name!r} has no version {version}; its versions: {known}")
    chosen = versions[version]
    try:
        current = client.get_model_version_by_alias(name, alias)
    except MlflowException:
        current = None
    accuracy = _accuracy(chosen)
    previous_accuracy = _accuracy(current) if current is not None else None
    if current is not None and str(current.version) == version:
        return PromotionReport(name, version, accuracy, version, previous_accuracy, False, alias)
    if not force:
        if accuracy is None:
            raise PromotionRefused(f"version {version} of {name!r} has no test accuracy (run scripts/5_evaluate.py "
                                   "for its run first); --force promotes it anyway")
        if previous_accuracy is not None and accuracy < previous_accuracy:
            raise PromotionRefused(f"version {version} of {name!r} has test accuracy {accuracy:.3f}, below "
                                   f"@{alias} (version {current.version}, {previous_accuracy:.3f}); nothing "
                                   "changed; --force promotes it anyway")
    client.set_registered_model_alias(name, alias, version)
    return PromotionReport(name, version, accuracy, str(current.version) if current is not None else None,
                           previous_accuracy, force, alias)


def promote_for(params: Parameters, version: str | None, force: bool) -> PromotionReport:
    """``scripts/8_promoteModel.py``: promote a version of the dataset's registered model to ``@champion``."""
    import json

    from imgclass.errors import ParameterError

    tracking_uri = resolve_tracking_uri(params.mlflow_trackingUri, params.root_path)
    if not tracking_uri:
        raise ParameterError("mlflow_trackingUri is '' (tracking off): there is no registry to promote in")
    import_mlflow()
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    layout = DatasetLayout.from_parameters(params)
    wait_and_show(layout)  # the last script's worker may still be registering its model
    run_id = None
    if layout.mlflow_run_json.is_file():
        try:
            run_id = json.loads(layout.mlflow_run_json.read_text(encoding="utf-8")).get("run_id")
        except (OSError, ValueError):
            run_id = None
    client = MlflowClient(tracking_uri, tracking_uri)
    try:
        return promote(client, registered_model_name(params), version, force, run_id=run_id)
    except MlflowException as exc:
        raise ImgClassError(f"the model registry at {tracking_uri} failed: {str(exc).splitlines()[0]}") from None
