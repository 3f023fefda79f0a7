"""Tests of imgclass.data.dedup: finding near-duplicates, moving them aside, undoing, the split check."""

from __future__ import annotations

import csv
import hashlib
import io
import random
import runpy
from pathlib import Path

import imagehash
import pytest
from PIL import Image

from conftest import natural_photo
import imgclass.data.dedup as dedup
from imgclass.data.dedup import (
    REPORT_COLUMNS,
    dhash_file,
    dhash_image,
    find_straddling_duplicates,
    group_duplicates,
    hamming,
    hash_images,
    near_duplicate_pairs,
    remove_duplicates,
    undo_moves,
)
from conftest import PROJECT_DIR
import imgclass.io.moves
from imgclass.layout import DatasetLayout
from imgclass.parameters import DEFAULT_DEDUP_MAX_DISTANCE


def jpeg(image: Image.Image, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def resized(image: Image.Image, scale: float) -> Image.Image:
    return image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.LANCZOS)


COPIES_OF_A = {"striped/a_copy.jpg", "striped/a_half.jpg", "striped/a_q50.jpg", "dotted/a_cross.jpg"}
DISTINCT = ["striped/b.jpg", "striped/c.jpg", "dotted/d.jpg", "dotted/e.jpg", "leopard/f.png",
            "leopard/sub/g.jpg", "striped/a.jpg"]


@pytest.fixture
def images_dir(tmp_path: Path) -> Path:
    """A dataset with exact, resized, recompressed and cross-class copies, distinct photos and junk."""
    root = tmp_path / "data" / "images" / "ds"
    a, g = natural_photo(1, (640, 480)), natural_photo(7, (500, 400))
    files = {
        "striped/a.jpg": jpeg(a),
        "striped/a_copy.jpg": jpeg(a),
        "striped/a_half.jpg": jpeg(resized(a, 0.5)),
        "striped/a_q50.jpg": jpeg(a, 50),
        "dotted/a_cross.jpg": jpeg(resized(a, 0.75), 70),
        "leopard/sub/g.jpg": jpeg(g),
        "leopard/sub/g_small.jpg": jpeg(resized(g, 0.75), 60),
        "dotted/broken.jpg": jpeg(natural_photo(20))[:500],
        "striped/notes.txt": b"not an image",
    }
    for seed, name in enumerate(["striped/b.jpg", "striped/c.jpg", "dotted/d.jpg", "dotted/e.jpg"], start=2):
        files[name] = jpeg(natural_photo(seed))
    buffer = io.BytesIO()
    natural_photo(6).save(buffer, format="PNG")
    files["leopard/f.png"] = buffer.getvalue()
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


@pytest.fixture
def layout(images_dir: Path) -> DatasetLayout:
    return DatasetLayout(images_dir.parent.parent, images_dir.name)


