"""The Spark engine (imgclass.spark): step 3 and batch scoring at ``local[2]``, against the local engine.

One Spark session for the module (``local[2]``, started by a fixture in a
background thread while the local engine works, stopped at the end; its JVM
compiles with C1 only, which starts faster): the library joins a running
session, so no test pays Spark's start-up again, and its two Python workers
are reused by every job (torch imported once each, a model loaded once each). One featurizer (EfficientNet-Lite0 at 64 px) serves every
dataset here. fp32 features are compared bit for bit (both engines run the
batch-invariant forward pass of imgclass.model.inference), bf16 within its
rounding, batch scoring's probabilities to 1e-5 (the Predictor's forward
pass is the service's, which does not pad its chunks).
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
from PIL import Image

from imgclass.errors import ImgClassError
from imgclass.layout import DatasetLayout
from imgclass.parameters import load_parameters
from imgclass.pipeline.artifacts import FEATURES_NPY_STAMP
from imgclass.spark.session import SparkUnavailableError, java_available, parse_conf

from conftest import DEMO_IMAGES, make_dataset

pytest.importorskip("pyspark", reason="the Spark engine's tests need pyspark: pip install -e '.[spark]'")
pytest.importorskip("pyarrow", reason="the Spark engine's tests need pyarrow: pip install -e '.[spark]'")
if not java_available() and not os.environ.get("CI"):
    pytest.skip("Spark needs a Java runtime (apt-get install default-jre-headless)", allow_module_level=True)

#: 2 local cores; the local engine's worker processes as it chooses them, Spark's tasks of one thread each
COMMON = dict(rf_pretrainedModelFilename="efficientnet_lite0", rf_inputResolution=64, run_device="cpu",
              run_workers=-1, run_mbSize=16, svm_nJobs=1, svm_cvFolds=3, svm_CVals=[0.1, 1.0],
              eval_numExampleImages=4, spark_master="local[2]")


#: the module's session: no web UI, no progress bars, a JVM tuned to start rather than to run for hours
SESSION_CONF = ["spark.ui.enabled=false", "spark.ui.showConsoleProgress=false", "spark.sql.shuffle.partitions=2",
                "spark.driver.extraJavaOptions=-XX:TieredStopAtLevel=1 -XX:+UseSerialGC"]


@pytest.fixture(scope="module")
def spark() -> "Iterator[Future]":
    """The module's session, as a future: started, and its two Python workers warmed up (torch and the model
    code imported), in a background thread while the fixtures below do the local engine's part.

    The library finds it from the main thread too (a running SparkContext) and leaves it running.
    """
    from imgclass.spark.session import spark_session, warm_up

    with contextlib.ExitStack() as stack, ThreadPoolExecutor(1) as pool:
        def start():
            session = stack.enter_context(spark_session("local[2]", SESSION_CONF))
            session.sparkContext.setLogLevel("ERROR")
            warm_up(session)
            return session

        yield pool.submit(start)


def _params(root: Path, dataset: str, **values: object):
    return load_parameters(rootDir=str(root), datasetName=dataset, **{**COMMON, **values})


def _copy_demo(root: Path, dataset: str) -> Path:
    target = root / "images" / dataset
    shutil.copytree(DEMO_IMAGES, target, ignore=shutil.ignore_patterns("*.md"))
    return target


def _featurize(params, engine: str, **values: object) -> tuple[np.ndarray, list[dict[str, str]], dict, object]:
    """Step 3 with ``engine`` from scratch (no reuse); its features, features.csv rows, features.json and report."""
    from imgclass.layout import DatasetLayout
    from imgclass.pipeline import featurize_dataset

    layout = DatasetLayout.from_parameters(params)
    layout.features_cache_json.unlink(missing_ok=True)
    report = featurize_dataset(params.replace(run_engine=engine, **values), progress=False)
    with open(layout.features_csv, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    description = json.loads(layout.features_json.read_text(encoding="utf-8"))
    description.pop(FEATURES_NPY_STAMP)  # the file's size and mtime: the runs' times differ
    return np.load(layout.features_npy), rows, description, report


def _steps_4_5(params) -> tuple[float, float]:
    from imgclass.pipeline import evaluate, train_classifier

    train = train_classifier(params)
    evaluate(params)
    metrics = json.loads((params.root_path / "results" / params.datasetName / "metrics.json").read_text())
    return train.model.C_, metrics["overall_accuracy"]


def _prepare(params, featurizer: Path | None = None) -> None:
    """Step 1, and step 2's ``featurizer.pth``: built, or copied from another dataset (the same network)."""
    from imgclass.layout import DatasetLayout
    from imgclass.pipeline import build_featurizer, prepare_data

    prepare_data(params)
    if featurizer is None:
        build_featurizer(params, progress=False, log=lambda line: None)
    else:
        shutil.copyfile(featurizer, DatasetLayout.from_parameters(params).featurizer_pth)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory, spark):
    """The demo dataset after steps 1-2, featurized by both engines in fp32, steps 4-5 after each."""
    root = tmp_path_factory.mktemp("spark_demo")
    _copy_demo(root, "demo")
    params = _params(root, "demo", run_precision="fp32")
    _prepare(params)
    local = _featurize(params, "local")
    local_results = _steps_4_5(params)
    spark.result()
    spark_run = _featurize(params, "spark")
    spark_results = _steps_4_5(params)
    return params, local, spark_run, local_results, spark_results


