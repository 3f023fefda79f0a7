"""What step 3's resumable progress costs, and what a resumed run saves (issue 18).

Sections (``--sections``, default both):

``overhead``
    Images per second of step 3 end to end (``imgclass.pipeline.featurize_dataset``,
    the default engine and workers) on the same photo-size JPEGs
    (benchmarks/featurize.py's generator: ``--photos`` 1000x750 JPEGs, each
    listed ``--photo-copies`` times), ResNet-18 with random weights at
    ``--resolution`` px, in three variants that alternate within each of
    ``--rounds`` rounds (so that the shared machine's drift hits all alike),
    after one untimed run of each:

    - without: ``resumable=False``, no progress kept (step 3 before issue 18);
    - default: progress committed every ``COMMIT_SECONDS`` (30 s), plus the
      commit on start and the final one (an fsync of the whole file);
    - every batch: ``commit_seconds=0``, a commit after each batch: the
      upper bound of what committing can cost.

    Reported per variant: the median img/s and the median of the per-round
    ratios to 'without' (the goal: the default within 2%); CPU seconds per
    image (this process and its workers: far less disturbed than wall time
    by other jobs on a shared machine, but blind to waiting for the disk);
    and, measured inside each run, the wall time spent keeping progress
    (the manifest, the commits with their fsyncs) as a share of the run's
    time, and per commit: the direct cost, which the machine's drift cannot hide.

``resume``
    ``scripts/3_runDNN.py`` in a subprocess, timed from start to exit
    (Python and torch start-up included): a full run; then a run SIGKILLed
    once its committed progress covers ``--kill-at`` (half) of the images
    (progress committed every ``--resume-commit-seconds``, 2 s, so that a
    short run has commits to resume from); then the rerun, which resumes;
    ``--resume-rounds`` times. Reported: the rows it reused and its time
    against the full run's.

    python benchmarks/featurize_resume.py --photos=128 --photo-copies=3 --resolution=112    # ~8 min on 2 cores
    python benchmarks/featurize_resume.py --sections=resume --photos=128 --photo-copies=12 --resolution=112
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from imgclass.layout import DatasetLayout
from imgclass.model.feature_store import COMMIT_SECONDS, partial_folder
from imgclass.parameters import load_parameters
from imgclass.pipeline import featurize_dataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from featurize import dataset_of, fresh_extractor, make_photo_folder  # noqa: E402  (benchmarks/featurize.py)

PROJECT_DIR = Path(__file__).resolve().parents[1]
SCRIPT = PROJECT_DIR / "scripts" / "3_runDNN.py"
BACKBONE = "resnet18"
#: scripts/3_runDNN.py with COMMIT_SECONDS set from argv[1]
DRIVER = """
import runpy, sys
from imgclass.model import feature_store
feature_store.COMMIT_SECONDS = float(sys.argv[1])
sys.argv = sys.argv[2:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def prepare(work: Path, args: argparse.Namespace) -> DatasetLayout:
    from imgclass.model.featurizer import Featurizer

    photos = make_photo_folder(work / "photos", args.photos)
    root = work / "dataset"
    shutil.rmtree(root, ignore_errors=True)
    layout = dataset_of(photos, root, args.photo_copies)
    Featurizer(fresh_extractor(BACKBONE, args.resolution), "pad", "random initialisation").save(layout.featurizer_pth)
    return layout


def _clear(layout: DatasetLayout) -> None:
    """No features to reuse: neither a finished run's nor an interrupted one's."""
    layout.features_cache_json.unlink(missing_ok=True)
    shutil.rmtree(partial_folder(layout.features_npy), ignore_errors=True)


class CommitClock:
    """Wall time spent keeping progress inside a run: opening it (manifest, first commit) and every commit."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.commits = 0
        self._depth = 0

    def wrap(self, function: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            if self._depth:  # a commit inside opening the progress: counted once
                return function(*args, **kwargs)
            self._depth += 1
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start
                self._depth -= 1
        return timed


def step_3(layout: DatasetLayout, args: argparse.Namespace, **options: object) -> dict[str, float]:
    """Step 3 from scratch: img/s, CPU seconds per image (this process and its workers), the progress's share of
    the step's wall time, and its commits."""
    from imgclass.model.feature_store import ResumableFeatureWriter

    params = load_parameters(rootDir=str(layout.root), datasetName=layout.dataset, rf_pretrainedModelFilename=BACKBONE,
                             rf_inputResolution=args.resolution)
    _clear(layout)
    clock = CommitClock()
    originals = ResumableFeatureWriter.commit, ResumableFeatureWriter._open_progress
    ResumableFeatureWriter.commit = clock.wrap(originals[0])  # type: ignore[method-assign]
    ResumableFeatureWriter._open_progress = clock.wrap(originals[1])  # type: ignore[method-assign]
    ResumableFeatureWriter.after_commit = lambda number: setattr(clock, "commits", number)
    before = os.times()
    try:
        report = featurize_dataset(params, progress=False, **options)  # type: ignore[arg-type]
    finally:
        ResumableFeatureWriter.commit, ResumableFeatureWriter._open_progress = originals  # type: ignore[method-assign]
        ResumableFeatureWriter.after_commit = None
    after = os.times()
    cpu = sum(after[:4]) - sum(before[:4])  # user + system, this process and its (joined) workers
    return {"rate": report.n_featurized / report.seconds, "cpu_ms": 1000 * cpu / report.n_featurized,
            "share": clock.seconds / report.seconds, "commit_seconds": clock.seconds, "commits": clock.commits}


def overhead(layout: DatasetLayout, args: argparse.Namespace) -> None:
    variants = {"without (resumable=False)": dict(resumable=False),
                f"default (every {COMMIT_SECONDS:g} s)": {},
                "every batch (commit_seconds=0)": dict(commit_seconds=0.0)}
    n_images = args.photos * args.photo_copies
    print(f"\n## Cost of committing progress ({n_images} photo-size JPEGs, {BACKBONE} at {args.resolution} px, random "
          f"weights, default workers; medians of {args.rounds} interleaved rounds)")
    for options in variants.values():
        step_3(layout, args, **options)  # untimed: page cache, lazy imports
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in variants}
    for round_ in range(args.rounds):
        names = list(variants) if round_ % 2 == 0 else list(reversed(variants))  # none always goes first
        for name in names:
            runs[name].append(step_3(layout, args, **variants[name]))
        print(f"  round {round_ + 1}: img/s " + ", ".join(f"{runs[name][-1]['rate']:.1f}" for name in variants)
              + "; CPU ms/img " + ", ".join(f"{runs[name][-1]['cpu_ms']:.1f}" for name in variants), flush=True)
    base = runs[next(iter(variants))]
    print("| variant | img/s (median) | img/s / without (median of rounds; min-max) | CPU ms per image (median) "
          "| CPU / without (median) | time keeping progress: share of the run (median; max), per commit | "
          "commits per run |")
    print("|---|---|---|---|---|---|---|")
    for name in variants:
        rates = np.array([r["rate"] for r in runs[name]]) / np.array([r["rate"] for r in base])
        cpus = np.array([r["cpu_ms"] for r in runs[name]]) / np.array([r["cpu_ms"] for r in base])
        shares = np.array([r["share"] for r in runs[name]])
        commits = runs[name][-1]["commits"]
        per_commit = np.median([r["commit_seconds"] / r["commits"] for r in runs[name]]) if commits else 0.0
        print(f"| {name} | {np.median([r['rate'] for r in runs[name]]):.1f} | {np.median(rates):.3f} "
              f"({rates.min():.3f}-{rates.max():.3f}) | {np.median([r['cpu_ms'] for r in runs[name]]):.1f} | "
              f"{np.median(cpus):.3f} | {100 * np.median(shares):.2f}% ({100 * shares.max():.2f}%), "
              f"{1000 * per_commit:.1f} ms | {commits:.0f} |")


