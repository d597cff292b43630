"""Two old quirks, through the commands: `export reconstruct` refuses a JPEG named .png
(common/png_header.check_png_signature) and `shard --max-shard-mb` is a hard cap (data_tools/shard_sizes.py
counts a shard's bytes as tar writes them). The pure functions are tested in tests/test_edges.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from conftest import DEMO_SRC, save_prior, save_vqvae
from data_tools.__main__ import main as data_cli
from export.__main__ import main as export_cli


@pytest.fixture(scope="module")
def onnx_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pending")
    prior = save_prior(root, save_vqvae(root, seed=0), num_conditions=0)
    assert export_cli(["onnx", "--checkpoint", str(prior), "--out", str(root / "onnx")]) == 0
    return root / "onnx"


def test_reconstruct_refuses_a_jpeg_named_png(onnx_dir, tmp_path, capsys):
    fake = tmp_path / "case_001_slice_0.nii.png"
    with Image.open(sorted((DEMO_SRC / "keras_png_slices_test").glob("*.png"))[0]) as img:
        img.save(fake, format="JPEG")
    argv = ["reconstruct", "--model-dir", str(onnx_dir), "--out", str(tmp_path / "r"), str(fake), "--quiet"]
    assert export_cli(argv) == 2
    err = capsys.readouterr().err
    assert f"{fake}: a JPEG image, not a PNG" in err and "Traceback" not in err, err
    assert not (tmp_path / "r").exists()


def test_max_shard_mb_is_a_hard_cap(tmp_path):
    out = tmp_path / "shards"
    argv = ["shard", "--src", str(DEMO_SRC), "--out", str(out), "--splits", "train", "--quiet"]
    assert data_cli([*argv, "--samples-per-shard", "1000", "--max-shard-mb", "1"]) == 0
    sizes = {shard.name: shard.stat().st_size for shard in out.glob("*.tar")}
    assert len(sizes) >= 2 and max(sizes.values()) <= 2**20, sizes
