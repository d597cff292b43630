"""data_tools shard / verify: round trip, bad input, determinism, tamper detection."""

from __future__ import annotations

import errno
import hashlib
import json
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from common.shard_format import iter_shard, read_manifest
from conftest import DEMO_SRC, interrupt_when, make_layout
from data_tools.__main__ import main as cli
from data_tools.shard import shard_dataset
from data_tools.verify import verify_shards
from trainer.stage1.data import SliceShards, epoch_batches


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
        assert meta == {
            "subject": key.split("_")[1],
            "slice": int(key.split("_")[3]),
            "split": split,
            "source": source.name,
            "mask_source": None,
            "original_size": [256, 256],
        }


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


def write_png(path: Path, pixels: np.ndarray, bit_depth: int, colour_type: int, size: tuple[int, int] | None = None):
    """A PNG written by hand (Pillow cannot write 16-bit RGB or 16-bit gray+alpha). `size` overrides the
    (width, height) declared in IHDR, for a decompression bomb whose data is tiny."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    height, width = pixels.shape[:2]
    rows = pixels.astype(">u2" if bit_depth == 16 else "u1").reshape(height, -1).view(np.uint8)
    raw = b"".join(b"\0" + row.tobytes() for row in rows)
    header = struct.pack(">IIBBBBB", *(size or (width, height)), bit_depth, colour_type, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    )


def gray16(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path)).astype(np.uint16) * 257 + 1  # low byte carries information


def sixteen_bit_rgb_equal_channels(path: Path) -> None:
    write_png(path, np.repeat(gray16(path)[..., None], 3, axis=2), 16, 2)


def sixteen_bit_gray_alpha(path: Path) -> None:
    gray = gray16(path)
    write_png(path, np.stack([gray, np.full_like(gray, 65535)], axis=2), 16, 4)


def decompression_bomb(path: Path) -> None:
    write_png(path, np.zeros((1, 1), np.uint8), 8, 0, size=(100_000, 100_000))


def symlink_loop(path: Path) -> None:
    path.unlink()
    path.symlink_to(path.name)


def test_hand_written_pngs_are_what_the_tests_claim(tmp_path: Path):
    """Pillow opens these as 8-bit (so a mode check alone passes them); the PNG header says 16."""
    path = tmp_path / "x.png"
    shutil.copy(DEMO_SRC / "keras_png_slices_test" / "case_904_slice_0.nii.png", path)
    sixteen_bit_rgb_equal_channels(path)
    assert Image.open(path).mode == "RGB" and path.read_bytes()[24] == 16
    shutil.copy(DEMO_SRC / "keras_png_slices_test" / "case_904_slice_0.nii.png", path)
    sixteen_bit_gray_alpha(path)
    assert Image.open(path).mode == "RGBA" and path.read_bytes()[24] == 16  # 8 bits a channel


BAD_FILES = {
    "truncated": (truncate, "unreadable or truncated PNG"),
    "not an image": (not_an_image, "not an image file"),
    "colour": (colour, "colour image"),
    "16-bit": (sixteen_bit, "16-bit or float"),
    "16-bit RGB with equal channels": (sixteen_bit_rgb_equal_channels, "16-bit"),
    "16-bit gray+alpha": (sixteen_bit_gray_alpha, "16-bit"),
    "decompression bomb": (decompression_bomb, "100000x100000"),
    "symlink loop": (symlink_loop, "symlink loop"),
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
    assert_failed_cleanly(
        capsys, out, ["shard", "--src", str(small_layout), "--out", str(out), "--quiet"], str(bad), problem
    )


def test_every_bad_file_is_reported_at_once(small_layout: Path, tmp_path: Path, capsys):
    for i in range(3):
        truncate(small_layout / "keras_png_slices_train" / f"case_002_slice_{i}.nii.png")
    out = tmp_path / "out" / "shards"
    out.parent.mkdir()
    assert_failed_cleanly(
        capsys,
        out,
        ["shard", "--src", str(small_layout), "--out", str(out), "--quiet"],
        "3 bad file(s)",
        "case_002_slice_0",
        "case_002_slice_2",
    )


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
        shutil.copy(
            small_layout / "keras_png_slices_train" / "case_001_slice_0.nii.png", test_dir / "case_001_slice_9.nii.png"
        )
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
    shutil.copy(
        small_layout / "keras_png_slices_train" / "case_002_slice_2.nii.png",
        small_layout / "keras_png_slices_test" / "case_004_slice_0.nii.png",
    )
    assert cli(args + ["--force"]) == 0 and tree_digest(out) != before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shards", "src"]


def test_help_explains_every_option(capsys):
    assert cli(["shard", "--help"]) == 0
    text = capsys.readouterr().out
    for option in (
        "--src",
        "--out",
        "--splits",
        "--size",
        "--samples-per-shard",
        "--max-shard-mb",
        "--workers",
        "--force",
        "--quiet",
    ):
        assert option in text


# --- hostile input: every problem named at once, inputs never replaced, bad options refused at parse time ---


def test_every_bad_name_and_every_bad_split_is_listed_at_once(small_layout: Path, tmp_path: Path, capsys):
    train = small_layout / "keras_png_slices_train"
    (train / "case_001_slice_0.nii.png").rename(train / "brain_1.png")
    (train / "case_002_slice_0.nii.png").rename(train / "case_\u0669\u0660\u0662_slice_0.nii.png")  # Arabic digits
    for f in (small_layout / "keras_png_slices_validate").iterdir():
        f.unlink()
    shutil.rmtree(small_layout / "keras_png_slices_test")
    out = tmp_path / "out" / "shards"
    out.parent.mkdir()
    assert_failed_cleanly(
        capsys,
        out,
        ["shard", "--src", str(small_layout), "--out", str(out), "--quiet"],
        f"{train / 'brain_1.png'}: name does not match",
        "case_\u0669\u0660\u0662_slice_0.nii.png: name does not match",
        "split 'validate' is empty",
        "split folder 'test' is missing",
    )


def test_bad_files_in_several_splits_are_listed_at_once(small_layout: Path, tmp_path: Path, capsys):
    truncate(small_layout / "keras_png_slices_train" / "case_001_slice_2.nii.png")
    not_an_image(small_layout / "keras_png_slices_test" / "case_004_slice_0.nii.png")
    out = tmp_path / "out" / "shards"
    out.parent.mkdir()
    assert_failed_cleanly(
        capsys,
        out,
        ["shard", "--src", str(small_layout), "--out", str(out), "--quiet"],
        "case_001_slice_2.nii.png: unreadable",
        "case_004_slice_0.nii.png: not an image",
    )


@pytest.mark.parametrize("case", ["same key", "leakage by number", "one subject spelled two ways"])
def test_names_that_collide_are_refused(case: str, small_layout: Path, tmp_path: Path, capsys):
    train, test = small_layout / "keras_png_slices_train", small_layout / "keras_png_slices_test"
    if case == "same key":
        shutil.copy(train / "case_001_slice_2.nii.png", train / "case_001_slice_01.nii.png")
        expected = ["case_001_slice_01.nii.png and case_001_slice_1.nii.png", "sample key case_001_slice_1"]
    elif case == "leakage by number":
        for f in test.iterdir():
            f.rename(test / f.name.replace("case_004", "case_0001"))
        expected = ["subject leakage", "subject 001 in 'train' and 0001 in 'test'"]
    else:
        shutil.copy(train / "case_001_slice_2.nii.png", train / "case_01_slice_5.nii.png")
        expected = ["subject 1 is written 001 and 01 in 'train'"]
    out = tmp_path / "out" / "shards"
    out.parent.mkdir()
    assert_failed_cleanly(capsys, out, ["shard", "--src", str(small_layout), "--out", str(out), "--quiet"], *expected)


@pytest.mark.parametrize(
    "out_is",
    [
        "the source",
        "the folder holding the source",
        "a split folder",
        "inside a split folder",
        "a folder we did not write",
    ],
)
def test_force_never_replaces_an_input_or_a_foreign_folder(out_is: str, small_layout: Path, tmp_path: Path, capsys):
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    out = {
        "the source": small_layout,
        "the folder holding the source": tmp_path,
        "a split folder": small_layout / "keras_png_slices_test",
        "inside a split folder": small_layout / "keras_png_slices_test" / "shards",
        "a folder we did not write": foreign,
    }[out_is]
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert cli(["shard", "--src", str(small_layout), "--out", str(out), "--force", "--quiet"]) == 2
    message = capsys.readouterr().err
    assert str(out) in message and len(message.strip().splitlines()) == 1, message
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before
    assert not (small_layout / "keras_png_slices_test" / "shards").exists()


def test_output_beside_the_layout_inside_the_source_folder_is_fine(small_layout: Path, capsys):
    """`--src data --out data/shards` (data holding the layout) is the README's usage: not an overlap."""
    parent = small_layout.parent
    small_layout.rename(parent / "keras_png_slices_data")
    assert cli(["shard", "--src", str(parent), "--out", str(parent / "shards"), "--quiet"]) == 0
    assert cli(["shard", "--src", str(parent), "--out", str(parent / "shards"), "--quiet", "--force"]) == 0
    assert read_manifest(parent / "shards")["splits"]["train"]["num_samples"] == 6


