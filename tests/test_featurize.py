"""Featurization: transforms, the image dataset, the inference loop (unreadable images, precisions, batch
layout, device plans, worker processes), per-batch writing, checkpoint round trip."""

from __future__ import annotations

from pathlib import Path
from unittest.mock import MagicMock

import numpy as np
import pytest
import torch
from PIL import Image

from imgclass.errors import MissingArtifactError
from imgclass.model.backbones import build_feature_extractor
from imgclass.model.dataset import ImageDataset
from imgclass.model.feature_store import FeatureWriter
from imgclass.model.featurizer import Featurizer
from imgclass.model.inference import DevicePlan, infer
from imgclass.model.runtime import Runtime
from imgclass.model.transforms import EvalTransform, TrainTransform

from conftest import make_photo


def run(network: torch.nn.Module, paths: list[Path], featurizer: Featurizer, batch_size: int = 32,
        dtype: torch.dtype = torch.float32, workers: int = 0) -> tuple[np.ndarray, list[tuple[int, str]], list[int]]:
    """All outputs of the inference loop in one matrix, its failures, and the size of each batch in order."""
    out = np.full((len(paths), featurizer.output_dim), -1.0, dtype=np.float32)
    failures, sizes = [], []
    for batch in infer(network, ImageDataset(paths, featurizer.transform), batch_size,
                       Runtime(torch.device("cpu"), dtype, workers)):
        out[batch.indices] = batch.outputs
        failures += batch.failures
        sizes.append(len(batch.indices))
    return out, failures, sizes


@pytest.fixture
def featurizer() -> Featurizer:
    torch.manual_seed(0)
    return Featurizer(build_feature_extractor("resnet18", 32), "pad", "random initialisation")


def test_pad_keeps_the_whole_image_and_crop_fills_the_square() -> None:
    image = Image.new("RGB", (200, 100), (255, 0, 0))
    padded = EvalTransform(64, "pad", (0, 0, 255)).to_array(image)
    assert padded.shape == (64, 64, 3) and padded.dtype == np.uint8
    assert padded[32, 32].tolist() == [255, 0, 0] and padded[2, 32].tolist() == [0, 0, 255]
    cropped = EvalTransform(64, "crop").to_array(image)
    assert cropped.shape == (64, 64, 3) and (cropped[..., 0] == 255).all()
    with pytest.raises(ValueError):
        EvalTransform(64, "stretch")


def test_crop_follows_the_backbones_crop_fraction() -> None:
    """A black frame shows how much of the image a crop keeps."""
    array = np.zeros((100, 100, 3), dtype=np.uint8)
    array[10:90, 10:90] = 255  # white centre, black 10 px frame
    image = Image.fromarray(array)
    tight = EvalTransform(50, "crop", crop_fraction=0.6).to_array(image)  # keeps the centre 60 px: all white
    loose = EvalTransform(50, "crop", crop_fraction=1.0).to_array(image)  # keeps everything: frame visible
    assert tight.min() > 200 and loose[0, 0].max() < 50
    assert EvalTransform(224, "crop", crop_fraction=0.875).draft_size == (256, 256)
    assert EvalTransform(224, "crop", crop_fraction=0.95).draft_size == (236, 236)
    assert EvalTransform(224, "pad").draft_size == (224, 1)


def test_train_transform_writes_the_same_layout_as_eval_and_is_seeded() -> None:
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (30, 50, 3), dtype=np.uint8))
    transform = TrainTransform(32, (128, 128, 128), random_crop=True, flip=True, color_jitter=0.3)
    torch.manual_seed(1)
    a = [transform.to_array(image) for _ in range(4)]
    torch.manual_seed(1)
    b = [transform.to_array(image) for _ in range(4)]
    assert all(x.shape == (32, 32, 3) and x.dtype == np.uint8 for x in a)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(a[0], x) for x in a[1:])
    assert transform.draft_size == (37, 1)  # the padded square before the random crop


