"""Step 1: split images/<datasetName>/<class>/ into training and test sets.

Per class, a sorted and seeded shuffle puts ratioTrainTest of the images
(or of the sub-folders, with imagesSplitBy='subdir') into training and the
rest into test; images/<datasetName>/dedicatedTestImages.tsv, if present,
names the test images instead. Writes proc/<datasetName>/split.csv and
labels.json.
"""

import sys
from pathlib import Path

from imgclass.cli import parse_step, run_main, run_step
from imgclass.pipeline.prepare import STEP
from imgclass.tracking import tracked

#: This checkout: its PARAMETERS.py is the default, its resources/ hold the demo images and weight files.
PROJECT_DIR = Path(__file__).resolve().parents[1]


def main(argv: list[str]) -> None:
    step = tracked(STEP)  # step 1 and the run-tracking parameters (the step runs inside its MLflow run)
    params = parse_step(argv, step, __doc__, PROJECT_DIR)
    report = run_step(step, params)
    print(report.summary())


if __name__ == "__main__":
    sys.exit(run_main(main))
