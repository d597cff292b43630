"""The realism test (trainer/stage1/realism.py): chance on one distribution, near 1 on sharp vs blurred, blind to
what only identifies a subject, deterministic, strict about its inputs; and its place in `trainer evaluate` and
`trainer evaluate-prior`. Small images (64x64, classified at 32x32) keep each run to seconds."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from conftest import OASIS_SRC, REPO, make_layout, save_prior, save_vqvae
from trainer.__main__ import main as trainer_cli
from trainer.stage1.evaluate import evaluate
from trainer.stage1.realism import (
    RealismOptions,
    add_realism_arguments,
    assign_folds,
    balanced,
    fine_detail,
    fold_limit,
    realism_options,
    realism_test,
    subject_groups,
)
from trainer.stage2.evaluate import summary_table

SIDE, SIZE = 64, 32


def smooth(n: int, seed: int, cells: int = 8) -> np.ndarray:
    """n random smooth images (n, 64, 64) float32 in [0, 1]: `cells` x `cells` noise, bicubic upsampled."""
    noise = torch.rand(n, 1, cells, cells, generator=torch.Generator().manual_seed(seed))
    return F.interpolate(noise, size=SIDE, mode="bicubic", align_corners=False).clamp(0, 1)[:, 0].numpy()


def blocky(n: int, seed: int) -> np.ndarray:
    """n random images of sharp-edged 8x8-pixel blocks (n, 64, 64) in [0, 1]."""
    noise = torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed))
    return F.interpolate(noise, size=SIDE, mode="nearest")[:, 0].numpy()


def blurred(images: np.ndarray) -> np.ndarray:
    """Each image blurred by a 7x7 box filter (edges replicated)."""
    x = F.pad(torch.from_numpy(images)[:, None], (3, 3, 3, 3), mode="replicate")
    return F.avg_pool2d(x, 7, stride=1)[:, 0].numpy()


def own_groups(n: int, prefix: str) -> list[str]:
    return [f"{prefix}{i}" for i in range(n)]


def test_one_distribution_is_at_chance_and_sharp_against_blurred_near_one():
    images = smooth(96, seed=0)
    alike = realism_test(images[:48], own_groups(48, "a"), images[48:], own_groups(48, "b"), folds=4, size=SIZE)
    assert alike.n_per_side == 48 and alike.folds == 4 and len(alike.fold_accuracies) == 4
    assert abs(alike.accuracy - 0.5) < 0.15, alike
    assert alike.stderr == pytest.approx(np.sqrt(alike.accuracy * (1 - alike.accuracy) / 96))
    assert alike.fold_stderr == pytest.approx(np.std(alike.fold_accuracies, ddof=1) / 2)

    sharp, soft = blocky(48, seed=1), blurred(blocky(48, seed=2))
    apart = realism_test(sharp, own_groups(48, "a"), soft, own_groups(48, "b"), folds=4, size=SIZE)
    assert apart.accuracy > 0.95, apart
    assert apart.frechet > 5 * alike.frechet  # the classifier's features part them too


def test_folds_keep_each_subject_on_one_side_so_a_subject_signature_does_not_count():
    """Both sets come from one distribution, but every group (subject) of 8 images shares a strong signature
    of its own. Split by image, the classifier learns the signatures of the held-out images' groups and scores
    high; split by group, it never meets a held-out group's signature and stays at chance."""
    groups = 16
    signature = np.repeat(smooth(groups, seed=3, cells=16), 8, axis=0)
    images = (0.8 * signature + 0.2 * smooth(groups * 8, seed=4)).astype(np.float32)
    a, b = images[: len(images) // 2], images[len(images) // 2 :]
    ids = [f"subject {i // 8}" for i in range(len(images))]
    grouped = realism_test(a, ids[: len(a)], b, ids[len(a) :], folds=4, size=SIZE)
    by_image = realism_test(a, own_groups(len(a), "a"), b, own_groups(len(b), "b"), folds=4, size=SIZE)
    assert by_image.accuracy > 0.9, by_image
    assert abs(grouped.accuracy - 0.5) < 0.15, grouped


def test_the_same_seed_gives_the_same_numbers_in_this_process_and_another():
    a, b = smooth(40, seed=5), blurred(smooth(40, seed=6))
    first = realism_test(a, own_groups(40, "a"), b, own_groups(40, "b"), folds=2, size=SIZE, seed=7).as_dict()
    second = realism_test(a, own_groups(40, "a"), b, own_groups(40, "b"), folds=2, size=SIZE, seed=7).as_dict()
    other = realism_test(a, own_groups(40, "a"), b, own_groups(40, "b"), folds=2, size=SIZE, seed=8).as_dict()
    script = (
        "import json, sys; sys.path[:0] = ['tests', '.']; import test_realism as t; "
        "r = t.realism_test(t.smooth(40, 5), t.own_groups(40, 'a'), t.blurred(t.smooth(40, 6)), t.own_groups(40, 'b'), "
        "folds=2, size=t.SIZE, seed=7).as_dict(); print(json.dumps(r))"
    )
    run = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, check=True)
    elsewhere = json.loads(run.stdout)
    for result in (first, second, other, elsewhere):
        result.pop("seconds")
    assert first == second == elsewhere
    assert other != first  # the seed is used


