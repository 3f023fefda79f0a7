"""Batch invariance of the inference loop (imgclass.model.inference): the same images give bit-identical
features whatever run_mbSize, run_workers and their position in the dataset are.

Without padded fixed-size chunks, oneDNN's fp32 kernels differ with the batch size and the number of
threads, and step 3 with worker processes (one thread each) wrote different features than without.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from imgclass.model.backbones import build_feature_extractor
from imgclass.model.inference import CPU_FORWARD_BATCH, DevicePlan, images_to_batch, run_network
from imgclass.model.transforms import EvalTransform

from conftest import make_dataset


def random_images(count: int, side: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (count, side, side, 3), dtype=torch.uint8, generator=generator)


@pytest.fixture(scope="module")
def network() -> torch.nn.Module:
    torch.manual_seed(0)
    return DevicePlan.for_device(torch.device("cpu")).prepare(build_feature_extractor("resnet18", 32).eval())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_each_image_gets_the_same_output_in_any_batch(network: torch.nn.Module, dtype: torch.dtype) -> None:
    plan = DevicePlan.for_device(torch.device("cpu"), batch_invariant=True)
    images = random_images(2 * CPU_FORWARD_BATCH + 3, 32)
    seen: list[int] = []
    hook = network.register_forward_pre_hook(lambda module, args: seen.append(len(args[0])))
    try:
        with torch.inference_mode(), torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
            whole = run_network(network, images, plan)
            alone = [run_network(network, images[i:i + 1], plan) for i in (0, 5, 20)]
            shifted = run_network(network, images[7:19], plan)
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                one_thread = run_network(network, images[:5], plan)
            finally:
                torch.set_num_threads(threads)
    finally:
        hook.remove()
    assert set(seen) == {CPU_FORWARD_BATCH}  # every chunk padded to the same size
    assert whole.shape[0] == len(images)
    for output, i in zip(alone, (0, 5, 20)):
        assert torch.equal(output[0], whole[i])
    assert torch.equal(shifted, whole[7:19])
    assert torch.equal(one_thread, whole[:5])


def test_the_service_plan_does_not_pad(network: torch.nn.Module) -> None:
    """A one-image request must not pay for a chunk of 16."""
    seen: list[int] = []
    hook = network.register_forward_pre_hook(lambda module, args: seen.append(len(args[0])))
    try:
        with torch.inference_mode():
            run_network(network, random_images(3, 32), DevicePlan.for_device(torch.device("cpu")))
    finally:
        hook.remove()
    assert seen == [3]


def test_transformed_arrays_pass_through_images_to_batch() -> None:
    from PIL import Image

    transform = EvalTransform(32)
    image = Image.new("RGB", (50, 20), (200, 10, 10))
    array = transform.to_array(image)
    batch = images_to_batch([image, array], transform)
    assert torch.equal(batch[0], batch[1])
    with pytest.raises(ValueError, match="uint8 array"):
        images_to_batch([np.zeros((16, 16, 3), dtype=np.uint8)], transform)


def test_step_3_features_are_bit_identical_whatever_workers_and_batch_size(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """In fp32, whose oneDNN kernels differ with batch size and threads on the development machine (without
    the padding this test fails there); bf16, the default on CPUs that have it, is checked above."""
    import imgclass.model.runtime
    from imgclass.layout import DatasetLayout
    from imgclass.parameters import load_parameters
    from imgclass.pipeline import build_featurizer, featurize_dataset, prepare_data

    # a small job may use worker processes too (normally it needs 4 batches per worker to start them)
    monkeypatch.setattr(imgclass.model.runtime, "MIN_BATCHES_PER_CPU_WORKER", 1)
    params = load_parameters(rootDir=str(tmp_path), datasetName="toy", rf_pretrainedModelFilename="efficientnet_lite0",
                             rf_inputResolution=32, run_precision="fp32")
    layout = DatasetLayout.from_parameters(params)
    make_dataset(layout.images_dir, {"a": 17, "b": 17}, size=(80, 60))
    prepare_data(params)
    build_featurizer(params, pretrained=False, progress=False)  # random weights: the kernels are the same
    features = {}
    for workers, batch_size in [(0, 32), (0, 8), (2, 8), (2, 32)]:
        layout.features_cache_json.unlink(missing_ok=True)  # recompute every row
        report = featurize_dataset(params.replace(run_workers=workers, run_mbSize=batch_size), progress=False)
        assert report.workers == workers
        features[workers, batch_size] = np.load(layout.features_npy)
    reference = features[0, 32]
    assert np.isfinite(reference).all()
    for key, values in features.items():
        assert np.array_equal(values, reference), f"run_workers, run_mbSize = {key}: features differ"
