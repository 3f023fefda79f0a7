"""How fast is step 3, against the hardware limit and against the usual per-image loop?

For each backbone, on the same images in one process:

1. **limit**: the bare network (``FeatureExtractor``: normalisation + backbone
   + pooling) on an already-decoded, already-batched uint8 tensor, at its
   best settings here (``--batch`` images, channels-last, bf16 autocast where
   the CPU has native bf16, else fp32); plain fp32 and fp32 channels-last are
   printed too;
2. **naive**: the img2vec-style loop: per image ``PIL.Image.open``,
   ``Resize((224, 224))``, ``ToTensor``, ``Normalize``, ``model(x.unsqueeze(0))``
   in fp32 (on the first ``--naive-images`` images: it is slow);
3. **ours**: ``imgclass.pipeline.featurize_dataset`` end to end with the
   default parameters (decode with JPEG draft mode, resize/pad, batch,
   forward, write ``features.npy/.csv/.json``), the feature cache cleared first.

Images: ``--photos`` generated photo-size JPEGs (1000x750, smooth gradients +
shapes + noise, about 190 KB each, seeded) and the 179 demo images (about
300x300). Peak RSS is the process's high-water mark during each method
(reset in between through ``/proc/self/clear_refs``).

Other sections: ``--rss=500,5000`` featurizes that many photo-size JPEGs in a
fresh process each and reports the peak RSS (memory must not grow with N);
``--cache`` times a second run of step 3 (every row reused); ``--accuracy``
compares SVM test accuracy on the demo data with fp32 and bf16 features
(EfficientNet-Lite0 ImageNet weights, 5 split seeds).

    python benchmarks/featurize.py                      # everything, about 15 minutes on 2 cores
    python benchmarks/featurize.py --sections=speed --backbones=resnet18 --sets=photo
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter

from imgclass.backbones import BACKBONES, build_feature_extractor
from imgclass.featurize import Featurizer, ImageFileDataset, extract_features
from imgclass.layout import DatasetLayout
from imgclass.parameters import PROJECT_DIR, load_parameters
from imgclass.pipeline import featurize_dataset
from imgclass.runtime import autocast, cpu_has_fast_bf16, featurize_workers, resolve_precision
from imgclass.splits import TEST, TRAIN, SplitRow, list_dataset, split_dataset, write_split
from imgclass.svm import train_svm

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
def reset_peak_rss() -> bool:
    """Reset this process's RSS high-water mark (Linux); False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    """This process's RSS high-water mark in MB (since the last reset)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(run: Callable[[], int]) -> tuple[float, float]:
    """(images per second, peak RSS in MB) of ``run()``, which returns the number of images it did."""
    reset_peak_rss()
    start = time.perf_counter()
    n = run()
    seconds = time.perf_counter() - start
    return n / seconds, peak_rss_mb()


def fresh_extractor(backbone: str, resolution: int) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_feature_extractor(backbone, resolution)  # random weights: the speed is the same


# --- the three methods ----------------------------------------------------------------------
def limit(backbone: str, resolution: int, batch: int, dtype: torch.dtype, channels_last: bool,
          seconds: float = 8.0) -> float:
    """Images per second of forward passes on one pre-made uint8 batch (after a warm-up pass)."""
    model = fresh_extractor(backbone, resolution)
    images = torch.randint(0, 256, (batch, resolution, resolution, 3), dtype=torch.uint8).permute(0, 3, 1, 2)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    else:
        images = images.contiguous()
    with torch.inference_mode(), autocast(torch.device("cpu"), dtype):
        model(images)
        done, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds or done < 2 * batch:
            model(images)
            done += batch
        return done / (time.perf_counter() - start)


