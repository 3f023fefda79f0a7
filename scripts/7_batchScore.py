"""Step 7: classify every image under a folder; write a CSV and add rows to a SQLite table.

Uses the trained model of datasetName (any classifier). Each row: path, label,
score (calibrated probability), all_scores (JSON {label: probability}),
model_name, model_version, scored_at (UTC). Re-running skips the images the
same model has already scored, so an interrupted run resumes where it stopped.
"""

import sys
from pathlib import Path

from imgclass.serve.batch import score_folder
from imgclass.cli import run_main
from imgclass.layout import DatasetLayout
from imgclass.parameters import parse_command_line
from imgclass.serve.predictor import Predictor

#: This checkout: its PARAMETERS.py is the default, its resources/ hold the demo images and weight files.
PROJECT_DIR = Path(__file__).resolve().parents[1]

USED = ["datasetName", "rootDir", "batch_inputDir", "batch_outputCsv", "batch_database", "run_mbSize",
        "run_device", "run_precision"]


def main(argv: list[str]) -> None:
    params = parse_command_line(argv, USED, __doc__, project_dir=PROJECT_DIR)
    layout = DatasetLayout.from_parameters(params)
    input_dir = Path(params.batch_inputDir) if params.batch_inputDir else layout.images_dir
    csv_path = Path(params.batch_outputCsv) if params.batch_outputCsv else layout.results_dir / "batchScores.csv"
    database = Path(params.batch_database) if params.batch_database else layout.results_dir / "batchScores.sqlite"
    predictor = Predictor.from_layout(layout, params.run_device, params.run_precision)
    print(f"Model {predictor.model_name} (version {predictor.model_version}); scoring images under {input_dir}")
    report = score_folder(predictor, input_dir, csv_path, database, batch_size=params.run_mbSize,
                          progress=sys.stderr.isatty())
    print(f"{report.n_images} images: {report.n_scored} scored in {report.seconds:.1f} s, "
          f"{report.n_skipped} already scored by this model (skipped), {len(report.failures)} unreadable")
    for path, message in report.failures:
        print(f"  {path}: {message}")
    print(f"Wrote {csv_path} and table 'scores' of {database}")


if __name__ == "__main__":
    sys.exit(run_main(main))