def test_fp32_features_of_the_spark_engine_are_bit_identical_to_the_local_engine(demo) -> None:
    _, (local, local_rows, local_json, _), (spark_features, spark_rows, spark_json, _), _, _ = demo
    assert local.shape == spark_features.shape and local.shape[0] == len(local_rows) > 100
    assert spark_rows == local_rows  # the same rows, labels, split and ok flags
    assert np.array_equal(local, spark_features)
    assert spark_json == local_json


def test_steps_4_and_5_give_the_same_choice_and_accuracy_after_either_engine(demo) -> None:
    _, _, _, (local_C, local_accuracy), (spark_C, spark_accuracy) = demo
    assert (spark_C, spark_accuracy) == (local_C, local_accuracy)
    assert local_accuracy > 0.5  # a learnable problem: far above the 1/6 of guessing


def test_the_parquet_table_holds_every_featurized_row(demo) -> None:
    import pyarrow.parquet as pq

    from imgclass.layout import DatasetLayout

    params, (local, local_rows, _, _), _, _, _ = demo
    table = pq.read_table(DatasetLayout.from_parameters(params).features_parquet).to_pylist()
    assert set(table[0]) == {"path", "label", "split", "ok", "error", "features"}
    by_path = {row["path"]: row for row in table}
    assert sorted(by_path) == sorted(r["path"] for r in local_rows)
    for i, row in enumerate(local_rows):
        stored = by_path[row["path"]]
        assert (stored["label"], stored["split"], stored["ok"], stored["error"]) == (row["label"], row["split"], True, "")
        assert np.array_equal(np.asarray(stored["features"], dtype=np.float32), local[i])