@pytest.mark.parametrize("case", ["out is a file", "parent is a file"])
def test_unusable_output_path_is_exit_2(case: str, small_layout: Path, tmp_path: Path, capsys):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file")
    out = blocker if case == "out is a file" else blocker / "shards"
    assert cli(["shard", "--src", str(small_layout), "--out", str(out), "--force", "--quiet"]) == 2
    assert str(out) in capsys.readouterr().err and blocker.read_text() == "a file"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--workers", "-1"], "argument --workers: must be an integer from 1 to"),
        (["--workers", "0"], "argument --workers: must be an integer from 1 to"),
        (["--workers", "100000"], "argument --workers: must be an integer from 1 to"),
        (["--samples-per-shard", "0"], "argument --samples-per-shard: must be an integer >= 1"),
        (["--max-shard-mb", "0"], "argument --max-shard-mb: must be a finite number >= 1"),
        (["--max-shard-mb", "nan"], "argument --max-shard-mb: must be a finite number >= 1"),
        (["--size", "64"], "--size 64: only 256 is supported end to end"),
    ],
)
def test_bad_shard_option_is_refused_at_parse_time(args: list[str], message: str, tmp_path: Path, capsys):
    assert cli(["shard", "--src", str(DEMO_SRC), "--out", str(tmp_path / "shards"), *args]) == 2
    assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_bad_preview_count_is_refused_at_parse_time(demo_shards: Path, tmp_path: Path, capsys):
    code = cli(["preview", str(demo_shards), "--out", str(tmp_path / "p.png"), "--count", "0"])
    assert code == 2 and "argument --count: must be an integer from 1 to" in capsys.readouterr().err


