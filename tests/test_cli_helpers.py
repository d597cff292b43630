"""The shared CLI helpers: numeric option types and the atomic, input-safe output folder."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from common.cli_types import integer, non_negative_int, number, positive_float, positive_int
from common.output_dir import OutputError, atomic_output_dir, write_file_atomically


def parse(option_type, value: str, capsys) -> str:
    """Parse `--opt value` with `option_type`; returns argparse's error line (exit status 2 asserted)."""
    parser = argparse.ArgumentParser(prog="tool")
    parser.add_argument("--opt", type=option_type)
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args(["--opt", value])
    assert exit_info.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


@pytest.mark.parametrize(
    "option_type, value, problem",
    [
        (positive_int, "0", "must be an integer >= 1, got 0"),
        (positive_int, "-1", "must be an integer >= 1, got -1"),
        (positive_int, "1.5", "'1.5' is not an integer"),
        (non_negative_int, "-5", "must be an integer >= 0, got -5"),
        (integer(1, 8), "9", "must be an integer from 1 to 8, got 9"),
        (positive_float, "0", "must be a finite number > 0, got 0"),
        (positive_float, "nan", "must be a finite number > 0, got nan"),
        (positive_float, "inf", "must be a finite number > 0, got inf"),
        (positive_float, "fast", "'fast' is not a number"),
        (number(low=1), "0.5", "must be a finite number >= 1, got 0.5"),
    ],
)
def test_bad_number_names_the_option(option_type, value: str, problem: str, capsys):
    assert parse(option_type, value, capsys) == f"tool: error: argument --opt: {problem}"


def test_good_numbers_pass():
    assert positive_int("3") == 3 and non_negative_int("0") == 0 and integer(1, 8)("8") == 8
    assert positive_float("1e-3") == 0.001 and number(low=1)("1") == 1.0


def write_output(tmp: Path, marker: str = "manifest.json", text: str = "new") -> None:
    (tmp / marker).write_text(text)
    (tmp / "data.bin").write_text(text)


def test_output_folder_appears_only_when_complete(tmp_path: Path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError), atomic_output_dir(out, marker="manifest.json", force=False) as tmp:
        (tmp / "data.bin").write_text("half")
        raise RuntimeError("crash in the middle")
    assert list(tmp_path.iterdir()) == []  # neither the output nor the temporary folder
    with atomic_output_dir(out, marker="manifest.json", force=False) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".")
        write_output(tmp)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert (out / "data.bin").read_text() == "new"


def test_own_output_is_replaced_only_with_force_and_survives_a_failure(tmp_path: Path):
    out = tmp_path / "out"
    with atomic_output_dir(out, marker="manifest.json", force=False) as tmp:
        write_output(tmp, text="old")
    with pytest.raises(OutputError, match="use --force"), atomic_output_dir(out, marker="manifest.json", force=False):
        pass
    with pytest.raises(RuntimeError), atomic_output_dir(out, marker="manifest.json", force=True) as tmp:
        raise RuntimeError("failed run")
    assert (out / "data.bin").read_text() == "old"
    with atomic_output_dir(out, marker="manifest.json", force=True) as tmp:
        write_output(tmp)
    assert (out / "data.bin").read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_force_never_replaces_a_folder_this_tool_did_not_write(tmp_path: Path):
    out = tmp_path / "photos"
    out.mkdir()
    (out / "holiday.png").write_text("precious")
    with (
        pytest.raises(OutputError, match=f"{out}: .*no manifest.json"),
        atomic_output_dir(out, marker="manifest.json", force=True),
    ):
        pass
    assert (out / "holiday.png").read_text() == "precious"


@pytest.mark.parametrize("where", ["is the input", "contains the input", "inside the input"])
def test_output_overlapping_an_input_is_refused_even_with_our_marker(where: str, tmp_path: Path):
    data = tmp_path / "data" / "images"
    data.mkdir(parents=True)
    (data / "manifest.json").write_text("{}")  # looks like ours: the overlap rule must still hold
    (data / "scan.png").write_text("precious")
    out = {"is the input": data, "contains the input": data.parent, "inside the input": data / "out"}[where]
    with (
        pytest.raises(OutputError, match=where),
        atomic_output_dir(out, marker="manifest.json", force=True, inputs=[data]) as tmp,
    ):
        write_output(tmp)
    assert (data / "scan.png").read_text() == "precious"
    assert sorted(p.name for p in data.iterdir()) == ["manifest.json", "scan.png"]


def test_input_named_through_a_symlink_is_still_recognised(tmp_path: Path):
    data = tmp_path / "data"
    data.mkdir()
    (tmp_path / "link").symlink_to(data)
    with (
        pytest.raises(OutputError, match="is the input"),
        atomic_output_dir(tmp_path / "link", marker="manifest.json", force=True, inputs=[data]),
    ):
        pass


@pytest.mark.parametrize("case", ["out is a file", "parent is a file"])
def test_unusable_output_path_is_named(case: str, tmp_path: Path):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file")
    out = blocker if case == "out is a file" else blocker / "out"
    with pytest.raises(OutputError, match=str(out)), atomic_output_dir(out, marker="manifest.json", force=True):
        pass
    assert blocker.read_text() == "a file"


def test_marker_must_be_written(tmp_path: Path):
    """A folder without its marker could never be replaced again, so the helper refuses to place one."""
    with (
        pytest.raises(RuntimeError, match="manifest.json"),
        atomic_output_dir(tmp_path / "out", marker="manifest.json", force=False) as tmp,
    ):
        (tmp / "data.bin").write_text("x")
    assert list(tmp_path.iterdir()) == []


def test_write_file_atomically(tmp_path: Path):
    path = tmp_path / "sub" / "summary.json"
    write_file_atomically(path, b"one")
    write_file_atomically(path, b"two")
    assert path.read_bytes() == b"two" and sorted(p.name for p in path.parent.iterdir()) == ["summary.json"]
    with pytest.raises(OutputError, match=str(tmp_path)):
        write_file_atomically(tmp_path, b"x")  # a folder
    with pytest.raises(OutputError, match="summary.json"):
        write_file_atomically(path / "x", b"x")  # below a file
