"""Accuracy and cost of the classifier modes, refinement recipes and test-time augmentation (issue 15).

For each split seed and dataset, steps 1-5 run in a scratch root for:

- ``svm``: fixed pretrained features + the linear SVM;
- ``dnn`` and ``svmDnnRefined`` with ``rf_recipe='lpft'`` (one refinement serves both);
- ``dnn`` with ``rf_recipe='original'`` (the tutorial's recipe, with early stopping);

each with every ``run_tta`` mode of ``--tta`` (default none, flip, scales). The TTA variant of a refined mode
runs the same refined network with its ``tta`` set in its ``featurizer.pth``
(no second refinement; step 3 and, for the SVM modes, step 4 run again).
Every row (test accuracy, class-averaged accuracy, wall and CPU seconds of
steps 2-5, refinement epochs, seconds per epoch, early stop) is appended to a
JSON-lines file as soon as it is measured, so a long run can be read while it
goes on and an interrupted one keeps what it did. ``--summary`` prints the
mean ± sd table of such a file.

    python benchmarks/refinement_recipes.py --root=/tmp/bench --datasets=tuxpaintStamps,digits,textures \
        --seeds=0,1,2,3,4 --out=results.jsonl [--key=value parameter overrides]
    python benchmarks/refinement_recipes.py --summary results.jsonl

The extra datasets come from ``benchmarks/make_datasets.py``; the demo images
are linked from ``resources/demoImages``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import shutil
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

PROJECT = Path(__file__).resolve().parents[1]


def _cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _timed(function: Callable[[], Any]) -> tuple[Any, float, float]:
    wall, cpu = time.perf_counter(), _cpu_seconds()
    result = function()
    return result, time.perf_counter() - wall, _cpu_seconds() - cpu


def _steps_3_to_5(params: Any) -> tuple[dict[str, Any], float, float]:
    from imgclass.pipeline import evaluate, featurize_dataset, train_classifier

    def run() -> dict[str, Any]:
        featurize_dataset(params, progress=False)
        train_classifier(params)
        return evaluate(params).metrics

    return _timed(run)


def _set_featurizer(params: Any, **changes: Any) -> None:
    """Rewrite ``featurizer.pth`` with ``changes`` (tta, output): the same network, used differently."""
    from imgclass.layout import DatasetLayout
    from imgclass.model.featurizer import Featurizer

    path = DatasetLayout.from_parameters(params).featurizer_pth
    dataclasses.replace(Featurizer.load(path), **changes).save(path)


def run_one(base: Any, dataset: str, seed: int, root: Path, write: Callable[[dict[str, Any]], None],
            recipes: tuple[str, ...] = ("lpft", "original"), svm_rows: list[dict[str, Any]] | None = None,
            tta_modes: tuple[str, ...] = ("none", "flip", "scales")) -> None:
    """Every setup on one split, with each of ``tta_modes``; ``svm_rows``: the SVM's rows of this split from an
    earlier run (not redone)."""
    from imgclass.pipeline import build_featurizer, prepare_data

    params = base.replace(rootDir=str(root), datasetName=dataset, randomSeed=seed)
    prepare_data(params)

    def row(name: str, classifier: str, tta: str, metrics: dict[str, Any], wall: float, cpu: float,
            refinement: Any = None, refine_wall: float = 0.0) -> None:
        entry = {"dataset": dataset, "seed": seed, "setup": name, "classifier": classifier, "tta": tta,
                 "test_accuracy": metrics["overall_accuracy"],
                 "class_averaged_accuracy": metrics["class_averaged_accuracy"],
                 "wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "resolution": params.rf_inputResolution,
                 "backbone": params.rf_pretrainedModelFilename}
        if refinement is not None:
            epochs = refinement.fine_tuning_epochs
            entry.update({"refine_wall_s": round(refine_wall, 2), "epochs": len(epochs),
                          "best_epoch": refinement.best_epoch, "stopped_early": refinement.stopped_early,
                          "s_per_epoch": round(statistics.mean(r["seconds"] for r in epochs), 2) if epochs else 0.0,
                          "probe_s": round(sum(r["seconds"] for r in refinement.history if r["epoch"] == 0), 2),
                          "history": [{k: round(v, 4) for k, v in r.items()} for r in refinement.history]})
        write(entry)

    if svm_rows:
        for entry in svm_rows:
            write(entry)
    else:
        svm = params.replace(classifier="svm")
        _, wall2, cpu2 = _timed(lambda: build_featurizer(svm, progress=False, log=lambda m: None))
        for tta in tta_modes:
            _set_featurizer(svm, tta=tta)
            metrics, wall, cpu = _steps_3_to_5(svm)
            row("svm", "svm", tta, metrics, wall2 + wall, cpu2 + cpu)

    for recipe in recipes:
        dnn = params.replace(classifier="dnn", rf_recipe=recipe)
        built, refine_wall, refine_cpu = _timed(lambda: build_featurizer(dnn, progress=False, log=lambda m: None))
        refined = built.featurizer
        for tta in tta_modes:
            _set_featurizer(dnn, tta=tta)
            metrics, wall, cpu = _steps_3_to_5(dnn)
            row(f"dnn {recipe}", "dnn", tta, metrics, refine_wall + wall, refine_cpu + cpu, built.refinement,
                refine_wall)
            if recipe != "lpft":
                continue
            both = params.replace(classifier="svmDnnRefined", rf_recipe=recipe)
            _set_featurizer(both, output="features", tta=tta)
            metrics, wall, cpu = _steps_3_to_5(both)
            row(f"svmDnnRefined {recipe}", "svmDnnRefined", tta, metrics, refine_wall + wall, refine_cpu + cpu,
                built.refinement, refine_wall)
            refined.save(Path(params.rootDir) / "proc" / dataset / "featurizer.pth")


def summarise(path: Path) -> str:
    """Mean ± sd over the seeds of every (dataset, setup, tta), as a Markdown table."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[(r["dataset"], r["setup"], r["tta"])].append(r)

    def ms(values: list[float], digits: int = 3) -> str:
        if len(values) < 2:
            return f"{values[0]:.{digits}f}" if values else "-"
        return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"

    lines = ["| dataset | setup | TTA | seeds | test acc | class-avg acc | wall s (steps 2-5) | CPU s | "
             "epochs (best) | s/epoch |", "|---|---|---|---|---|---|---|---|---|---|"]
    for (dataset, setup, tta), group in groups.items():
        epochs = [g["epochs"] for g in group if "epochs" in g]
        best = [g["best_epoch"] for g in group if "best_epoch" in g]
        per_epoch = [g["s_per_epoch"] for g in group if g.get("s_per_epoch")]
        lines.append(f"| {dataset} | {setup} | {tta} | {len(group)} | {ms([g['test_accuracy'] for g in group])} | "
                     f"{ms([g['class_averaged_accuracy'] for g in group])} | "
                     f"{ms([g['wall_s'] for g in group], 0)} | {ms([g['cpu_s'] for g in group], 0)} | "
                     + (f"{statistics.mean(epochs):.1f} ({statistics.mean(best):.1f})" if epochs else "-") + " | "
                     + (f"{statistics.mean(per_epoch):.1f}" if per_epoch else "-") + " |")
    return "\n".join(lines)


