"""How fast is step 3, against the hardware limit and against the usual per-image loop?

For each backbone, on the same images:

1. **limit**: the bare network (``FeatureExtractor``: normalisation + backbone
   + pooling) on an already-decoded, already-batched uint8 tensor, at its
   best settings here: channels-last, bf16 autocast where the CPU has native
   bf16 (else fp32), the best of batch 32, 16 and 8, and the best of one
   process using every core and one process per core (concurrent, one
   thread each; batch 16). Plain fp32 and fp32 channels-last are printed too;
2. **naive**: the img2vec-style loop: per image ``PIL.Image.open``,
   ``Resize((224, 224))``, ``ToTensor``, ``Normalize``, ``model(x.unsqueeze(0))``
   in fp32 under ``torch.no_grad`` (on the first ``--naive-images`` images);
3. **ours**: ``imgclass.pipeline.featurize_dataset`` end to end with the
   default parameters (and once with ``run_workers=0``, one process):
   decode with JPEG draft mode, resize/pad, batch, forward, write
   ``features.npy/.csv/.json``; the
   feature cache is cleared before each timed run, which follows an untimed
   one (page cache warm, as for any second run).

Images: ``--photos`` (512) generated photo-size JPEGs (1000x750, smooth
gradients + shapes + noise, about 190 KB each, seeded), each listed
``--photo-copies`` (4) times, a 2,048-image dataset; and the 179 demo images
(about 100x120 to 300x300). Each speed number is the median of ``--rounds``
rounds that measure every column in turn. The limit is the forward-pass
column with the best median (not each round's best column, which would add
that round's noise), and ours/limit is computed within each round, against
that column measured a minute apart: this virtual machine's speed drifts by
up to a third. The ceiling column adds what loading the images costs
(``decode_cost_ms``): decoding runs on the same cores as the network.

Other sections (``--sections``): ``rss`` featurizes ``--rss`` (500 and 5000)
photo-size JPEGs in a fresh process each, with the default workers and with
``run_workers=0``, sampling memory every 50 ms over the process and its
workers: summed RSS, and summed PSS (pages shared between the processes,
such as the forked workers' copy of the parent, counted once); it must not
grow with N. ``cache`` runs ``scripts/3_runDNN.py`` three times (from
scratch, unchanged, one image touched) and shows what it printed.
``accuracy`` compares SVM test accuracy on the demo data with fp32 and bf16
features (EfficientNet-Lite0 ImageNet weights, C by CV on the training part,
``--seeds`` split seeds).

    python benchmarks/featurize.py                      # everything: about 45 minutes on 2 cores
    python benchmarks/featurize.py --sections=speed --backbones=resnet18 --sets=photo
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter

from imgclass.model.backbones import backbone_spec, build_feature_extractor
from imgclass.model.dataset import ImageDataset
from imgclass.model.featurizer import Featurizer
from imgclass.model.inference import infer
from imgclass.layout import DatasetLayout
from imgclass.parameters import load_parameters
from imgclass.model.transforms import EvalTransform
from imgclass.pipeline import featurize_dataset
from imgclass.model.runtime import Runtime, autocast, cpu_has_fast_bf16, worker_count
from imgclass.data.splits import TEST, TRAIN, SplitRow, list_dataset, split_dataset, write_split
from imgclass.model.svm import LinearSvm, LinearSvmCV

PROJECT_DIR = Path(__file__).resolve().parents[1]

DEMO_IMAGES = PROJECT_DIR / "resources" / "demoImages"
PHOTO_SIZE = (1000, 750)


# --- images ---------------------------------------------------------------------------------
def make_photo(seed: int, size: tuple[int, int] = PHOTO_SIZE) -> Image.Image:
    """A natural-looking photo-size image: smooth colour gradients, blurred shapes, sensor-like noise."""
    rng = np.random.default_rng(seed)
    width, height = size
    x = np.linspace(0, 1, width, dtype=np.float32)[None, :, None]
    y = np.linspace(0, 1, height, dtype=np.float32)[:, None, None]
    corners = rng.uniform(0, 255, (3, 3)).astype(np.float32)
    base = corners[0] * (1 - x) * (1 - y) + corners[1] * x * y + corners[2] * x * (1 - y)
    image = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(12):
        x0, y0, side = int(rng.integers(0, width)), int(rng.integers(0, height)), int(rng.integers(20, width // 3))
        box = (x0, y0, x0 + side, y0 + int(side * rng.uniform(0.5, 1.5)))
        fill = tuple(int(v) for v in rng.integers(0, 255, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=fill)
    noisy = np.asarray(image.filter(ImageFilter.GaussianBlur(2)), dtype=np.int16) + rng.normal(0, 8, (height, width, 3))
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def make_photo_folder(folder: Path, count: int) -> list[Path]:
    """``count`` JPEGs (quality 90) in ``folder``, generated once and kept between runs."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"photo_{i:04d}.jpg" for i in range(count)]
    for i, path in enumerate(paths):
        if not path.is_file():
            make_photo(i).save(path, quality=90)
    return paths


