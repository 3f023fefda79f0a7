"""Step 1: list ``images/<ds>/``, split each class into training and test, write ``split.csv`` + ``labels.json``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from imgclass.data.splits import SplitRow, counts_per_class, list_dataset, read_dedicated_test_images, split_dataset, \
    write_split
from imgclass.layout import DatasetLayout
from imgclass.parameters import Parameters, StepSpec

if TYPE_CHECKING:
    from imgclass.data.dedup import StraddlingPair

STEP = StepSpec("prepare", "scripts/1_prepareData.py", "split the images of each class into training and test",
                ("datasetName", "rootDir", "ratioTrainTest", "imagesSplitBy", "randomSeed", "dedup_hashSize",
                 "dedup_maxDistance"))


@dataclass
class PrepareReport:
    rows: list[SplitRow]
    labels: list[str]
    counts: dict[str, dict[str, int]]
    skipped_files: list[str]
    used_dedicated_test_file: bool
    #: near-duplicate images that the split put on both sides (they inflate the test accuracy)
    straddling_duplicates: list["StraddlingPair"] = field(default_factory=list)


def prepare_data(params: Parameters) -> PrepareReport:
    """Step 1: list ``images/<ds>/``, split each class, write ``split.csv`` and ``labels.json``.

    Also looks for near-duplicates (dhash, ``dedup_*`` parameters) that the
    split puts into both training and test; hashes are cached in ``proc/<ds>/``.
    """
    from imgclass.data.dedup import find_straddling_duplicates

    layout = DatasetLayout.from_parameters(params)
    listing = list_dataset(layout.images_dir)
    dedicated = None
    if layout.dedicated_test_tsv.is_file():
        dedicated = read_dedicated_test_images(layout.dedicated_test_tsv, listing)
    rows = split_dataset(listing, params.ratioTrainTest, params.randomSeed, params.imagesSplitBy, dedicated)
    write_split(rows, listing.labels, layout.split_csv, layout.labels_json)
    straddling = find_straddling_duplicates(((r.path, r.split) for r in rows), layout.images_dir,
                                            params.dedup_hashSize, params.dedup_maxDistance,
                                            layout.dhash_cache_csv(params.dedup_hashSize))
    return PrepareReport(rows, listing.labels, counts_per_class(rows), listing.skipped_files, dedicated is not None,
                         straddling)
