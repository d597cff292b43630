"""Issue 21, class 7: a run resumed with another architecture says which config keys differ (and never calls a
valid checkpoint broken); `launch.sh all` checks its folders before any work; the paths a prior records
resolve from any folder."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import yaml

from conftest import DEMO_CONFIG, REPO, save_vqvae, tiny
from export.__main__ import main as export_cli
from trainer.__main__ import main as trainer_cli
from trainer.run.checkpoint import list_checkpoints, load_weights

PRIOR_CONFIG = REPO / "configs" / "prior_demo_cpu.yaml"


def train_vqvae_cli(demo_shards: Path, out: Path, *extra: str) -> int:
    overrides = tiny(demo_shards, out, "train.eval_every=100", "train.checkpoint_every=2", *extra)
    return trainer_cli(
        ["vqvae", "--config", str(DEMO_CONFIG), "--quiet", "--resume", *[a for o in overrides for a in ("--set", o)]]
    )


def test_resume_with_another_architecture_names_the_keys_and_keeps_the_checkpoints(demo_shards, tmp_path, capsys):
    out = tmp_path / "run"
    assert train_vqvae_cli(demo_shards, out, "train.max_steps=4") == 0
    saved = list_checkpoints(out / "checkpoints")
    weights = {path: load_weights(path) for path in saved}
    capsys.readouterr()
    assert train_vqvae_cli(demo_shards, out, "train.max_steps=6", "model.channels=24", "quantizer.num_codes=16") == 2
    captured = capsys.readouterr()
    err, said = captured.err, captured.out
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert str(saved[-1] / "config.yaml") in err
    assert "model.channels (16 in the checkpoint, 24 now)" in err and "quantizer.num_codes" in err
    assert "broken" not in err + said and "cannot resume" not in said and "no checkpoint loads" not in err
    assert list_checkpoints(out / "checkpoints") == saved
    assert all(load_weights(p).keys() == w.keys() for p, w in weights.items())
    # the same architecture with more steps still resumes, naming the training keys that changed
    assert train_vqvae_cli(demo_shards, out, "train.max_steps=6") == 0
    said = capsys.readouterr().out
    assert "resuming from" in said and "train.max_steps (4 in the checkpoint, 6 now)" in said


def write_config(source: Path, path: Path, **values: str) -> Path:
    config = yaml.safe_load(source.read_text())
    for key, value in values.items():
        section, _, name = key.rpartition("__")
        (config[section] if section else config)[name] = value
    path.write_text(yaml.safe_dump(config))
    return path


def launch_all(vqvae_config: Path, prior_config: Path, cwd: Path) -> subprocess.CompletedProcess:
    """launch.sh's `all` with the stages replaced by stubs that say they ran: the check must come before them."""
    script = (
        'source "$1" && stage1() { echo STAGE1-RAN; } && stage2() { echo STAGE2-RAN; } && '
        'python() { if [[ "$*" == "-m trainer encode"* ]]; then echo ENCODE-RAN; else command python "$@"; fi; } && '
        'all "$2" "$3"'
    )
    return subprocess.run(
        ["bash", "-c", script, "_", str(REPO / "launch.sh"), str(vqvae_config), str(prior_config)],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def test_launch_all_refuses_colliding_folders_before_any_work(tmp_path):
    vq = write_config(DEMO_CONFIG, tmp_path / "vq.yaml", out_dir=str(tmp_path / "runs" / "vq"))
    cases = {
        "out_dir": (str(tmp_path / "runs" / "vq"), str(tmp_path / "codes")),
        "codes.dir": (str(tmp_path / "runs" / "prior"), str(tmp_path / "runs" / "vq")),
        "codes.dir ": (str(tmp_path / "runs" / "prior"), str(tmp_path / "runs" / "prior")),
    }
    for key, (prior_out, codes) in cases.items():
        prior = write_config(PRIOR_CONFIG, tmp_path / "prior.yaml", out_dir=prior_out, codes__dir=codes)
        result = launch_all(vq, prior, tmp_path)
        assert result.returncode == 2, (key, result.stdout, result.stderr)
        assert "RAN" not in result.stdout, key
        assert result.stderr.startswith("error: ") and len(result.stderr.splitlines()) == 1, result.stderr
        assert f"{prior}: {key.strip()}" in result.stderr, result.stderr
    # folders that do not collide (codes inside the VQ-VAE's run folder, as the README does): every step runs
    prior = write_config(
        PRIOR_CONFIG,
        tmp_path / "prior.yaml",
        out_dir=str(tmp_path / "runs" / "prior"),
        codes__dir=str(tmp_path / "runs" / "vq" / "codes"),
    )
    result = launch_all(vq, prior, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["STAGE1-RAN", "ENCODE-RAN", "STAGE2-RAN"]


def test_prior_json_records_absolute_paths_that_work_from_another_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    vqvae = save_vqvae(tmp_path, seed=0).relative_to(tmp_path)  # a checkpoint folder, named relative to the cwd
    from conftest import DEMO_SRC
    from data_tools.shard import shard_dataset

    shard_dataset(DEMO_SRC, Path("shards"), samples_per_shard=32, workers=1, show_progress=False)
    assert trainer_cli(["encode", "--checkpoint", str(vqvae), "--shards", "shards", "--out", "codes", "--quiet"]) == 0
    meta = json.loads(Path("codes/codes.json").read_text())
    assert meta["vqvae_checkpoint"] == str(tmp_path / vqvae) and meta["shards"] == str(tmp_path / "shards")
    overrides = [
        "codes.dir=codes",
        "out_dir=prior",
        "codes.batch_size=8",
        "model.channels=8",
        "model.layers=2",
        "model.first_kernel=3",
        "model.head_channels=16",
        "train.max_steps=2",
        "train.warmup_steps=1",
        "train.log_every=1",
        "train.checkpoint_every=2",
        "wandb.enabled=false",
        "sample_count=1",
    ]
    assert (
        trainer_cli(["prior", "--config", str(PRIOR_CONFIG), "--quiet", *[a for o in overrides for a in ("--set", o)]])
        == 0
    )
    info = json.loads((list_checkpoints(tmp_path / "prior" / "checkpoints")[-1] / "prior.json").read_text())
    assert info["vqvae_checkpoint"] == str(tmp_path / vqvae) and info["codes_dir"] == str(tmp_path / "codes")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    capsys.readouterr()
    prior = str(tmp_path / "prior")
    assert trainer_cli(["sample", "--checkpoint", prior, "--n", "1", "--out", "s", "--quiet"]) == 0, capsys.readouterr()
    assert (elsewhere / "s" / "samples.npz").is_file()
    assert export_cli(["onnx", "--checkpoint", "../prior", "--out", "onnx"]) == 0
    source = json.loads((elsewhere / "onnx" / "model.json").read_text())["source"]
    assert source["prior_checkpoint"].startswith(str(tmp_path / "prior" / "checkpoints"))
    assert source["vqvae_checkpoint"] == str(tmp_path / vqvae)
