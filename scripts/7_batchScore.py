"""Step 7: classify every image under a folder; write a CSV and add rows to the results database.

Uses the trained model of datasetName (any classifier), or a registered MLflow
model (deploy_modelUri). Each row: path, label, score (calibrated probability),
all_scores (JSON {label: probability}), margin, folder, model_name,
model_version, scored_at (UTC). The database is SQLite under results/<ds>/ by
default; batch_database may be any SQLAlchemy URL (e.g. PostgreSQL). Re-running
skips the images the same model has already scored, so an interrupted run
resumes where it stopped. With run_engine='spark' the images are scored on
Spark into a Parquet table instead (docs/spark.md).
"""

import sys
from pathlib import Path

from imgclass.cli import parse_step, run_main
from imgclass.serve.batch import STEP, score_batch

#: This checkout: its PARAMETERS.py is the default, its resources/ hold the demo images and weight files.
PROJECT_DIR = Path(__file__).resolve().parents[1]


def main(argv: list[str]) -> None:
    params = parse_step(argv, STEP, __doc__, PROJECT_DIR)
    report = score_batch(params, progress=sys.stderr.isatty())  # run_engine='spark': a Parquet table
    print(report.summary())


if __name__ == "__main__":
    sys.exit(run_main(main))
