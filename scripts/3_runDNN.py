"""Step 3: featurize every image of the split with the DNN from step 2.

Writes proc/<datasetName>/features.npy (float32, one row per image),
features.csv (row,path,label,split,ok) and features.json (how they were made).
Unreadable images are reported and marked ok=0, never fatal. Images unchanged
since the last run (same featurizer and precision) reuse their stored features
(index: features_cache.json).
"""

import sys
from pathlib import Path

from imgclass.cli import run_main
from imgclass.layout import DatasetLayout
from imgclass.parameters import parse_command_line
from imgclass.pipeline import featurize_dataset

#: This checkout: its PARAMETERS.py is the default, its resources/ hold the demo images and weight files.
PROJECT_DIR = Path(__file__).resolve().parents[1]

USED = ["datasetName", "rootDir", "run_mbSize", "run_device", "run_workers", "run_precision"]


def main(argv: list[str]) -> None:
    params = parse_command_line(argv, USED, __doc__, project_dir=PROJECT_DIR)
    layout = DatasetLayout.from_parameters(params)
    report = featurize_dataset(params, progress=sys.stderr.isatty())
    if report.n_featurized:
        rate = report.n_featurized / report.seconds if report.seconds > 0 else float("inf")
        print(f"Featurized {report.n_featurized} image{'s' * (report.n_featurized != 1)} -> {report.feature_dim} "
              f"floats each in {report.seconds:.1f} s ({rate:.1f} img/s; device {report.device}, {report.precision}, "
              f"{report.workers} worker process{'es' * (report.workers != 1)})")
    if report.n_reused:
        print(f"Reused the stored features of {report.n_reused} of {report.n_images} images (unchanged files, "
              f"same featurizer, {report.precision}); delete {layout.features_cache_json} to recompute them")
    if report.failures:
        print(f"{len(report.failures)} image(s) could not be read and are left out:")
        for path, message in report.failures:
            print(f"  {path}: {message}")
    print(f"Wrote {layout.features_npy} (+ .csv, .json; {report.n_images} images)")


if __name__ == "__main__":
    sys.exit(run_main(main))
