"""Step 3: featurize every image of the split with the DNN from step 2.

Writes proc/<datasetName>/features.npy (float32, one row per image),
features.csv (row,path,label,split,ok) and features.json (how they were made).
Unreadable images are reported and marked ok=0, never fatal. Images unchanged
since the last run (same featurizer and precision) reuse their stored features
(index: features_cache.json).
"""

import sys
from pathlib import Path

from imgclass.cli import parse_step, run_main, run_step
from imgclass.pipeline.featurize import STEP
from imgclass.tracking import tracked

#: This checkout: its PARAMETERS.py is the default, its resources/ hold the demo images and weight files.
PROJECT_DIR = Path(__file__).resolve().parents[1]


def main(argv: list[str]) -> None:
    step = tracked(STEP)  # step 3 and the run-tracking parameters (the step runs inside its MLflow run)
    params = parse_step(argv, step, __doc__, PROJECT_DIR)
    report = run_step(step, params, progress=sys.stderr.isatty())
    print(report.summary())


if __name__ == "__main__":
    sys.exit(run_main(main))
