"""Tests of imgclass.serve.batch and scripts/7_batchScore.py.

The library is tested with a tiny stand-in predictor (no network, no model);
the script with the demo model trained once per session (see
tests/test_serving.py::train_demo_model).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pytest
from PIL import Image

from imgclass.errors import ImgClassError
from imgclass.io.images import UnreadableImageError, load_rgb
from imgclass.serve.batch import COLUMNS, TABLE, score_folder
from test_serving import COW, DEMO_IMAGES, SCRIPTS, train_demo_model

LABELS = ["blue", "green", "red"]


@dataclass
class _Predictions:
    probabilities: np.ndarray


@dataclass
class _Batch:
    paths: list[str]
    predictions: _Predictions
    failures: list[tuple[str, str]]


class ColourPredictor:
    """Calls an image by its dominant channel; counts the images it was asked about.

    A stand-in for the Predictor (no network): what is tested here is the bookkeeping around it.
    """

    def __init__(self, version: str = "v1", fail_after: int | None = None):
        self.labels = LABELS
        self.model_name = "colour-test"
        self.model_version = version
        self.seen = 0
        self.fail_after = fail_after

    def predict_files(self, paths: Sequence[str], batch_size: int = 32) -> Iterator[_Batch]:
        for first in range(0, len(paths), batch_size):
            if self.fail_after is not None and self.seen >= self.fail_after:
                raise KeyboardInterrupt  # like Ctrl-C in the middle of a run
            good, rows, failures = [], [], []
            for path in paths[first:first + batch_size]:
                try:
                    image = load_rgb(path)
                except UnreadableImageError as exc:
                    failures.append((path, str(exc)))
                    continue
                r, g, b = np.asarray(image, dtype=np.float64).reshape(-1, 3).mean(axis=0) + 1
                rows.append(np.array([b, g, r]) / (r + g + b))
                good.append(path)
            self.seen += len(good)
            yield _Batch(good, _Predictions(np.array(rows).reshape(-1, 3)), failures)


def make_folder(root: Path) -> Path:
    colours = {"red": (250, 10, 10), "green": (10, 250, 10), "blue": (10, 10, 250)}
    for i, (name, rgb) in enumerate(sorted(colours.items())):
        for j in range(2):
            folder = root / ("sub" if j else "")
            folder.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (20 + i, 16), rgb).save(folder / f"{name}_{j}.{'png' if j else 'jpg'}")
    (root / ".hidden.jpg").write_bytes(b"ignored")
    (root / "notes.txt").write_text("not an image")
    return root


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def read_table(path: Path) -> list[tuple]:
    with sqlite3.connect(path) as connection:
        return connection.execute(f"SELECT {', '.join(COLUMNS)} FROM {TABLE} ORDER BY path, model_version").fetchall()


def test_scores_every_image_into_csv_and_sqlite(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "in")
    out_csv, db = tmp_path / "out" / "scores.csv", tmp_path / "out" / "scores.sqlite"
    report = score_folder(ColourPredictor(), folder, out_csv, db, batch_size=4, progress=False)
    assert (report.n_images, report.n_scored, report.n_skipped, report.failures) == (6, 6, 0, [])
    rows = read_csv(out_csv)
    assert list(rows[0]) == list(COLUMNS)
    assert [Path(r["path"]).name for r in rows] == ["blue_0.jpg", "green_0.jpg", "red_0.jpg",
                                                    "blue_1.png", "green_1.png", "red_1.png"]
    for row in rows:
        assert Path(row["path"]).is_absolute()
        assert row["label"] == Path(row["path"]).name.split("_")[0]
        scores = json.loads(row["all_scores"])
        assert list(scores) == LABELS and sum(scores.values()) == pytest.approx(1.0, abs=1e-5)
        assert float(row["score"]) == pytest.approx(scores[row["label"]], abs=1e-5)
        assert (row["model_name"], row["model_version"]) == ("colour-test", "v1")
        assert row["scored_at"].endswith("+00:00")
    table = read_table(db)
    assert len(table) == 6 and sorted(r[0] for r in table) == sorted(r["path"] for r in rows)


def test_rerun_skips_what_the_same_model_scored(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "in")
    out_csv, db = tmp_path / "scores.csv", tmp_path / "scores.sqlite"
    score_folder(ColourPredictor(), folder, out_csv, db, progress=False)
    again = ColourPredictor()
    report = score_folder(again, folder, out_csv, db, progress=False)
    assert (report.n_scored, report.n_skipped, again.seen) == (0, 6, 0)
    assert len(read_csv(out_csv)) == 6  # the CSV still lists every image of the folder

    Image.new("RGB", (8, 8), (240, 0, 0)).save(folder / "new_red.jpg")
    newer = ColourPredictor()
    report = score_folder(newer, folder, out_csv, db, progress=False)
    assert (report.n_scored, report.n_skipped, newer.seen) == (1, 6, 1)
    assert len(read_csv(out_csv)) == 7

    retrained = ColourPredictor(version="v2")  # another model version scores everything again
    report = score_folder(retrained, folder, out_csv, db, progress=False)
    assert (report.n_scored, report.n_skipped) == (7, 0)
    assert {r["model_version"] for r in read_csv(out_csv)} == {"v2"}
    assert len(read_table(db)) == 14  # both models' rows are kept


def test_an_interrupted_run_resumes(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "in")
    out_csv, db = tmp_path / "scores.csv", tmp_path / "scores.sqlite"
    with pytest.raises(KeyboardInterrupt):
        score_folder(ColourPredictor(fail_after=2), folder, out_csv, db, batch_size=2, progress=False)
    assert len(read_table(db)) == 2  # the finished batch was committed
    resumed = ColourPredictor()
    report = score_folder(resumed, folder, out_csv, db, batch_size=2, progress=False)
    assert (report.n_scored, report.n_skipped, resumed.seen) == (4, 2, 4)
    assert len(read_csv(out_csv)) == 6


def test_unreadable_images_are_reported_and_retried(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "in")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    out_csv, db = tmp_path / "scores.csv", tmp_path / "scores.sqlite"
    report = score_folder(ColourPredictor(), folder, out_csv, db, progress=False)
    assert report.n_scored == 6 and [Path(p).name for p, _ in report.failures] == ["broken.jpg"]
    assert "cannot decode" in report.failures[0][1]
    report = score_folder(ColourPredictor(), folder, out_csv, db, progress=False)
    assert (report.n_scored, report.n_skipped, len(report.failures)) == (0, 6, 1)


def test_missing_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ImgClassError, match="not found"):
        score_folder(ColourPredictor(), tmp_path / "nope", tmp_path / "a.csv", tmp_path / "a.sqlite")


def test_script_scores_a_folder_with_the_trained_model(tmp_path_factory: pytest.TempPathFactory,
                                                       tmp_path: Path) -> None:
    root, params_file = train_demo_model(tmp_path_factory)
    folder = tmp_path / "new images"
    expected = {COW.name: "mammals", "flowers_daffodil.jpg": "flowers", "fruit_orange.jpg": "fruit"}
    for name, label in expected.items():
        (folder / label).mkdir(parents=True)
        shutil.copy(DEMO_IMAGES / label / name, folder / label / name)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    out_csv, db = tmp_path / "out.csv", tmp_path / "out.sqlite"
    command = [sys.executable, str(SCRIPTS / "7_batchScore.py"), f"--rootDir={root}", f"--batch_inputDir={folder}",
               f"--batch_outputCsv={out_csv}", f"--batch_database={db}", "--run_device=cpu"]
    env = {**os.environ, "IMGCLASS_PARAMETERS": str(params_file)}
    first = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "4 images: 3 scored" in first.stdout and "1 unreadable" in first.stdout and "broken.png" in first.stdout
    assert "tuxpaintStamps-efficientnet_lite0-svm" in first.stdout
    rows = read_csv(out_csv)
    assert {Path(r["path"]).name: r["label"] for r in rows} == expected
    assert {r["model_name"] for r in rows} == {"tuxpaintStamps-efficientnet_lite0-svm"}
    second = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert second.returncode == 0 and "0 scored" in second.stdout and "3 already scored" in second.stdout
    assert len(read_table(db)) == 3
