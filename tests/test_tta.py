"""Test-time augmentation: a flipped image gives the same output with ``tta='flip'``, wherever the network runs."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from imgclass.layout import DatasetLayout
from imgclass.model.backbones import build_feature_extractor
from imgclass.model.dataset import ImageDataset
from imgclass.model.featurizer import Featurizer
from imgclass.model.inference import infer
from imgclass.model.predictor import Predictor
from imgclass.model.refine import TrainingImages, fit_linear_probe
from imgclass.model.runtime import Runtime
from imgclass.model.svm import make_svm
from imgclass.model.transforms import EvalTransform
from imgclass.parameters import load_parameters
from imgclass.pipeline import build_featurizer, evaluate, featurize_dataset, prepare_data
from imgclass.model.transforms import TTA_SCALES, FlipAveraged, ScaleAveraged, with_tta

from conftest import DEMO_IMAGES, natural_photo

RESOLUTION = 32


@pytest.fixture(scope="module")
def extractor() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_feature_extractor("resnet18", RESOLUTION).eval()


def _pair(folder: Path) -> list[Path]:
    """An image and its mirror, square at the network's resolution (no resizing, no padding to shift)."""
    image = natural_photo(3, (RESOLUTION, RESOLUTION))
    paths = [folder / "image.png", folder / "mirror.png"]
    image.save(paths[0])
    ImageOps.mirror(image).save(paths[1])
    return paths


def _outputs(featurizer: Featurizer, paths: list[Path]) -> np.ndarray:
    return np.concatenate([b.outputs for b in infer(featurizer.network, ImageDataset(paths, featurizer.transform))])


