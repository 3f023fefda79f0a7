"""Step 3 resumes after a crash (issue 18): a killed run's committed rows are taken over, never a half-written
batch, the result equals an uninterrupted run's bit for bit (fp32, CPU), and no worker process outlives it."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import imgclass.model.inference
from imgclass.layout import DatasetLayout
from imgclass.model.feature_store import ResumableFeatureWriter, partial_folder
from imgclass.parameters import Parameters, load_parameters
from imgclass.pipeline import build_featurizer, featurize_dataset, prepare_data
from imgclass.pipeline.artifacts import read_split_rows

from conftest import PROJECT_DIR, make_dataset, make_photo

SCRIPT = PROJECT_DIR / "scripts" / "3_runDNN.py"
#: runs scripts/3_runDNN.py with a commit after every batch; argv[1] 'kill': SIGKILL itself inside commit
#: number argv[2], between writing progress.json's temporary file and renaming it; 'hold': stop after that
#: commit (the test kills it there); 'none': run normally
DRIVER = """
import os, runpy, signal, sys, time
from imgclass.model import feature_store
feature_store.COMMIT_SECONDS = 0.0
mode, at = sys.argv[1], int(sys.argv[2])
def stop(number):
    if number == at:
        if mode == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        print("holding", flush=True)
        time.sleep(600)
if mode != "none":
    setattr(feature_store.ResumableFeatureWriter, "before_rename" if mode == "kill" else "after_commit", stop)
sys.argv = [sys.argv[3], *sys.argv[4:]]
runpy.run_path(sys.argv[0], run_name="__main__")
"""
N_IMAGES = 40  # 10 batches of 4: enough for two CPU worker processes to start
BATCH = 4


@pytest.fixture
def params(tmp_path: Path) -> Parameters:
    params = load_parameters(rootDir=str(tmp_path), datasetName="toy", rf_pretrainedModelFilename="resnet18",
                             rf_inputResolution=32, run_workers=0, run_mbSize=BATCH, run_precision="fp32",
                             run_device="cpu")
    make_dataset(DatasetLayout.from_parameters(params).images_dir, {"a": N_IMAGES // 2, "b": N_IMAGES // 2},
                 size=(40, 30))
    prepare_data(params)
    torch.manual_seed(0)
    build_featurizer(params, pretrained=False, progress=False)
    return params


def _reference(params: Parameters) -> np.ndarray:
    """An uninterrupted run's features; its outputs are then removed (nothing left to reuse)."""
    featurize_dataset(params, progress=False)
    layout = DatasetLayout.from_parameters(params)
    features = np.load(layout.features_npy)
    for path in (layout.features_npy, layout.features_csv, layout.features_json, layout.features_cache_json):
        path.unlink()
    return features


