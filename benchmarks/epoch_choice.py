"""Which LP-FT epoch to keep: the test accuracy of every epoch of one run, and of the rules that choose (issue 15).

For each split seed and dataset, step 1 splits the data and one LP-FT refinement runs
its full schedule with the given parameters and early stopping off. After every epoch
the network of that epoch is read back from the refinement's checkpoint and scored
as step 2 would finish it: the probe (step 4's SVM) refit on all training images with
that backbone, then test accuracy. The test images choose nothing here: each
JSON line holds the per-epoch validation history (what a rule may read) and the
per-epoch test accuracy (what the rule's choice then scores), so ``--summary``
replays rules offline on recorded runs:

- ``error``: lowest validation error, then loss (``best_by='error'``, LP-FT's rule before round 6);
- ``loss``: lowest validation loss, then error (``best_by='loss'``, LP-FT's default);
- both with the defaults' early stopping (``rf_earlyStopPatience`` from half the schedule), as ``refine`` does;
- ``last``: the last epoch; ``swa``: the weights averaged over the second half of the schedule
  (stochastic weight averaging; batch-norm statistics stay as pretrained in LP-FT, so an average needs no
  recalibration).

    python benchmarks/epoch_choice.py --root=/tmp/bench --datasets=tuxpaintStamps,digits,textures \
        --seeds=0,1,2,3,4 --out=epochs.jsonl [--key=value parameter overrides]
    python benchmarks/epoch_choice.py --summary epochs.jsonl

The replay equals a real run: the schedule does not depend on the patience or on the rule, so a run
that stops early has trained the same epochs up to its stop.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from refinement_recipes import benchmark_parser, prepare_run, results_writer  # noqa: E402  (a sibling script, not a package)

State = dict[str, torch.Tensor]


def _test_accuracy(extractor: Any, state: State, images: Any, test: Any, params: Any, runtime: Any) -> float:
    """Step 2's ending for the backbone weights ``state``: the probe refit on all training images, then test."""
    from imgclass.model.dataset import ImageDataset
    from imgclass.model.refine import ClassifierNet, fit_linear_probe, validate
    from imgclass.model.transforms import EvalTransform, with_tta

    backbone = copy.deepcopy(extractor)
    backbone.load_state_dict(state)
    transform = EvalTransform.for_backbone(backbone.spec, backbone.resolution, params.rf_resizeMode)
    probe = fit_linear_probe(backbone, images, transform, 32, runtime, params.randomSeed, True, params.run_tta)
    model = ClassifierNet(backbone, len(images.labels), 0.0, normalize=True)
    model.head = probe.head.float()
    _, error = validate(with_tta(model.eval(), params.run_tta), ImageDataset(test.paths, transform), test.targets,
                        32, runtime)
    return 1.0 - error


def _average(states: list[State]) -> State:
    """The mean of floating-point weights; other buffers (counters) from the last state."""
    return {k: (sum(s[k].float() for s in states) / len(states)).to(v.dtype) if v.is_floating_point() else v
            for k, v in states[-1].items()}


