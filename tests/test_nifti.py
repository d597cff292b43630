"""NIfTI volumes -> shards (`data_tools shard --nifti`): orientation with known answers (LPS, oblique, anisotropic
voxels), per-volume normalisation, slice choice, subject splits, bad input named with nothing written,
determinism, and shards that `verify` accepts. Small phantoms made here with nibabel: a head-like ellipsoid with
a bright marker at the subject's left, posterior, superior side, sampled on any voxel grid."""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from common.nifti_options import Slicing, cut_volume
from common.nifti_volume import positions, read_volume, square_geometry
from common.shard_format import decode_gray_png, decode_metadata, iter_shard, read_manifest
from data_tools.__main__ import main as cli
from data_tools.nifti_shard import shard_volumes
from data_tools.nifti_sources import assign_splits, find_volumes, split_counts
from data_tools.verify import verify_shards

MARKER = np.array([-15.0, -20.0, 8.0])  # mm: left, posterior, superior of the centre


def anatomy(points: np.ndarray) -> np.ndarray:
    """Intensity at world points (..., 3) in RAS mm: an ellipsoid brightening towards the top, and the marker."""
    x, y, z = points[..., 0], points[..., 1], points[..., 2]
    inside = (x / 30) ** 2 + (y / 38) ** 2 + (z / 26) ** 2 <= 1
    value = np.where(inside, 100 + z, 0.0)
    return np.where(np.linalg.norm(points - MARKER, axis=-1) <= 5, 300.0, value)


def phantom(path: Path, affine: np.ndarray, shape: tuple[int, ...], dtype=np.float32) -> Path:
    index = np.stack(np.meshgrid(*[np.arange(n) for n in shape[:3]], indexing="ij"), axis=-1)
    world = index @ affine[:3, :3].T + affine[:3, 3]
    data = anatomy(world).astype(dtype).reshape(shape)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


def grid(axes: str = "RAS", spacing=(1.0, 1.0, 1.0), rotation_deg: float = 0.0) -> tuple[np.ndarray, tuple]:
    """An affine covering x in [-40, 40], y in [-48, 48], z in [-32, 32] mm with the file's axes in `axes` order."""
    extent = {"R": 40.0, "A": 48.0, "S": 32.0}
    flip = {"L": "R", "P": "A", "I": "S"}
    affine, shape = np.eye(4), []
    for column, code in enumerate(axes):
        positive = flip.get(code, code)
        row, sign, step = "RAS".index(positive), (-1 if code in flip else 1), spacing[column]
        n = int(2 * extent[positive] / step) + 1
        affine[:3, column] = 0
        affine[row, column] = sign * step
        affine[row, 3] = -sign * extent[positive]
        shape.append(n)
    theta = np.radians(rotation_deg)
    rotation = np.eye(4)
    rotation[:2, :2] = [[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]]
    return rotation @ affine, tuple(shape)


def cut(path: Path, **options) -> dict:
    """{canonical index: 256x256 uint8} of every slice of the kept span."""
    volume = cut_volume(path, Slicing(**options))
    return {volume.indices[name]: pixels for name, pixels in volume.slices()}


def test_lps_file_gives_the_same_slices_as_ras(tmp_path):
    ras = cut(phantom(tmp_path / "ras.nii.gz", *grid("RAS")))
    lps = cut(phantom(tmp_path / "lps.nii.gz", *grid("LPS")))
    assert read_volume(tmp_path / "lps.nii.gz").orientation == "LPS"
    assert ras.keys() == lps.keys() and all(np.array_equal(ras[k], lps[k]) for k in ras)


def marker_position(slices: dict[int, np.ndarray]) -> tuple[int, float, float]:
    """(slice index, row, column) of the centre of the brightest pixels."""
    index = max(slices, key=lambda k: int((slices[k] == 255).sum()))
    rows, cols = np.nonzero(slices[index] == 255)
    return index, rows.mean(), cols.mean()


@pytest.mark.parametrize("axes", ["RAS", "LPS", "PIR", "ASL"])
def test_orientation_rule_puts_left_top_posterior_left_and_inferior_first(tmp_path, axes):
    """The known answer: the marker (left, posterior, superior) is in the top half, left half, upper slices."""
    affine, shape = grid(axes)
    slices = cut(phantom(tmp_path / f"{axes}.nii.gz", affine, shape), min_foreground=0.0, percentiles=(0.0, 100.0))
    index, row, col = marker_position(slices)
    assert row < 128 and col < 128
    assert index == pytest.approx(32 + MARKER[2], abs=1)  # canonical z index: 0 is the most inferior (z = -32)


