"""Step 3 reuses stored features of unchanged images, and only those."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from imgclass.model.backbones import build_feature_extractor
from imgclass.model.feature_store import FeatureWriter, file_stamp, find_reusable_features, write_cache_index
from imgclass.model.featurizer import Featurizer
from imgclass.layout import DatasetLayout
from imgclass.parameters import Parameters, load_parameters
from imgclass.pipeline import build_featurizer, featurize_dataset, prepare_data

from conftest import make_dataset, make_photo


@pytest.fixture
def params(tmp_path: Path) -> Parameters:
    params = load_parameters(rootDir=str(tmp_path), datasetName="toy", rf_pretrainedModelFilename="resnet18",
                             rf_inputResolution=32, run_workers=0, run_mbSize=4, run_precision="fp32")
    make_dataset(DatasetLayout.from_parameters(params).images_dir, {"a": 5, "b": 5}, size=(40, 30))
    prepare_data(params)
    torch.manual_seed(0)
    build_featurizer(params, pretrained=False, progress=False)
    return params


def _featurize(params: Parameters) -> tuple[int, np.ndarray]:
    report = featurize_dataset(params, progress=False)
    return report.n_reused, np.load(DatasetLayout.from_parameters(params).features_npy)


def _count_featurized(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Record how many images go through the network in each featurize_dataset call."""
    import imgclass.model.inference

    counts: list[int] = []
    real = imgclass.model.inference.infer

    def counting(network, dataset, *args, **kwargs):  # type: ignore[no-untyped-def]
        counts.append(len(dataset))
        return real(network, dataset, *args, **kwargs)

    monkeypatch.setattr(imgclass.model.inference, "infer", counting)
    return counts


def test_a_rerun_reuses_every_row_and_says_so(params: Parameters, monkeypatch: pytest.MonkeyPatch) -> None:
    counts = _count_featurized(monkeypatch)
    reused, first = _featurize(params)
    assert reused == 0 and counts == [10]
    report = featurize_dataset(params, progress=False)
    assert (report.n_reused, report.n_featurized) == (10, 0) and counts == [10]  # no network run at all
    layout = DatasetLayout.from_parameters(params)
    assert np.array_equal(np.load(layout.features_npy), first)
    assert json.loads(layout.features_json.read_text())["n_reused_from_cache"] == 10


def test_a_changed_file_is_featurized_again_and_only_that_one(params: Parameters,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    _, first = _featurize(params)
    layout = DatasetLayout.from_parameters(params)
    rows = layout.features_csv.read_text().splitlines()[1:]
    changed = next(i for i, line in enumerate(rows) if ",a/img_02.jpg," in line)
    make_photo(layout.images_dir / "a" / "img_02.jpg", (40, 30), seed=999)  # new content
    counts = _count_featurized(monkeypatch)
    reused, second = _featurize(params)
    assert reused == 9 and counts == [1]
    assert not np.allclose(second[changed], first[changed])
    assert np.array_equal(np.delete(second, changed, 0), np.delete(first, changed, 0))
    # the re-featurized row equals a from-scratch run's
    layout.features_cache_json.unlink()
    _, scratch = _featurize(params)
    np.testing.assert_allclose(second, scratch, rtol=1e-4, atol=1e-5)  # batch size 1 vs 4: float noise


def test_a_touched_file_counts_as_changed(params: Parameters) -> None:
    _featurize(params)
    path = DatasetLayout.from_parameters(params).images_dir / "b" / "img_00.jpg"
    info = path.stat()
    os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns + 1_000_000_000))
    assert _featurize(params)[0] == 9


def test_another_featurizer_or_precision_reuses_nothing(params: Parameters) -> None:
    _featurize(params)
    assert _featurize(params.replace(run_precision="bf16"))[0] == 0
    assert _featurize(params.replace(run_precision="bf16"))[0] == 10
    torch.manual_seed(1)
    build_featurizer(params, pretrained=False, progress=False)  # same backbone, other weights
    assert _featurize(params)[0] == 0


def test_a_new_split_still_reuses_by_path(params: Parameters) -> None:
    _, first = _featurize(params)
    layout = DatasetLayout.from_parameters(params)
    paths_before = [line.split(",")[1] for line in layout.features_csv.read_text().splitlines()[1:]]
    prepare_data(params.replace(randomSeed=5))
    make_photo(layout.images_dir / "b" / "img_09.jpg", (40, 30), seed=77)  # a new image (not in the split)
    reused, second = _featurize(params)
    assert reused == 10
    paths_after = [line.split(",")[1] for line in layout.features_csv.read_text().splitlines()[1:]]
    order = [paths_before.index(p) for p in paths_after]
    assert np.array_equal(second, first[order])


def test_an_index_that_does_not_belong_to_the_feature_file_is_ignored(tmp_path: Path) -> None:
    npy, index = tmp_path / "features.npy", tmp_path / "features_cache.json"
    image = make_photo(tmp_path / "x.jpg")
    with FeatureWriter(npy, 1, 3) as writer:
        writer.write(np.array([0]), np.ones((1, 3), dtype=np.float32))
    write_cache_index(index, npy, {"featurizer_sha256": "f", "precision": "float32"}, ["x.jpg"],
                      [file_stamp(image)], [True])
    found = find_reusable_features(index, npy, ["x.jpg"], [file_stamp(image)],
                                   {"featurizer_sha256": "f", "precision": "float32"}, 3)
    assert found.new_rows.tolist() == [0] and found.old_rows.tolist() == [0]
    assert not len(find_reusable_features(index, npy, ["x.jpg"], [file_stamp(image)],
                                          {"featurizer_sha256": "f", "precision": "float32"}, 4))  # width
    with FeatureWriter(npy, 1, 3) as writer:  # the feature file was rewritten without its index
        writer.write(np.array([0]), np.zeros((1, 3), dtype=np.float32))
    assert not len(find_reusable_features(index, npy, ["x.jpg"], [file_stamp(image)],
                                          {"featurizer_sha256": "f", "precision": "float32"}, 3))
    index.write_text("{not json")
    assert not len(find_reusable_features(index, npy, ["x.jpg"], [file_stamp(image)],
                                          {"featurizer_sha256": "f", "precision": "float32"}, 3))


def test_unreadable_images_are_retried(params: Parameters) -> None:
    layout = DatasetLayout.from_parameters(params)
    (layout.images_dir / "a" / "img_01.jpg").write_bytes(b"broken")
    report = featurize_dataset(params, progress=False)
    assert [p for p, _ in report.failures] == ["a/img_01.jpg"]
    again = featurize_dataset(params, progress=False)
    assert again.n_reused == 9 and [p for p, _ in again.failures] == ["a/img_01.jpg"]


def test_the_fingerprint_follows_the_weights_not_the_file(tmp_path: Path) -> None:
    torch.manual_seed(0)
    featurizer = Featurizer(build_feature_extractor("resnet18", 32), "pad", "random initialisation")
    featurizer.save(tmp_path / "one.pth")
    featurizer.save(tmp_path / "two.pth")
    one, two = Featurizer.load(tmp_path / "one.pth"), Featurizer.load(tmp_path / "two.pth")
    assert one.fingerprint() == two.fingerprint() == featurizer.fingerprint()
    two.resize_mode = "crop"
    assert two.fingerprint() != one.fingerprint()
    with torch.no_grad():
        next(one.extractor.parameters())[0, 0, 0, 0] += 1e-3
    assert one.fingerprint() != featurizer.fingerprint()