def run_one(base: Any, dataset: str, seed: int, root: Path, write: Callable[[dict[str, Any]], None]) -> None:
    """One split seed of one dataset: a full LP-FT run, every epoch scored on the test images."""
    from imgclass.data.splits import TEST
    from imgclass.layout import DatasetLayout
    from imgclass.model.backbones import load_pretrained_extractor
    from imgclass.model.refine import TrainingImages, refine
    from imgclass.model.runtime import Runtime
    from imgclass.pipeline import prepare_data
    from imgclass.pipeline.artifacts import read_labels, read_split_rows
    from imgclass.pipeline.build import refine_config, training_images

    params = base.replace(rootDir=str(root), datasetName=dataset, randomSeed=seed, classifier="dnn", rf_recipe="lpft")
    prepare_data(params)
    layout = DatasetLayout.from_parameters(params)
    images = training_images(layout)
    labels = read_labels(layout)
    ids = {label: i for i, label in enumerate(labels)}
    rows = [r for r in read_split_rows(layout) if r.split == TEST]
    test = TrainingImages(tuple(layout.images_dir / r.path for r in rows), tuple(ids[r.label] for r in rows),
                          tuple(labels))
    runtime = Runtime.resolve(params.run_device, params.run_precision, -1)
    config = dataclasses.replace(refine_config(params), early_stop_patience=0)
    extractor, _ = load_pretrained_extractor(params.rf_pretrainedModelFilename, params.rf_inputResolution,
                                             params.models_dir)
    checkpoint = layout.proc_dir / "epoch_choice_checkpoint.pth"
    checkpoint.unlink(missing_ok=True)
    states: dict[int, State] = {}

    def keep_epoch(message: str) -> None:  # each log line comes after that epoch's checkpoint was written
        saved = torch.load(checkpoint, weights_only=True)
        states[saved["epoch"]] = {k.removeprefix("extractor."): v for k, v in saved["model"].items()
                                  if k.startswith("extractor.")}

    started = time.perf_counter()
    result = refine(extractor, images, config, checkpoint, runtime, log=keep_epoch)
    refine_seconds = time.perf_counter() - started
    checkpoint.unlink(missing_ok=True)
    half = math.ceil(config.max_epochs / 2)
    scored = {f"e{epoch}": state for epoch, state in sorted(states.items())}
    scored["swa"] = _average([states[e] for e in range(half, config.max_epochs + 1)])
    write({"dataset": dataset, "seed": seed, "resolution": params.rf_inputResolution, "tta": params.run_tta,
           "flip": params.rf_augHorizontalFlip, "refine_seconds": round(refine_seconds, 1),
           "patience": params.rf_earlyStopPatience,
           "history": [{k: row[k] for k in ("epoch", "validation_error", "validation_loss", "train_error")}
                       for row in result.history],
           "test": {name: _test_accuracy(extractor, state, images, test, params, runtime)
                    for name, state in scored.items()}})


def choose(history: list[dict[str, float]], config: Any) -> int:
    """The epoch ``refine`` keeps with ``config`` (a ``RefineConfig``: its rule and its early stop)."""
    rows = sorted(history, key=lambda row: row["epoch"])
    best = rows[0]
    for row in rows:
        if config.improves(row, best):
            best = row
        if config.stops_after(row["epoch"], best["epoch"]):
            break
    return int(best["epoch"])


def summarise(path: Path) -> str:
    """Mean test accuracy per dataset and resolution of the SVM (epoch 0, the probe) and of each rule."""
    from imgclass.parameters import load_parameters
    from imgclass.pipeline.build import refine_config

    runs: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
    for line in path.read_text().splitlines():
        entry = json.loads(line)
        runs[(entry["dataset"], entry["resolution"])].append(entry)
    lines = []
    for (dataset, resolution), entries in sorted(runs.items()):
        picks: dict[str, list[tuple[float, str]]] = defaultdict(list)
        for entry in sorted(entries, key=lambda e: e["seed"]):
            test, history = entry["test"], entry["history"]
            last = max(row["epoch"] for row in history)
            config = refine_config(load_parameters(rf_recipe="lpft", rf_ftEpochs=last,
                                                   rf_earlyStopPatience=entry["patience"]))
            error = choose(history, dataclasses.replace(config, best_by="error"))
            loss = choose(history, dataclasses.replace(config, best_by="loss"))
            picks["svm (epoch 0: the probe)"].append((test["e0"], "0"))
            picks["error (before round 6)"].append((test[f"e{error}"], str(error)))
            picks["loss (the default)"].append((test[f"e{loss}"], str(loss)))
            picks["last epoch"].append((test[f"e{last}"], str(last)))
            picks["swa (second half)"].append((test["swa"], "-"))
        lines.append(f"{dataset} at {resolution} px, seeds {sorted(e['seed'] for e in entries)}")
        for rule, values in picks.items():
            accuracies = [v for v, _ in values]
            sd = statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0
            per_seed = ", ".join(f"{v:.3f} (e{epoch})" for v, epoch in values)
            lines.append(f"  {rule:26s} {statistics.mean(accuracies):.3f} ± {sd:.3f}   {per_seed}")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    args, overrides = benchmark_parser(__doc__).parse_known_args(argv)
    if args.summary:
        print(summarise(args.summary))
        return
    base = prepare_run(args.root, args.datasets, overrides)
    write = results_writer(args.out, hidden=("history",))
    for seed in (int(s) for s in args.seeds.split(",")):
        for dataset in args.datasets.split(","):
            run_one(base, dataset, seed, args.root, write)


if __name__ == "__main__":
    main(sys.argv[1:])