def test_unreadable_images_are_reported_as_nan_rows(tmp_path: Path, featurizer: Featurizer) -> None:
    paths = [make_photo(tmp_path / f"{i}.jpg", (40, 30), seed=i) for i in range(4)]
    (tmp_path / "bad.jpg").write_bytes(b"broken")
    paths.insert(2, tmp_path / "bad.jpg")
    out, failures, sizes = run(featurizer.extractor, paths, featurizer, batch_size=2)
    assert sizes == [2, 2, 1]  # each batch comes as it is done: nothing waits for the whole set
    assert [i for i, _ in failures] == [2] and "bad.jpg" in failures[0][1]
    assert np.isnan(out[2]).all() and np.isfinite(np.delete(out, 2, axis=0)).all()


def test_fp32_features_are_bit_stable(tmp_path: Path, featurizer: Featurizer) -> None:
    paths = [make_photo(tmp_path / f"{i}.png", (50, 40), seed=i) for i in range(3)]
    one, three = (run(featurizer.extractor, paths, featurizer, batch_size=b)[0] for b in (1, 3))
    np.testing.assert_allclose(one, three, rtol=1e-4, atol=1e-5)
    assert np.array_equal(run(featurizer.extractor, paths, featurizer, batch_size=3)[0], three)


def test_bf16_precision_gives_float32_features_close_to_fp32(tmp_path: Path, featurizer: Featurizer) -> None:
    paths = [make_photo(tmp_path / f"{i}.png", (50, 40), seed=i) for i in range(2)]
    fp32, bf16 = (run(featurizer.extractor, paths, featurizer, dtype=d)[0] for d in (torch.float32, torch.bfloat16))
    assert bf16.dtype == np.float32
    cosine = np.sum(fp32 * bf16, 1) / (np.linalg.norm(fp32, axis=1) * np.linalg.norm(bf16, axis=1))
    assert (cosine > 0.98).all()


def test_feature_writer_is_atomic(tmp_path: Path) -> None:
    target = tmp_path / "features.npy"
    with pytest.raises(RuntimeError):
        with FeatureWriter(target, 4, 3) as writer:
            writer.write(np.array([0, 1]), np.ones((2, 3), dtype=np.float32))
            raise RuntimeError("interrupted")
    assert not target.exists() and list(tmp_path.iterdir()) == []
    with FeatureWriter(target, 4, 3) as writer:
        writer.write(np.array([2, 3]), np.full((2, 3), 2, dtype=np.float32))
        writer.write(np.array([0, 1]), np.ones((2, 3), dtype=np.float32))
    assert np.array_equal(np.load(target), np.array([[1] * 3, [1] * 3, [2] * 3, [2] * 3], dtype=np.float32))
    assert [p.name for p in tmp_path.iterdir()] == ["features.npy"]


def test_feature_writer_takes_rows_in_any_order_and_keeps_no_matrix(tmp_path: Path) -> None:
    target = tmp_path / "features.npy"
    values = np.arange(30, dtype=np.float32).reshape(10, 3)
    with FeatureWriter(target, 10, 3) as writer:
        writer.write(np.array([7, 8, 9]), values[7:])
        writer.write(np.array([4, 0, 1, 5]), values[[4, 0, 1, 5]])
        writer.write(np.array([2, 3, 6]), values[[2, 3, 6]].astype(np.float64))  # converted to float32
        assert not any(isinstance(v, np.ndarray) and v.size >= 30 for v in vars(writer).values())
        with pytest.raises(IndexError):
            writer.write(np.array([10]), values[:1])
    loaded = np.load(target)
    assert loaded.dtype == np.float32 and np.array_equal(loaded, values)