def test_oblique_affine_reorients_to_the_closest_canonical_axes(tmp_path):
    """A scan tilted by 20 degrees stores the same voxels as a straight one: reoriented by axis flips only (no
    resampling), it gives exactly the straight scan's slices."""
    straight = phantom(tmp_path / "straight.nii.gz", *grid("LPS"))
    stored = nib.load(str(straight))
    nib.save(
        nib.Nifti1Image(stored.get_fdata(dtype=np.float32), grid("LPS", rotation_deg=20)[0]), tmp_path / "o.nii.gz"
    )
    volume = read_volume(tmp_path / "o.nii.gz")
    assert volume.orientation == "LPS" and volume.spacing == pytest.approx([1, 1, 1])
    assert np.array_equal(volume.data, read_volume(straight).data)
    assert all(np.array_equal(a, b) for a, b in zip(cut(tmp_path / "o.nii.gz").values(), cut(straight).values()))


def test_anisotropic_voxels_keep_the_aspect(tmp_path):
    """A 2 mm x 1 mm in-plane grid: the ellipsoid's 60 x 76 mm cross-section keeps its 60:76 shape in pixels."""
    affine, shape = grid("RAS", spacing=(2.0, 1.0, 3.0))
    slices = cut(phantom(tmp_path / "aniso.nii.gz", affine, shape), min_foreground=0.0)
    assert read_volume(tmp_path / "aniso.nii.gz").spacing == pytest.approx([2, 1, 3])
    middle = slices[min(slices, key=lambda k: abs(k * 3 - 32))]
    rows, cols = np.nonzero(middle > 0)
    height, width = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
    assert height / width == pytest.approx(60 / 76, abs=0.03)
    placed = [square_geometry(shape, spacing) for shape, spacing in (((41, 97), (2.0, 1.0)), ((82, 97), (1.0, 1.0)))]
    assert [(g.height, g.width, g.top, g.left) for g in placed] == [(216, 256, 20, 0)] * 2


def test_intensities_are_normalised_per_volume_not_per_slice(tmp_path):
    slices = cut(phantom(tmp_path / "v.nii.gz", *grid("RAS")), min_foreground=0.3)
    low, high = min(slices), max(slices)
    brain = [slices[k][slices[k] > 0].mean() for k in (low, high)]
    assert brain[0] < brain[1] - 20  # the phantom brightens upwards; per-slice scaling would erase that


def test_slice_choice_and_positions(tmp_path):
    assert positions(10, 74, 32) == [(10 + 2 * i + 1, i) for i in range(32)]
    assert [n for _, n in positions(0, 8, 32)] == [2, 6, 10, 14, 18, 22, 26, 30]
    assert positions(3, 6, 0) == [(3, 3), (4, 4), (5, 5)]
    path = phantom(tmp_path / "v.nii.gz", *grid("RAS"))
    wide, narrow = cut(path, min_foreground=0.1), cut(path, min_foreground=0.8)
    assert set(narrow) < set(wide)
    assert sorted(cut(path, slices=(5, 9))) == [5, 6, 7, 8]


def test_splits_are_by_subject_seeded_and_respect_a_split_column(tmp_path):
    for i in range(10):
        phantom(tmp_path / "data" / f"sub-{i:02d}" / "anat" / f"sub-{i:02d}_T1w.nii.gz", *grid("RAS", (4, 4, 4)))
    sources = find_volumes(str(tmp_path / "data"))
    assert [s.subject for s in sources] == [f"{i:02d}" for i in range(10)]
    first, again = assign_splits(sources, (0.8, 0.1, 0.1), 0), assign_splits(sources, (0.8, 0.1, 0.1), 0)
    assert first == again and [len(first[s]) for s in ("train", "validate", "test")] == [8, 1, 1]
    assert assign_splits(sources, (0.8, 0.1, 0.1), 1) != first
    assert split_counts(3, (0.8, 0.1, 0.1)) == [1, 1, 1] and split_counts(2, (1, 0, 0)) == [2, 0, 0]
    table = tmp_path / "list.csv"
    rows = [
        f"data/sub-0{i}/anat/sub-0{i}_T1w.nii.gz,{subject},{split}"
        for i, subject, split in ((0, "a", "test"), (1, "b", ""))
    ]
    table.write_text("\n".join(["path,subject,split", *rows]) + "\n")
    by_split = assign_splits(find_volumes(str(table)), (1, 0, 0), 0)
    assert {split: [s.subject for s in v] for split, v in by_split.items()} == {"train": ["b"], "test": ["a"]}


def tree_digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.fixture
def volume_folder(tmp_path) -> Path:
    for i, axes in enumerate(["RAS", "LPS", "LAS", "RAS"]):
        phantom(tmp_path / "scans" / f"subj{i}.nii.gz", *grid(axes, (2, 2, 2)))
    return tmp_path / "scans"