BROKEN_MANIFESTS = {
    "not JSON": (lambda m: '{"format_version": 1, ', "not valid JSON"),
    "not UTF-8": (lambda m: b"\xff\xfe{}", "not valid UTF-8"),
    "a list": (lambda m: "[]", "expected a JSON object"),
    "no splits": (lambda m: json.dumps({**m, "splits": None}), "'splits'"),
    "shard name leaves the folder": (
        lambda m: json.dumps(
            {
                **m,
                "splits": {
                    "test": {
                        **m["splits"]["test"],
                        "shards": [{**m["splits"]["test"]["shards"][0], "name": "../test-000000.tar"}],
                    }
                },
            }
        ),
        "'../test-000000.tar'",
    ),
    "missing shard field": (
        lambda m: json.dumps({**m, "splits": {"test": {**m["splits"]["test"], "shards": [{"name": "x.tar"}]}}}),
        "num_samples",
    ),
}


@pytest.mark.parametrize("breakage", BROKEN_MANIFESTS)
@pytest.mark.parametrize("command", ["verify", "preview"])
def test_broken_manifest_is_exit_2_naming_it(command: str, breakage: str, demo_shards: Path, tmp_path: Path, capsys):
    shards = tmp_path / "shards"
    shutil.copytree(demo_shards, shards)
    manifest = shards / "manifest.json"
    make_broken, problem = BROKEN_MANIFESTS[breakage]
    broken = make_broken(json.loads(manifest.read_text()))
    manifest.write_bytes(broken if isinstance(broken, bytes) else broken.encode())
    args = {
        "verify": ["verify", str(shards), "--quiet"],
        "preview": ["preview", str(shards), "--split", "test", "--out", str(tmp_path / "p.png")],
    }[command]
    assert cli(args) == 2
    message = capsys.readouterr().err
    assert str(manifest) in message and problem in message, message
    assert len(message.strip().splitlines()) == 1, message


