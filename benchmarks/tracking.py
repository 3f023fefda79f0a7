"""What does run tracking (MLflow, the default SQLite store) cost each step?

Three measurements on the demo data (179 images, EfficientNet-Lite0 at 224 px,
classifier 'svm'; run ``scripts/0_downloadData.py`` first):

1. **one process** (``python -m imgclass run``'s situation: one interpreter for
   steps 1-5 and one tracking worker beside it): ``--rounds`` pipeline runs
   with tracking on; per step, the seconds the step's process spent on
   tracking (:class:`~imgclass.tracking.tracker.StepTracker`: starting the
   worker, sending it the step's record), and the wait for the worker after
   step 5 (it imports MLflow, opens the store, logs, saves and registers the
   model while the steps run). The first round also creates the store.
2. **separate processes, one at a time** (a numbered script run on its own):
   each of scripts 1-5 ``--rounds`` times with tracking on and off
   (alternating), median wall-clock seconds each; the difference is what a
   user waits for. A script does not wait for its worker (step 1 waits for its
   run to exist); the last column is how long the worker went on after the
   script had exited (measured with ``imgclass.tracking.wait_for_pending``,
   before the next script starts, so that it does not share the cores with it).
3. **scripts 1-5 back to back** (``1_prepareData.py && ... && 5_evaluate.py``),
   tracking on and off, alternating: the chain's wall-clock seconds, and how
   long the last workers went on after script 5 (then the run is finished and
   the model registered: what ``scripts/8_promoteModel.py`` waits for). Here
   the workers run beside the next scripts, on the same cores.

Usage: ``python benchmarks/tracking.py [--rounds=3] [--root=/tmp/tracking_bench]
[--sections=1,2,3]``. Prints Markdown tables. On a shared machine the
process sections are noisy: read them with the first.
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


def _script(root: Path, script: str, tracking: bool) -> float:
    uri = [] if tracking else ["--mlflow_trackingUri="]
    begin = time.perf_counter()
    subprocess.run([PYTHON, f"scripts/{script}", f"--rootDir={root}", *COMMON, *uri], cwd=PROJECT_DIR, check=True,
                   capture_output=True)
    return time.perf_counter() - begin


def _background(root: Path) -> float:
    """Seconds until the dataset's tracking workers are done (what a script left running)."""
    from imgclass.layout import DatasetLayout
    from imgclass.tracking import wait_for_pending

    begin = time.perf_counter()
    if not wait_for_pending(DatasetLayout(root, "tuxpaintStamps"), 600):
        sys.exit("a tracking worker was still at work after 600 s")
    return time.perf_counter() - begin


def separate_processes(root: Path, rounds: int) -> None:
    times: dict[tuple[str, bool], list[float]] = {}
    after: dict[str, list[float]] = {}
    for _ in range(rounds):
        for script in SCRIPTS:
            for tracking in (True, False):
                times.setdefault((script, tracking), []).append(_script(root, script, tracking))
                if tracking:
                    after.setdefault(script, []).append(_background(root))
    print("\n| script, run alone (median) | tracking off (s) | tracking on (s) | difference (s) | worker went on "
          "after the script (s) |\n|---|---|---|---|---|")
    for script in SCRIPTS:
        off = statistics.median(times[(script, False)])
        on = statistics.median(times[(script, True)])
        print(f"| `{script}` | {off:.1f} | {on:.1f} | {on - off:+.1f} | {statistics.median(after[script]):.1f} |")


def back_to_back(root: Path, rounds: int) -> None:
    chains: dict[bool, list[float]] = {}
    tails: list[float] = []
    for _ in range(rounds):
        for tracking in (True, False):
            chains.setdefault(tracking, []).append(sum(_script(root, script, tracking) for script in SCRIPTS))
            if tracking:
                tails.append(_background(root))
    off, on = statistics.median(chains[False]), statistics.median(chains[True])
    print("\n| scripts 1-5 back to back (median) | tracking off (s) | tracking on (s) | difference (s) | workers went "
          "on after script 5 (s) |\n|---|---|---|---|---|")
    print(f"| chain | {off:.1f} | {on:.1f} | {on - off:+.1f} | {statistics.median(tails):.1f} |")
    print(f"(rounds, off: {', '.join(f'{t:.1f}' for t in chains[False])}; on: "
          f"{', '.join(f'{t:.1f}' for t in chains[True])}; after script 5: {', '.join(f'{t:.1f}' for t in tails)})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--root", type=Path, default=Path("/tmp/tracking_bench"))
    parser.add_argument("--sections", default="1,2,3", help="which measurements, e.g. 2,3")
    args = parser.parse_args()
    sections = {int(part) for part in args.sections.split(",") if part.strip()}
    demo = PROJECT_DIR / "data" / "images" / "tuxpaintStamps"
    if not demo.is_dir():
        sys.exit("run scripts/0_downloadData.py first (the demo images)")
    shutil.rmtree(args.root, ignore_errors=True)
    shutil.copytree(demo, args.root / "images" / "tuxpaintStamps")
    for number, section in ((1, in_process), (2, separate_processes), (3, back_to_back)):
        if number in sections:
            section(args.root, args.rounds)
            sys.stdout.flush()


if __name__ == "__main__":
    main()