def test_the_larger_set_is_cut_to_the_smaller_over_as_many_subjects_as_it_can():
    rng = np.random.default_rng(0)
    groups = np.repeat([f"s{i}" for i in range(10)], 5)
    kept = balanced(groups, 10, rng)
    assert len(kept) == 10 == len(set(groups[kept])) and list(kept) == sorted(kept)
    assert list(balanced(groups, 50, rng)) == list(range(50))
    assert fold_limit(groups, [f"g{i}" for i in range(7)]) == 7
    assert fold_limit(groups, [f"g{i}" for i in range(30)]) == 10


def test_a_subject_lies_in_one_fold_even_when_both_sets_hold_it():
    a_groups = np.array([f"s{i // 4}" for i in range(40)])  # 10 subjects, 4 slices each
    b_groups = np.array([f"s{i // 4}" for i in range(20)] + [f"x{i}" for i in range(20)])  # 5 shared, 20 own
    fold_a, fold_b = assign_folds(a_groups, b_groups, 5, np.random.default_rng(0))
    for subject in set(a_groups) | set(b_groups):
        assert len(set(fold_a[a_groups == subject]) | set(fold_b[b_groups == subject])) == 1
    assert all(4 <= (fold_a == k).sum() <= 12 and 4 <= (fold_b == k).sum() <= 12 for k in range(5))


@pytest.mark.parametrize(
    "a, a_groups, folds, message",
    [
        (np.zeros((0, 64, 64), np.uint8), [], 2, "set a is empty"),
        (np.zeros((8, 64, 64), np.uint8), ["one"] * 8, 2, "folds must be 2 to 1"),
        (np.zeros((8, 64, 64), np.uint8), list("abcd") * 2, 5, "folds must be 2 to 4"),
        (np.zeros((8, 64, 64), np.uint8), list("abcd"), 2, "8 images but 4 group ids"),
        (np.full((8, 64, 64), 1.5, np.float32), list("abcdefgh"), 2, "finite and in [0, 1]"),
        (np.zeros((8, 16, 16), np.uint8), list("abcdefgh"), 2, "smaller than size 32"),
        (np.zeros((8, 64), np.uint8), list("abcdefgh"), 2, "must be (N, H, W)"),
    ],
)
def test_bad_inputs_are_refused_with_a_clear_message(a, a_groups, folds, message):
    b = np.zeros((8, 64, 64), np.uint8)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        realism_test(a, a_groups, b, own_groups(8, "b"), folds=folds, size=SIZE)


def test_subject_groups_follow_the_oasis_names():
    names = ["case_004_slice_3.nii.png", "out/case_4_slice_9.png", "case_012_slice_0", "000.png", "brain.png"]
    groups = subject_groups(names)
    assert groups[0] == groups[1] != groups[2] and len(set(groups)) == 4


# ---- in the commands -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_subject_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Shards whose test split holds 2 subjects (the demo's holds 1, too few for a grouped test)."""
    from data_tools.shard import shard_dataset

    root = tmp_path_factory.mktemp("realism")
    layout = make_layout(root / "src", {"train": ["001", "002", "003"], "validate": ["004"], "test": ["005", "006"]}, 4)
    shard_dataset(layout, root / "shards", samples_per_shard=8, workers=1, show_progress=False)
    return root / "shards"