def _broken_files(folder: Path, good: Path) -> dict[str, str]:
    """Unreadable images beside ``good`` ones: {file name: what is wrong}."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "empty.jpg").write_bytes(b"")
    data = good.read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (folder / "text.jpg").write_text("this is not an image\n", encoding="utf-8")
    Image.new("1", (14_000, 14_000)).save(folder / "bomb.png")  # 196 M pixels in a few kB: over PIL's bomb limit
    return {"empty.jpg": "empty", "truncated.jpg": "truncated", "text.jpg": "text", "bomb.png": "bomb"}


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory, demo):
    """12 small images and 4 broken files, featurized in bf16 (slow on CPUs without it: few images) by both engines."""
    root = tmp_path_factory.mktemp("spark_small")
    images = make_dataset(root / "images" / "small", {"circles": 6, "squares": 6})
    broken = _broken_files(images / "circles", images / "circles" / "img_00.jpg")
    params = _params(root, "small", run_precision="bf16")
    _prepare(params, featurizer=demo[0].root_path / "proc" / "demo" / "featurizer.pth")
    return params, broken, _featurize(params, "local"), _featurize(params, "spark", spark_partitions=3)


def test_bf16_features_of_the_two_engines_agree_within_bf16_rounding(small) -> None:
    _, _, (local, local_rows, _, _), (spark_features, spark_rows, spark_json, _) = small
    assert spark_json["precision"] == "bfloat16" and spark_rows == local_rows  # the same rows and ok flags
    ok = np.array([row["ok"] == "1" for row in local_rows])
    local, spark_features = local[ok], spark_features[ok]
    scale = np.abs(local).max()
    assert np.abs(local - spark_features).max() <= 0.02 * scale  # bf16 keeps 8 bits of mantissa
    cosine = (local * spark_features).sum(1) / np.linalg.norm(local, axis=1) / np.linalg.norm(spark_features, axis=1)
    assert cosine.min() > 0.999


def test_unreadable_images_are_rows_with_ok_false_and_the_job_succeeds(small) -> None:
    import pyarrow.parquet as pq

    from imgclass.layout import DatasetLayout

    params, broken, _, (features, rows, info, _) = small
    bad = {Path(r["path"]).name for r in rows if r["ok"] == "0"}
    assert bad == set(broken) and info["n_unreadable"] == len(broken)
    ok = np.array([r["ok"] == "1" for r in rows])
    assert np.isnan(features[~ok]).all() and np.isfinite(features[ok]).all()
    table = {Path(r["path"]).name: r for r in pq.read_table(DatasetLayout.from_parameters(params).features_parquet)
             .to_pylist()}
    for name in broken:
        assert table[name]["ok"] is False and table[name]["features"] is None
        assert table[name]["error"].startswith("cannot decode"), table[name]["error"]
    assert "decompression bomb" in table["bomb.png"]["error"].lower()


def test_step_3_says_what_ran_it(demo, small) -> None:
    local, spark_run = demo[1][3], small[3][3]
    assert local.engine == "" and "worker process" in local.summary()
    assert spark_run.engine == "Spark local[2], 3 partitions" and spark_run.workers == 0
    assert "Spark local[2], 3 partitions" in spark_run.summary() and "worker process" not in spark_run.summary()


def test_a_session_started_in_another_thread_is_joined_and_left_running(spark, demo) -> None:
    from imgclass.spark.session import active_session, spark_session

    session = spark.result()  # started by the fixture's thread; step 3 ran in this one (the demo fixture)
    with spark_session("local[1]") as joined:
        assert joined is session and active_session() is session
    assert session.range(3).count() == 3  # not stopped by the runs that joined it


def test_batch_scoring_on_spark_gives_the_local_scripts_labels_and_scores(demo, tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    from imgclass.serve.batch import score_images
    from imgclass.spark.batch import score_on_spark

    params = demo[0]
    folder = tmp_path / "to score"
    for image in sorted(DEMO_IMAGES.glob("*/*.jpg"))[::12]:
        (folder / image.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(image, folder / image.parent.name / image.name)
    broken = _broken_files(folder / "broken", next(folder.glob("*/*.jpg")))
    (folder / ".hidden").mkdir()
    shutil.copy(next(folder.glob("*/*.jpg")), folder / ".hidden" / "skipped.jpg")
    (folder / "notes.txt").write_text("not an image file name\n", encoding="utf-8")
    run = params.replace(batch_inputDir=str(folder), batch_outputCsv=str(tmp_path / "local.csv"), run_workers=0,
                         batch_database=str(tmp_path / "local.sqlite"),
                         spark_batchOutput=str(tmp_path / "spark.parquet"))
    local_report = score_images(run)
    with open(tmp_path / "local.csv", newline="", encoding="utf-8") as handle:
        local = {row["path"]: row for row in csv.DictReader(handle)}
    report = score_on_spark(run.replace(run_engine="spark"))
    table = pq.read_table(tmp_path / "spark.parquet").to_pylist()
    scored = {row["path"]: row for row in table if row["ok"]}
    assert sorted(scored) == sorted(local) and len(local) > 10
    assert {Path(row["path"]).name for row in table if not row["ok"]} == set(broken)
    assert report.n_failed == len(broken) == len(local_report.failures)
    assert report.n_images == len(table) == len(local) + len(broken)
    for path, row in local.items():
        mine = scored[path]
        assert mine["label"] == row["label"]
        assert mine["score"] == pytest.approx(float(row["score"]), abs=1e-5)
        assert dict(mine["scores"]) == pytest.approx(json.loads(row["all_scores"]), abs=1e-5)
        assert (mine["model_name"], mine["model_version"]) == (row["model_name"], row["model_version"])
    assert "Wrote" in report.summary() and "unreadable" in report.summary()
    # a URL: Spark's binaryFile source lists and reads the files (it skips zero-byte ones)
    run_url = run.replace(batch_inputDir="file://" + folder.as_posix(), spark_batchOutput=str(tmp_path / "url.parquet"))
    score_on_spark(run_url)
    by_url = {row["path"]: row for row in pq.read_table(tmp_path / "url.parquet").to_pylist()}
    assert all(path.startswith("file:/") for path in by_url)
    assert {Path(p).name for p, row in by_url.items() if not row["ok"]} == set(broken) - {"empty.jpg"}
    assert {Path(p).name: row["label"] for p, row in by_url.items() if row["ok"]} == {
        Path(p).name: row["label"] for p, row in scored.items()}


def test_batch_scoring_on_spark_with_an_mlflow_model_gives_the_local_labels(demo, tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """deploy_modelUri on Spark: the same model as an MLflow pyfunc, applied with mlflow.pyfunc.spark_udf.

    A model folder needs no tracking store: none is created in the current folder (MLflow's default).
    """
    import pyarrow.parquet as pq

    monkeypatch.chdir(tmp_path)

    from imgclass.serve.batch import score_batch, score_images
    from imgclass.serve.pyfunc import save_model

    params = demo[0]
    model = save_model(DatasetLayout.from_parameters(params), tmp_path / "model", params.classifier)
    folder = tmp_path / "to score"
    for image in sorted(DEMO_IMAGES.glob("*/*.jpg"))[::30]:
        (folder / image.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(image, folder / image.parent.name / image.name)
    run = params.replace(batch_inputDir=str(folder), batch_outputCsv=str(tmp_path / "local.csv"), run_workers=0,
                         batch_database=str(tmp_path / "local.sqlite"), mlflow_trackingUri="",
                         spark_batchOutput=str(tmp_path / "mlflow.parquet"))
    score_images(run)
    with open(tmp_path / "local.csv", newline="", encoding="utf-8") as handle:
        local = {row["path"]: row["label"] for row in csv.DictReader(handle)}
    report = score_batch(run.replace(run_engine="spark", deploy_modelUri=str(model)))
    table = pq.read_table(tmp_path / "mlflow.parquet").to_pylist()
    assert report.n_failed == 0 and {row["path"]: row["label"] for row in table} == local
    assert all(row["model_name"] == str(model) for row in table)
    assert not (tmp_path / "mlflow.db").exists()


def test_batch_scoring_reads_a_parquet_table_of_paths(demo, tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from imgclass.spark.batch import score_on_spark

    paths = [str(p) for p in sorted(DEMO_IMAGES.glob("*/*.jpg"))[:6]] + [str(tmp_path / "missing.jpg")]
    pq.write_table(pa.table({"path": paths}), tmp_path / "input.parquet")
    report = score_on_spark(demo[0].replace(batch_inputDir=str(tmp_path / "input.parquet"),
                                            spark_batchOutput=str(tmp_path / "out.parquet")))
    table = {row["path"]: row for row in pq.read_table(tmp_path / "out.parquet").to_pylist()}
    assert sorted(table) == sorted(paths) and report.n_scored == 6 and report.n_failed == 1
    assert not table[str(tmp_path / "missing.jpg")]["ok"]


def test_spark_settings_are_checked_when_parameters_load() -> None:
    assert parse_conf(["spark.executor.memory=8g", "spark.driver.extraJavaOptions=-Da=b"]) == {
        "spark.executor.memory": "8g", "spark.driver.extraJavaOptions": "-Da=b"}
    params = load_parameters(["--spark_conf=spark.executor.memory=8g,spark.executor.cores=4"])
    assert params.spark_conf == ["spark.executor.memory=8g", "spark.executor.cores=4"]
    for bad in ("--spark_conf=spark.executor.memory", "--spark_conf=a=1,a=2", "--spark_master=local [2]",
                "--run_engine=ray", "--spark_partitions=-1"):
        with pytest.raises(ImgClassError):
            load_parameters([bad])


def test_a_missing_pyspark_is_a_one_line_error_saying_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    from imgclass.spark.session import import_pyspark

    monkeypatch.setitem(sys.modules, "pyspark", None)
    monkeypatch.setitem(sys.modules, "pyspark.sql", None)
    with pytest.raises(SparkUnavailableError, match=r"pip install -e '\.\[spark\]'") as caught:
        import_pyspark()
    assert "\n" not in str(caught.value)


def test_partitions_and_batches_follow_the_settings() -> None:
    import pyarrow as pa

    from imgclass.spark.executor import chunks, features_array
    from imgclass.spark.featurize import MAX_IMAGES_PER_PARTITION, partition_count

    assert partition_count(100, 0, 8) == 8 and partition_count(5, 0, 8) == 5 and partition_count(100, 3, 8) == 3
    assert partition_count(10 * MAX_IMAGES_PER_PARTITION + 1, 0, 2) == 11
    batches = [pa.record_batch({"i": list(range(a, b))}) for a, b in ((0, 3), (3, 4), (4, 11), (11, 13))]
    assert [c.column(0).to_pylist() for c in chunks(iter(batches), 4)] == [
        [0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11], [12]]
    outputs = np.arange(6, dtype=np.float32).reshape(3, 2)
    array = features_array(outputs, np.array([True, False, True]))
    assert array.to_pylist() == [[0.0, 1.0], None, [4.0, 5.0]]
