"""Featurization: transforms, unreadable images, precisions, batch layout, device plans, per-batch writing,
checkpoint round trip."""

from __future__ import annotations

from pathlib import Path
from unittest.mock import MagicMock

import numpy as np
import pytest
import torch
from PIL import Image

from imgclass.model.backbones import build_feature_extractor
from imgclass.model.inference import DevicePlan, FeatureWriter, Featurizer, ImageBatches, ImageFileDataset, extract_features
from imgclass.model.transforms import EvalTransform

from conftest import make_photo


@pytest.fixture
def featurizer() -> Featurizer:
    torch.manual_seed(0)
    return Featurizer(build_feature_extractor("resnet18", 32), "pad", "random initialisation")


def test_pad_keeps_the_whole_image_and_crop_fills_the_square() -> None:
    image = Image.new("RGB", (200, 100), (255, 0, 0))
    padded = EvalTransform(64, "pad", (0, 0, 255))(image)
    assert padded.shape == (3, 64, 64) and padded.dtype == torch.uint8
    assert padded[:, 32, 32].tolist() == [255, 0, 0] and padded[:, 2, 32].tolist() == [0, 0, 255]
    cropped = EvalTransform(64, "crop")(image)
    assert cropped.shape == (3, 64, 64) and (cropped[0] == 255).all()
    with pytest.raises(ValueError):
        EvalTransform(64, "stretch")


def test_unreadable_images_are_reported_as_nan_rows(tmp_path: Path, featurizer: Featurizer) -> None:
    paths = [make_photo(tmp_path / f"{i}.jpg", (40, 30), seed=i) for i in range(4)]
    (tmp_path / "bad.jpg").write_bytes(b"broken")
    paths.insert(2, tmp_path / "bad.jpg")
    dataset = ImageFileDataset(paths, featurizer.transform)
    out = np.zeros((5, 512), dtype=np.float32)
    calls: list[int] = []

    def store(rows: np.ndarray, values: np.ndarray) -> None:
        calls.append(len(rows))
        out[rows] = values

    failures = extract_features(featurizer.extractor, dataset, store, batch_size=2, progress=False)
    assert calls == [2, 2, 1]  # the callback gets each batch as it comes: nothing waits for the whole set
    assert [i for i, _ in failures] == [2] and "bad.jpg" in failures[0][1]
    assert np.isnan(out[2]).all() and np.isfinite(np.delete(out, 2, axis=0)).all()


def test_fp32_features_are_bit_stable(tmp_path: Path, featurizer: Featurizer) -> None:
    paths = [make_photo(tmp_path / f"{i}.png", (50, 40), seed=i) for i in range(3)]
    results = []
    for batch_size in (1, 3):
        out = np.zeros((3, 512), dtype=np.float32)
        extract_features(featurizer.extractor, ImageFileDataset(paths, featurizer.transform),
                         lambda rows, values: out.__setitem__(rows, values), batch_size=batch_size, progress=False)
        results.append(out)
    np.testing.assert_allclose(results[0], results[1], rtol=1e-4, atol=1e-5)
    again = np.zeros((3, 512), dtype=np.float32)
    extract_features(featurizer.extractor, ImageFileDataset(paths, featurizer.transform),
                     lambda rows, values: again.__setitem__(rows, values), batch_size=3, progress=False)
    assert np.array_equal(again, results[1])


def test_bf16_precision_gives_float32_features_close_to_fp32(tmp_path: Path, featurizer: Featurizer) -> None:
    paths = [make_photo(tmp_path / f"{i}.png", (50, 40), seed=i) for i in range(2)]
    outs = {}
    for dtype in (torch.float32, torch.bfloat16):
        out = np.zeros((2, 512), dtype=np.float32)
        extract_features(featurizer.extractor, ImageFileDataset(paths, featurizer.transform),
                         lambda rows, values: out.__setitem__(rows, values), dtype=dtype, progress=False)
        outs[dtype] = out
    assert outs[torch.bfloat16].dtype == np.float32
    cosine = np.sum(outs[torch.float32] * outs[torch.bfloat16], 1) / (
        np.linalg.norm(outs[torch.float32], axis=1) * np.linalg.norm(outs[torch.bfloat16], axis=1))
    assert (cosine > 0.98).all()