def prepare_run(root: Path, datasets: str, overrides: list[str]) -> Any:
    """The benchmark's base parameters (EfficientNet-Lite0, then ``overrides``), with the demo images linked
    into ``root`` when ``datasets`` names them."""
    from imgclass.parameters import load_parameters

    demo = root / "images" / "tuxpaintStamps"
    if "tuxpaintStamps" in datasets and not demo.exists():
        shutil.copytree(PROJECT / "resources" / "demoImages", demo, copy_function=os.link)
    return load_parameters(["--rf_pretrainedModelFilename=efficientnet_lite0", *overrides],
                           parameters_file=PROJECT / "PARAMETERS.py", project_dir=PROJECT)


def results_writer(out: Path, hidden: tuple[str, ...] = ()) -> Callable[[dict[str, Any]], None]:
    """Appends each result to the JSON-lines file ``out`` as it comes and prints it (less the ``hidden`` keys)."""
    def write(entry: dict[str, Any]) -> None:
        with open(out, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(entry) + "\n")
        print(json.dumps({k: v for k, v in entry.items() if k not in hidden}), flush=True)

    return write


def benchmark_parser(doc: str, datasets: str = "tuxpaintStamps") -> argparse.ArgumentParser:
    """The options every refinement benchmark takes: --root, --datasets, --seeds, --out and --summary;
    the unknown options that follow are parameter overrides (``--key=value``)."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--root", type=Path)
    parser.add_argument("--datasets", default=datasets)
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--summary", type=Path, help="print the table of a results file and stop")
    return parser


def main(argv: list[str]) -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--original-seeds", default="0,1,2,3,4",
                        help="seeds that also run the original recipe (the slowest setup)")
    parser.add_argument("--tta", default="none,flip,scales", help="the run_tta modes each setup runs with")
    parser.add_argument("--reuse", type=Path, help="a results file whose svm and original-recipe rows are copied "
                                                   "instead of run again (same split seeds and resolution)")
    args, overrides = parser.parse_known_args(argv)
    if args.summary:
        print(summarise(args.summary))
        return
    base = prepare_run(args.root, args.datasets, overrides)
    write = results_writer(args.out)
    original_seeds = {int(s) for s in args.original_seeds.split(",") if s}
    tta_modes = tuple(args.tta.split(","))
    old = [json.loads(line) for line in args.reuse.read_text().splitlines()] if args.reuse else []
    for seed in (int(s) for s in args.seeds.split(",")):
        for dataset in args.datasets.split(","):
            key = (dataset, seed, base.rf_inputResolution)
            same = [r for r in old if (r["dataset"], r["seed"], r["resolution"]) == key]
            svm_rows = [r for r in same if r["setup"] == "svm" and r["tta"] in tta_modes]
            original = [r for r in same if r["setup"] == "dnn original"]
            recipes = ("lpft", "original") if seed in original_seeds and not original else ("lpft",)
            run_one(base, dataset, seed, args.root, write, recipes,
                    svm_rows if len(svm_rows) == len(tta_modes) else None, tta_modes)
            for entry in original:
                write(entry)


if __name__ == "__main__":
    main(sys.argv[1:])