def demo_image_paths() -> list[Path]:
    listing = list_dataset(DEMO_IMAGES)
    return [DEMO_IMAGES / p for label in listing.labels for p in listing.images_by_label[label]]


def dataset_of(paths: list[Path], root: Path, copies: int = 1) -> DatasetLayout:
    """A dataset folder under ``root`` holding ``paths`` (hard links, or copies across devices) and its split.csv."""
    layout = DatasetLayout(root, "bench")
    rows = []
    for copy in range(copies):
        for i, source in enumerate(paths):
            relative = f"c{i % 2}/{copy:03d}_{i:05d}{source.suffix.lower()}"
            target = layout.images_dir / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            if not target.exists():
                try:
                    os.link(source, target)
                except OSError:
                    shutil.copyfile(source, target)
            rows.append(SplitRow(relative, f"c{i % 2}", TRAIN))
    write_split(rows, ["c0", "c1"], layout.split_csv, layout.labels_json)
    return layout


# --- measurement helpers ------------------------------------------------------------------
def _descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{current}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                children = [int(c) for c in Path(f"/proc/{current}/task/{task}/children").read_text().split()]
            except OSError:
                continue
            found += children
            todo += children
    return found


def _memory_kb(pid: int) -> tuple[int, int]:
    """(RSS, PSS) of one process in kB (PSS counts pages shared with other processes proportionally)."""
    rss = pss = 0
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Rss:"):
                rss = int(line.split()[1])
            elif line.startswith("Pss:"):
                pss = int(line.split()[1])
    except OSError:
        pass
    return rss, pss


class PeakMemory:
    """Samples this process and its children (loader workers) every 50 ms: peak summed RSS and PSS in MB.

    Summed RSS counts memory shared between processes (the forked workers
    share the parent's model weights and libraries) once per process; summed
    PSS splits it among them, so it is the memory the run really occupies.
    """

    def __init__(self) -> None:
        self.rss_mb = self.pss_mb = 0.0
        #: each process's own peak RSS in MB: flat in N if nothing accumulates, whereas the peak of the
        #: sum also grows with the run's length (more chances for the workers' peaks to coincide)
        self.process_peaks_mb: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        pids = [os.getpid(), *_descendants(os.getpid())]
        memory = {pid: _memory_kb(pid) for pid in pids}
        for pid, (rss_kb, _) in memory.items():
            self.process_peaks_mb[pid] = max(self.process_peaks_mb.get(pid, 0.0), rss_kb / 1024)
        totals = [sum(values) / 1024 for values in zip(*memory.values())]
        self.rss_mb, self.pss_mb = max(self.rss_mb, totals[0]), max(self.pss_mb, totals[1])

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self._sample()

    def __enter__(self) -> "PeakMemory":
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


def rate(run: Callable[[], int], repeats: int = 2) -> float:
    """Best images per second of ``repeats`` calls of ``run()``, which returns the number of images it did."""
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        n = run()
        best = max(best, n / (time.perf_counter() - start))
    return best


def fresh_extractor(backbone: str, resolution: int) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_feature_extractor(backbone, resolution)  # random weights: the speed is the same


# --- the three methods ----------------------------------------------------------------------
def limit(backbone: str, resolution: int, batch: int, dtype: torch.dtype, channels_last: bool,
          seconds: float = 5.0, ready: Callable[[], None] | None = None) -> float:
    """Images per second of forward passes on one pre-made uint8 batch, after a warm-up pass (and ``ready()``)."""
    model = fresh_extractor(backbone, resolution)
    images = torch.randint(0, 256, (batch, resolution, resolution, 3), dtype=torch.uint8).permute(0, 3, 1, 2)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    else:
        images = images.contiguous()
    with torch.inference_mode(), autocast(torch.device("cpu"), dtype):
        model(images)
        if ready is not None:
            ready()
        done, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds or done < 2 * batch:
            model(images)
            done += batch
        return done / (time.perf_counter() - start)