def check_result(result: dict, n_per_side: int) -> None:
    assert 0 <= result["accuracy"] <= 1 and 0 <= result["stderr"] <= 0.5
    assert result["folds"] == 2 and len(result["fold_accuracies"]) == 2  # 5 asked, 2 subjects a side
    assert all(0 <= value <= 1 for value in result["fold_accuracies"])
    assert result["n_per_side"] == n_per_side and result["frechet"] >= 0


def test_evaluate_reports_the_realism_of_reconstructions_beside_real_against_real(two_subject_shards, tmp_path):
    vqvae = save_vqvae(tmp_path, seed=0)
    summary = evaluate(vqvae, "test", tmp_path / "eval", shards=str(two_subject_shards), show_progress=False)
    realism = summary["realism"]
    assert realism["reference"] == {"split": "train", "subjects": 2, "images": 8}
    assert realism["folds_asked"] == 5 and realism["classifier"]["size"] == 128
    for name in ("reconstructions_vs_train", "real_vs_train"):
        check_result(realism[name], 8)
    assert json.loads((tmp_path / "eval" / "summary.json").read_text())["realism"] == realism

    one = evaluate(vqvae, "validate", tmp_path / "one", shards=str(two_subject_shards), show_progress=False)
    assert "needs 2 in each" in one["realism"]["reconstructions_vs_train"]["skipped"]


def test_the_realism_options_parse_and_bound():
    parser = argparse.ArgumentParser()
    add_realism_arguments(parser, "the test images")
    assert realism_options(parser.parse_args([])) == RealismOptions(5, 0)
    assert realism_options(parser.parse_args(["--realism-folds", "3", "--realism-seed", "9"])) == RealismOptions(3, 9)
    assert realism_options(parser.parse_args(["--no-realism"])) is None
    for bad in (["--realism-folds", "1"], ["--realism-folds", "21"], ["--realism-seed", "-1"]):
        with pytest.raises(SystemExit):
            parser.parse_args(bad)


def test_evaluate_prior_reports_the_realism_of_generated_brains(two_subject_shards, tmp_path, capsys):
    vqvae = save_vqvae(tmp_path, seed=0)
    codes = tmp_path / "codes"
    assert (
        trainer_cli(
            ["encode", "--checkpoint", str(vqvae), "--shards", str(two_subject_shards), "--out", str(codes), "--quiet"]
        )
        == 0
    )
    prior = save_prior(tmp_path, vqvae, num_conditions=0)
    info = json.loads((prior / "prior.json").read_text())
    (prior / "prior.json").write_text(json.dumps({**info, "codes_dir": str(codes)}))
    out = tmp_path / "eval"
    options = ["--n", "6", "--max-pairs", "4", "--realism-folds", "3", "--realism-seed", "2", "--quiet"]
    assert trainer_cli(["evaluate-prior", "--checkpoint", str(prior), "--out", str(out), *options]) == 0
    summary = json.loads((out / "summary.json").read_text())
    realism = summary["realism"]
    assert realism["reference"] == {"split": "train", "subjects": 2, "images": 8}
    assert realism["folds_asked"] == 3 and realism["seed"] == 2
    for name, n_per_side in (("generated_vs_train", 6), ("generated_vs_reconstructions", 6), ("real_vs_train", 8)):
        check_result(realism[name], n_per_side)
    row = [line for line in summary_table(summary).splitlines() if line.startswith("realism vs train, accuracy")]
    expected = f"{realism['generated_vs_train']['accuracy']:.3f}", f"{realism['real_vs_train']['accuracy']:.3f}"
    assert len(row) == 1 and tuple(row[0][26:].split()[:2]) == expected
    assert (
        trainer_cli(
            ["evaluate-prior", "--checkpoint", str(prior), "--out", str(tmp_path / "x"), "--realism-folds", "1"]
        )
        == 2
    )
    assert "--realism-folds" in capsys.readouterr().err