def _start(params: Parameters, mode: str, at: int = 0) -> subprocess.Popen[str]:
    args = [f"--rootDir={params.rootDir}", "--datasetName=toy", f"--run_mbSize={BATCH}", "--run_precision=fp32",
            "--run_device=cpu", f"--run_workers={params.run_workers}"]
    return subprocess.Popen([sys.executable, "-c", DRIVER, mode, str(at), str(SCRIPT), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _tree_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        info = path.stat()
        digest.update(f"{path.relative_to(folder)} {info.st_size} {info.st_mtime_ns}".encode())
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


def _descendants(pid: int) -> set[int]:
    """Processes below ``pid`` (Linux /proc)."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = set(), [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="lists worker processes through /proc")
def test_killed_runs_resume_and_leave_no_worker_behind(params: Parameters) -> None:
    params = params.replace(run_workers=2)
    expected = _reference(params)
    layout = DatasetLayout.from_parameters(params)
    folder = partial_folder(layout.features_npy)
    images_before = _tree_digest(layout.images_dir)

    # killed inside a commit: batch 3 written and on disk, its progress file written but not renamed
    # (commits: 1 on start, 2 after the (empty) reuse, then one per batch)
    process = _start(params, "kill", at=5)
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == -signal.SIGKILL, stdout + stderr
    assert any(p.name.startswith(".progress.json.") for p in folder.iterdir())  # the commit that never was
    assert not layout.features_npy.exists()

    # resumed (2 batches), killed while holding after 2 more batches (commit 1 after the reuse, then per batch)
    process = _start(params, "hold", at=3)
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "holding", process.stderr.read() if process.stderr else ""
    workers = _descendants(process.pid)
    assert workers, "the run started no worker process"
    os.kill(process.pid, signal.SIGKILL)
    process.communicate(timeout=60)
    deadline = time.monotonic() + 30
    while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [pid for pid in workers if _alive(pid)], "worker processes outlived the killed step 3"
    assert not layout.features_npy.exists()

    output = featurize_dataset(params, progress=False).summary()  # what the script prints
    assert f"reused the {4 * BATCH} rows it had committed" in output, output
    assert f"Featurized {N_IMAGES - 4 * BATCH} images" in output, output
    assert np.array_equal(np.load(layout.features_npy), expected)  # bit-identical, fp32
    assert not folder.exists()
    assert _tree_digest(layout.images_dir) == images_before
    assert sorted(p.name for p in layout.proc_dir.iterdir() if p.name.startswith("features")) == [
        "features.csv", "features.json", "features.npy", "features_cache.json"]


class _Interrupted(Exception):
    pass


def _interrupted_run(params: Parameters, commit: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Step 3 in this process, committing after every batch and interrupted right after commit number ``commit``."""
    def stop(number: int) -> None:
        if number == commit:
            raise _Interrupted

    monkeypatch.setattr(ResumableFeatureWriter, "after_commit", stop)
    with pytest.raises(_Interrupted):
        featurize_dataset(params, progress=False, commit_seconds=0)
    monkeypatch.setattr(ResumableFeatureWriter, "after_commit", None)


def test_progress_follows_the_images_not_the_split(params: Parameters, monkeypatch: pytest.MonkeyPatch) -> None:
    """A new split reuses the finished rows by path; unreadable images are retried; another featurizer reuses none."""
    monkeypatch.setattr(imgclass.model.inference, "CPU_FORWARD_BATCH", BATCH)  # no padding: 4x less work
    layout = DatasetLayout.from_parameters(params)
    broken, changed = "a/img_01.jpg", "b/img_00.jpg"
    (layout.images_dir / broken).write_bytes(b"broken")
    expected = _reference(params)
    order_before = [row.path for row in read_split_rows(layout)]
    _interrupted_run(params, 6, monkeypatch)  # 4 batches in (the interruption commits them again)
    report = featurize_dataset(params, progress=False)
    assert report.n_resumed == len(set(order_before[:4 * BATCH]) - {broken}) and report.n_reused == 0
    assert [p for p, _ in report.failures] == [broken]  # tried again, not taken over as a NaN row
    first = np.load(layout.features_npy)
    np.testing.assert_array_equal(first, expected)

    # interrupted again, then the split changes and an image changes: rows are found by path, in their new places
    for path in (layout.features_npy, layout.features_cache_json):
        path.unlink()
    _interrupted_run(params, 5, monkeypatch)
    make_photo(layout.images_dir / "a" / "0.jpg", (40, 30), seed=998)  # a new image: every row moves
    make_photo(layout.images_dir / changed, (40, 30), seed=999)
    prepare_data(params.replace(randomSeed=5))
    order_after = [row.path for row in read_split_rows(layout)]
    assert order_after[1:] == order_before
    report = featurize_dataset(params, progress=False)
    assert report.n_resumed == len(set(order_before[:3 * BATCH]) - {broken, changed})
    second = np.load(layout.features_npy)
    same = [i for i, path in enumerate(order_after) if path not in (changed, "a/0.jpg")]
    np.testing.assert_array_equal(second[same], first[[order_before.index(order_after[i]) for i in same]])
    assert not np.allclose(second[order_after.index(changed)], first[order_before.index(changed)])

    # another featurizer: the interrupted run's rows are not used
    for path in (layout.features_npy, layout.features_cache_json):
        path.unlink()
    _interrupted_run(params, 5, monkeypatch)
    torch.manual_seed(1)
    build_featurizer(params, pretrained=False, progress=False)
    report = featurize_dataset(params, progress=False)
    assert report.n_resumed == 0 and report.n_reused == 0 and report.n_featurized == N_IMAGES + 1
    assert not partial_folder(layout.features_npy).exists()


def test_a_second_run_at_the_same_time_works_privately(params: Parameters, monkeypatch: pytest.MonkeyPatch) -> None:
    """The progress belongs to one run at a time: a concurrent one (lock held) neither resumes nor disturbs it."""
    monkeypatch.setattr(imgclass.model.inference, "CPU_FORWARD_BATCH", BATCH)
    layout = DatasetLayout.from_parameters(params)
    holder = ResumableFeatureWriter(layout.features_npy, ["x"], [None], {"r": "1"}, 3, commit_seconds=0)
    try:
        assert holder.resumable
        report = featurize_dataset(params, progress=False, commit_seconds=0)
        assert report.n_resumed == 0 and np.isfinite(np.load(layout.features_npy)).all()
        assert (partial_folder(layout.features_npy) / "progress.json").exists()  # the holder's, untouched
    finally:
        holder.__exit__(None, None, None)


def test_the_temporary_file_of_a_killed_private_run_is_removed(tmp_path: Path) -> None:
    """A run that kept no progress and was killed left a full-size temporary file: the next run removes it."""
    target = tmp_path / "proc" / "features.npy"
    target.parent.mkdir()
    orphan = target.with_name(".features.npy.999999999.tmp.npy")  # no such process
    own = target.with_name(f".features.npy.{os.getpid()}.tmp.npy")  # a running process's
    orphan.write_bytes(b"x" * 1000)
    own.write_bytes(b"x")
    with ResumableFeatureWriter(target, ["x.jpg"], [(1, 2)], {"r": "1"}, 3) as writer:
        writer.write(np.array([0]), np.ones((1, 3), dtype=np.float32))
        writer.finish(lambda npy: None)
    assert not orphan.exists() and own.exists()
    assert sorted(p.name for p in target.parent.iterdir()) == [own.name, "features.npy"]
    assert np.array_equal(np.load(target), np.ones((1, 3), dtype=np.float32))


def test_tables_of_an_unfinished_rename_are_refused(params: Parameters) -> None:
    """features.csv/.json are written before features.npy's rename: a crash between the two leaves tables newer
    than the features.npy beside them, which steps 4-5 refuse (re-run step 3) rather than pair with old rows;
    a copy of the folder that did not keep modification times is accepted."""
    from imgclass.errors import MissingArtifactError
    from imgclass.pipeline.artifacts import load_features

    featurize_dataset(params, progress=False)
    layout = DatasetLayout.from_parameters(params)
    assert len(load_features(layout).rows) == N_IMAGES
    info = layout.features_npy.stat()
    os.utime(layout.features_npy, ns=(info.st_atime_ns, info.st_mtime_ns - 10**9))  # the previous run's file
    with pytest.raises(MissingArtifactError, match="re-run scripts/3_runDNN.py"):
        load_features(layout)
    os.utime(layout.features_npy, ns=(info.st_atime_ns, info.st_mtime_ns + 10**9))  # copied later: fine
    assert len(load_features(layout).rows) == N_IMAGES