def test_feature_writer_is_atomic(tmp_path: Path) -> None:
    target = tmp_path / "features.npy"
    with pytest.raises(RuntimeError):
        with FeatureWriter(target, 4, 3) as writer:
            writer(np.array([0, 1]), np.ones((2, 3), dtype=np.float32))
            raise RuntimeError("interrupted")
    assert not target.exists() and list(tmp_path.iterdir()) == []
    with FeatureWriter(target, 4, 3) as writer:
        writer(np.array([2, 3]), np.full((2, 3), 2, dtype=np.float32))
        writer(np.array([0, 1]), np.ones((2, 3), dtype=np.float32))
    assert np.array_equal(np.load(target), np.array([[1] * 3, [1] * 3, [2] * 3, [2] * 3], dtype=np.float32))
    assert [p.name for p in tmp_path.iterdir()] == ["features.npy"]


def test_feature_writer_takes_rows_in_any_order_and_keeps_no_matrix(tmp_path: Path) -> None:
    target = tmp_path / "features.npy"
    values = np.arange(30, dtype=np.float32).reshape(10, 3)
    with FeatureWriter(target, 10, 3) as writer:
        writer(np.array([7, 8, 9]), values[7:])
        writer(np.array([4, 0, 1, 5]), values[[4, 0, 1, 5]])
        writer(np.array([2, 3, 6]), values[[2, 3, 6]].astype(np.float64))  # converted to float32
        assert not any(isinstance(v, np.ndarray) and v.size >= 30 for v in vars(writer).values())
        with pytest.raises(IndexError):
            writer(np.array([10]), values[:1])
    loaded = np.load(target)
    assert loaded.dtype == np.float32 and np.array_equal(loaded, values)


def test_featurizer_checkpoint_round_trip(tmp_path: Path, featurizer: Featurizer) -> None:
    featurizer.save(tmp_path / "featurizer.pth")
    loaded = Featurizer.load(tmp_path / "featurizer.pth")
    assert loaded.describe() == featurizer.describe()
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    with torch.inference_mode():
        assert torch.equal(loaded.extractor(images), featurizer.extractor(images))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_every_precision_gives_float32_rows_of_the_feature_width(tmp_path: Path, featurizer: Featurizer,
                                                                  dtype: torch.dtype) -> None:
    paths = [make_photo(tmp_path / f"{i}.jpg", (50, 40), seed=i) for i in range(3)]
    batches: list[np.ndarray] = []
    extract_features(featurizer.network, ImageFileDataset(paths, featurizer.transform),
                     lambda rows, values: batches.append(values), batch_size=2, dtype=dtype, progress=False)
    assert [b.shape for b in batches] == [(2, 512), (1, 512)]
    assert all(b.dtype == np.float32 and np.isfinite(b).all() for b in batches)


def test_fp32_features_equal_the_network_on_the_same_pixels(tmp_path: Path, featurizer: Featurizer) -> None:
    paths = [make_photo(tmp_path / f"{i}.jpg", (64, 30), seed=i) for i in range(3)]
    dataset = ImageFileDataset(paths, featurizer.transform)
    out = np.zeros((3, 512), dtype=np.float32)
    extract_features(featurizer.extractor, dataset, lambda rows, values: out.__setitem__(rows, values),
                     batch_size=3, progress=False)
    images = torch.stack([dataset[i][0] for i in range(3)])  # (3, 3, R, R) uint8, as the old per-image path
    with torch.inference_mode():
        expected = featurizer.extractor(images.contiguous(memory_format=torch.channels_last)).numpy()
    assert np.array_equal(out, expected)


def test_batches_are_assembled_in_channels_last_layout(tmp_path: Path, featurizer: Featurizer) -> None:
    paths = [make_photo(tmp_path / f"{i}.jpg", (50, 40), seed=i) for i in range(3)]
    (tmp_path / "bad.jpg").write_bytes(b"broken")
    dataset = ImageFileDataset([*paths, tmp_path / "bad.jpg"], featurizer.transform)
    images, indices, errors = ImageBatches(dataset, 3)[1]
    assert images.shape == (1, 32, 32, 3) and indices.tolist() == [3] and "bad.jpg" in errors[0]
    assert not images.any()
    images, indices, errors = ImageBatches(dataset, 3)[0]
    assert indices.tolist() == [0, 1, 2] and errors == ["", "", ""]
    for i in range(3):
        assert torch.equal(images[i].permute(2, 0, 1), dataset[i][0])
    network_input = DevicePlan.for_device(torch.device("cpu")).to_network_input(images)
    assert network_input.shape == (3, 3, 32, 32)
    assert network_input.is_contiguous(memory_format=torch.channels_last)
    assert network_input.data_ptr() == images.data_ptr()  # a view: no copy on the CPU


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
    dataset = ImageFileDataset([], featurizer.transform)
    list(imgclass.model.inference._batches(dataset, 8, cuda, workers=3))
    assert loader_options["pin_memory"] is True and loader_options["num_workers"] == 3
    list(imgclass.model.inference._batches(dataset, 8, cpu, workers=0))
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
    monkeypatch.setattr(FeatureWriter, "__call__", recording_write)
    featurize_dataset(params, progress=False)
    assert pieces == [(3, 512), (3, 512), (2, 512)]
    assert np.isfinite(np.load(DatasetLayout.from_parameters(params).features_npy)).all()