def snapshot(folder: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under ``folder``."""
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def read_report(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


# --------------------------------------------------------------------------- hashing and search
def test_dhash_is_imagehash_dhash():
    image = natural_photo(3)
    for size in (8, 16):
        assert dhash_image(image, size) == int(str(imagehash.dhash(image, hash_size=size)), 16)


def test_copies_are_near_and_distinct_photos_far_at_the_default_threshold(images_dir):
    hashes = {name: dhash_file(images_dir / name)[0] for name in [*COPIES_OF_A, *DISTINCT]}
    for copy in COPIES_OF_A:
        assert hamming(hashes["striped/a.jpg"], hashes[copy]) <= DEFAULT_DEDUP_MAX_DISTANCE, copy
    assert hamming(hashes["striped/a.jpg"], hashes["striped/a_copy.jpg"]) == 0
    for i, first in enumerate(DISTINCT):
        for second in DISTINCT[i + 1:]:
            assert hamming(hashes[first], hashes[second]) > 3 * DEFAULT_DEDUP_MAX_DISTANCE, (first, second)


def brute_force(hashes, max_distance):
    return sorted((i, j, hamming(hashes[i], hashes[j])) for i in range(len(hashes))
                  for j in range(i + 1, len(hashes)) if hamming(hashes[i], hashes[j]) <= max_distance)


def perturbed(value: int, flips: int, rng: random.Random, n_bits: int = 256) -> int:
    for bit in rng.sample(range(n_bits), flips):
        value ^= 1 << bit
    return value


@pytest.mark.parametrize("max_distance", [0, 1, 5, 16, 40])
def test_near_duplicate_pairs_equals_comparing_all_pairs(max_distance):
    rng = random.Random(max_distance)
    hashes = [rng.getrandbits(256) for _ in range(150)]
    hashes += [perturbed(rng.choice(hashes), rng.randint(0, 45), rng) for _ in range(150)]
    hashes += hashes[:10]  # exact copies
    assert near_duplicate_pairs(hashes, max_distance) == brute_force(hashes, max_distance)


def test_near_duplicate_pairs_with_large_buckets_equals_comparing_all_pairs():
    # images with large plain areas: the first 200 bits are the same for most of them
    rng = random.Random(1)
    hashes = [rng.getrandbits(56) << 200 | (0 if rng.random() < 0.8 else rng.getrandbits(200))
              for _ in range(400)]
    hashes += [perturbed(rng.choice(hashes), rng.randint(0, 20), rng) for _ in range(100)]
    assert near_duplicate_pairs(hashes, 16) == brute_force(hashes, 16)
    assert near_duplicate_pairs(hashes, 3) == brute_force(hashes, 3)


def test_near_duplicate_pairs_handles_tens_of_thousands_of_hashes():
    rng = random.Random(0)
    hashes = [rng.getrandbits(256) for _ in range(30_000)]
    planted = {(i, 30_000 + k) for k, i in enumerate(rng.sample(range(30_000), 300))}
    hashes += [perturbed(hashes[i], rng.randint(0, 16), rng) for i, _ in sorted(planted, key=lambda p: p[1])]
    found = {(i, j) for i, j, _ in near_duplicate_pairs(hashes, 16)}
    assert found == planted


# --------------------------------------------------------------------------- remove and undo
def test_groups_keep_the_largest_then_first_path(images_dir):
    paths = sorted(p.relative_to(images_dir).as_posix() for p in images_dir.rglob("*.jp*g"))
    hashed, unreadable = hash_images(images_dir, paths)
    assert [path for path, _ in unreadable] == ["dotted/broken.jpg"]
    groups = group_duplicates(hashed, DEFAULT_DEDUP_MAX_DISTANCE)
    summary = {g.kept.path: {im.path for im, _ in g.duplicates} for g in groups}
    assert summary == {"striped/a.jpg": COPIES_OF_A, "leopard/sub/g.jpg": {"leopard/sub/g_small.jpg"}}
    by_kept = {g.kept.path: g for g in groups}
    assert by_kept["striped/a.jpg"].cross_class and by_kept["striped/a.jpg"].labels == ["dotted", "striped"]
    assert not by_kept["leopard/sub/g.jpg"].cross_class
    assert dict((im.path, d) for im, d in by_kept["striped/a.jpg"].duplicates)["striped/a_copy.jpg"] == 0


def test_identical_hashes_only_at_distance_zero(layout):
    result = remove_duplicates(layout, max_distance=0, dry_run=True)
    moved = {g.kept.path: [im.path for im, d in g.duplicates if d == 0] for g in result.groups}
    assert moved["striped/a.jpg"][0] == "striped/a_copy.jpg"
    assert all(d == 0 for g in result.groups for _, d in g.duplicates)


def test_dry_run_changes_nothing(images_dir, layout, tmp_path):
    before = snapshot(tmp_path / "data" / "images")
    report = tmp_path / "data" / "proc" / "ds" / "duplicatesDryRun.csv"
    result = remove_duplicates(layout, dry_run=True)
    assert result.report_path == report
    assert snapshot(tmp_path / "data" / "images") == before
    assert not (images_dir.parent / "ds_duplicates").exists()
    assert result.moved == 5 and result.dry_run
    rows = read_report(report)
    assert {r["path"] for r in rows if r["role"] == "moved"} == COPIES_OF_A | {"leopard/sub/g_small.jpg"}
    assert "would move 5 files" in result.summary()


def test_moves_duplicates_aside_and_undo_restores_every_file(images_dir, layout, tmp_path):
    images_root = tmp_path / "data" / "images"
    before = snapshot(images_root)
    duplicates = images_root / "ds_duplicates"
    result = remove_duplicates(layout)
    assert result.moved == 5

    # moved, under the same relative path; nothing deleted, nothing changed
    for rel in COPIES_OF_A | {"leopard/sub/g_small.jpg"}:
        assert not (images_dir / rel).exists()
        assert hashlib.sha256((duplicates / rel).read_bytes()).hexdigest() == before[f"ds/{rel}"]
    assert sorted(snapshot(images_dir)) == sorted(r[3:] for r in before if r.startswith("ds/")
                                                   and r[3:] not in COPIES_OF_A | {"leopard/sub/g_small.jpg"})

    # the report: documented columns, kept / moved / distance
    assert result.report_path.parent == duplicates
    rows = read_report(result.report_path)
    assert list(rows[0]) == list(REPORT_COLUMNS)
    roles = {r["path"]: (r["role"], r["kept"], int(r["distance"]), r["cross_class"]) for r in rows}
    assert roles["striped/a.jpg"] == ("kept", "striped/a.jpg", 0, "1")
    assert roles["striped/a_copy.jpg"] == ("moved", "striped/a.jpg", 0, "1")
    assert roles["leopard/sub/g_small.jpg"][:2] == ("moved", "leopard/sub/g.jpg")
    assert "across classes dotted/striped" in result.summary()

    undone = undo_moves(result.report_path, layout)
    assert (undone.restored, undone.problems) == (5, [])
    after = {k: v for k, v in snapshot(images_root).items() if not k.startswith("ds_duplicates/")}
    assert after == before
    again = undo_moves(result.report_path, layout)  # harmless
    assert (again.restored, again.already_back, again.problems) == (0, 5, [])


def test_undo_never_overwrites(images_dir, layout, tmp_path):
    duplicates = tmp_path / "data" / "images" / "ds_duplicates"
    result = remove_duplicates(layout)
    (images_dir / "striped/a_q50.jpg").write_bytes(b"a new file the user put there")
    undone = undo_moves(result.report_path, layout)
    assert undone.restored == 4 and len(undone.problems) == 1
    assert (images_dir / "striped/a_q50.jpg").read_bytes() == b"a new file the user put there"
    assert (duplicates / "striped/a_q50.jpg").exists()


@pytest.mark.parametrize("action, moved", [
    ("moveAll", COPIES_OF_A | {"striped/a.jpg", "leopard/sub/g_small.jpg"}),
    ("report", {"leopard/sub/g_small.jpg"}),
])
def test_cross_class_actions(layout, tmp_path, action, moved):
    duplicates = tmp_path / "data" / "images" / "ds_duplicates"
    result = remove_duplicates(layout, cross_class_action=action)
    rows = read_report(result.report_path)
    assert {r["path"] for r in rows if r["role"] == "moved"} == moved
    assert {p.relative_to(duplicates).as_posix() for p in duplicates.rglob("*.jp*g")} == moved
    if action == "report":
        assert {r["role"] for r in rows if r["cross_class"] == "1"} == {"conflict"}


def test_script_dry_run_then_move_then_undo(images_dir, tmp_path, capsys):
    parameters_file = tmp_path / "PARAMETERS.py"
    parameters_file.write_text(f"rootDir = {str(tmp_path / 'data')!r}\ndatasetName = 'ds'\n")
    main = runpy.run_path(str(PROJECT_DIR / "scripts" / "removeDuplicates.py"))["main"]
    before = snapshot(images_dir)
    assert main([f"--parametersFile={parameters_file}", "--dry-run"]) == 0
    assert snapshot(images_dir) == before
    assert (tmp_path / "data" / "proc" / "ds" / "duplicatesDryRun.csv").is_file()
    assert "would move 5 files" in capsys.readouterr().out
    assert main([f"--parametersFile={parameters_file}", "--dedup_crossClass=report"]) == 0
    out = capsys.readouterr().out
    assert "moved 1 files" in out
    report = next((tmp_path / "data" / "images" / "ds_duplicates").glob("duplicatesReport_*.csv"))
    assert main([f"--parametersFile={parameters_file}", f"--undo={report}"]) == 0
    assert "restored 1 files" in capsys.readouterr().out
    assert snapshot(images_dir) == before


# --------------------------------------------------------------------------- split check
def test_find_straddling_duplicates_uses_and_refreshes_the_cache(images_dir, tmp_path, monkeypatch):
    rows = [("striped/a.jpg", "train"), ("striped/a_half.jpg", "test"), ("striped/b.jpg", "train"),
            ("striped/c.jpg", "test"), ("leopard/sub/g.jpg", "test"), ("leopard/sub/g_small.jpg", "test"),
            ("dotted/broken.jpg", "train")]
    cache = tmp_path / "proc" / "dhash16.csv"
    pairs = find_straddling_duplicates(rows, images_dir, cache_path=cache)
    assert [(p.train_path, p.test_path) for p in pairs] == [("striped/a.jpg", "striped/a_half.jpg")]
    assert pairs[0].distance <= DEFAULT_DEDUP_MAX_DISTANCE and cache.is_file()

    def no_decoding(*args, **kwargs):
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(dedup, "dhash_file", no_decoding)
    rows_swapped = [(path, "test" if split == "train" else "train") for path, split in rows[:4]]
    assert [(p.train_path, p.test_path) for p in find_straddling_duplicates(
        rows_swapped, images_dir, cache_path=cache)] == [("striped/a_half.jpg", "striped/a.jpg")]

    monkeypatch.undo()
    natural_photo(30, (320, 240)).save(images_dir / "striped/a_half.jpg", format="JPEG")  # now distinct
    assert find_straddling_duplicates(rows, images_dir, cache_path=cache) == []


def test_no_duplicates_no_report(tmp_path):
    folder = DatasetLayout(tmp_path, "ds").images_dir
    for seed, name in enumerate(["a/1.jpg", "a/2.jpg", "b/3.jpg"]):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(jpeg(natural_photo(seed)))
    result = remove_duplicates(DatasetLayout(tmp_path, "ds"))
    assert (result.groups, result.moved, result.report_path) == ([], 0, None)
    assert not (tmp_path / "images" / "ds_duplicates").exists()
    assert "moved 0 files" in result.summary()


# --------------------------------------------------------------------------- plan before move, travelling report
def test_a_move_failing_half_way_moves_the_others_back_and_says_so(images_dir, layout, tmp_path, monkeypatch):
    before = snapshot(tmp_path / "data" / "images")
    real_move = imgclass.io.moves.move_file
    calls = []

    def third_move_fails(source, target):
        calls.append(source)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        real_move(source, target)

    monkeypatch.setattr(imgclass.io.moves, "move_file", third_move_fails)
    result = remove_duplicates(layout)
    monkeypatch.undo()
    after = {path: digest for path, digest in snapshot(tmp_path / "data" / "images").items()
             if not path.startswith("ds_duplicates/duplicatesReport_")}
    assert after == before  # nothing lost, everything back (the report says what was planned)
    moves = result.moves
    assert (result.moved, len(moves.failed), len(moves.not_attempted), len(moves.rolled_back)) == (0, 1, 2, 2)
    text = result.summary()
    assert "No space left on device" in text and text.count("moved back (rollback)") == 2
    assert "not attempted" in text


def test_a_planned_move_that_cannot_be_made_stops_the_run_before_any_move(images_dir, layout, tmp_path):
    outside = tmp_path / "outside.jpg"
    outside.write_bytes((images_dir / "striped/a_copy.jpg").read_bytes())
    (images_dir / "striped/a_copy.jpg").unlink()
    (images_dir / "striped/a_copy.jpg").symlink_to(outside)  # a copy that is a link out of the dataset
    before = snapshot(tmp_path / "data" / "images")
    with pytest.raises(dedup.DedupError, match="(?s)nothing was moved.*a_copy.jpg: outside the allowed folders"):
        remove_duplicates(layout)
    assert snapshot(tmp_path / "data" / "images") == before
    assert not layout.duplicates_dir.exists()


@pytest.mark.parametrize("field, value", [
    ("path", "../../outside.jpg"), ("path", "/tmp/outside.jpg"), ("moved_to", "../ds/striped/b.jpg"),
    ("moved_to", "C:/Windows/x.jpg"), ("path", "striped\\..\\..\\x.jpg"), ("moved_to", "link/b.jpg"),
])
def test_an_undo_report_leading_outside_moves_nothing(images_dir, layout, tmp_path, field, value):
    result = remove_duplicates(layout)
    (layout.duplicates_dir / "link").symlink_to(images_dir / "striped")  # a folder link leading out
    rows = read_report(result.report_path)
    crafted = tmp_path / "crafted.csv"
    moved_rows = [r for r in rows if r["role"] == "moved"]
    moved_rows[-1][field] = value
    with open(crafted, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=REPORT_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    before = snapshot(tmp_path / "data" / "images")
    with pytest.raises(dedup.DedupError, match="nothing was moved"):
        undo_moves(crafted, layout)
    assert snapshot(tmp_path / "data" / "images") == before
    assert undo_moves(result.report_path, layout).restored == 5  # the genuine report still works


def test_an_undo_failing_half_way_lists_what_was_not_restored(images_dir, layout, monkeypatch):
    result = remove_duplicates(layout)
    real_move = imgclass.io.moves.move_file
    calls = []

    def second_move_fails(source, target):
        calls.append(source)
        if len(calls) == 2:
            raise OSError(5, "Input/output error")
        real_move(source, target)

    monkeypatch.setattr(imgclass.io.moves, "move_file", second_move_fails)
    undone = undo_moves(result.report_path, layout)
    assert undone.restored == 1 and len(undone.problems) == 4
    assert sum("not attempted" in p for p in undone.problems) == 3
    assert "Input/output error" in undone.summary()
    monkeypatch.undo()
    again = undo_moves(result.report_path, layout)  # once the disk is fine again, the rest comes back
    assert (again.restored, again.already_back, again.problems) == (4, 1, [])