@pytest.mark.parametrize("case", ["out is a folder", "out inside the shards", "unknown split", "no extension"])
def test_preview_output_and_split_are_checked(case: str, demo_shards: Path, tmp_path: Path, capsys):
    shards = tmp_path / "shards"
    shutil.copytree(demo_shards, shards)
    out, split = tmp_path / "preview.png", "train"
    if case == "out is a folder":
        out.mkdir()
    elif case == "out inside the shards":
        out = shards / "train-000000.tar"
    elif case == "unknown split":
        split = "valid"
    else:
        out = tmp_path / "preview"
    before = tree_digest(shards)
    status = cli(["preview", str(shards), "--split", split, "--out", str(out), "--count", "3"])
    message = capsys.readouterr().err
    assert tree_digest(shards) == before
    if case == "no extension":
        assert status == 0 and Image.open(out).format == "PNG"
        return
    assert status == 2 and len(message.strip().splitlines()) == 1, message
    assert {
        "out is a folder": str(out),
        "out inside the shards": "inside the shard folder",
        "unknown split": "split 'valid' is not in",
    }[case] in message


def test_full_disk_is_exit_2_and_keeps_the_old_output(small_layout: Path, tmp_path: Path, monkeypatch, capsys):
    out = tmp_path / "shards"
    args = ["shard", "--src", str(small_layout), "--out", str(out), "--quiet", "--force"]
    assert cli(args) == 0
    before = tree_digest(out)

    def disk_full(self, encoded):
        raise OSError(errno.ENOSPC, "No space left on device")  # as write() raises it: no file name

    monkeypatch.setattr("data_tools.shard.ShardSetWriter.write", disk_full)
    assert cli(args) == 2
    err = capsys.readouterr().err
    assert f"{out}: " in err and "No space left on device" in err and len(err.strip().splitlines()) == 1, err
    assert tree_digest(out) == before and sorted(p.name for p in tmp_path.iterdir()) == ["shards", "src"]


def test_ctrl_c_mid_run_is_one_line_exit_130_and_keeps_the_old_output(tmp_path: Path):
    """A terminal's Ctrl-C reaches the pool's workers too: none may print a traceback."""
    out = tmp_path / "shards"
    args = ["-m", "data_tools", "shard", "--src", str(DEMO_SRC), "--out", str(out), "--workers", "2", "--quiet"]
    assert cli([*args[2:], "--samples-per-shard", "64"]) == 0
    before = tree_digest(out)
    # once the pool's workers run: the first shard is in the hidden folder (a SIGINT during fork() itself is
    # swallowed by Python's at-fork hooks in the parent, a window of microseconds that no terminal user can aim at)
    writing = lambda stderr: any(tmp_path.glob(".shards.tmp*/*.tar"))  # noqa: E731
    status, err = interrupt_when([*args, "--force", "--samples-per-shard", "4"], writing)
    assert status == 130 and "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert err.strip().splitlines() == [
        "error: `python -m data_tools shard` interrupted (Ctrl-C); nothing partial was written, "
        "and an earlier output is kept as it was"
    ]
    assert tree_digest(out) == before and sorted(p.name for p in tmp_path.iterdir()) == ["shards"]