def test_bench_compares_two_folders_or_npz_files_grouped_by_subject(tmp_path, capsys):
    sys.path.insert(0, str(REPO / "bench"))
    from bench_realism import main as bench

    images = (blocky(16, seed=8) * 255).round().astype(np.uint8)
    folder = tmp_path / "pngs"
    folder.mkdir()
    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / f"case_{i // 4:03d}_slice_{i % 4}.nii.png")
    np.savez(tmp_path / "b.npz", images=blurred(blocky(16, seed=9)))
    assert (
        bench(
            [str(folder), str(tmp_path / "b.npz"), "--folds", "2", "--size", "32", "--json", str(tmp_path / "r.json")]
        )
        == 0
    )
    report = json.loads(capsys.readouterr().out)
    assert report == json.loads((tmp_path / "r.json").read_text())
    assert report["groups"] == [4, 16] and report["n_per_side"] == 16 and 0 <= report["accuracy"] <= 1
    assert bench([str(folder), str(tmp_path / "nothing"), "--size", "32"]) == 2
    assert "neither a folder of PNGs nor a .npz file" in capsys.readouterr().err


def oasis_subjects(split: str, count: int, every: int) -> tuple[np.ndarray, list[str]]:
    """Every `every`-th slice (positions 0, every, ...) of the first `count` subjects of a real OASIS split, uint8
    (N, 256, 256), and their groups: many subjects and few slices each, as a set of few subjects is a poor sample
    of subjects (held-out accuracy strays far from 0.5 on two real sets of 4 subjects each)."""
    files = sorted((OASIS_SRC / f"keras_png_slices_{split}").glob("case_*_slice_*.nii.png"))
    subjects = sorted({subject_groups([f.name])[0] for f in files})[:count]
    files = [
        f for f in files if subject_groups([f.name])[0] in subjects and int(f.name.split("_")[3][:-8]) % every == 0
    ]
    return np.stack([np.asarray(Image.open(f)) for f in files]), subject_groups([f.name for f in files])


@pytest.mark.skipif(not OASIS_SRC.is_dir(), reason=f"real OASIS data not found at {OASIS_SRC}")
def test_on_real_oasis_slices_real_against_real_is_at_chance_and_a_slight_blur_is_seen():
    test, test_groups = oasis_subjects("test", 16, every=4)
    train, train_groups = oasis_subjects("train", 16, every=4)
    alike = realism_test(test[::2], test_groups[::2], train[::2], train_groups[::2], folds=4)  # every 8th slice
    assert alike.n_per_side == 64 and abs(alike.accuracy - 0.5) < 0.2, alike
    # a Gaussian blur of sigma 1 pixel at 256x256, before the classifier's own 2x2 averaging: it leaves 0.44 of the
    # fine detail (mean absolute Laplacian inside the brain); VQ-VAE reconstructions at the 32x32 grid keep 0.58
    blur = torch.tensor([np.exp(-(x**2) / 2) for x in (-2, -1, 0, 1, 2)], dtype=torch.float32)
    blur = (blur / blur.sum()).reshape(1, 1, 5)
    x = torch.from_numpy(train).float()[:, None]
    x = F.conv2d(F.pad(x, (2, 2, 0, 0), mode="replicate"), blur[..., None, :])
    x = F.conv2d(F.pad(x, (0, 0, 2, 2), mode="replicate"), blur[..., :, None])
    soft = x[:, 0].round().clamp(0, 255).to(torch.uint8).numpy()
    apart = realism_test(test, test_groups, soft, train_groups, folds=4)  # every 4th: more to learn from
    assert apart.n_per_side == 128 and apart.accuracy > 0.95, apart


def test_fine_detail_is_the_laplacian_inside_the_head_and_blur_lowers_it():
    image = np.full((1, 16, 16), 100, np.uint8)
    image[0, 8, 8] = 200  # centre |4 x 200 - 4 x 100| = 400, its 4 neighbours |400 - 200 - 300| = 100 each
    assert fine_detail(image) == pytest.approx((400 + 4 * 100) / 14**2)
    floats = image.astype(np.float32)[:, None] / 255  # (N, 1, H, W) in [0, 1]
    assert fine_detail(floats) == pytest.approx(fine_detail(image))
    assert fine_detail(np.full((2, 16, 16), 10, np.uint8)) == 0  # nothing above 20: no head
    rng = np.random.default_rng(0)
    sharp = rng.uniform(30, 220, (4, 64, 64))
    blurred = F.avg_pool2d(torch.from_numpy(sharp)[:, None], 3, 1, 1)[:, 0].numpy()
    assert fine_detail(blurred / 255) < 0.5 * fine_detail(sharp / 255)
