"""What transfer learning buys: networks trained from scratch against pretrained ones (issue 17).

For each split seed and dataset, steps 1-5 run in a scratch root for four setups:

- ``smallcnn scratch``: the Keras tutorial's small CNN (``smallcnn``), trained from random weights
  (``rf_pretrained=False``, ``classifier='dnn'``);
- ``<backbone> scratch``: the pretrained setups' network (EfficientNet-Lite0), trained from random weights;
- ``svm``: the backbone's fixed pretrained features + the linear SVM (``classifier='svm'``);
- ``dnn``: the pretrained backbone refined (``classifier='dnn'``, default recipe).

The from-scratch runs use the ``--scratch-*`` settings (optimizer, learning rate, epochs, patience; by default
the Keras tutorial's Adam at 0.001 for 30 epochs) on top of the parameters; the pretrained ones use the
parameters as given. Run it with ``OMP_NUM_THREADS=1`` on a machine shared with other jobs: torch's threads
spinning against another process's cost many times their work. Every row (test accuracy, class-averaged
accuracy, CPU and wall seconds of step 2 and of step 3, epochs, the per-epoch history) is appended to a
JSON-lines file as soon as it is measured. ``--summary`` prints the mean ± sd table of such a file;
``--plot`` draws the from-scratch runs' training curves from it.

    python benchmarks/from_scratch.py --root=/tmp/bench --datasets=tuxpaintStamps,digits --seeds=0,1,2,3,4 \
        --out=results.jsonl --rf_inputResolution=64 [--key=value parameter overrides]
    python benchmarks/from_scratch.py --summary results.jsonl
    python benchmarks/from_scratch.py --plot results.jsonl --png docs/images/from_scratch_curves.png

Datasets as in ``benchmarks/refinement_recipes.py`` (the demo images are linked from
``resources/demoImages``; the others come from ``benchmarks/make_datasets.py``).
"""

from __future__ import annotations

import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

from refinement_recipes import PROJECT, _timed, benchmark_parser, prepare_run, results_writer

SETUPS = ("smallcnn scratch", "backbone scratch", "svm", "dnn")


def _setup_parameters(params: Any, setup: str, scratch: dict[str, Any]) -> Any:
    """The parameters of one setup (``scratch``: the overrides of the from-scratch runs)."""
    if setup == "svm":
        return params.replace(classifier="svm")
    if setup == "dnn":
        return params.replace(classifier="dnn")
    backbone = "smallcnn" if setup == "smallcnn scratch" else params.rf_pretrainedModelFilename
    return params.replace(classifier="dnn", rf_pretrained=False, rf_pretrainedModelFilename=backbone, **scratch)


def run_one(base: Any, dataset: str, seed: int, root: Path, scratch: dict[str, Any],
            write: Callable[[dict[str, Any]], None], setups: tuple[str, ...] = SETUPS) -> None:
    """Every setup on one split seed of ``dataset``; one row each, written as soon as it is measured."""
    from imgclass.layout import DatasetLayout
    from imgclass.pipeline import build_featurizer, evaluate, featurize_dataset, prepare_data, train_classifier

    params = base.replace(rootDir=str(root), datasetName=dataset, randomSeed=seed)
    prepare_data(params)
    for setup in setups:
        run = _setup_parameters(params, setup, scratch)
        DatasetLayout.from_parameters(run).refinement_checkpoint.unlink(missing_ok=True)  # timed from epoch 1
        built, wall2, cpu2 = _timed(lambda: build_featurizer(run, progress=False, log=lambda m: None))
        _, wall3, cpu3 = _timed(lambda: featurize_dataset(run, progress=False))
        train_classifier(run)
        metrics = evaluate(run).metrics
        entry = {"dataset": dataset, "seed": seed, "setup": setup, "backbone": built.featurizer.extractor.backbone_name,
                 "pretrained": run.rf_pretrained, "classifier": run.classifier,
                 "test_accuracy": metrics["overall_accuracy"],
                 "class_averaged_accuracy": metrics["class_averaged_accuracy"],
                 "step2_cpu_s": round(cpu2, 2), "step3_cpu_s": round(cpu3, 2), "step2_wall_s": round(wall2, 2),
                 "step3_wall_s": round(wall3, 2), "resolution": run.rf_inputResolution}
        refinement = built.refinement
        if refinement is not None:
            entry.update({"epochs": len(refinement.fine_tuning_epochs), "best_epoch": refinement.best_epoch,
                          "stopped_early": refinement.stopped_early,
                          "history": [{k: round(v, 4) for k, v in r.items()} for r in refinement.history]})
        write(entry)


