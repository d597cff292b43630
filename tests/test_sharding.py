"""data_tools shard / verify: round trip, bad input, determinism, tamper detection."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import DEMO_SRC, make_layout
from data_tools.__main__ import main as cli
from data_tools.shard import shard_dataset
from data_tools.verify import verify_shards
from export.runtime.shard_format import iter_shard, read_manifest
from trainer.data import SliceShards, epoch_batches


def tree_digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_round_trip_is_pixel_identical_with_metadata(demo_shards: Path):
    manifest = read_manifest(demo_shards)
    assert {s: e["num_samples"] for s, e in manifest["splits"].items()} == {"train": 64, "validate": 32, "test": 32}
    assert len(manifest["splits"]["train"]["shards"]) == 6  # 64 samples at <= 12 per shard, made even
    seen = {}
    for split in ("train", "validate", "test"):
        for batch in epoch_batches(SliceShards(demo_shards, split), batch_size=7):
            assert batch.images.dtype.is_floating_point and batch.images.shape[1:] == (1, 256, 256)
            for key, image, meta in zip(batch.keys, batch.images, batch.meta):
                seen[key] = (split, image, meta)
    assert len(seen) == 128
    for key, (split, image, meta) in seen.items():
        source = DEMO_SRC / f"keras_png_slices_{split}" / f"{key}.nii.png"
        expected = np.asarray(Image.open(source), dtype=np.float32) / 255.0
        assert np.array_equal(image[0].numpy(), expected), key
        assert meta == {"subject": key.split("_")[1], "slice": int(key.split("_")[3]), "split": split,
                        "source": source.name, "mask_source": None, "original_size": [256, 256]}


def test_manifest_pixel_stats_match_the_images(demo_shards: Path):
    stats = read_manifest(demo_shards)["splits"]["test"]["pixel_stats"]
    pixels = np.stack([np.asarray(Image.open(p)) for p in (DEMO_SRC / "keras_png_slices_test").glob("*.png")])
    assert stats["mean"] == pytest.approx(pixels.mean() / 255, abs=1e-7)
    assert stats["std"] == pytest.approx(pixels.std() / 255, abs=1e-7)
    assert (stats["min"], stats["max"]) == (pixels.min(), pixels.max())


def test_same_input_gives_byte_identical_output(small_layout: Path, tmp_path: Path):
    shard_dataset(small_layout, tmp_path / "a", samples_per_shard=2, workers=2, show_progress=False)
    shard_dataset(small_layout, tmp_path / "b", samples_per_shard=2, workers=1, show_progress=False)
    digest_a = tree_digest(tmp_path / "a")
    assert len(digest_a) == 1 + 3 + 2 + 2  # manifest + shards
    assert digest_a == tree_digest(tmp_path / "b")


def test_verify_passes_clean_and_catches_tampering(small_layout: Path, tmp_path: Path):
    out = tmp_path / "shards"
    shard_dataset(small_layout, out, samples_per_shard=2, show_progress=False)
    assert verify_shards(out, show_progress=False) == []
    assert cli(["verify", str(out), "--quiet"]) == 0

    shard = out / "train-000001.tar"
    data = bytearray(shard.read_bytes())
    data[1200] ^= 0xFF  # one byte inside the first PNG's data
    shard.write_bytes(bytes(data))
    problems = verify_shards(out, show_progress=False)
    assert any("train-000001.tar" in p and "sha256" in p for p in problems), problems
    assert cli(["verify", str(out), "--quiet"]) == 1

    (out / "test-000000.tar").unlink()
    assert any("test-000000.tar: shard missing" in p for p in verify_shards(out, show_progress=False))


def test_masks_are_stored_and_loaded(tmp_path: Path):
    src = make_layout(tmp_path / "src", {"train": ["001"], "validate": ["002"], "test": ["003"]}, slices=2)
    for split, subject in (("train", "001"), ("validate", "002"), ("test", "003")):
        folder = src / f"keras_png_slices_seg_{split}"
        folder.mkdir()
        for i in range(2):
            labels = np.zeros((256, 256), np.uint8)
            labels[100:150, 60:200] = 85 * (i + 1)
            Image.fromarray(labels).save(folder / f"seg_{subject}_slice_{i}.nii.png")
    out = tmp_path / "shards"
    manifest = shard_dataset(src, out, show_progress=False)
    assert manifest["splits"]["train"]["has_masks"] and "seg.png" in manifest["entries"]
    batch = next(epoch_batches(SliceShards(out, "train", with_masks=True), batch_size=2))
    by_key = dict(zip(batch.keys, batch.masks))
    assert set(np.unique(by_key["case_001_slice_1"].numpy())) == {0, 170}
    assert verify_shards(out, show_progress=False) == []


def test_resizes_odd_sized_images_and_converts_gray_rgb(small_layout: Path, tmp_path: Path):
    path = small_layout / "keras_png_slices_train" / "case_001_slice_0.nii.png"
    gray = Image.open(path).resize((200, 180))
    gray.convert("RGB").save(path)  # gray stored as RGB, and the wrong size
    out = tmp_path / "shards"
    manifest = shard_dataset(small_layout, out, show_progress=False)
    assert manifest["splits"]["train"]["resized"] == 1
    sample = next(s for s in iter_shard(out / "train-000000.tar") if s["__key__"] == "case_001_slice_0")
    assert json.loads(sample["json"])["original_size"] == [200, 180]
    stored = Image.open(__import__("io").BytesIO(sample["png"]))
    assert stored.mode == "L" and stored.size == (256, 256)
    expected = np.asarray(gray.resize((256, 256), Image.Resampling.BILINEAR))
    assert np.array_equal(np.asarray(stored), expected)


# --- bad input: clear message naming the file, non-zero exit, nothing left behind -----------------

def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:3000])


def not_an_image(path: Path) -> None:
    path.write_text("this is not a PNG\n")


def colour(path: Path) -> None:
    rgb = np.asarray(Image.open(path).convert("RGB")).copy()
    rgb[..., 0] = 255 - rgb[..., 0]
    Image.fromarray(rgb).save(path)


def sixteen_bit(path: Path) -> None:
    Image.fromarray(np.asarray(Image.open(path)).astype(np.uint16) * 257).save(path)


BAD_FILES = {
    "truncated": (truncate, "unreadable or truncated PNG"),
    "not an image": (not_an_image, "not an image file"),
    "colour": (colour, "colour image"),
    "16-bit": (sixteen_bit, "16-bit or float"),
}


def assert_failed_cleanly(capsys, out: Path, args: list[str], *expected: str) -> None:
    assert cli(args) == 2
    message = capsys.readouterr().err
    for text in expected:
        assert text in message, message
    assert not out.exists()
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(".")] == []  # no temp folder left


@pytest.mark.parametrize("damage", BAD_FILES)
def test_bad_file_is_named_and_nothing_is_written(damage: str, small_layout: Path, tmp_path: Path, capsys):
    bad = small_layout / "keras_png_slices_validate" / "case_003_slice_1.nii.png"
    make_bad, problem = BAD_FILES[damage]
    make_bad(bad)
    out = tmp_path / "out" / "shards"
    out.parent.mkdir()
    assert_failed_cleanly(capsys, out, ["shard", "--src", str(small_layout), "--out", str(out), "--quiet"],
                          str(bad), problem)


def test_every_bad_file_is_reported_at_once(small_layout: Path, tmp_path: Path, capsys):
    for i in range(3):
        truncate(small_layout / "keras_png_slices_train" / f"case_002_slice_{i}.nii.png")
    out = tmp_path / "out" / "shards"
    out.parent.mkdir()
    assert_failed_cleanly(capsys, out, ["shard", "--src", str(small_layout), "--out", str(out), "--quiet"],
                          "3 bad file(s) in split 'train'", "case_002_slice_0", "case_002_slice_2")


@pytest.mark.parametrize("problem", ["missing split", "empty split", "bad name", "leakage"])
def test_bad_layout_is_refused(problem: str, small_layout: Path, tmp_path: Path, capsys):
    test_dir = small_layout / "keras_png_slices_test"
    if problem == "missing split":
        shutil.rmtree(test_dir)
        expected = [str(test_dir), "split folder 'test' is missing"]
    elif problem == "empty split":
        for f in test_dir.iterdir():
            f.unlink()
        expected = [str(test_dir), "split 'test' is empty"]
    elif problem == "bad name":
        (test_dir / "case_004_slice_0.nii.png").rename(test_dir / "brain_004.png")
        expected = [str(test_dir / "brain_004.png"), "name does not match"]
    else:
        shutil.copy(small_layout / "keras_png_slices_train" / "case_001_slice_0.nii.png",
                    test_dir / "case_001_slice_9.nii.png")
        expected = ["subject leakage", "subject 001 in 'train' and 'test'"]
    out = tmp_path / "out" / "shards"
    out.parent.mkdir()
    assert_failed_cleanly(capsys, out, ["shard", "--src", str(small_layout), "--out", str(out), "--quiet"], *expected)


def test_existing_output_needs_force_and_survives_failure(small_layout: Path, tmp_path: Path, capsys):
    out = tmp_path / "shards"
    args = ["shard", "--src", str(small_layout), "--out", str(out), "--quiet"]
    assert cli(args) == 0
    before = tree_digest(out)
    assert cli(args) == 2 and "use --force" in capsys.readouterr().err
    truncate(small_layout / "keras_png_slices_test" / "case_004_slice_0.nii.png")
    assert cli(args + ["--force"]) == 2  # fails: the old output must be untouched
    assert tree_digest(out) == before
    shutil.copy(small_layout / "keras_png_slices_train" / "case_002_slice_2.nii.png",
                small_layout / "keras_png_slices_test" / "case_004_slice_0.nii.png")
    assert cli(args + ["--force"]) == 0 and tree_digest(out) != before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shards", "src"]


def test_help_explains_every_option(capsys):
    with pytest.raises(SystemExit):
        cli(["shard", "--help"])
    text = capsys.readouterr().out
    for option in ("--src", "--out", "--splits", "--size", "--samples-per-shard", "--max-shard-mb",
                   "--workers", "--force", "--quiet"):
        assert option in text
