"""`python -m data_tools lesions`: deterministic, half healthy, lesions inside the head as lesions.json says, of
every kind and size promised; and a user's mistake is one line, exit 2, nothing written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from common.limits import MAX_LESIONS, MAX_SEED
from common.png_header import read_slice
from conftest import DEMO_SRC, OASIS_SRC, make_layout
from data_tools.__main__ import main as data_cli
from data_tools.lesion_model import (
    CONTRAST,
    EDGES,
    KINDS,
    MAX_RADIUS,
    MIN_RADIUS,
    SCALP_MARGIN,
    Anatomy,
    paint_lesions,
)
from data_tools.lesions import make_lesion_set
from data_tools.morphology import depth_map, fill_holes, gaussian_blur, head_mask, reconstruct
from data_tools.shard import shard_dataset

DEMO_TRAIN = DEMO_SRC / "keras_png_slices_train"


def pixels(path: Path) -> np.ndarray:
    return read_slice(path, str(path), 256)


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def slices(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """16 demo slices of two subjects in one folder."""
    folder = tmp_path_factory.mktemp("input") / "slices"
    folder.mkdir()
    for subject in ("901", "903"):
        for n in range(8, 16):
            shutil.copy(DEMO_TRAIN / f"case_{subject}_slice_{n}.nii.png", folder)
    return folder


@pytest.fixture(scope="module")
def lesion_set(slices: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("lesions") / "set"
    make_lesion_set(slices, out, seed=0, show_progress=False)
    return out


def record_of(lesion_set: Path) -> dict:
    return json.loads((lesion_set / "lesions.json").read_text())


# ---- the head mask ----------------------------------------------------------------------------------------------


def test_head_mask_fills_holes_and_keeps_the_head_not_the_specks():
    image = np.zeros((64, 64), np.uint8)
    image[10:50, 10:50] = 200  # the head
    image[20:30, 20:30] = 0  # a ventricle: a hole
    image[2:4, 58:60] = 255  # a bright speck outside
    mask = head_mask(image)
    assert mask[10:50, 10:50].all() and mask.sum() == 40 * 40
    assert fill_holes(image > 0)[20:30, 20:30].all()
    assert depth_map(mask)[30, 30] == 20 and depth_map(mask)[10, 10] == 1
    seed = np.zeros_like(mask)
    seed[3, 59] = True
    assert reconstruct(seed, image > 0).sum() == 4
    assert not head_mask(np.zeros((8, 8), np.uint8)).any()


def test_gaussian_blur_keeps_the_total_and_is_symmetric():
    impulse = np.zeros((21, 21))
    impulse[10, 10] = 1
    blurred = gaussian_blur(impulse, 2.0)
    assert blurred.sum() == pytest.approx(1.0)
    assert np.allclose(blurred, blurred.T) and np.allclose(blurred, blurred[::-1])
    assert blurred.argmax() == 10 * 21 + 10


# ---- the lesion set ---------------------------------------------------------------------------------------------


def test_the_same_seed_gives_the_same_bytes_another_seed_other_lesions(slices, lesion_set, tmp_path):
    make_lesion_set(slices, tmp_path / "again", seed=0, show_progress=False)
    assert files(tmp_path / "again") == files(lesion_set)
    make_lesion_set(slices, tmp_path / "other", seed=1, show_progress=False)
    ours, theirs = files(lesion_set), files(tmp_path / "other")
    assert ours["lesions.json"] != theirs["lesions.json"]
    assert sum(ours[k] != theirs[k] for k in ours if k.startswith("masks/")) >= 8
    assert all(ours[k] == theirs[k] for k in ours if k.startswith("heads/"))  # the head does not depend on the seed


def test_half_of_each_subjects_slices_are_healthy(lesion_set):
    record = record_of(lesion_set)
    assert record["counts"]["slices"] == 16
    assert record["counts"]["healthy_slices"] == record["counts"]["lesion_slices"] == 8
    for subject in ("901", "903"):
        entries = [e for e in record["slices"].values() if e["subject"] == subject]
        assert sum(e["healthy"] for e in entries) == 4
    assert record["version"] == 1 and record["seed"] == 0


def test_healthy_slices_are_the_input_files_and_lesions_lie_inside_the_head(slices, lesion_set):
    for name, entry in record_of(lesion_set)["slices"].items():
        original = pixels(slices / name)
        head = head_mask(original)
        assert np.array_equal(pixels(lesion_set / "heads" / name) > 0, head)
        mask = pixels(lesion_set / "masks" / name)
        assert set(np.unique(mask)) <= {0, 255}
        if entry["healthy"]:
            assert (lesion_set / "images" / name).read_bytes() == (slices / name).read_bytes()
            assert not mask.any()
            continue
        changed = pixels(lesion_set / "images" / name) != original
        inner = depth_map(head) > SCALP_MARGIN  # SCALP_MARGIN pixels inside the head's edge
        assert changed.any() and inner[changed].all() and inner[mask > 0].all(), name


def test_the_masks_match_lesions_json(slices, lesion_set):
    for name, entry in record_of(lesion_set)["slices"].items():
        mask = pixels(lesion_set / "masks" / name) > 0
        assert mask.sum() == entry["lesion_area"] == sum(lesion["area"] for lesion in entry["lesions"])
        assert entry["healthy"] == (not entry["lesions"]) == (not mask.any())
        change = pixels(lesion_set / "images" / name).astype(int) - pixels(slices / name)
        for lesion in entry["lesions"]:
            assert mask[tuple(lesion["centre"])], (name, lesion)
            assert (lesion["mean_change"] > 0) == (lesion["kind"] == "hyper"), (name, lesion)
        if len(entry["lesions"]) == 1:
            assert change[mask].mean() / 255 == pytest.approx(entry["lesions"][0]["mean_change"], abs=1e-4)


def test_lesions_span_the_kinds_sizes_and_contrasts_promised():
    image = pixels(DEMO_TRAIN / "case_901_slice_14.nii.png")
    anatomy = Anatomy.of(image)
    brightest = image[anatomy.head].max()
    lesions = []
    for seed in range(24):
        painted, mask, drawn = paint_lesions(np.random.default_rng(seed), image, anatomy, 3)
        assert 1 <= len(drawn) <= 3 and painted[mask].max() <= brightest  # never the slice's brightest pixel
        lesions += drawn
    assert {(x["kind"], x["edge"]) for x in lesions} == {(k, e) for k in KINDS for e in EDGES}
    radii, areas = [x["radius"] for x in lesions], [x["area"] for x in lesions]
    assert MIN_RADIUS <= min(radii) < 3 and 20 < max(radii) <= MAX_RADIUS
    assert min(areas) < 30 and max(areas) > 1000
    assert all(CONTRAST[0] <= x["contrast"] <= CONTRAST[1] for x in lesions)
    assert min(abs(x["mean_change"]) for x in lesions) > 0.02  # 5 grey levels at least: visible


def test_a_slice_that_cannot_hold_a_lesion_stays_healthy(tmp_path):
    folder = tmp_path / "slices"
    folder.mkdir()
    Image.new("L", (256, 256)).save(folder / "case_001_slice_0.nii.png")  # empty
    tiny = np.zeros((256, 256), np.uint8)
    tiny[np.hypot(*np.mgrid[-128:128, -128:128]) < 15] = 120  # a head too small for the scalp margin and a lesion
    Image.fromarray(tiny).save(folder / "case_001_slice_1.nii.png")
    shutil.copy(DEMO_TRAIN / "case_901_slice_12.nii.png", folder / "case_001_slice_2.nii.png")
    record = make_lesion_set(folder, tmp_path / "out", show_progress=False)
    entries = record["slices"]
    assert [entries[f"case_001_slice_{n}.nii.png"]["can_hold_lesion"] for n in range(3)] == [False, False, True]
    assert [entries[f"case_001_slice_{n}.nii.png"]["healthy"] for n in range(3)] == [True, True, False]
    assert record["counts"]["cannot_hold_lesion"] == 2


def test_shards_give_the_set_the_png_folders_give(tmp_path):
    src = make_layout(tmp_path / "src", {"validate": ["001", "002"]}, slices=3)
    shard_dataset(src, tmp_path / "shards", splits=("validate",), workers=1, show_progress=False)
    from_png = make_lesion_set(src, tmp_path / "a", split="validate", show_progress=False)
    from_shards = make_lesion_set(tmp_path / "shards", tmp_path / "b", split="validate", show_progress=False)
    assert from_png["slices"] == from_shards["slices"] and from_png["counts"]["lesion_slices"] == 3
    a, b = files(tmp_path / "a"), files(tmp_path / "b")
    assert a.keys() == b.keys()
    for key in a:
        if key.endswith(".png"):
            assert np.array_equal(pixels(tmp_path / "a" / key), pixels(tmp_path / "b" / key)), key


def test_help_names_every_option(capsys):
    assert data_cli(["lesions", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    for option in ("--images", "--split", "--out", "--seed", "--max-lesions", "--force", "--quiet"):
        assert option in text
    assert f"1 to {MAX_LESIONS}" in text and f"0 to {MAX_SEED}" in text


# ---- a user's mistakes ------------------------------------------------------------------------------------------


def bad_folder(tmp_path: Path, problem: str) -> Path:
    """Two good slices and, unless `problem` is "", one bad file."""
    folder = tmp_path / "slices"
    folder.mkdir()
    for n in range(2):
        shutil.copy(DEMO_TRAIN / f"case_901_slice_1{n}.nii.png", folder / f"case_007_slice_{n}.nii.png")
    bad = folder / "case_007_slice_2.nii.png"
    if problem == "truncated":
        bad.write_bytes((folder / "case_007_slice_0.nii.png").read_bytes()[:3000])
    elif problem == "small":
        Image.new("L", (128, 128)).save(bad)
    elif problem == "rgb":
        Image.new("RGB", (256, 256)).save(bad)
    elif problem == "name":
        Image.new("L", (256, 256)).save(folder / "brain.png")
    elif problem == "empty":
        shutil.rmtree(folder)
        folder.mkdir()
    return folder


@pytest.mark.parametrize(
    "problem, options, message",
    [
        ("truncated", [], "case_007_slice_2.nii.png: cannot decode the image"),
        ("small", [], "case_007_slice_2.nii.png: expected 256x256 pixels, got 128x128"),
        ("rgb", [], "case_007_slice_2.nii.png: expected an 8-bit grayscale PNG, got mode RGB"),
        ("name", [], "brain.png: name does not match case_<subject>_slice_<N>.nii.png"),
        ("empty", [], "is empty"),
        ("", ["--split", "test"], "a folder of slices, not of splits"),
        ("", ["--max-lesions", "0"], f"argument --max-lesions: must be an integer from 1 to {MAX_LESIONS}, got 0"),
        ("", ["--max-lesions", "-1"], "argument --max-lesions: must be an integer from 1 to"),
        ("", ["--max-lesions", str(10**12)], "argument --max-lesions: must be an integer from 1 to"),
        ("", ["--max-lesions", "two"], "argument --max-lesions: 'two' is not an integer"),
        ("", ["--seed", "-1"], f"argument --seed: must be an integer from 0 to {MAX_SEED}, got -1"),
        ("", ["--seed", str(MAX_SEED + 1)], f"argument --seed: must be an integer from 0 to {MAX_SEED}"),
        ("", ["--split", "nope"], "argument --split: invalid choice: 'nope'"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_nothing_written(tmp_path, capsys, problem, options, message):
    folder = bad_folder(tmp_path, problem)
    out = tmp_path / "out"
    assert data_cli(["lesions", "--images", str(folder), "--out", str(out), "--quiet", *options]) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert message in lines[-1] and "Traceback" not in err, err
    assert len(lines) == 1 or message.startswith("argument --"), err  # argparse shows the usage above its line
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["slices"]


def test_bad_places_are_one_line_exit_2(tmp_path, capsys):
    folder = bad_folder(tmp_path, "")
    (tmp_path / "a_file").write_text("")
    cases = [
        (["--images", str(tmp_path / "missing")], "missing: source folder does not exist"),
        (["--images", str(folder), "--out", str(tmp_path / "a_file" / "out")], "cannot create the output folder"),
        (["--images", str(folder), "--out", str(folder / "out")], "lies inside the input"),
        (["--images", str(DEMO_SRC)], "holds several splits; choose one with --split"),
        (["--images", str(DEMO_SRC), "--split", "test", "--out", str(DEMO_SRC.parent)], "contains the input"),
    ]
    for options, message in cases:
        argv = ["lesions", "--out", str(tmp_path / "out"), "--quiet", *options]
        assert data_cli(argv) == 2, options
        err = capsys.readouterr().err
        assert message in err and err.strip().count("\n") == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "slices"]
    assert sorted(p.name for p in folder.iterdir()) == ["case_007_slice_0.nii.png", "case_007_slice_1.nii.png"]


def test_an_earlier_set_is_replaced_only_with_force(tmp_path, capsys):
    folder = bad_folder(tmp_path, "")
    argv = ["lesions", "--images", str(folder), "--out", str(tmp_path / "out"), "--quiet"]
    assert data_cli(argv) == 0
    assert data_cli(argv + ["--seed", "5"]) == 2
    assert "exists and is not empty (use --force" in capsys.readouterr().err
    assert record_of(tmp_path / "out")["seed"] == 0
    assert data_cli(argv + ["--seed", "5", "--force"]) == 0
    assert record_of(tmp_path / "out")["seed"] == 5


# ---- real OASIS slices ------------------------------------------------------------------------------------------


@pytest.mark.skipif(not OASIS_SRC.is_dir(), reason="OASIS data not found at ../shared/oasis")
def test_one_oasis_subject_gets_lesions_in_half_its_slices(tmp_path):
    validate = OASIS_SRC / "keras_png_slices_validate"
    subject = sorted(validate.glob("case_*_slice_0.nii.png"))[0].name.split("_")[1]
    folder = tmp_path / "slices"
    folder.mkdir()
    for path in validate.glob(f"case_{subject}_slice_*.nii.png"):
        shutil.copy(path, folder)
    record = make_lesion_set(folder, tmp_path / "out", show_progress=False)
    assert record["counts"]["slices"] == 32 and record["counts"]["lesion_slices"] == 16
    assert record["counts"]["cannot_hold_lesion"] == 0  # the OASIS slices are all mid-brain
    for name in record["slices"]:
        image, original = pixels(tmp_path / "out" / "images" / name), pixels(folder / name)
        mask = pixels(tmp_path / "out" / "masks" / name) > 0
        assert not mask.any() or image[mask].max() <= original.max(), name  # not the brightest pixel
