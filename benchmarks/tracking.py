"""What does run tracking (MLflow, the default SQLite store) cost each step?

Two measurements on the demo data (179 images, EfficientNet-Lite0 at 224 px,
classifier 'svm'; run ``scripts/0_downloadData.py`` first):

1. **one process** (``python -m imgclass run``'s situation: one interpreter for
   steps 1-5 and one tracking worker beside it): ``--rounds`` pipeline runs
   with tracking on; per step, the seconds the step's process spent on
   tracking (:class:`~imgclass.tracking.tracker.StepTracker`: starting the
   worker, sending it the step's record), and the wait for the worker after
   step 5 (it imports MLflow, opens the store, logs, saves and registers the
   model while the steps run). The first round also creates the store.
2. **separate processes** (the numbered scripts): each of scripts 1-5 run as
   its own process ``--rounds`` times with tracking on and off (alternating),
   median wall-clock seconds each; the difference is what a user waits for.

Usage: ``python benchmarks/tracking.py [--rounds=3] [--root=/tmp/tracking_bench]``. Prints a
Markdown table. On a shared machine the second section is noisy: read it
with the first.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
SCRIPTS = ["1_prepareData.py", "2_refineDNN.py", "3_runDNN.py", "4_trainSVM.py", "5_evaluate.py"]
COMMON = ["--rf_pretrainedModelFilename=efficientnet_lite0", "--datasetName=tuxpaintStamps"]


def in_process(root: Path, rounds: int) -> None:
    from imgclass import pipeline
    from imgclass.parameters import load_parameters
    from imgclass.tracking import tracked
    from imgclass.tracking.tracker import StepTracker, TrackingSession

    params = load_parameters([f"--rootDir={root}", *COMMON], project_dir=PROJECT_DIR)
    functions = {"prepare": pipeline.prepare_data, "build": lambda p: pipeline.build_featurizer(p, progress=False),
                 "featurize": lambda p: pipeline.featurize_dataset(p, progress=False),
                 "train": pipeline.train_classifier, "evaluate": pipeline.evaluate}
    table: dict[str, list[tuple[float, float]]] = {}
    final_waits = []
    for _ in range(rounds):
        session = TrackingSession(log=lambda line: None)
        for spec in pipeline.STEPS:
            step = tracked(spec)
            begin = time.perf_counter()
            with StepTracker(params, step, session) as tracker:
                report = functions[step.name](params)
                tracker.record(report)
            table.setdefault(step.label, []).append((time.perf_counter() - begin - tracker.seconds, tracker.seconds))
        waited = time.perf_counter()
        session.close()
        final_waits.append(time.perf_counter() - waited)
    print("\n| step | step's own work (s) | tracking in the step's process (s) |\n|---|---|---|")
    for label, values in table.items():
        work = statistics.median(v[0] for v in values)
        print(f"| {label} | {work:.2f} | {statistics.median(v[1] for v in values):.3f} |")
    print(f"| waiting for the tracking worker after step 5 | | {statistics.median(final_waits):.2f} "
          f"(rounds: {', '.join(f'{w:.2f}' for w in final_waits)}) |")


def separate_processes(root: Path, rounds: int) -> None:
    times: dict[tuple[str, bool], list[float]] = {}
    for _ in range(rounds):
        for script in SCRIPTS:
            for tracking in (True, False):
                uri = [] if tracking else ["--mlflow_trackingUri="]
                begin = time.perf_counter()
                subprocess.run([PYTHON, f"scripts/{script}", f"--rootDir={root}", *COMMON, *uri], cwd=PROJECT_DIR,
                               check=True, capture_output=True)
                times.setdefault((script, tracking), []).append(time.perf_counter() - begin)
    print("\n| script | tracking off (s) | tracking on (s) | difference (s) |\n|---|---|---|---|")
    for script in SCRIPTS:
        off = statistics.median(times[(script, False)])
        on = statistics.median(times[(script, True)])
        print(f"| {script} | {off:.1f} | {on:.1f} | {on - off:+.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--root", type=Path, default=Path("/tmp/tracking_bench"))
    args = parser.parse_args()
    demo = PROJECT_DIR / "data" / "images" / "tuxpaintStamps"
    if not demo.is_dir():
        sys.exit("run scripts/0_downloadData.py first (the demo images)")
    shutil.rmtree(args.root, ignore_errors=True)
    shutil.copytree(demo, args.root / "images" / "tuxpaintStamps")
    in_process(args.root, args.rounds)
    separate_processes(args.root, args.rounds)


if __name__ == "__main__":
    main()