def naive(backbone: str, resolution: int, paths: list[Path]) -> int:
    """The per-image loop of img2vec-style tools (fp32, NCHW, batch of one)."""
    from torchvision import transforms

    spec = BACKBONES[backbone]
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
    sets = {"photo": make_photo_folder(work / "photos", args.photos), "demo": demo_image_paths()}
    best_dtype = torch.bfloat16 if cpu_has_fast_bf16() else torch.float32
    print(f"\n## Speed at {args.resolution} px (img/s; peak RSS in MB; limit = batch {args.batch}, "
          f"channels-last, {str(best_dtype).replace('torch.', '')})")
    print("| images | backbone | fp32 NCHW | fp32 channels-last | limit | ours | naive | ours/limit | ours/naive "
          "| peak RSS limit / ours / naive | ours: precision, workers |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for set_name in args.sets.split(","):
        paths = sets[set_name]
        for backbone in args.backbones.split(","):
            plain = limit(backbone, args.resolution, args.batch, torch.float32, channels_last=False)
            cl = limit(backbone, args.resolution, args.batch, torch.float32, channels_last=True)
            reset_peak_rss()
            best = limit(backbone, args.resolution, args.batch, best_dtype, channels_last=True)
            limit_rss = peak_rss_mb()
            root = work / f"ours_{set_name}_{backbone}"
            layout = dataset_of(paths, root)
            info: dict = {}

            def run_ours() -> int:
                n, details = ours(layout, backbone, args.resolution)
                info.update(details)
                return n

            ours_rate, ours_rss = measure(run_ours)
            naive_rate, naive_rss = measure(lambda: naive(backbone, args.resolution, paths[:args.naive_images]))
            shutil.rmtree(root, ignore_errors=True)
            print(f"| {set_name} ({len(paths)}) | {backbone} | {plain:.1f} | {cl:.1f} | {best:.1f} | {ours_rate:.1f} "
                  f"| {naive_rate:.1f} | {ours_rate / best:.2f} | {ours_rate / naive_rate:.2f} "
                  f"| {limit_rss:.0f} / {ours_rss:.0f} / {naive_rss:.0f} | {info['precision']}, {info['workers']} |",
                  flush=True)


def rss_child(args: argparse.Namespace, work: Path) -> None:
    """In a fresh process: featurize ``--rss-images`` photo-size JPEGs, print peak RSS as JSON."""
    photos = make_photo_folder(work / "photos", args.photos)
    copies = -(-args.rss_images // len(photos))
    root = Path(tempfile.mkdtemp(prefix="rss_", dir=work))
    layout = dataset_of(photos, root, copies)
    rows = (layout.split_csv.read_text().splitlines())[: args.rss_images + 1]
    layout.split_csv.write_text("\n".join(rows) + "\n")
    start = time.perf_counter()
    n, details = ours(layout, args.rss_backbone, args.resolution)
    seconds = time.perf_counter() - start
    usage_self = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    usage_children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    features_mb = np.load(layout.features_npy, mmap_mode="r").nbytes / 2**20
    shutil.rmtree(root, ignore_errors=True)
    print(json.dumps({"images": n, "peak_rss_mb": usage_self, "largest_worker_peak_rss_mb": usage_children,
                      "features_mb": features_mb, "img_per_s": n / seconds, **details}))


def rss(args: argparse.Namespace, work: Path) -> None:
    print(f"\n## Peak RSS of step 3 ({args.rss_backbone}, photo-size JPEGs, fresh process each)")
    print("| images | peak RSS main process (MB) | largest loader worker (MB) | features.npy (MB) | img/s |")
    print("|---|---|---|---|---|")
    for count in (int(c) for c in args.rss.split(",")):
        result = subprocess.run([sys.executable, __file__, "--sections=rss-child", f"--rss-images={count}",
                                 f"--rss-backbone={args.rss_backbone}", f"--work={work}", f"--photos={args.photos}",
                                 f"--resolution={args.resolution}"], capture_output=True, text=True, check=True)
        data = json.loads(result.stdout.strip().splitlines()[-1])
        print(f"| {data['images']} | {data['peak_rss_mb']:.0f} | {data['largest_worker_peak_rss_mb']:.0f} "
              f"| {data['features_mb']:.1f} | {data['img_per_s']:.1f} |", flush=True)


def cache(args: argparse.Namespace, work: Path) -> None:
    photos = make_photo_folder(work / "photos", args.photos)
    root = work / "cache"
    layout = dataset_of(photos, root)
    backbone = args.rss_backbone
    params = load_parameters(rootDir=str(root), datasetName=layout.dataset, rf_pretrainedModelFilename=backbone,
                             rf_inputResolution=args.resolution)
    _, first = ours(layout, backbone, args.resolution)  # first run: featurizes everything
    second = featurize_dataset(params, progress=False)
    os.utime(layout.images_dir / "c1/000_00001.jpg")  # one image "changed"
    third = featurize_dataset(params, progress=False)
    print(f"\n## Feature cache ({backbone}, {len(photos)} photo-size JPEGs)")
    print("| run | reused | featurized | seconds |")
    print("|---|---|---|---|")
    print(f"| first run | 0 | {len(photos)} | {first['seconds']:.2f} |")
    print(f"| second run, nothing changed | {second.n_reused} | {second.n_featurized} | {second.seconds:.2f} |")
    print(f"| one image touched | {third.n_reused} | {third.n_featurized} | {third.seconds:.2f} |")
    shutil.rmtree(root, ignore_errors=True)


def accuracy(args: argparse.Namespace, work: Path) -> None:
    """SVM test accuracy with fp32 vs bf16 features on the demo data (ImageNet weights, 5 seeds)."""
    from imgclass.backbones import load_pretrained_extractor

    listing = list_dataset(DEMO_IMAGES)
    paths = [p for label in listing.labels for p in listing.images_by_label[label]]
    label_of = {p: i for i, label in enumerate(listing.labels) for p in listing.images_by_label[label]}
    y = np.array([label_of[p] for p in paths])
    features = {}
    for precision in ("fp32", "bf16"):
        extractor, _ = load_pretrained_extractor(args.accuracy_backbone, args.resolution)
        featurizer = Featurizer(extractor, "pad", "")
        out = np.zeros((len(paths), featurizer.output_dim), dtype=np.float32)
        extract_features(featurizer.network, ImageFileDataset([DEMO_IMAGES / p for p in paths], featurizer.transform),
                         lambda rows, values: out.__setitem__(rows, values), 32, torch.device("cpu"),
                         resolve_precision(precision, torch.device("cpu")), 0, False)
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
            model = train_svm(X[train], y[train], listing.labels, {}, [1e-4, 1e-3, 1e-2, 0.1, 1, 10, 100], 5,
                              True, seed, -1)
            predicted = model.predict(X[test])
            result[precision] = (float(np.mean(predicted == y[test])), model.C, predicted)
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
    parser.add_argument("--photos", type=int, default=256, help="photo-size JPEGs to generate")
    parser.add_argument("--naive-images", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--rss", default="500,5000")
    parser.add_argument("--rss-images", type=int, default=500)
    parser.add_argument("--rss-backbone", default="resnet18")
    parser.add_argument("--accuracy-backbone", default="efficientnet_lite0")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "imgclass_featurize_bench"))
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    sections = args.sections.split(",")
    if sections == ["rss-child"]:
        rss_child(args, work)
        return
    print(f"{platform.processor() or platform.machine()}, {len(os.sched_getaffinity(0))} CPUs, torch "
          f"{torch.__version__} ({torch.get_num_threads()} threads), native bf16: {cpu_has_fast_bf16()}, "
          f"step-3 worker processes: {featurize_workers(-1, torch.device('cpu'))}, load average "
          f"{os.getloadavg()[0]:.2f}")
    for name, section in (("speed", speed), ("rss", rss), ("cache", cache), ("accuracy", accuracy)):
        if name in sections:
            section(args, work)


if __name__ == "__main__":
    main()