def _rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _mean_sd(values: list[float], digits: int = 3) -> str:
    if len(values) < 2:
        return f"{values[0]:.{digits}f}" if values else "-"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def summarise(path: Path) -> str:
    """Mean ± sd over the seeds of every (setup, dataset), as a Markdown table."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in _rows(path):
        groups[(r["setup"], r["dataset"])].append(r)
    lines = ["| setup | dataset | seeds | test acc | class-avg acc | CPU s step 2 | CPU s step 3 | epochs (best) |",
             "|---|---|---|---|---|---|---|---|"]
    for (setup, dataset), group in sorted(groups.items(), key=lambda kv: (SETUPS.index(kv[0][0]), kv[0][1])):
        epochs = [g["epochs"] for g in group if "epochs" in g]
        best = [g["best_epoch"] for g in group if "best_epoch" in g]
        lines.append(f"| {setup} ({group[0]['backbone']}) | {dataset} | {len(group)} | "
                     f"{_mean_sd([g['test_accuracy'] for g in group])} | "
                     f"{_mean_sd([g['class_averaged_accuracy'] for g in group])} | "
                     f"{_mean_sd([g['step2_cpu_s'] for g in group], 0)} | "
                     f"{_mean_sd([g['step3_cpu_s'] for g in group], 0)} | "
                     + (f"{statistics.mean(epochs):.1f} ({statistics.mean(best):.1f})" if epochs else "-") + " |")
    return "\n".join(lines)


def plot_curves(path: Path, png: Path) -> None:
    """Training and validation error per epoch of every from-scratch run: one panel per dataset and network."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from imgclass.io.atomic import atomic_path

    runs = [r for r in _rows(path) if not r["pretrained"] and r.get("history")]
    panels = sorted({(r["dataset"], r["backbone"]) for r in runs})
    figure, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 2.8), sharey=True, squeeze=False)
    for axis, (dataset, backbone) in zip(axes[0], panels):
        for r in (r for r in runs if (r["dataset"], r["backbone"]) == (dataset, backbone)):
            epochs = [h["epoch"] for h in r["history"]]
            axis.plot(epochs, [h["train_error"] for h in r["history"]], color="tab:blue", alpha=0.6, lw=1)
            axis.plot(epochs, [h["validation_error"] for h in r["history"]], color="tab:orange", alpha=0.6, lw=1)
            axis.plot([r["best_epoch"]], [next(h["validation_error"] for h in r["history"]
                                               if h["epoch"] == r["best_epoch"])], "k.", ms=4)
        axis.set_title(f"{dataset}: {backbone}", fontsize=9)
        axis.set_xlabel("epoch", fontsize=8)
        axis.tick_params(labelsize=7)
        axis.set_ylim(0, 1)
    axes[0][0].set_ylabel("error (blue: training, orange: validation)", fontsize=7)
    figure.tight_layout()
    with atomic_path(png) as tmp:
        figure.savefig(tmp, format="png", dpi=72)
    plt.close(figure)


def main(argv: list[str]) -> None:
    parser = benchmark_parser(__doc__, datasets="tuxpaintStamps,digits")
    parser.add_argument("--setups", default=",".join(SETUPS))
    parser.add_argument("--scratch-optimizer", default="adam")
    parser.add_argument("--scratch-lr", type=float, default=0.001)
    parser.add_argument("--scratch-epochs", type=int, default=30)
    parser.add_argument("--scratch-patience", type=int, default=0,
                        help="0: every from-scratch run trains all its epochs (the best one is still chosen on the "
                             "validation part); early stopping on a few validation images ended runs on a plateau")
    parser.add_argument("--plot", type=Path)
    parser.add_argument("--png", type=Path, default=PROJECT / "docs" / "images" / "from_scratch_curves.png")
    args, overrides = parser.parse_known_args(argv)
    if args.summary:
        print(summarise(args.summary))
        return
    if args.plot:
        plot_curves(args.plot, args.png)
        print(f"Wrote {args.png}")
        return
    base = prepare_run(args.root, args.datasets, overrides)
    scratch = {"rf_optimizer": args.scratch_optimizer, "rf_lrPerMb": [args.scratch_lr],
               "rf_maxEpochs": args.scratch_epochs, "rf_earlyStopPatience": args.scratch_patience}
    write = results_writer(args.out, hidden=("history",))
    setups = tuple(s for s in args.setups.split(",") if s)
    for seed in (int(s) for s in args.seeds.split(",")):
        for dataset in args.datasets.split(","):
            run_one(base, dataset, seed, args.root, scratch, write, setups)


if __name__ == "__main__":
    main(sys.argv[1:])