def test_featurizer_checkpoint_round_trip(tmp_path: Path, featurizer: Featurizer) -> None:
    featurizer.save(tmp_path / "featurizer.pth")
    loaded = Featurizer.load(tmp_path / "featurizer.pth")
    assert loaded.describe() == featurizer.describe() and loaded.transform == featurizer.transform
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    with torch.inference_mode():
        assert torch.equal(loaded.extractor(images), featurizer.extractor(images))


def test_a_damaged_checkpoint_is_a_one_line_error_saying_how_to_rebuild(tmp_path: Path,
                                                                       featurizer: Featurizer) -> None:
    featurizer.save(tmp_path / "featurizer.pth")
    data = (tmp_path / "featurizer.pth").read_bytes()
    (tmp_path / "featurizer.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(MissingArtifactError, match="2_refineDNN") as error:
        Featurizer.load(tmp_path / "featurizer.pth")
    assert "\n" not in str(error.value)
    torch.save({"format": "imgclass-featurizer-1", "backbone": "resnet18", "resolution": 32},
               tmp_path / "featurizer.pth")  # keys missing: written by something else
    with pytest.raises(MissingArtifactError, match="does not fit this version.*2_refineDNN"):
        Featurizer.load(tmp_path / "featurizer.pth")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_every_precision_gives_float32_rows_of_the_feature_width(tmp_path: Path, featurizer: Featurizer,
                                                                  dtype: torch.dtype) -> None:
    paths = [make_photo(tmp_path / f"{i}.jpg", (50, 40), seed=i) for i in range(3)]
    batches = list(infer(featurizer.network, ImageDataset(paths, featurizer.transform), 2,
                         Runtime(torch.device("cpu"), dtype, 0)))
    assert [b.outputs.shape for b in batches] == [(2, 512), (1, 512)]
    assert all(b.outputs.dtype == np.float32 and np.isfinite(b.outputs).all() for b in batches)


def test_fp32_features_equal_the_network_on_the_same_pixels(tmp_path: Path, featurizer: Featurizer) -> None:
    paths = [make_photo(tmp_path / f"{i}.jpg", (64, 30), seed=i) for i in range(3)]
    out = run(featurizer.extractor, paths, featurizer, batch_size=3)[0]
    batch = ImageDataset(paths, featurizer.transform).__getitems__([0, 1, 2])
    images = batch.images.permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        assert np.array_equal(out, featurizer.extractor(images).numpy())


def test_batches_are_assembled_in_channels_last_layout(tmp_path: Path, featurizer: Featurizer) -> None:
    paths = [make_photo(tmp_path / f"{i}.jpg", (50, 40), seed=i) for i in range(3)]
    (tmp_path / "bad.jpg").write_bytes(b"broken")
    dataset = ImageDataset([*paths, tmp_path / "bad.jpg"], featurizer.transform)
    images, indices, errors = dataset.__getitems__([3])
    assert images.shape == (1, 32, 32, 3) and indices.tolist() == [3] and "bad.jpg" in errors[0]
    assert not images.any()
    batch = dataset.__getitems__([0, 1, 2])
    assert batch.indices.tolist() == [0, 1, 2] and batch.errors == ["", "", ""] and batch.readable.all()
    for i in range(3):
        assert np.array_equal(batch.images[i].numpy(), featurizer.transform.to_array(Image.open(paths[i])))
    network_input = DevicePlan.for_device(torch.device("cpu")).to_network_input(batch.images)
    assert network_input.shape == (3, 3, 32, 32)
    assert network_input.is_contiguous(memory_format=torch.channels_last)
    assert network_input.data_ptr() == batch.images.data_ptr()  # a view: no copy on the CPU


def test_jpegs_are_decoded_at_reduced_scale(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           featurizer: Featurizer) -> None:
    """Draft decoding: a 1000x750 JPEG for a 32 px square is decoded at 1/8 scale, not in full."""
    import imgclass.model.dataset

    path = make_photo(tmp_path / "big.jpg", (1000, 750))
    sizes: list[tuple[int, int]] = []
    real = imgclass.model.dataset.load_rgb
    monkeypatch.setattr(imgclass.model.dataset, "load_rgb",
                        lambda p, draft_size=None: sizes.append((image := real(p, draft_size=draft_size)).size)
                        or image)
    run(featurizer.extractor, [path], featurizer)
    assert sizes == [(125, 94)]


def test_cuda_batches_are_pinned_and_copied_asynchronously(monkeypatch: pytest.MonkeyPatch,
                                                           featurizer: Featurizer) -> None:
    """No GPU here: check the plan, the loader options and the copy call with stand-ins."""
    import imgclass.model.inference

    cuda = DevicePlan.for_device(torch.device("cuda"))
    assert (cuda.pin_memory, cuda.non_blocking, cuda.channels_last, cuda.cudnn_benchmark) == (True, True, True, True)
    cpu = DevicePlan.for_device(torch.device("cpu"))
    assert (cpu.pin_memory, cpu.non_blocking, cpu.channels_last) == (False, False, True)
    assert not DevicePlan.for_device(torch.device("mps")).channels_last
    batch = MagicMock()
    cuda.to_network_input(batch)
    batch.to.assert_called_once_with(torch.device("cuda"), non_blocking=True)
    batch.to.return_value.permute.assert_called_once_with(0, 3, 1, 2)
    loader_options: dict = {}

    class RecordingLoader:
        def __init__(self, dataset, **options):  # type: ignore[no-untyped-def]
            loader_options.update(options)

        def __iter__(self):  # type: ignore[no-untyped-def]
            return iter(())

    monkeypatch.setattr(imgclass.model.inference, "DataLoader", RecordingLoader)
    dataset = ImageDataset([], featurizer.transform)
    list(imgclass.model.inference._image_batches(dataset, 8, cuda, workers=3))
    assert loader_options["pin_memory"] is True and loader_options["num_workers"] == 3
    list(imgclass.model.inference._image_batches(dataset, 8, cpu, workers=0))
    assert loader_options["pin_memory"] is False


def test_step_3_writes_each_batch_as_it_comes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No full feature matrix in memory: the writer receives batch-sized pieces, in order."""
    from imgclass.layout import DatasetLayout
    from imgclass.parameters import load_parameters
    from imgclass.pipeline import build_featurizer, featurize_dataset, prepare_data

    from conftest import make_dataset

    params = load_parameters(rootDir=str(tmp_path), datasetName="toy", rf_pretrainedModelFilename="resnet18",
                             rf_inputResolution=32, run_workers=0, run_mbSize=3)
    make_dataset(DatasetLayout.from_parameters(params).images_dir, {"a": 4, "b": 4}, size=(40, 30))
    prepare_data(params)
    build_featurizer(params, pretrained=False, progress=False)
    pieces: list[tuple[int, ...]] = []
    real_write = FeatureWriter.write

    def recording_write(self: FeatureWriter, rows: np.ndarray, features: np.ndarray) -> None:
        pieces.append(features.shape)
        real_write(self, rows, features)

    monkeypatch.setattr(FeatureWriter, "write", recording_write)
    featurize_dataset(params, progress=False)
    assert pieces == [(3, 512), (3, 512), (2, 512)]
    assert np.isfinite(np.load(DatasetLayout.from_parameters(params).features_npy)).all()


def test_cpu_worker_processes_give_the_same_rows_in_order(tmp_path: Path, featurizer: Featurizer,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import imgclass.model.inference

    started: list[int] = []
    real = imgclass.model.inference._worker_outputs
    monkeypatch.setattr(imgclass.model.inference, "_worker_outputs",
                        lambda *args: started.append(args[-1]) or real(*args))
    paths = [make_photo(tmp_path / f"{i}.jpg", (50, 40), seed=i) for i in range(7)]
    (tmp_path / "bad.jpg").write_bytes(b"broken")
    paths.insert(3, tmp_path / "bad.jpg")
    results = {}
    for workers in (0, 2):
        rows: list[list[int]] = []
        out = np.zeros((8, 512), dtype=np.float32)
        for batch in infer(featurizer.extractor, ImageDataset(paths, featurizer.transform), 1,
                           Runtime(torch.device("cpu"), torch.float32, workers)):
            rows.append(batch.indices.tolist())
            out[batch.indices] = batch.outputs
            assert [i for i, _ in batch.failures] == ([3] if batch.indices[0] == 3 else [])
        assert rows == [[i] for i in range(8)]
        results[workers] = out
    assert started == [2]  # the worker processes ran the network
    np.testing.assert_allclose(results[2], results[0], rtol=1e-4, atol=1e-5, equal_nan=True)
    run(featurizer.extractor, paths[:7], featurizer, batch_size=1, workers=2)
    assert started == [2]  # 7 batches for 2 workers: done in this process


def test_the_cpu_forward_pass_takes_a_batch_in_small_chunks(tmp_path: Path, featurizer: Featurizer,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import imgclass.model.inference

    monkeypatch.setattr(imgclass.model.inference, "CPU_FORWARD_BATCH", 2)
    seen: list[int] = []
    hook = featurizer.extractor.register_forward_pre_hook(lambda module, args: seen.append(len(args[0])))
    paths = [make_photo(tmp_path / f"{i}.jpg", (50, 40), seed=i) for i in range(5)]
    sizes = run(featurizer.extractor, paths, featurizer, batch_size=5)[2]
    hook.remove()
    assert seen == [2, 2, 2]  # the short last chunk is padded: every image sees the same kernels
    assert sizes == [5]  # the caller still gets whole batches


def test_cpu_workers_with_several_threads_each_start_fresh_and_finish(tmp_path: Path, featurizer: Featurizer,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A forked child hangs in GNU OpenMP once the parent used it: multi-threaded workers must be spawned."""
    import imgclass.model.inference

    monkeypatch.setattr(imgclass.model.inference, "available_cpus", lambda: 4)  # 2 workers x 2 threads
    with torch.inference_mode():  # the parent has used its OpenMP thread pool
        featurizer.extractor(torch.zeros((2, 3, 32, 32), dtype=torch.uint8))
    paths = [make_photo(tmp_path / f"{i}.jpg", (50, 40), seed=i) for i in range(8)]
    out = {workers: run(featurizer.extractor, paths, featurizer, batch_size=1, workers=workers)[0]
           for workers in (0, 2)}
    np.testing.assert_allclose(out[2], out[0], rtol=1e-4, atol=1e-5)


def test_the_cpu_path_returns_freed_heap_memory_after_every_batch(tmp_path: Path, featurizer: Featurizer,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """glibc keeps freed activations in a fragmenting heap: RSS crept up with the number of batches."""
    import imgclass.model.inference
    from imgclass.model.runtime import release_free_memory

    release_free_memory()  # callable here (glibc: malloc_trim; elsewhere: nothing), never raises
    calls: list[int] = []
    monkeypatch.setattr(imgclass.model.inference, "release_free_memory", lambda: calls.append(1))
    paths = [make_photo(tmp_path / f"{i}.jpg", (50, 40), seed=i) for i in range(5)]
    run(featurizer.extractor, paths, featurizer, batch_size=2)
    assert len(calls) == 3  # one per batch


def test_the_loop_leaves_no_inference_mode_behind_while_the_caller_holds_a_batch(
        tmp_path: Path, featurizer: Featurizer) -> None:
    paths = [make_photo(tmp_path / f"{i}.jpg", (50, 40), seed=i) for i in range(4)]
    for _ in infer(featurizer.extractor, ImageDataset(paths, featurizer.transform), 2):
        assert not torch.is_inference_mode_enabled() and torch.is_grad_enabled()
