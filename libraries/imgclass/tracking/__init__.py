"""MLflow as the toolkit's memory: one run per pipeline run, every model registered, promotion.

- :mod:`imgclass.tracking.records`: what each of steps 1-5 records (parameters,
  metrics, per-epoch curves, tags, files), as plain data built from the step's
  report; no MLflow needed to build or test it;
- :mod:`imgclass.tracking.runs`: the run itself. Step 1 starts it and writes its
  id to ``proc/<ds>/mlflow_run.json``; steps 2-5, each its own process, resume
  it; a failure of the store (server down, disk full) is a warning, never a
  failed step;
- :mod:`imgclass.tracking.tracker` (the step's side, used by ``imgclass.cli.run_step``)
  and :mod:`imgclass.tracking.worker` (a process beside the step that imports
  MLflow and talks to the store while the step works, and after it: a script
  does not wait for it);
- :mod:`imgclass.tracking.pending`: those workers one at a time per dataset,
  in the order of their steps; what they said after their script ended;
  :func:`wait_for_pending`, for what reads the registry right after a run;
- :mod:`imgclass.tracking.registry`: the model as a new version of the
  registered model, tagged with its test metrics; promotion to ``@champion``;
- :mod:`imgclass.tracking.compare`: a table of a dataset's runs.

The pyfunc model itself and where the store is (``mlflow_trackingUri``) live
in :mod:`imgclass.serve.pyfunc`, below this layer, because serving needs them
too. Importing this package is cheap: MLflow is imported where a run starts.
"""

from __future__ import annotations

import dataclasses

from imgclass.parameters import StepSpec
from imgclass.tracking.pending import show_undelivered, wait_and_show, wait_for_pending

#: Parameters every tracked step reads besides its own.
TRACKING_READS = ("mlflow_trackingUri", "mlflow_experimentName", "mlflow_registeredModelName")


def tracked(step: StepSpec) -> StepSpec:
    """``step`` with the tracking parameters added to what it reads (its ``--help`` lists them)."""
    return dataclasses.replace(step, reads=step.reads + tuple(r for r in TRACKING_READS if r not in step.reads))


__all__ = ["TRACKING_READS", "show_undelivered", "tracked", "wait_and_show", "wait_for_pending"]
