"""Find exact and near-duplicate images in images/<datasetName>/ and move the extra copies aside.

Images are compared by their dhash (dedup_hashSize, default 16 = 256 bits);
two images whose hashes differ in at most dedup_maxDistance bits are
near-duplicates, within a class and across classes. Each group keeps one image
(the largest, then the first in sorted order); the others are MOVED to
images/<datasetName>_duplicates/ under the same relative path, and a CSV report
(kept, moved, distance) is written there first. Every move is checked before
the first one is made; nothing is ever overwritten or deleted.

Script options (besides the --key=value parameters):
  --dry-run          move nothing; write the report to proc/<datasetName>/duplicatesDryRun.csv
  --undo=REPORT.csv  move the files listed in a report back where they were (refused, moving
                     nothing, if a path in it leads outside images/<datasetName>[_duplicates]/)
"""

from __future__ import annotations

import sys
from pathlib import Path

from imgclass.cli import parse_step, run_main
from imgclass.data.dedup import STEP, remove_duplicates_for, undo_moves
from imgclass.errors import ParameterError
from imgclass.layout import DatasetLayout

#: This checkout: its PARAMETERS.py is the default, its resources/ hold the demo images and weight files.
PROJECT_DIR = Path(__file__).resolve().parents[1]

def split_script_options(argv: list[str]) -> tuple[bool, str, list[str]]:
    """``(dry_run, undo_report, remaining arguments)``: this script's own flags taken out of ``argv``."""
    dry_run, undo, rest = False, "", []
    for arg in argv:
        if arg == "--dry-run":
            dry_run = True
        elif arg.startswith("--undo="):
            undo = arg.split("=", 1)[1]
            if not undo:
                raise ParameterError("--undo needs a report: --undo=path/to/duplicatesReport_<time>.csv")
        else:
            rest.append(arg)
    return dry_run, undo, rest


def main(argv: list[str]) -> int:
    dry_run, undo_report, rest = split_script_options(argv)
    params = parse_step(rest, STEP, __doc__, PROJECT_DIR)
    layout = DatasetLayout.from_parameters(params)
    if undo_report:
        result = undo_moves(undo_report, layout)
        print(result.summary())
        return 1 if result.problems else 0
    print(f"looking for near-duplicates in {layout.images_dir} (dhash {params.dedup_hashSize}, "
          f"at most {params.dedup_maxDistance} bits apart){' -- dry run' if dry_run else ''}")
    result = remove_duplicates_for(params, dry_run=dry_run, progress=True)
    print(result.summary())
    if dry_run and result.moved:
        print("nothing was moved; run again without --dry-run to move them")
    return 0 if result.moves is None or result.moves.complete else 1


if __name__ == "__main__":
    sys.exit(run_main(main))
