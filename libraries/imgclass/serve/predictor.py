"""The trained model of a dataset folder, ready to classify: what the service and batch scoring load.

The :class:`~imgclass.model.predictor.Predictor` itself is model code (Spark
and the MLflow model use it too); this module only knows where a dataset's
model files are.
"""

from __future__ import annotations

from imgclass.layout import DatasetLayout
from imgclass.model.predictor import Predictor
from imgclass.model.runtime import Runtime


def load_predictor(layout: DatasetLayout, run_device: str = "auto", run_precision: str = "fp32",
                   run_workers: int = 0) -> Predictor:
    """The model steps 2-4 wrote under ``proc/<ds>/`` (``featurizer.pth``, ``svm.joblib``, ``svm.json``)."""
    return Predictor.load(layout.featurizer_pth, layout.svm_joblib, layout.svm_json,
                          Runtime.resolve(run_device, run_precision, run_workers), name_prefix=layout.dataset)


__all__ = ["Predictor", "load_predictor"]
