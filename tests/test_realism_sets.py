"""bench/realism_sets.py on the demo shards: the sets docs/benchmarks.md's realism comparisons read."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import REPO, save_vqvae
from trainer.stage1.data import read_split
from trainer.stage1.load import load_vqvae

sys.path.insert(0, str(REPO / "bench"))
from realism_sets import main  # noqa: E402


def test_sets_hold_the_reference_the_split_and_its_reconstructions(demo_shards: Path, tmp_path: Path) -> None:
    checkpoint = save_vqvae(tmp_path, seed=0, visible=True)
    out = tmp_path / "sets"
    argv = ["--shards", str(demo_shards), "--checkpoint", str(checkpoint), "--out", str(out), "--subjects", "1"]
    assert main(argv) == 0
    train, test, recon = (np.load(out / f"{name}.npz") for name in ("real_train", "real_test", "recon_test"))
    assert len(set(train["keys"])) == 1 and str(train["keys"][0]).startswith("case_")
    pixels, subjects = read_split(demo_shards, "test")
    assert np.array_equal(test["images"], pixels[:, 0].numpy())
    assert list(test["keys"]) == [f"case_{s}" for s in subjects] == list(recon["keys"])
    model = load_vqvae(checkpoint)[0].eval()
    with torch.no_grad():
        expected = model(pixels.float() / 255)[0][:, 0].clamp(0, 1).mul(255).round().to(torch.uint8).numpy()
    assert recon["images"].dtype == np.uint8 and np.array_equal(recon["images"], expected)
    assert not np.array_equal(recon["images"], test["images"])


def test_too_many_subjects_is_one_line_and_writes_nothing(
    demo_shards: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "sets"
    assert main(["--shards", str(demo_shards), "--out", str(out), "--subjects", "1000"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--subjects 1000, but the train split has" in err and "\n" not in err
    assert not out.exists()


@pytest.mark.parametrize("argv", [["--subjects", "0"], ["--split", "train"]])
def test_bad_options_exit_2(argv: list[str], tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--shards", str(tmp_path), "--out", str(tmp_path / "o"), *argv])
    assert exit_info.value.code == 2


def test_an_unwritable_out_is_one_line(demo_shards: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("mine")
    assert main(["--shards", str(demo_shards), "--out", str(blocker / "sets"), "--subjects", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert str(blocker) in err and "\n" not in err and blocker.read_text() == "mine"
