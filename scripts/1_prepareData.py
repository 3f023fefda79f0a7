"""Step 1: split images/<datasetName>/<class>/ into training and test sets.

Per class, a sorted and seeded shuffle puts ratioTrainTest of the images
(or of the sub-folders, with imagesSplitBy='subdir') into training and the
rest into test; images/<datasetName>/dedicatedTestImages.tsv, if present,
names the test images instead. Writes proc/<datasetName>/split.csv and
labels.json.
"""

import sys
from pathlib import Path

from imgclass.cli import run_main
from imgclass.layout import DatasetLayout
from imgclass.parameters import parse_command_line
from imgclass.pipeline import prepare_data

#: This checkout: its PARAMETERS.py is the default, its resources/ hold the demo images and weight files.
PROJECT_DIR = Path(__file__).resolve().parents[1]

USED = ["datasetName", "rootDir", "ratioTrainTest", "imagesSplitBy", "randomSeed", "dedup_hashSize",
        "dedup_maxDistance"]


def main(argv: list[str]) -> None:
    params = parse_command_line(argv, USED, __doc__, project_dir=PROJECT_DIR)
    layout = DatasetLayout.from_parameters(params)
    print(f"Splitting {layout.images_dir}")
    report = prepare_data(params)
    if report.skipped_files:
        print(f"Skipped {len(report.skipped_files)} non-image file(s):")
        for name in report.skipped_files:
            print(f"  {name}")
    if report.used_dedicated_test_file:
        print(f"Test images as listed in {layout.dedicated_test_tsv}")
    print(f"{'class':24s} {'train':>6s} {'test':>6s}")
    for label, counts in report.counts.items():
        print(f"{label:24s} {counts['train']:6d} {counts['test']:6d}")
    n_train = sum(c["train"] for c in report.counts.values())
    n_test = sum(c["test"] for c in report.counts.values())
    print(f"{'total':24s} {n_train:6d} {n_test:6d}   ({len(report.labels)} classes; train and test are disjoint)")
    if report.straddling_duplicates:
        pairs = report.straddling_duplicates
        print(f"WARNING: {len(pairs)} near-duplicate pair(s) straddle train and test (dhash distance <= "
              f"{params.dedup_maxDistance}); they make the test accuracy optimistic. "
              "Run scripts/removeDuplicates.py, then this script again.")
        for pair in pairs[:20]:
            print(f"  train {pair.train_path}  ~  test {pair.test_path}  (distance {pair.distance})")
        if len(pairs) > 20:
            print(f"  ... and {len(pairs) - 20} more")
    print(f"Wrote {layout.split_csv} and {layout.labels_json}")


if __name__ == "__main__":
    sys.exit(run_main(main))
