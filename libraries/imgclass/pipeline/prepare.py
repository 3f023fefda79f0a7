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


#: straddling near-duplicate pairs listed by :meth:`PrepareReport.summary` (the rest are counted)
SHOWN_PAIRS = 20


@dataclass
class PrepareReport:
    """What step 1 did: the split, per-class counts, skipped files, near-duplicates across the split."""

    layout: DatasetLayout
    rows: list[SplitRow]
    labels: list[str]
    counts: dict[str, dict[str, int]]
    skipped_files: list[str]
    used_dedicated_test_file: bool
    #: near-duplicate images that the split put on both sides (they inflate the test accuracy)
    straddling_duplicates: list["StraddlingPair"] = field(default_factory=list)
    #: the dhash distance up to which two images count as near-duplicates (``dedup_maxDistance``)
    max_distance: int = 0

    def summary(self) -> str:
        """What ``scripts/1_prepareData.py`` prints."""
        layout = self.layout
        lines = [f"Splitting {layout.images_dir}"]
        if self.skipped_files:
            lines.append(f"Skipped {len(self.skipped_files)} non-image file(s):")
            lines += [f"  {name}" for name in self.skipped_files]
        if self.used_dedicated_test_file:
            lines.append(f"Test images as listed in {layout.dedicated_test_tsv}")
        lines.append(f"{'class':24s} {'train':>6s} {'test':>6s}")
        lines += [f"{label:24s} {c['train']:6d} {c['test']:6d}" for label, c in self.counts.items()]
        n_train = sum(c["train"] for c in self.counts.values())
        n_test = sum(c["test"] for c in self.counts.values())
        lines.append(f"{'total':24s} {n_train:6d} {n_test:6d}   ({len(self.labels)} classes; "
                     "train and test are disjoint)")
        pairs = self.straddling_duplicates
        if pairs:
            lines.append(f"WARNING: {len(pairs)} near-duplicate pair(s) straddle train and test (dhash distance <= "
                         f"{self.max_distance}); they make the test accuracy optimistic. "
                         "Run scripts/removeDuplicates.py, then this script again.")
            lines += [f"  train {pair.train_path}  ~  test {pair.test_path}  (distance {pair.distance})"
                      for pair in pairs[:SHOWN_PAIRS]]
            if len(pairs) > SHOWN_PAIRS:
                lines.append(f"  ... and {len(pairs) - SHOWN_PAIRS} more")
        lines.append(f"Wrote {layout.split_csv} and {layout.labels_json}")
        return "\n".join(lines)


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
    return PrepareReport(layout, rows, listing.labels, counts_per_class(rows), listing.skipped_files,
                         dedicated is not None, straddling, params.dedup_maxDistance)