def test_a_folder_becomes_shards_that_verify_accepts_byte_identical_twice(volume_folder, tmp_path):
    out = tmp_path / "shards"
    assert cli(["shard", "--nifti", str(volume_folder), "--out", str(out), "--workers", "2", "--quiet"]) == 0
    assert verify_shards(out, show_progress=False) == []
    assert cli(["verify", str(out), "--quiet"]) == 0
    manifest = read_manifest(out)
    volumes = manifest["nifti"]["volumes"]
    assert sum(e["num_samples"] for e in manifest["splits"].values()) == sum(len(v["slices"]) for v in volumes) > 4 * 10
    volume = volumes[0]
    assert {"source", "affine", "spacing", "orientation", "normalisation", "slices"} <= set(volume)
    sample = next(iter_shard(out / manifest["splits"]["train"]["shards"][0]["name"]))
    meta = decode_metadata(sample["json"])
    assert sample["__key__"] == f"case_{meta['subject']}_slice_{meta['slice']}"
    assert decode_gray_png(sample["png"]).shape == (256, 256)
    assert {"slice_index", "source_slice_index", "affine", "spacing", "orientation", "normalisation"} <= set(meta)
    shard_volumes(str(volume_folder), tmp_path / "again", workers=1, show_progress=False)
    assert tree_digest(out) == tree_digest(tmp_path / "again")


def test_labels_become_masks_with_nearest_neighbour(tmp_path):
    affine, shape = grid("LPS", (2, 2, 2))
    image = phantom(tmp_path / "img.nii.gz", affine, shape)
    labels = (nib.load(str(image)).get_fdata() > 150).astype(np.uint8) * 3
    nib.save(nib.Nifti1Image(labels, affine), str(tmp_path / "seg.nii.gz"))
    (tmp_path / "list.csv").write_text("path,labels\nimg.nii.gz,seg.nii.gz\n")
    out = tmp_path / "shards"
    shard_volumes(str(tmp_path / "list.csv"), out, count=0, show_progress=False)
    assert verify_shards(out, show_progress=False) == []
    assert len(read_manifest(out)["splits"]["train"]["shards"]) == 1  # --positions 0: shards filled to 256
    masks = [decode_gray_png(s["seg.png"]) for s in iter_shard(out / "train-000000.tar")]
    assert set(np.unique(np.stack(masks))) == {0, 3} and read_manifest(out)["entries"] == ["png", "json", "seg.png"]


def write_bad(folder: Path, name: str, kind: str) -> Path:
    path = folder / name
    good = np.ones((10, 10, 10), np.float32)
    if kind == "text":
        path.write_bytes(b"not a volume at all")
    elif kind == "truncated":
        nib.save(nib.Nifti1Image(np.random.default_rng(0).random((30, 30, 30)).astype(np.float32), np.eye(4)), path)
        path.write_bytes(path.read_bytes()[:2000])
    elif kind == "gzip text":
        path.write_bytes(gzip.compress(b"hello" * 200))
    else:
        data = {"2d": good[:, :, 0], "4d": np.ones((10, 10, 10, 3), np.float32), "nan": good * np.nan}
        nib.save(nib.Nifti1Image(data.get(kind, good * 0), np.eye(4)), path)
    return path


BAD = [
    ("a.nii.gz", "text", "not a NIfTI file"),
    ("b.nii.gz", "truncated", "truncated or corrupt"),
    ("c.nii.gz", "gzip text", "not a NIfTI file"),
    ("d.nii", "2d", "2D image"),
    ("e.nii.gz", "4d", "4D image of shape (10, 10, 10, 3)"),
    ("f.nii.gz", "nan", "NaN"),
    ("g.nii.gz", "zero", "all-zero volume"),
]


