"""launch.sh: paths reach Python as arguments, never as code."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from conftest import REPO


def config_value(config: Path, cls: str, key: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run launch.sh's config_value function alone (sourcing the script defines it without running a command)."""
    return subprocess.run(
        ["bash", "-c", f'source "{REPO / "launch.sh"}" && config_value "$@"', "_", str(config), cls, key],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
    )


def test_crafted_config_name_is_data_not_code(tmp_path: Path):
    name = "c'+__import__('os').system('touch PWNED')+'$(touch PWNED2).yaml"
    config = tmp_path / name
    shutil.copy(REPO / "configs" / "prior_demo_cpu.yaml", config)
    result = config_value(config, "PriorConfig", "codes.dir", tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "runs/demo/codes\n"
    assert not (tmp_path / "PWNED").exists() and not (tmp_path / "PWNED2").exists()
    assert not (REPO / "PWNED").exists()


def test_config_value_of_a_bad_config_is_one_line_and_exit_2(tmp_path: Path):
    config = tmp_path / "bad.yaml"
    config.write_text("codes: {batch_size: 0}\n")
    result = config_value(config, "PriorConfig", "codes.dir", tmp_path)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == f"error: {config}: codes.batch_size: must be >= 1\n"


def test_demo_stage_clock_prints_each_stage_and_the_total(tmp_path: Path):
    script = 'source "$1" && stage "1/2 first: a" && sleep 0.4 && stage "2/2 second: b" && sleep 0.2 && stage_times'
    result = subprocess.run(
        ["bash", "-c", script, "_", str(REPO / "launch.sh")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "== 1/2 first: a" and lines[2] == "== 2/2 second: b" and lines[4] == "== time per stage"
    first, second = float(lines[1].strip("() s")), float(lines[3].strip("() s"))
    assert 0.4 <= first < 2.0 and 0.2 <= second < 2.0
    assert lines[5].split() == [f"{first:.1f}", "s", "1/2", "first"]
    assert lines[6].split() == [f"{second:.1f}", "s", "2/2", "second"]
    assert lines[7].split() == [f"{first + second:.1f}", "s", "total"]