def _script(layout: DatasetLayout, args: argparse.Namespace, commit_seconds: float) -> subprocess.Popen[str]:
    command = [sys.executable, "-c", DRIVER, str(commit_seconds), str(SCRIPT), f"--rootDir={layout.root}",
               f"--datasetName={layout.dataset}"]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=PROJECT_DIR)


def _committed_rows(layout: DatasetLayout) -> int:
    try:
        progress = json.loads((partial_folder(layout.features_npy) / "progress.json").read_text())
        return int(np.unpackbits(np.frombuffer(base64.b64decode(progress["done"]), np.uint8)).sum())
    except (OSError, ValueError, KeyError):
        return 0


def resume(layout: DatasetLayout, args: argparse.Namespace) -> None:
    n_images = args.photos * args.photo_copies
    print(f"\n## What a resumed run saves (scripts/3_runDNN.py, {n_images} photo-size JPEGs, {BACKBONE} at "
          f"{args.resolution} px, killed once {args.kill_at:.0%} is committed; commits every "
          f"{args.resume_commit_seconds:g} s; times from start to exit, {args.resume_rounds} rounds)")
    print("| round | full run (s) | killed run (s), rows committed | rerun (s) | rerun / full | the rerun said |")
    print("|---|---|---|---|---|---|")
    ratios = []
    for round_ in range(args.resume_rounds):
        _clear(layout)
        start = time.perf_counter()
        full = _script(layout, args, args.resume_commit_seconds)
        out, err = full.communicate()
        full_seconds = time.perf_counter() - start
        assert full.returncode == 0, out + err
        _clear(layout)
        start = time.perf_counter()
        killed = _script(layout, args, args.resume_commit_seconds)
        while killed.poll() is None and _committed_rows(layout) < args.kill_at * n_images:
            time.sleep(0.05)
        os.kill(killed.pid, signal.SIGKILL)
        killed.communicate()
        killed_seconds = time.perf_counter() - start
        committed = _committed_rows(layout)
        start = time.perf_counter()
        rerun = _script(layout, args, args.resume_commit_seconds)
        out, err = rerun.communicate()
        rerun_seconds = time.perf_counter() - start
        assert rerun.returncode == 0, out + err
        said = next((line for line in out.splitlines() if line.startswith("Resumed")), "(nothing resumed)")
        ratios.append(rerun_seconds / full_seconds)
        print(f"| {round_ + 1} | {full_seconds:.1f} | {killed_seconds:.1f}, {committed} | {rerun_seconds:.1f} | "
              f"{ratios[-1]:.2f} | {said} |", flush=True)
    print(f"median rerun / full: {np.median(ratios):.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sections", default="overhead,resume")
    parser.add_argument("--photos", type=int, default=128, help="distinct generated 1000x750 JPEGs")
    parser.add_argument("--photo-copies", type=int, default=3, help="each photo listed this many times")
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--kill-at", type=float, default=0.5, help="fraction of the images committed at the kill")
    parser.add_argument("--resume-commit-seconds", type=float, default=2.0)
    parser.add_argument("--resume-rounds", type=int, default=3)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "imgclass_featurize_resume")
    args = parser.parse_args()
    params_file = args.work / "PARAMETERS.py"
    args.work.mkdir(parents=True, exist_ok=True)
    params_file.write_text("mlflow_trackingUri = ''  # no run tracking: step 3 alone is measured\n")
    os.environ["IMGCLASS_PARAMETERS"] = str(params_file)
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    layout = prepare(args.work, args)
    sections = args.sections.split(",")
    if "overhead" in sections:
        overhead(layout, args)
    if "resume" in sections:
        resume(layout, args)


if __name__ == "__main__":
    main()