def test_every_bad_volume_is_named_at_once_and_nothing_is_written(volume_folder, tmp_path, capsys):
    for name, kind, _ in BAD:
        write_bad(volume_folder, name, kind)
    out = tmp_path / "shards"
    assert cli(["shard", "--nifti", str(volume_folder), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "7 bad file(s)" in err
    for name, _, message in BAD:
        line = next(line for line in err.splitlines() if f"{volume_folder / name}:" in line)
        assert message in line, line
    assert not out.exists() and not list(tmp_path.glob(".shards*"))


def test_a_4d_file_with_one_volume_is_squeezed_and_said(tmp_path, capsys):
    affine, shape = grid("RAS", (2, 2, 2))
    phantom(tmp_path / "in" / "one.nii.gz", affine, (*shape, 1))
    assert cli(["shard", "--nifti", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--quiet"]) == 0
    assert "one.nii.gz is 4D with one volume; read as 3D" in capsys.readouterr().out
    assert read_manifest(tmp_path / "out")["nifti"]["volumes"][0]["squeezed_4d"] is True


def table_case(tmp_path: Path, rows: str, labels: dict[str, tuple]) -> Path:
    affine, shape = grid("RAS", (2, 2, 2))
    phantom(tmp_path / "scans" / "a.nii.gz", affine, shape)
    phantom(tmp_path / "outside" / "b.nii.gz", affine, shape)  # outside the CSV's folder: fine
    for name, (label_affine, label_shape) in labels.items():
        nib.save(nib.Nifti1Image(np.zeros(label_shape, np.uint8), label_affine), str(tmp_path / "scans" / name))
    (tmp_path / "scans" / "list.csv").write_text(rows)
    return tmp_path / "scans" / "list.csv"


@pytest.mark.parametrize(
    "rows, labels, message",
    [
        (
            "path,subject,split\na.nii.gz,s1,train\n../outside/b.nii.gz,s1,test\n",
            {},
            "subject s1 is in 'train' and 'test'",
        ),
        ("path\na.nii.gz\nmissing.nii.gz\n", {}, "missing.nii.gz: does not exist"),
        ("path,split\na.nii.gz,training\n", {}, "split 'training' is not one of"),
        ("path,labels\na.nii.gz,l.nii.gz\n", {"l.nii.gz": (np.eye(4), (5, 5, 5))}, "label shape (5, 5, 5) differs"),
        (
            "path,labels\na.nii.gz,l.nii.gz\n",
            {"l.nii.gz": (np.diag([2, 2, 2, 1]), (41, 49, 33))},
            "label affine differs",
        ),
    ],
)
def test_bad_tables_are_named_and_nothing_is_written(tmp_path, capsys, rows, labels, message):
    table = table_case(tmp_path, rows, labels)
    out = tmp_path / "shards"
    assert cli(["shard", "--nifti", str(table), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not out.exists()


def test_a_table_may_point_outside_its_folder(tmp_path):
    table = table_case(tmp_path, "path,subject\na.nii.gz,1\n../outside/b.nii.gz,2\n", {})
    manifest = shard_volumes(str(table), tmp_path / "shards", ratios=(1, 0, 0), show_progress=False)
    assert manifest["splits"]["train"]["subjects"] == ["1", "2"]
    sources = [v["source"] for v in manifest["nifti"]["volumes"]]
    assert sources[0] == "a.nii.gz" and sources[1].endswith("outside/b.nii.gz")
    assert json.loads((tmp_path / "shards" / "manifest.json").read_text())["nifti"]["options"]["positions"] == 32


@pytest.mark.parametrize(
    "axis, marker_index, row_col", [("sagittal", 40 - 15, (48 - 20, 32 + 8)), ("coronal", 48 - 20, (40 - 15, 32 + 8))]
)
def test_other_axes_take_the_remaining_canonical_axes_as_rows_and_columns(tmp_path, axis, marker_index, row_col):
    """Sagittal: rows posterior -> anterior, columns inferior -> superior; coronal: rows left -> right, columns
    inferior -> superior; the marker lands where those rules put it (in mm on the 1 mm grid, before resizing)."""
    path = phantom(tmp_path / "v.nii.gz", *grid("LPS"))
    volume = cut_volume(path, Slicing(axis=axis, min_foreground=0.0, percentiles=(0.0, 100.0)))
    slices = {volume.indices[name]: pixels for name, pixels in volume.slices()}
    index, row, col = marker_position(slices)
    assert index == pytest.approx(marker_index, abs=1)
    raw_shape = {"sagittal": (97, 65), "coronal": (81, 65)}[axis]
    geometry = square_geometry(raw_shape, (1.0, 1.0))
    scale = geometry.height / raw_shape[0]
    assert row == pytest.approx(geometry.top + (row_col[0] + 0.5) * scale, abs=3)
    assert col == pytest.approx(geometry.left + (row_col[1] + 0.5) * scale, abs=3)


@pytest.mark.parametrize(
    "option, message",
    [
        (["--positions", str(10**12)], "argument --positions: must be an integer from 0 to 4096"),
        (["--positions", "-1"], "argument --positions: must be an integer from 0 to 4096"),
        (["--seed", str(2**32)], "argument --seed: must be an integer from 0 to 4294967295"),
    ],
)
def test_a_number_past_its_bound_is_refused_before_any_work(tmp_path, capsys, option, message):
    """--positions 10**12 used to plan 10**12 samples per shard set and hang; every number has a bound."""
    src = tmp_path / "scans"
    src.mkdir()
    phantom(src / "sub-01_T1w.nii.gz", np.eye(4), (24, 28, 20))
    assert cli(["shard", "--nifti", str(src), "--out", str(tmp_path / "out"), "--quiet", *option]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
