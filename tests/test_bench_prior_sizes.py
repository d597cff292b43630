"""bench/bench_prior_sizes.py on a shrunken copy of the CPU transformer config: the config's own size is the
reference (ratio 1, the whole budget), every other size gets the budget scaled by its measured cost, and bad
input is exit 2 with one line."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from conftest import REPO

sys.path.insert(0, str(REPO / "bench"))
from bench_prior_sizes import main  # noqa: E402

CONFIG = REPO / "configs" / "prior_oasis_32_transformer_cpu.yaml"


@pytest.fixture(autouse=True)
def keep_torch_threads():
    """main() sets torch to one thread for the whole process, as a benchmark should; later tests must not inherit
    it (a different thread count changes float sums, and tests compare numbers with a subprocess)."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def small_config(tmp_path: Path) -> Path:
    """The CPU config at 1 layer of width 32: the same file, a step that takes milliseconds."""
    text = CONFIG.read_text()
    assert "    layers: 2\n" in text and "    width: 128\n" in text
    path = tmp_path / "prior.yaml"
    path.write_text(text.replace("    layers: 2\n", "    layers: 1\n").replace("    width: 128\n", "    width: 32\n"))
    return path


def test_equal_time_steps_follow_the_measured_cost(small_config: Path, tmp_path: Path) -> None:
    out = tmp_path / "sizes.json"
    argv = ["--config", str(small_config), "--sizes", "3:64:4:2", "--rounds", "1", "--budget-steps", "100"]
    assert main([*argv, "--json", str(out)]) == 0
    results = json.loads(out.read_text())
    reference, bigger = results["rows"]
    assert (reference["layers"], reference["width"], reference["kv_heads"]) == (1, 32, 1)
    assert (bigger["layers"], bigger["width"], bigger["heads"], bigger["kv_heads"]) == (3, 64, 4, 2)
    assert reference["cost_ratio"] == 1.0 and reference["equal_time_steps"] == 100
    assert bigger["parameters"] > reference["parameters"]
    assert bigger["cost_ratio"] == pytest.approx(bigger["seconds_per_step"] / reference["seconds_per_step"])
    assert bigger["equal_time_steps"] == round(100 / bigger["cost_ratio"])
    assert results["budget_steps"] == 100


def test_budget_defaults_to_the_configs_steps(small_config: Path, tmp_path: Path) -> None:
    out = tmp_path / "sizes.json"
    assert main(["--config", str(small_config), "--sizes", "1:32:4:1", "--rounds", "1", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["budget_steps"] == 3700  # the config's train.max_steps


def test_set_changes_the_reference_size(small_config: Path, tmp_path: Path) -> None:
    out = tmp_path / "sizes.json"
    argv = [
        "--config",
        str(small_config),
        "--set",
        "model.transformer.layers=3",
        "--sizes",
        "1:32:4:1",
        "--rounds",
        "1",
    ]
    assert main([*argv, "--json", str(out)]) == 0
    results = json.loads(out.read_text())
    reference, other = results["rows"]
    assert (reference["layers"], reference["width"]) == (3, 32) and (other["layers"], other["width"]) == (1, 32)
    assert reference["parameters"] > other["parameters"]
    assert results["overrides"] == ["model.transformer.layers=3"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--sizes", "4:100:3:1"], "model.transformer.heads: must divide width (100)"),
        (["--set", "model.transformer.depth=4"], "model.transformer.depth: unknown key"),
        (["--config", "missing.yaml"], "missing.yaml: config file not found"),
        (["--config", str(REPO / "configs" / "prior_oasis_32_cpu.yaml")], "this benchmark compares transformers"),
    ],
)
def test_bad_input_is_one_line(argv: list[str], message: str, capsys: pytest.CaptureFixture) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err


@pytest.mark.parametrize("argv", [["--sizes", "4:128"], ["--rounds", "0"], ["--budget-steps", "-1"]])
def test_bad_options_exit_2(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