def test_flip_gives_an_image_and_its_mirror_the_same_features(extractor: torch.nn.Module, tmp_path: Path) -> None:
    paths = _pair(tmp_path)
    plain = _outputs(Featurizer(extractor, "pad", "random initialisation"), paths)
    assert not np.allclose(plain[0], plain[1], atol=1e-3)  # without TTA the mirror is another image
    flipped = _outputs(Featurizer(extractor, "pad", "random initialisation", tta="flip"), paths)
    np.testing.assert_allclose(flipped[0], flipped[1], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(flipped[0], plain.mean(0), rtol=1e-5, atol=1e-6)  # the mean of both


def _logits_featurizer(extractor: torch.nn.Module, tta: str = "none") -> Featurizer:
    """A refined-style featurizer: ``extractor`` + a 3-class head, class scores out, with ``tta``."""
    torch.manual_seed(0)
    head = torch.nn.Linear(extractor.feature_dim, 3)
    return Featurizer(extractor, "pad", "refined", head, ["a", "b", "c"], "logits", tta=tta)


def _round_trip(featurizer: Featurizer, folder: Path) -> Featurizer:
    featurizer.save(folder / "featurizer.pth")
    return Featurizer.load(folder / "featurizer.pth")


def test_flip_tta_travels_in_featurizer_pth_and_reaches_the_predictor(extractor: torch.nn.Module,
                                                                       tmp_path: Path) -> None:
    featurizer = _logits_featurizer(extractor, "flip")
    loaded = _round_trip(featurizer, tmp_path)
    assert loaded.tta == "flip" and isinstance(loaded.network, FlipAveraged)
    assert loaded.fingerprint() == featurizer.fingerprint() != _logits_featurizer(extractor).fingerprint()
    images = [Image.open(p).convert("RGB") for p in _pair(tmp_path)]
    scores = Predictor(loaded, None).predict(images).scores  # what serving, batch scoring and Spark call
    np.testing.assert_allclose(scores[0], scores[1], rtol=1e-5, atol=1e-6)


def test_featurizers_saved_before_tta_load_without_it_and_keep_their_fingerprint(extractor: torch.nn.Module,
                                                                                  tmp_path: Path) -> None:
    featurizer = Featurizer(extractor, "pad", "random initialisation")
    featurizer.save(tmp_path / "featurizer.pth")
    checkpoint = torch.load(tmp_path / "featurizer.pth", weights_only=True)
    del checkpoint["tta"]  # as written by earlier versions
    torch.save(checkpoint, tmp_path / "old.pth")
    old = Featurizer.load(tmp_path / "old.pth")
    assert old.tta == "none" and old.network is old.extractor
    assert old.fingerprint() == featurizer.fingerprint()  # features stored before TTA existed stay valid


def test_scales_is_the_mean_over_the_image_as_it_is_and_enlarged(extractor: torch.nn.Module) -> None:
    images = torch.randint(0, 255, (2, 3, RESOLUTION, RESOLUTION), dtype=torch.uint8)
    network = with_tta(extractor, "scales")
    assert isinstance(network, ScaleAveraged) and network.scales == TTA_SCALES and 1.0 in TTA_SCALES
    with torch.no_grad():
        views = [extractor(images if s == 1 else torch.nn.functional.interpolate(
            images.float(), scale_factor=s, mode="bilinear", align_corners=False)) for s in TTA_SCALES]
        averaged = network(images)
    torch.testing.assert_close(averaged, torch.stack(views).mean(0), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(averaged, views[0], atol=1e-3)  # the enlarged view changes the output
    assert averaged.shape == (2, extractor.feature_dim)


def test_flip_and_scales_together_give_an_image_and_its_mirror_the_same_output(extractor: torch.nn.Module,
                                                                               tmp_path: Path) -> None:
    loaded = _round_trip(_logits_featurizer(extractor, "flip+scales"), tmp_path)
    assert loaded.tta == "flip+scales" and isinstance(loaded.network, FlipAveraged)
    assert isinstance(loaded.network.network, ScaleAveraged)
    assert loaded.fingerprint() not in {_logits_featurizer(extractor, mode).fingerprint()
                                        for mode in ("none", "flip", "scales")}
    paths = _pair(tmp_path)
    scores = _outputs(loaded, paths)
    np.testing.assert_allclose(scores[0], scores[1], rtol=1e-5, atol=1e-5)
    images = [Image.open(p).convert("RGB") for p in paths]
    np.testing.assert_allclose(Predictor(loaded, None).predict(images).scores[0], scores[0], rtol=1e-4, atol=1e-5)


def test_scale_factors_must_be_positive(extractor: torch.nn.Module) -> None:
    with pytest.raises(ValueError, match="positive"):
        ScaleAveraged(extractor, (1.0, 0.0))


def test_an_unknown_tta_mode_is_refused(extractor: torch.nn.Module) -> None:
    with pytest.raises(ValueError, match="tta must be one of"):
        Featurizer(extractor, "pad", "x", tta="rotate")
    with pytest.raises(ValueError, match="tta must be one of"):
        with_tta(extractor, "multi")


def test_a_head_on_unit_length_features_round_trips(extractor: torch.nn.Module, tmp_path: Path) -> None:
    head = torch.nn.Linear(extractor.feature_dim, 2)
    featurizer = Featurizer(extractor, "pad", "refined", head, ["a", "b"], "logits", head_input="l2")
    featurizer.save(tmp_path / "featurizer.pth")
    loaded = Featurizer.load(tmp_path / "featurizer.pth")
    images = torch.randint(0, 255, (2, 3, RESOLUTION, RESOLUTION), dtype=torch.uint8)
    with torch.no_grad():
        expected = head(torch.nn.functional.normalize(extractor(images), dim=1))
        torch.testing.assert_close(loaded.network(images), expected)
    assert loaded.head_input == "l2" and loaded.fingerprint() == featurizer.fingerprint()


def test_the_probe_is_fit_on_the_features_its_tta_averages(extractor: torch.nn.Module, tmp_path: Path) -> None:
    """LP-FT's head (the SVM copied into a linear layer) must score the features the network will produce."""
    paths, targets = [], []
    for target in range(2):
        for i in range(6):
            path = tmp_path / f"{target}_{i}.png"
            natural_photo(10 * target + i, (48, 40)).save(path)
            paths.append(path)
            targets.append(target)
    images = TrainingImages(tuple(paths), tuple(targets), ("a", "b"))
    runtime = Runtime(torch.device("cpu"), torch.float32, 0)
    probe = fit_linear_probe(extractor, images, EvalTransform(RESOLUTION), batch_size=4, runtime=runtime, seed=0,
                             tta="scales")
    features = _outputs(Featurizer(extractor, "pad", "x", tta="scales"), paths)
    features /= np.linalg.norm(features, axis=1, keepdims=True)
    svm = make_svm(probe.C, l2_normalize=False, random_state=0).fit(features, targets)[-1]
    with torch.no_grad():
        head = probe.head(torch.from_numpy(features)).numpy()
    np.testing.assert_allclose(head[:, 1] - head[:, 0], svm.decision_function(features), rtol=1e-4, atol=1e-4)


def test_steps_2_to_5_run_with_scales_tta(tmp_path: Path) -> None:
    layout = DatasetLayout(tmp_path, "toy")
    for label in ("birds", "fish"):
        (layout.images_dir / label).mkdir(parents=True)
        for source in sorted((DEMO_IMAGES / label).glob("*.jpg"))[:6]:
            shutil.copy(source, layout.images_dir / label / source.name)
    params = load_parameters(rootDir=str(tmp_path), datasetName="toy", classifier="dnn", run_tta="scales",
                             rf_pretrainedModelFilename="resnet18", rf_inputResolution=32, rf_ftEpochs=1,
                             rf_mbSize=4, run_workers=0)
    prepare_data(params)
    built = build_featurizer(params, pretrained=False, progress=False, log=lambda m: None)
    assert built.featurizer.tta == "scales" and "scales TTA" in built.summary()
    loaded = Featurizer.load(layout.featurizer_pth)
    assert isinstance(loaded.network, ScaleAveraged)
    assert featurize_dataset(params, progress=False).feature_dim == 2
    assert 0 <= evaluate(params).metrics["overall_accuracy"] <= 1
