"""Config loading: every malformed file or `--set` is a ConfigError naming the file or the option."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import REPO
from trainer.run.config_file import ConfigError, load_config
from trainer.stage1.config import VQVAEConfig
from trainer.stage2.config import PriorConfig

DEMO_CONFIG = REPO / "configs" / "vqvae_demo_cpu.yaml"


@pytest.mark.parametrize(
    "text, problem",
    [
        ("train:\n  lr: [1, 2\n", "not valid YAML"),
        ("train:\n\tlr: 1\n", "not valid YAML"),
        ("seed: 1\nseed: 2\n", "key 'seed' appears twice"),
        ("train: {lr: 1, lr: 2}\n", "key 'lr' appears twice"),
    ],
)
def test_malformed_config_file_is_named(text: str, problem: str, tmp_path: Path):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=str(path)) as err:
        load_config(path, cls=VQVAEConfig)
    assert problem in str(err.value) and "\n" not in str(err.value)


def test_config_file_that_is_not_utf8_is_named(tmp_path: Path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("out_dir: runs/caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=f"{path}: not valid UTF-8"):
        load_config(path, cls=VQVAEConfig)


def test_config_path_that_is_a_folder_is_named(tmp_path: Path):
    with pytest.raises(ConfigError, match=f"{tmp_path}: config file not found"):
        load_config(tmp_path, cls=VQVAEConfig)


@pytest.mark.parametrize(
    "override, problem",
    [
        ("train.lr=[1,", "--set 'train.lr=[1,': value is not valid YAML"),
        ("train.lr.x=1", "--set 'train.lr.x=1': train.lr is a value, not a section"),
        ("seed.x=1", "--set 'seed.x=1': seed is a value, not a section"),
        ("train..lr=1", "--set 'train..lr=1': empty key"),
        ("=1", "--set '=1': empty key"),
        ("train.lr", "--set 'train.lr': expected section.key=value"),
    ],
)
def test_malformed_override_names_the_option(override: str, problem: str):
    with pytest.raises(ConfigError) as err:
        load_config(DEMO_CONFIG, [override], cls=VQVAEConfig)
    assert problem in str(err.value) and "\n" not in str(err.value), str(err.value)


def test_override_on_a_null_section_fills_it(tmp_path: Path):
    path = tmp_path / "prior.yaml"
    path.write_text("codes:\n")
    assert load_config(path, ["codes.batch_size=3"], cls=PriorConfig).codes.batch_size == 3


def test_overrides_still_work():
    config = load_config(DEMO_CONFIG, ["train.lr=1e-3", "seed=7", "data.shards=runs/x"], cls=VQVAEConfig)
    assert (config.train.lr, config.seed, config.data.shards) == (1e-3, 7, "runs/x")


@pytest.mark.parametrize(
    "override, problem",
    [
        ("model.kind=pixelsnail", "model.kind: must be one of pixelcnn, transformer"),
        ("model.transformer.heads=3", "model.transformer.heads: must divide width"),
        ("model.transformer.kv_heads=3", "model.transformer.kv_heads: must divide heads"),
        ("model.transformer.layers=0", "model.transformer.layers: must be >= 1"),
        ("model.transformer.dropout=1", "model.transformer.dropout: must be in [0, 1)"),
        ("model.transformer.depth=4", "model.transformer.depth: unknown key"),
    ],
)
def test_bad_prior_kind_or_transformer_value_is_named(override: str, problem: str):
    with pytest.raises(ConfigError) as err:
        load_config(REPO / "configs" / "prior_demo_cpu.yaml", [override], cls=PriorConfig)
    assert problem in str(err.value) and "\n" not in str(err.value), str(err.value)


def test_prior_kind_defaults_to_pixelcnn_and_every_prior_config_loads():
    assert load_config(REPO / "configs" / "prior_demo_cpu.yaml", cls=PriorConfig).model.kind == "pixelcnn"
    kinds = {path.name: load_config(path, cls=PriorConfig).model.kind for path in REPO.glob("configs/prior_*.yaml")}
    assert set(kinds.values()) <= {"pixelcnn", "transformer"} and kinds
