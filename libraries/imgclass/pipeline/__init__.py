"""The pipeline's steps 1-5 as functions, one module per step: what the numbered scripts and
``python -m imgclass run`` call.

Each step module declares the parameters it reads (``STEP``) next to its
function, reads the previous step's files through :class:`~imgclass.layout.DatasetLayout`
and writes its own atomically. Importing a step module is cheap: torch,
scikit-learn and matplotlib are imported where the work starts, so ``--help``
and a bad parameter answer at once.
"""

from imgclass.pipeline import build, evaluate as _evaluate_module, featurize, prepare, train
from imgclass.pipeline.build import BuildReport, build_featurizer
from imgclass.pipeline.evaluate import EvaluationReport, evaluate
from imgclass.pipeline.featurize import FeaturizeReport, featurize_dataset
from imgclass.pipeline.prepare import PrepareReport, prepare_data
from imgclass.pipeline.train import TrainReport, train_classifier

#: Steps 1-5 in order: what ``python -m imgclass run`` runs.
STEPS = (prepare.STEP, build.STEP, featurize.STEP, train.STEP, _evaluate_module.STEP)

__all__ = ["BuildReport", "EvaluationReport", "FeaturizeReport", "PrepareReport", "STEPS", "TrainReport",
           "build_featurizer", "evaluate", "featurize_dataset", "prepare_data", "train_classifier"]
