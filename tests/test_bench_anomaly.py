"""bench/bench_anomaly.py on maps.npz files made here (as `trainer anomaly` will write them): a perfect map scores
1, a constant one the prevalence, the test Dice uses the validation threshold, and maps of other slices are
refused."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from common.detection_metrics import dice_at
from common.png_header import read_slice
from conftest import DEMO_SRC, REPO
from data_tools.lesions import make_lesion_set

sys.path.insert(0, str(REPO / "bench"))
import bench_anomaly  # noqa: E402
from bench_anomaly import METHODS, LabelledRun, evaluate, main  # noqa: E402


@pytest.fixture(scope="module")
def lesion_sets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two lesion sets of 8 demo slices each, as from the validate and test splits."""
    sets = {}
    for split, subject in (("validate", "902"), ("test", "904")):
        folder = tmp_path_factory.mktemp(split) / "slices"
        folder.mkdir()
        for n in range(8, 16):
            shutil.copy(DEMO_SRC / f"keras_png_slices_{split}" / f"case_{subject}_slice_{n}.nii.png", folder)
        sets[split] = folder.parent / "lesions"
        make_lesion_set(folder, sets[split], seed=0, show_progress=False)
    return sets


def stack(folder: Path, names: list[str]) -> np.ndarray:
    return np.stack([read_slice(folder / name, name, 256) for name in names])


def fabricate(lesion_set: Path, run: Path, anomaly, scan_shift: float = 0.0) -> Path:
    """A maps.npz as `trainer anomaly` writes it: `anomaly(masks)` is the map, the reconstruction is perfect."""
    names = sorted(p.name for p in (lesion_set / "images").iterdir())
    scan = stack(lesion_set / "images", names).astype(np.float32) / 255 + scan_shift
    masks = stack(lesion_set / "masks", names) > 0
    maps = anomaly(masks).astype(np.float32)
    run.mkdir(parents=True)
    np.savez(
        run / "maps.npz",
        names=np.array(names),
        scan=scan,
        recon=scan,
        healed=scan,
        anomaly=maps,
        nll=np.zeros((len(names), 32, 32), np.float32),
        resample_mask=np.zeros((len(names), 32, 32), bool),
        score=maps.max(axis=(1, 2)),
    )
    return run


def test_a_perfect_map_scores_one_and_test_dice_uses_the_validation_threshold(lesion_sets, tmp_path):
    lesions = lesion_sets["validate"]
    validate = LabelledRun(lesions, fabricate(lesions, tmp_path / "v", lambda m: 0.5 * m))

    def test_map(masks: np.ndarray) -> np.ndarray:  # lesions of the first 4 slices at 0.6, the others at 0.4
        return np.where(np.arange(len(masks))[:, None, None] < 4, 0.6, 0.4) * masks

    test = LabelledRun(lesion_sets["test"], fabricate(lesion_sets["test"], tmp_path / "t", test_map))
    results = evaluate(validate, test)
    prior = results["prior anomaly map"]
    assert prior["validate"]["best_dice_threshold"] == 0.5
    for split in ("validate", "test"):
        for metric in ("slice_auroc", "slice_auroc_own_score", "pixel_auprc", "best_dice"):
            assert prior[split][metric] == 1.0, (split, metric)
    high = test.masks[:4].sum()  # the lesion pixels the validation threshold 0.5 marks
    expected = 2 * high / (high + test.masks.sum())
    assert 0 < expected < 1 and prior["test"]["dice_at_validation_threshold"] == pytest.approx(expected)
    head_map = test_map(test.masks)[test.heads]
    assert prior["test"]["dice_at_validation_threshold"] == dice_at(head_map, test.masks[test.heads], 0.5)


def test_a_constant_map_scores_the_prevalence(lesion_sets, tmp_path):
    """The residual of a perfect reconstruction is 0 everywhere: one threshold marks every head pixel."""
    runs = {s: LabelledRun(lesion_sets[s], fabricate(lesion_sets[s], tmp_path / s, lambda m: m)) for s in lesion_sets}
    residual = evaluate(runs["validate"], runs["test"])["VQ-VAE residual"]["test"]
    test = runs["test"]
    positives, head_pixels = test.masks.sum(), test.heads.sum()
    assert residual["slice_auroc"] == 0.5
    assert residual["pixel_auprc"] == pytest.approx(positives / head_pixels)
    assert residual["best_dice"] == pytest.approx(2 * positives / (head_pixels + positives))
    assert residual["dice_at_validation_threshold"] == pytest.approx(residual["best_dice"])


def test_maps_of_other_slices_or_other_scans_are_refused(lesion_sets, tmp_path):
    other = fabricate(lesion_sets["test"], tmp_path / "other", lambda m: m)
    with pytest.raises(SystemExit, match="its slices are not those of"):
        LabelledRun(lesion_sets["validate"], other)
    shifted = fabricate(lesion_sets["test"], tmp_path / "shifted", lambda m: m, scan_shift=0.1)
    with pytest.raises(SystemExit, match="its scans differ from the images of"):
        LabelledRun(lesion_sets["test"], shifted)


def test_main_prints_a_table_and_writes_json(lesion_sets, tmp_path, capsys):
    runs = {s: fabricate(lesion_sets[s], tmp_path / s, lambda m: 0.5 * m) for s in lesion_sets}
    argv = ["--validate", str(lesion_sets["validate"]), str(runs["validate"])]
    main([*argv, "--test", str(lesion_sets["test"]), str(runs["test"]), "--json", str(tmp_path / "out.json")])
    table = capsys.readouterr().out
    assert all(f"| {name} |" in table for name in METHODS) and "| prior anomaly map | 1.000 | 1.000 |" in table
    rows = [line for line in table.splitlines() if line.startswith("|")]
    assert len(rows) == 2 + len(METHODS) and all(row.count("|") == 7 for row in rows)  # no "|" inside a cell
    written = json.loads((tmp_path / "out.json").read_text())
    assert set(written["results"]) == set(METHODS) and written["top_share"] == 0.01
    assert written["sets"]["test"] == [str(lesion_sets["test"]), str(runs["test"])]


def test_with_a_checkpoint_it_runs_the_anomaly_command_on_each_set(lesion_sets, tmp_path, monkeypatch, capsys):
    commands = []

    def fake_run(command, cwd, check):  # what `python -m trainer anomaly` would write
        commands.append(command)
        images, out = Path(command[command.index("--images") + 1]), Path(command[command.index("--out") + 1])
        fabricate(images.parent, out, lambda m: m)

    monkeypatch.setattr(bench_anomaly.subprocess, "run", fake_run)
    prior = tmp_path / "prior"
    sets = ["--validate", str(lesion_sets["validate"]), "--test", str(lesion_sets["test"])]
    main([*sets, "--checkpoint", str(prior), "--runs", str(tmp_path / "runs")])
    assert [c[1:5] for c in commands] == [["-m", "trainer", "anomaly", "--checkpoint"]] * 2
    assert [c[-1] for c in commands] == [str(tmp_path / "runs" / s) for s in ("validate", "test")]
    assert "| prior anomaly map |" in capsys.readouterr().out