def limit_in_processes(backbone: str, resolution: int, batch: int, processes: int, seconds: float = 5.0) -> float:
    """Summed images per second of ``processes`` concurrent processes, each with ``cores // processes`` threads.

    Each process builds and warms up its model, says so, and starts timing
    when all are ready, so the timed stretches overlap.
    """
    threads = max(1, len(os.sched_getaffinity(0)) // processes)
    command = [sys.executable, __file__, "--sections=limit-child", f"--backbones={backbone}",
               f"--resolution={resolution}", f"--batch={batch}", f"--limit-seconds={seconds}"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    children = [subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
                for _ in range(processes)]
    for child in children:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
    for child in children:
        assert child.stdin is not None
        child.stdin.write("go\n")
        child.stdin.flush()
    return sum(float(child.communicate()[0].split()[-1]) for child in children)


def _ready_then_wait_for_go() -> None:
    print("ready", flush=True)
    sys.stdin.readline()


def decode_cost_ms(paths: list[Path], backbone: str, resolution: int, count: int = 200) -> float:
    """Milliseconds per image that step 3's loading (decode, resize, pad) costs one core, best of two passes.

    Decoding needs the same cores as the network, so even with perfect overlap
    step 3 cannot beat ``1 / (1 / limit + decode / cores)``: the ceiling
    column. For a JPEG most of this is entropy (Huffman) decoding, which
    reduced-scale decoding cannot skip: it grows with the file size.
    """
    transform = EvalTransform.for_backbone(backbone_spec(backbone), resolution, "pad")  # step 3's, no network
    dataset = ImageDataset(paths[:count], transform)
    out = np.empty((resolution, resolution, 3), dtype=np.uint8)
    best = float("inf")
    for _ in range(2):
        start = time.perf_counter()
        for index in range(len(dataset)):
            dataset.load(index, out)
        best = min(best, (time.perf_counter() - start) / len(dataset) * 1000)
    return best


def naive(backbone: str, resolution: int, paths: list[Path]) -> int:
    """The per-image loop of img2vec-style tools (fp32, NCHW, batch of one)."""
    from torchvision import transforms

    spec = backbone_spec(backbone)
    body = fresh_extractor(backbone, resolution).body.eval()
    preprocess = transforms.Compose([transforms.Resize((resolution, resolution)), transforms.ToTensor(),
                                     transforms.Normalize(spec.mean, spec.std)])
    with torch.no_grad():
        for path in paths:
            image = Image.open(path).convert("RGB")
            body(preprocess(image).unsqueeze(0)).numpy()
    return len(paths)


def ours(layout: DatasetLayout, backbone: str, resolution: int, **overrides: object) -> tuple[int, dict]:
    """Script 3's code path on a prepared dataset folder, without reusable cached features."""
    params = load_parameters(rootDir=str(layout.root), datasetName=layout.dataset,
                             rf_pretrainedModelFilename=backbone, rf_inputResolution=resolution, **overrides)
    if not layout.featurizer_pth.is_file():
        Featurizer(fresh_extractor(backbone, resolution), params.rf_resizeMode, "random initialisation").save(
            layout.featurizer_pth)
    (layout.proc_dir / "features_cache.json").unlink(missing_ok=True)
    report = featurize_dataset(params, progress=False)
    return report.n_images, {"precision": report.precision, "workers": report.workers, "seconds": report.seconds}


# --- sections -------------------------------------------------------------------------------
def speed(args: argparse.Namespace, work: Path) -> None:
    """The speed table: every number is the median of ``--rounds`` rounds, each measuring all columns in turn.

    This machine's speed drifts by up to a third over minutes (a shared
    virtual machine), so ours/limit is computed within each round, from
    numbers taken a minute apart, and the median of those ratios reported.
    """
    photos = make_photo_folder(work / "photos", args.photos)
    sets = {"photo": photos * args.photo_copies, "demo": demo_image_paths()}
    best_dtype = torch.bfloat16 if cpu_has_fast_bf16() else torch.float32
    dtype_name = str(best_dtype).replace("torch.", "")
    cores = len(os.sched_getaffinity(0))
    configs = [(b, p) for b in (int(b) for b in args.limit_batches.split(",")) for p in (1, cores)
               if p == 1 or b == 16]
    print(f"\n## Speed at {args.resolution} px, img/s (forward passes: channels-last + {dtype_name} unless "
          f"marked; limit = the forward-pass column with the best median; medians of {args.rounds} rounds)")
    print("| images | backbone | fp32 NCHW, 1 process | fp32 channels-last, 1 process | "
          + " | ".join(f"{dtype_name}, {p} process{'es' if p > 1 else ''}, batch {b}" for b, p in configs) +
          " | limit | ours | ours, 1 process (run_workers=0) | naive | ours/limit (range) | ours/naive "
          "| decode + resize, ms/img (1 core) | ceiling: limit with decoding on the same cores (/limit) "
          "| ours/ceiling | ours: precision, workers |")
    print("|---|---|---|---|" + "---|" * len(configs) + "---|---|---|---|---|---|---|---|---|---|")
    for set_name in args.sets.split(","):
        paths = sets[set_name]
        for backbone in args.backbones.split(","):
            plain = limit(backbone, args.resolution, args.batch, torch.float32, False, seconds=args.limit_seconds)
            cl = limit(backbone, args.resolution, args.batch, torch.float32, True, seconds=args.limit_seconds)
            variants = ((32, -1), (32, 0))  # (run_mbSize, run_workers): the defaults, and one process
            layouts = {v: dataset_of(paths, work / f"ours_{set_name}_{backbone}_{v[0]}_{v[1]}") for v in variants}
            details: dict = {}

            def run_ours(variant: tuple[int, int]) -> int:
                n, info = ours(layouts[variant], backbone, args.resolution, run_mbSize=variant[0],
                               run_workers=variant[1])
                if variant == variants[0]:
                    details.update(info)
                return n

            for variant in variants:
                run_ours(variant)  # untimed first run: page cache, lazy imports
            rounds = []
            for _ in range(args.rounds):
                forward = [limit(backbone, args.resolution, batch, best_dtype, True, seconds=args.limit_seconds)
                           if processes == 1 else
                           limit_in_processes(backbone, args.resolution, batch, processes, args.limit_seconds)
                           for batch, processes in configs]
                rounds.append(forward + [rate(lambda: run_ours(v), repeats=1) for v in variants])
            table = np.array(rounds)
            medians = np.median(table, axis=0)
            # The limit is the configuration with the best median; taking each round's best column
            # instead would pick up that round's noise (the maximum of several noisy numbers).
            best = int(np.argmax(medians[:len(configs)]))
            limits = table[:, best]
            ratios = table[:, len(configs)] / limits
            decode_ms = decode_cost_ms(paths, backbone, args.resolution)
            ceiling = 1 / (1 / medians[best] + decode_ms / 1000 / cores)
            naive_paths = paths[:args.naive_images]
            naive_rate = rate(lambda: naive(backbone, args.resolution, naive_paths), repeats=1)
            for layout in layouts.values():
                shutil.rmtree(layout.root, ignore_errors=True)
            ours_rate, ours_one_process = medians[len(configs):]
            print(f"| {set_name} ({len(paths)}) | {backbone} | {plain:.1f} | {cl:.1f} | "
                  + " | ".join(f"{r:.1f}" for r in medians[:len(configs)]) +
                  f" | **{medians[best]:.1f}** | **{ours_rate:.1f}** | {ours_one_process:.1f} | {naive_rate:.1f} "
                  f"| **{np.median(ratios):.2f}** ({ratios.min():.2f}-{ratios.max():.2f}) "
                  f"| {ours_rate / naive_rate:.2f} | {decode_ms:.2f} | {ceiling:.1f} ({ceiling / medians[best]:.2f}) "
                  f"| {ours_rate / ceiling:.2f} | {details['precision']}, {details['workers']} |", flush=True)


def rss_child(args: argparse.Namespace, work: Path) -> None:
    """In a fresh process: featurize ``--rss-images`` photo-size JPEGs, print peak memory as JSON."""
    photos = make_photo_folder(work / "photos", args.photos)
    copies = -(-args.rss_images // len(photos))
    root = Path(tempfile.mkdtemp(prefix="rss_", dir=work))
    layout = dataset_of(photos, root, copies)
    rows = (layout.split_csv.read_text().splitlines())[: args.rss_images + 1]
    layout.split_csv.write_text("\n".join(rows) + "\n")
    with PeakMemory() as memory:
        start = time.perf_counter()
        n, details = ours(layout, args.rss_backbone, args.resolution, run_workers=args.rss_workers)
        seconds = time.perf_counter() - start
    features_mb = np.load(layout.features_npy, mmap_mode="r").nbytes / 2**20
    shutil.rmtree(root, ignore_errors=True)
    peaks = memory.process_peaks_mb
    print(json.dumps({"images": n, "rss_mb": memory.rss_mb, "pss_mb": memory.pss_mb,
                      "main_mb": peaks[os.getpid()],
                      "workers_mb": sorted(v for pid, v in peaks.items() if pid != os.getpid()),
                      "features_mb": features_mb, "img_per_s": n / seconds, **details}))


def rss(args: argparse.Namespace, work: Path) -> None:
    print(f"\n## Peak memory of step 3 by number of images ({args.rss_backbone}, photo-size JPEGs, fresh process "
          "each; summed over the process and its workers)")
    print("| images | peak RSS, summed (MB) | peak PSS, summed (MB) | peak RSS of the main process (MB) "
          "| peak RSS of each worker (MB) | features.npy (MB) | img/s (while sampled) | precision, workers |")
    print("|---|---|---|---|---|---|---|---|")
    for workers in (-1, 0):
        for count in (int(c) for c in args.rss.split(",")):
            result = subprocess.run([sys.executable, __file__, "--sections=rss-child", f"--rss-images={count}",
                                     f"--rss-backbone={args.rss_backbone}", f"--work={work}",
                                     f"--photos={args.photos}", f"--resolution={args.resolution}",
                                     f"--rss-workers={workers}"], capture_output=True, text=True, check=True)
            data = json.loads(result.stdout.strip().splitlines()[-1])
            workers_mb = ", ".join(f"{v:.0f}" for v in data["workers_mb"]) or "-"
            print(f"| {data['images']} | {data['rss_mb']:.0f} | {data['pss_mb']:.0f} | {data['main_mb']:.0f} "
                  f"| {workers_mb} | {data['features_mb']:.1f} "
                  f"| {data['img_per_s']:.1f} | {data['precision']}, {data['workers']} |", flush=True)


def cache(args: argparse.Namespace, work: Path) -> None:
    """Script 3 three times: from scratch, unchanged, after one image was touched; prints what it said."""
    photos = make_photo_folder(work / "photos", args.photos)
    root = work / "cache"
    shutil.rmtree(root, ignore_errors=True)
    layout = dataset_of(photos, root)
    backbone = args.cache_backbone
    Featurizer(fresh_extractor(backbone, args.resolution), "pad", "random initialisation").save(layout.featurizer_pth)
    command = [sys.executable, str(PROJECT_DIR / "scripts" / "3_runDNN.py"), f"--rootDir={root}",
               f"--datasetName={layout.dataset}"]
    print(f"\n## Feature cache: scripts/3_runDNN.py on {len(photos)} photo-size JPEGs ({backbone})")
    print("| run | wall seconds (incl. Python start-up) | script 3 said |")
    print("|---|---|---|")
    for name in ("first run", "second run, nothing changed", "after touching one image"):
        if name.startswith("after"):
            os.utime(layout.images_dir / "c1/000_00001.jpg")
        start = time.perf_counter()
        result = subprocess.run(command, capture_output=True, text=True, check=True)
        said = " / ".join(line for line in result.stdout.splitlines() if not line.startswith("Wrote"))
        print(f"| {name} | {time.perf_counter() - start:.1f} | {said} |", flush=True)
    shutil.rmtree(root, ignore_errors=True)


def accuracy(args: argparse.Namespace, work: Path) -> None:
    """SVM test accuracy with fp32 vs bf16 features on the demo data (ImageNet weights, 5 seeds)."""
    from imgclass.model.backbones import load_pretrained_extractor

    listing = list_dataset(DEMO_IMAGES)
    paths = [p for label in listing.labels for p in listing.images_by_label[label]]
    label_of = {p: i for i, label in enumerate(listing.labels) for p in listing.images_by_label[label]}
    y = np.array([label_of[p] for p in paths])
    features = {}
    for precision in ("fp32", "bf16"):
        extractor, _ = load_pretrained_extractor(args.accuracy_backbone, args.resolution,
                                                 PROJECT_DIR / "resources" / "models")
        featurizer = Featurizer(extractor, "pad", "")
        out = np.zeros((len(paths), featurizer.output_dim), dtype=np.float32)
        dataset = ImageDataset([DEMO_IMAGES / p for p in paths], featurizer.transform)
        for batch in infer(featurizer.network, dataset, 32, Runtime.resolve("cpu", precision, 0)):
            out[batch.indices] = batch.outputs
        features[precision] = out
    a, b = features["fp32"], features["bf16"]
    cosine = np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    print(f"\n## Precision check: demo data ({len(paths)} images), {args.accuracy_backbone} ImageNet weights, "
          f"{args.resolution} px; bf16 vs fp32 features: cosine min {cosine.min():.4f}, mean {cosine.mean():.4f}")
    print("| seed | fp32 test acc | bf16 test acc | fp32 C | bf16 C | same predictions |")
    print("|---|---|---|---|---|---|")
    totals = {"fp32": [], "bf16": []}
    for seed in range(args.seeds):
        rows = split_dataset(listing, 0.75, seed)
        index = {p: i for i, p in enumerate(paths)}
        train = np.array([index[r.path] for r in rows if r.split == TRAIN])
        test = np.array([index[r.path] for r in rows if r.split == TEST])
        result = {}
        for precision, X in features.items():
            model = LinearSvmCV([1e-4, 1e-3, 1e-2, 0.1, 1, 10, 100], 5, -1,
                                LinearSvm(random_state=seed)).fit(X[train], y[train])
            predicted = model.predict(X[test])
            result[precision] = (float(np.mean(predicted == y[test])), model.C_, predicted)
            totals[precision].append(result[precision][0])
        same = float(np.mean(result["fp32"][2] == result["bf16"][2]))
        print(f"| {seed} | {result['fp32'][0]:.3f} | {result['bf16'][0]:.3f} | {result['fp32'][1]:g} "
              f"| {result['bf16'][1]:g} | {same:.3f} |", flush=True)
    print(f"| mean | {np.mean(totals['fp32']):.3f} | {np.mean(totals['bf16']):.3f} | | | |")
    print(f"bf16 - fp32 mean test accuracy: {100 * (np.mean(totals['bf16']) - np.mean(totals['fp32'])):+.1f} points")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sections", default="speed,rss,cache,accuracy")
    parser.add_argument("--backbones", default="resnet18,resnet50,efficientnet_lite0")
    parser.add_argument("--sets", default="photo,demo", help="photo: generated 1000x750 JPEGs; demo: the 179 demo images")
    parser.add_argument("--photos", type=int, default=512, help="photo-size JPEGs to generate")
    parser.add_argument("--naive-images", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32, help="batch of the fp32 forward-pass columns")
    parser.add_argument("--limit-batches", default="32,16,8", help="batch sizes tried for the limit (16 also with "
                                                                 "one process per core)")
    parser.add_argument("--photo-copies", type=int, default=4,
                        help="the photo set lists each generated JPEG this often (hard links): a dataset of "
                             "photos x copies images, so that start-up costs weigh as in a real dataset")
    parser.add_argument("--limit-seconds", type=float, default=5.0, help="duration of each forward-pass measurement")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the speed table (medians are reported)")
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--rss", default="500,5000")
    parser.add_argument("--rss-images", type=int, default=500)
    parser.add_argument("--rss-backbone", default="resnet50")
    parser.add_argument("--rss-workers", type=int, default=-1, help=argparse.SUPPRESS)
    parser.add_argument("--accuracy-backbone", default="efficientnet_lite0")
    parser.add_argument("--cache-backbone", default="resnet50")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "imgclass_featurize_bench"))
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    sections = args.sections.split(",")
    if sections == ["rss-child"]:
        rss_child(args, work)
        return
    if sections == ["limit-child"]:
        best_dtype = torch.bfloat16 if cpu_has_fast_bf16() else torch.float32
        print(limit(args.backbones, args.resolution, args.batch, best_dtype, True, args.limit_seconds,
                    _ready_then_wait_for_go))
        return
    print(f"{platform.processor() or platform.machine()}, {len(os.sched_getaffinity(0))} CPUs, torch "
          f"{torch.__version__} ({torch.get_num_threads()} threads), native bf16: {cpu_has_fast_bf16()}, "
          f"step-3 worker processes: {worker_count(-1, torch.device('cpu'), 'inference')}, load average "
          f"{os.getloadavg()[0]:.2f}")
    for name, section in (("speed", speed), ("rss", rss), ("cache", cache), ("accuracy", accuracy)):
        if name in sections:
            section(args, work)
            print(f"(load average after '{name}': {', '.join(f'{v:.2f}' for v in os.getloadavg())})", flush=True)


if __name__ == "__main__":
    main()
