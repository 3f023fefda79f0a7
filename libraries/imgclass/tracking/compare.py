"""Comparing runs: one table row per run of a dataset (the showResults notebook's run list).

The same table can be had without this module, from MLflow alone::

    import mlflow
    mlflow.set_tracking_uri("sqlite:///data/mlflow.db")
    runs = mlflow.search_runs(experiment_names=["tuxpaintStamps"], order_by=["attributes.start_time DESC"])
    print(runs[["tags.mlflow.runName", "tags.backbone", "tags.classifier", "metrics.test_accuracy"]])
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from imgclass.layout import DatasetLayout
from imgclass.parameters import Parameters
from imgclass.serve.pyfunc import import_mlflow, sqlite_path
from imgclass.tracking.pending import wait_and_show
from imgclass.tracking.registry import VERSION_TAG
from imgclass.tracking.runs import TrackingSettings

if TYPE_CHECKING:
    import pandas as pd

#: Columns of :func:`runs_table`: tags, then metrics, as MLflow names them.
TAG_COLUMNS = ("backbone", "classifier")
METRIC_COLUMNS = ("test_accuracy", "class_averaged_accuracy", "auc_macro", "cv_accuracy", "chosen_C")


def runs_table(params: Parameters, max_runs: int = 100) -> "pd.DataFrame":
    """The runs of ``params``'s experiment, newest first: start, name, status, backbone, classifier,
    accuracies, the model version registered from the run, and the run id.

    Empty when tracking is off or nothing was recorded yet (the store is not created by looking).
    Waits first for tracking still at work for the dataset (a script's worker
    goes on after the script), so the last run shows complete.
    """
    import pandas as pd

    columns = ["started", "run", "status", *TAG_COLUMNS, *METRIC_COLUMNS, "model_version", "run_id"]
    settings = TrackingSettings.from_parameters(params)
    database = sqlite_path(settings.tracking_uri)
    if not settings.enabled or (database is not None and not database.is_file()):
        return pd.DataFrame(columns=columns)
    wait_and_show(DatasetLayout.from_parameters(params))
    mlflow = import_mlflow()
    client = mlflow.MlflowClient(settings.tracking_uri, settings.tracking_uri)
    experiment = client.get_experiment_by_name(settings.experiment_name)
    if experiment is None:
        return pd.DataFrame(columns=columns)
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time DESC"],
                              max_results=max_runs)
    rows = []
    for run in runs:
        tags, metrics = run.data.tags, run.data.metrics
        rows.append({"started": datetime.fromtimestamp(run.info.start_time / 1000).strftime("%Y-%m-%d %H:%M"),
                     "run": run.info.run_name, "status": run.info.status,
                     **{key: tags.get(key, "") for key in TAG_COLUMNS},
                     **{key: metrics.get(key) for key in METRIC_COLUMNS},
                     "model_version": tags.get(VERSION_TAG, ""), "run_id": run.info.run_id})
    return pd.DataFrame(rows, columns=columns)