def test_cpu_worker_processes_give_the_same_rows_in_order(tmp_path: Path, featurizer: Featurizer,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import imgclass.model.inference

    started: list[int] = []
    real = imgclass.model.inference._featurized_batches
    monkeypatch.setattr(imgclass.model.inference, "_featurized_batches",
                        lambda *args: started.append(args[-1]) or real(*args))
    paths = [make_photo(tmp_path / f"{i}.jpg", (50, 40), seed=i) for i in range(7)]
    (tmp_path / "bad.jpg").write_bytes(b"broken")
    paths.insert(3, tmp_path / "bad.jpg")
    results = {}
    for workers in (0, 2):
        calls: list[list[int]] = []
        out = np.zeros((8, 512), dtype=np.float32)

        def store(rows: np.ndarray, values: np.ndarray) -> None:
            calls.append(rows.tolist())
            out[rows] = values

        failures = extract_features(featurizer.extractor, ImageFileDataset(paths, featurizer.transform), store,
                                    batch_size=1, workers=workers, progress=False)
        assert calls == [[i] for i in range(8)] and [i for i, _ in failures] == [3]
        results[workers] = out
    assert started == [2]  # the worker processes ran the network
    np.testing.assert_allclose(results[2], results[0], rtol=1e-4, atol=1e-5, equal_nan=True)
    extract_features(featurizer.extractor, ImageFileDataset(paths[:7], featurizer.transform), lambda *a: None,
                     batch_size=1, workers=2, progress=False)
    assert started == [2]  # 7 batches for 2 workers: done in this process


def test_the_cpu_forward_pass_takes_a_batch_in_small_chunks(tmp_path: Path, featurizer: Featurizer,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import imgclass.model.inference

    monkeypatch.setattr(imgclass.model.inference, "CPU_FORWARD_BATCH", 2)
    seen: list[int] = []
    hook = featurizer.extractor.register_forward_pre_hook(lambda module, args: seen.append(len(args[0])))
    paths = [make_photo(tmp_path / f"{i}.jpg", (50, 40), seed=i) for i in range(5)]
    delivered: list[int] = []
    extract_features(featurizer.extractor, ImageFileDataset(paths, featurizer.transform),
                     lambda rows, values: delivered.append(len(values)), batch_size=5, progress=False)
    hook.remove()
    assert seen == [2, 2, 1] and delivered == [5]  # the writer still gets whole batches


def test_cpu_workers_with_several_threads_each_start_fresh_and_finish(tmp_path: Path, featurizer: Featurizer,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A forked child hangs in GNU OpenMP once the parent used it: multi-threaded workers must be spawned."""
    import imgclass.model.inference

    monkeypatch.setattr(imgclass.model.inference, "available_cpus", lambda: 4)  # 2 workers x 2 threads
    with torch.inference_mode():  # the parent has used its OpenMP thread pool
        featurizer.extractor(torch.zeros((2, 3, 32, 32), dtype=torch.uint8))
    paths = [make_photo(tmp_path / f"{i}.jpg", (50, 40), seed=i) for i in range(8)]
    out = {}
    for workers in (0, 2):
        rows = np.zeros((8, 512), dtype=np.float32)
        extract_features(featurizer.extractor, ImageFileDataset(paths, featurizer.transform),
                         lambda r, v: rows.__setitem__(r, v), batch_size=1, workers=workers, progress=False)
        out[workers] = rows
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
    extract_features(featurizer.extractor, ImageFileDataset(paths, featurizer.transform), lambda *a: None,
                     batch_size=2, progress=False)
    assert len(calls) == 3  # one per batch
