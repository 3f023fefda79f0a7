"""What does run tracking (MLflow, the default SQLite store) cost each step?

Two measurements on the demo data (179 images, EfficientNet-Lite0 at 224 px,
classifier 'svm'; run ``scripts/0_downloadData.py`` first):

1. **in-process** (``python -m imgclass run``'s situation: one interpreter for
   steps 1-5): ``--rounds`` pipeline runs with tracking on, each step through
   ``imgclass.cli.run_step``; per step, the seconds its
   :class:`~imgclass.tracking.runs.StepTracker` spent opening the run,
   logging and (step 4) saving and registering the model, and the step's own
   time. The first round also pays ``import mlflow`` and creating the store
   (reported separately).
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
    from imgclass.tracking.runs import StepTracker

    params = load_parameters([f"--rootDir={root}", *COMMON], project_dir=PROJECT_DIR)
    start = time.perf_counter()
    from imgclass.serve.pyfunc import import_mlflow

    import_mlflow()
    print(f"import mlflow: {time.perf_counter() - start:.2f} s (once per process)")
    functions = {"prepare": pipeline.prepare_data, "build": lambda p: pipeline.build_featurizer(p, progress=False),
                 "featurize": lambda p: pipeline.featurize_dataset(p, progress=False),
                 "train": pipeline.train_classifier, "evaluate": pipeline.evaluate}
    table: dict[str, list[tuple[float, float]]] = {}
    for round_ in range(rounds):
        for spec in pipeline.STEPS:
            step = tracked(spec)
            begin = time.perf_counter()
            with StepTracker(params, step, log=lambda line: None) as tracker:
                opened = tracker.seconds
                report = functions[step.name](params)
                work = time.perf_counter() - begin - opened
                tracker.record(report)
            table.setdefault(step.label, []).append((work, tracker.seconds))
        if round_ == 0:
            print("(round 1 created the store; the medians below are over all rounds)")
    print("\n| step | step's own work (s) | tracking (s) | tracking / work |\n|---|---|---|---|")
    for label, values in table.items():
        work = statistics.median(v[0] for v in values)
        tracking = statistics.median(v[1] for v in values)
        print(f"| {label} | {work:.2f} | {tracking:.2f} | {tracking / work:.0%} |")


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
