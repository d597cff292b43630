"""Issue 12 in the trainer and export commands: a hostile user's inputs and faults end in exit 2 and one
line naming the file and the problem; nothing written before is lost; no result is silently wrong.
Tiny random-weight models (test_export's), so every test takes seconds."""

from __future__ import annotations

import errno
import importlib
import json
import re
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import SafetensorError

import trainer.stage1.evaluate as trainer_evaluate
from common.output_dir import atomic_output_dir
from common.slice_inputs import output_name
from conftest import DEMO_CONFIG, DEMO_SRC, K, interrupt_when, save_prior, save_vqvae, tiny
from export.__main__ import main as export_cli
from trainer.__main__ import main as trainer_cli
from trainer.run.checkpoint import list_checkpoints, load_weights

PNGS = sorted((DEMO_SRC / "keras_png_slices_test").glob("*.png"))[:3]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A VQ-VAE, a prior over its codes (in a run folder), another VQ-VAE, and the pair exported."""
    root = tmp_path_factory.mktemp("reliability")
    vqvae = save_vqvae(root, seed=0)
    prior = save_prior(root, vqvae, num_conditions=0)
    onnx = root / "onnx"
    assert export_cli(["onnx", "--checkpoint", str(prior), "--out", str(onnx)]) == 0
    return {
        "vqvae": vqvae,
        "prior": prior,
        "run": prior.parent.parent,
        "other_vqvae": save_vqvae(root, seed=3),
        "onnx": onnx,
    }


def error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


# ---- data loss ------------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["run", "checkpoint", "parent"])
def test_export_force_never_deletes_the_checkpoint_it_exports(models, capsys, where):
    out = {"run": models["run"], "checkpoint": models["prior"], "parent": models["run"].parent}[where]
    before = sorted(p.name for p in models["prior"].iterdir())
    assert export_cli(["onnx", "--checkpoint", str(models["run"]), "--out", str(out), "--force"]) == 2
    assert "the input" in error_line(capsys)
    assert sorted(p.name for p in models["prior"].iterdir()) == before


def test_export_force_replaces_only_an_earlier_export(models, tmp_path, capsys):
    out = tmp_path / "notes"
    out.mkdir()
    (out / "mine.txt").write_text("not an export")
    assert export_cli(["onnx", "--checkpoint", str(models["run"]), "--out", str(out), "--force"]) == 2
    assert "has no model.json" in error_line(capsys)
    assert (out / "mine.txt").read_text() == "not an export"


def test_reconstruct_failing_after_the_first_batch_keeps_the_old_output(models, tmp_path, capsys):
    out = tmp_path / "r"
    base = ["reconstruct", "--model-dir", str(models["onnx"]), "--out", str(out), "--quiet", "--batch-size", "1"]
    assert export_cli([*base, *map(str, PNGS)]) == 0
    summary = (out / "summary.json").read_text()
    bad = tmp_path / "zz_truncated.png"
    bad.write_bytes(PNGS[0].read_bytes()[:300])
    assert export_cli([*base, "--force", *map(str, PNGS[:2]), str(bad)]) == 2
    assert str(bad) in error_line(capsys)
    assert (out / "summary.json").read_text() == summary
    assert sorted(p.name for p in (out / "reconstructions").iterdir()) == sorted(output_name(p.name) for p in PNGS)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("command", ["trainer-sample", "export-sample", "reconstruct", "evaluate"])
def test_an_output_this_command_did_not_write_is_never_replaced(models, tmp_path, capsys, command):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    cli, args = {
        "trainer-sample": (trainer_cli, ["sample", "--checkpoint", str(models["run"]), "--n", "1"]),
        "export-sample": (export_cli, ["sample", "--model-dir", str(models["onnx"]), "--n", "1"]),
        "reconstruct": (export_cli, ["reconstruct", "--model-dir", str(models["onnx"]), str(PNGS[0])]),
        "evaluate": (trainer_cli, ["evaluate", "--checkpoint", str(models["vqvae"]), "--shards", "x"]),
    }[command]
    assert cli([*args, "--out", str(out), "--quiet", "--force"]) == 2
    assert f"{out}: exists and has no" in error_line(capsys)
    assert (out / "thesis.tex").read_text() == "precious"


# The commands whose output folders are marked by the same file (summary.json; samples.npz for both samplers):
# what each is run with, --out and --force aside.
SUMMARY_COMMANDS = {
    "trainer evaluate": lambda m: ["evaluate", "--checkpoint", str(m["vqvae"]), "--shards", str(m["shards"])],
    "trainer evaluate-prior": lambda m: ["evaluate-prior", "--checkpoint", str(m["run"]), "--n", "2"],
    "trainer sample": lambda m: ["sample", "--checkpoint", str(m["run"]), "--n", "1"],
    "export sample": lambda m: ["sample", "--model-dir", str(m["onnx"]), "--n", "1"],
    "export reconstruct": lambda m: ["reconstruct", "--model-dir", str(m["onnx"]), str(PNGS[0])],
}


def run_summary_command(command: str, models, out: Path, *extra: str) -> int:
    cli = trainer_cli if command.startswith("trainer") else export_cli
    return cli([*SUMMARY_COMMANDS[command](models), "--out", str(out), "--quiet", *extra])


@pytest.fixture(scope="module")
def inputs(models, demo_shards) -> dict[str, Path]:
    return {**models, "shards": demo_shards}


@pytest.fixture(scope="module")
def outputs(inputs, tmp_path_factory) -> dict[str, Path]:
    """One output folder of each command above (evaluate-prior's written through the same helper, as a full
    evaluate-prior needs a trained prior's codes)."""
    root = tmp_path_factory.mktemp("outputs")
    made = {}
    for command in SUMMARY_COMMANDS:
        out = root / command.replace(" ", "_")
        if command == "trainer evaluate-prior":
            with atomic_output_dir(out, marker="summary.json", force=False, kind=command) as tmp:
                (tmp / "summary.json").write_text("{}")
        else:
            assert run_summary_command(command, inputs, out) == 0
        made[command] = out
    return made


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("found", list(SUMMARY_COMMANDS))
@pytest.mark.parametrize("command", list(SUMMARY_COMMANDS))
def test_force_replaces_only_the_commands_own_kind_of_output(inputs, outputs, tmp_path, capsys, command, found):
    out = tmp_path / "out"
    shutil.copytree(outputs[found], out)
    before = tree(out)
    status = run_summary_command(command, inputs, out, "--force")
    err = capsys.readouterr().err
    if command == found:  # its own output is replaced (evaluate-prior then fails later: these models have no codes)
        assert "Traceback" not in err and "holds the output" not in err and "no record" not in err, err
        assert status == 0 or command == "trainer evaluate-prior"
        return
    assert status == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert f"{out}: holds the output of `{found}`, not of `{command}`" in err
    assert tree(out) == before


@pytest.mark.parametrize("command", list(SUMMARY_COMMANDS))
def test_force_refuses_an_unrecorded_summary_folder(inputs, tmp_path, capsys, command):
    """A folder with the shared marker but no record of its command (an older output, or one made by hand) may
    belong to any of them: refused, naming the folder."""
    out = tmp_path / "old"
    out.mkdir()
    for name in ("summary.json", "samples.npz"):
        (out / name).write_text("{}")
    before = tree(out)
    assert run_summary_command(command, inputs, out, "--force") == 2
    err = error_line(capsys)
    assert f"{out}: has no record of the command that wrote it" in err and len(err.strip().splitlines()) == 1
    assert tree(out) == before


@pytest.mark.parametrize("command", ["trainer-sample", "export-sample", "reconstruct", "onnx", "encode"])
def test_an_output_path_that_is_a_file_is_a_clear_error(models, tmp_path, capsys, command):
    out = tmp_path / "file"
    out.write_text("a file")
    cli, args = {
        "trainer-sample": (trainer_cli, ["sample", "--checkpoint", str(models["run"]), "--n", "1", "--quiet"]),
        "export-sample": (export_cli, ["sample", "--model-dir", str(models["onnx"]), "--n", "1", "--quiet"]),
        "reconstruct": (export_cli, ["reconstruct", "--model-dir", str(models["onnx"]), str(PNGS[0]), "--quiet"]),
        "onnx": (export_cli, ["onnx", "--checkpoint", str(models["run"])]),
        "encode": (trainer_cli, ["encode", "--checkpoint", str(models["vqvae"]), "--shards", "x", "--quiet"]),
    }[command]
    assert cli([*args, "--out", str(out)]) == 2
    assert f"{out}: exists and is not a folder" in error_line(capsys)
    assert out.read_text() == "a file"


def disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")  # as write() raises it: no file name


def ctrl_c(*args, **kwargs):
    raise KeyboardInterrupt


# Every command that writes an output folder, and the write that meets the full disk or the Ctrl-C.
FAILING_WRITE = {
    "trainer evaluate": (trainer_evaluate, "write_per_image_csv"),
    "trainer sample": (np, "savez"),
    "trainer encode": (np, "savez"),
    "export sample": (np, "savez"),
    "export reconstruct": (np, "savez"),
    "export onnx": (Path, "write_text"),
}


def run_with_failing_write(inputs, out: Path, monkeypatch, command: str, failure) -> int:
    args = {
        "trainer encode": ["encode", "--checkpoint", str(inputs["vqvae"]), "--shards", str(inputs["shards"])],
        "export onnx": ["onnx", "--checkpoint", str(inputs["run"])],
    }.get(command) or SUMMARY_COMMANDS[command](inputs)
    monkeypatch.setattr(*FAILING_WRITE[command], failure)
    cli = trainer_cli if command.startswith("trainer") else export_cli
    return cli([*args, "--out", str(out), *([] if command == "export onnx" else ["--quiet"])])


def assert_nothing_partial(tmp_path: Path, out: Path, command: str) -> None:
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary file or folder
    if command == "trainer encode":  # a folder filled split by split: no temporary split file inside
        assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []
    else:
        assert not out.exists()


@pytest.mark.parametrize("command", list(FAILING_WRITE))
def test_a_full_disk_is_exit_2_naming_the_output_and_leaves_nothing(inputs, tmp_path, capsys, monkeypatch, command):
    out = tmp_path / "out"
    status = run_with_failing_write(inputs, out, monkeypatch, command, disk_full)
    err = error_line(capsys)
    assert status == 2 and len(err.strip().splitlines()) == 1, err
    assert f"{out}" in err and "No space left on device" in err
    assert_nothing_partial(tmp_path, out, command)


@pytest.mark.parametrize("command", list(FAILING_WRITE))
def test_ctrl_c_while_writing_is_one_line_exit_130_and_leaves_nothing(inputs, tmp_path, capsys, monkeypatch, command):
    out = tmp_path / "out"
    status = run_with_failing_write(inputs, out, monkeypatch, command, ctrl_c)
    err = error_line(capsys)
    assert status == 130 and len(err.strip().splitlines()) == 1, err
    assert f"`python -m {command}` interrupted" in err
    assert_nothing_partial(tmp_path, out, command)


def all_commands() -> list[tuple[str, str]]:
    from data_tools.__main__ import COMMANDS as data_commands
    from export.__main__ import COMMANDS as export_commands
    from trainer.__main__ import COMMANDS as trainer_commands

    tables = {"trainer": trainer_commands, "export": export_commands, "data_tools": data_commands}
    return [(package, name) for package, table in tables.items() for name in table]


@pytest.mark.parametrize("package, command", all_commands())
def test_ctrl_c_in_any_command_is_one_line_and_exit_130(monkeypatch, capsys, package, command):
    """At the root (common/cli.py): whatever a command is doing when Ctrl-C comes."""
    main = importlib.import_module(f"{package}.__main__")
    module = importlib.import_module(main.COMMANDS[command][0])
    monkeypatch.setattr(module, "add_arguments", lambda parser: None)
    monkeypatch.setattr(module, "run", ctrl_c)
    assert main.main([command]) == 130
    err = error_line(capsys)
    assert len(err.strip().splitlines()) == 1 and f"`python -m {package} {command}` interrupted" in err, err


def test_ctrl_c_mid_run_of_export_sample_is_one_line_and_exit_130(models, tmp_path):
    """A real SIGINT, sent to the process group as a terminal's Ctrl-C is, while the prior samples."""
    out = tmp_path / "s"
    args = ["-m", "export", "sample", "--model-dir", str(models["onnx"]), "--n", "5000", "--out", str(out)]
    status, err = interrupt_when(args, lambda stderr: "sample:" in stderr)
    assert status == 130 and "Traceback" not in err, err
    last = err.replace("\r", "\n").strip().splitlines()[-1]
    assert "`python -m export sample` interrupted" in last, err
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no output, no temporary folder


@pytest.mark.parametrize("error", ["OSError", "SafetensorError", "KeyboardInterrupt"])
def test_a_full_disk_or_ctrl_c_while_saving_a_checkpoint_is_one_line_and_leaves_no_temporary_folder(
    demo_shards, tmp_path, capsys, monkeypatch, error
):
    import trainer.run.checkpoint as checkpoint_module

    real_save, saves = checkpoint_module.save_file, []

    def fails(*args, **kwargs):
        saves.append(1)
        if len(saves) > 1:
            if error == "KeyboardInterrupt":
                raise KeyboardInterrupt
            if error == "OSError":
                raise OSError(errno.ENOSPC, "No space left on device")
            os_error = 'IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })'
            raise SafetensorError(f"Error while serializing: {os_error}")  # what safetensors raises on a full disk
        real_save(*args, **kwargs)

    monkeypatch.setattr(checkpoint_module, "save_file", fails)
    out = tmp_path / "run"
    overrides = tiny(demo_shards, out, "train.eval_every=100")
    status = trainer_cli(
        ["vqvae", "--config", str(DEMO_CONFIG), "--quiet", *[a for o in overrides for a in ("--set", o)]]
    )
    err = error_line(capsys)
    assert len(err.strip().splitlines()) == 1, err
    if error == "KeyboardInterrupt":
        assert status == 130 and "`python -m trainer vqvae` interrupted" in err and "--resume" in err
    else:
        assert status == 2 and f"{out / 'checkpoints' / 'step_0000012'}" in err and "No space left on device" in err
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step_0000006"]  # no .step_0000012.tmp


# ---- silent wrong results -------------------------------------------------------------------------


def test_nan_stop_names_a_finite_checkpoint_and_exits_2(demo_shards, tmp_path, capsys):
    out = tmp_path / "run"
    overrides = tiny(
        demo_shards,
        out,
        "train.lr=1e30",
        "train.grad_clip=0",
        "train.warmup_steps=0",
        "train.log_every=1",
        "train.checkpoint_every=1",
        "train.eval_every=100",
    )
    assert (
        trainer_cli(["vqvae", "--config", str(DEMO_CONFIG), "--quiet", *[a for o in overrides for a in ("--set", o)]])
        == 2
    )
    err = error_line(capsys)
    assert "loss became" in err or "weights became" in err
    named = re.search(r"Last good checkpoint: (\S+)", err).group(1)
    saved = list_checkpoints(out / "checkpoints")
    assert saved and named in ["none", *map(str, saved)]
    for checkpoint in saved:  # finite weights (about 1e30) need not give a finite loss or evaluation
        assert all(torch.isfinite(w).all() for w in load_weights(checkpoint).values()), checkpoint
        evaluation = tmp_path / f"eval_{checkpoint.name}"
        args = ["--checkpoint", str(checkpoint), "--out", str(evaluation), "--batch-size", "8", "--quiet"]
        status = trainer_cli(["evaluate", *args])
        said = capsys.readouterr()
        if str(checkpoint) == named:
            assert status == 0 and np.isfinite(json.loads((evaluation / "summary.json").read_text())["ssim_mean"])
        else:  # the NaN is reported, not written as a result
            assert status == 2 and not evaluation.exists(), said
            assert "Traceback" not in said.err and len(said.err.strip().splitlines()) == 1
            assert f"{checkpoint}" in said.err and "not finite" in said.err


def test_sample_refuses_a_vqvae_the_prior_was_not_trained_on(models, tmp_path, capsys):
    assert (
        trainer_cli(
            [
                "sample",
                "--checkpoint",
                str(models["run"]),
                "--vqvae",
                str(models["other_vqvae"]),
                "--n",
                "1",
                "--out",
                str(tmp_path / "s"),
                "--quiet",
            ]
        )
        == 2
    )
    assert "not the ones the prior was trained on" in error_line(capsys)
    assert not (tmp_path / "s").exists()


def edited_export(models, tmp_path, change) -> Path:
    copy = tmp_path / "onnx"
    shutil.copytree(models["onnx"], copy)
    info = json.loads((copy / "model.json").read_text())
    change(info)
    (copy / "model.json").write_text(json.dumps(info))
    return copy


@pytest.mark.parametrize(
    "field, value",
    [
        ("context_rows", 1),
        ("context_columns", 1),
        ("height", 8),
        ("num_codes", K + 1),
        ("image_size", 128),
        ("num_conditions", 4),
    ],
)
def test_a_tampered_semantic_field_of_model_json_is_refused(models, tmp_path, capsys, field, value):
    model_dir = edited_export(models, tmp_path, lambda info: info.update({field: value}))
    assert (
        export_cli(["sample", "--model-dir", str(model_dir), "--n", "1", "--out", str(tmp_path / "s"), "--quiet"]) == 2
    )
    err = error_line(capsys)
    assert field in err and "model.json" in err
    assert not (tmp_path / "s").exists()


def test_model_json_file_names_stay_inside_the_folder(models, tmp_path, capsys):
    outside = tmp_path / "elsewhere.onnx"
    shutil.copy(models["onnx"] / "decoder.onnx", outside)
    model_dir = edited_export(models, tmp_path, lambda info: info["models"]["decoder"].update(file="../elsewhere.onnx"))
    assert (
        export_cli(["sample", "--model-dir", str(model_dir), "--n", "1", "--out", str(tmp_path / "s"), "--quiet"]) == 2
    )
    assert "not a file name inside the folder" in error_line(capsys)


# ---- numeric options ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "command, option, value",
    [
        ("sample", "--batch-size", "0"),
        ("sample", "--n", "0"),
        ("sample", "--n", "-1"),
        ("sample", "--seed", "-5"),
        ("sample", "--temperature", "0"),
        ("sample", "--temperature", "nan"),
        ("sample", "--top-k", "-1"),
        ("sample", "--slice", "-1"),
        ("encode", "--batch-size", "0"),
        ("evaluate", "--batch-size", "0"),
        ("evaluate-prior", "--max-pairs", "0"),
        ("evaluate-prior", "--n", "0"),
    ],
)
def test_numeric_options_are_checked_at_parse_time_naming_the_option(tmp_path, capsys, command, option, value):
    assert (
        trainer_cli([command, "--checkpoint", str(tmp_path / "none"), "--out", str(tmp_path / "o"), option, value]) == 2
    )
    assert f"argument {option}" in error_line(capsys)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "command, option, value",
    [
        ("sample", "--threads", "-1"),
        ("sample", "--batch-size", "0"),
        ("reconstruct", "--batch-size", "-3"),
        ("onnx", "--opset", "0"),
    ],
)
def test_export_numeric_options_are_checked_at_parse_time(tmp_path, capsys, command, option, value):
    where = ["--checkpoint", str(tmp_path)] if command == "onnx" else ["--model-dir", str(tmp_path)]
    assert export_cli([command, *where, "--out", str(tmp_path / "o"), option, value]) == 2
    assert f"argument {option}" in error_line(capsys)


# ---- bad images and shards ------------------------------------------------------------------------


def png_declaring(width: int, height: int) -> bytes:
    """The first bytes of a PNG that declares width x height 8-bit gray pixels (a decompression bomb)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk))


@pytest.mark.parametrize("kind", ["bomb", "truncated"])
def test_reconstruct_names_a_bomb_or_truncated_png(models, tmp_path, capsys, kind):
    bad = tmp_path / f"{kind}.png"
    bad.write_bytes(png_declaring(100000, 100000) if kind == "bomb" else PNGS[0].read_bytes()[:400])
    assert (
        export_cli(
            ["reconstruct", "--model-dir", str(models["onnx"]), "--out", str(tmp_path / "r"), str(bad), "--quiet"]
        )
        == 2
    )
    assert str(bad) in error_line(capsys)
    assert not (tmp_path / "r").exists()


def copy_shards(demo_shards: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "shards"
    shutil.copytree(demo_shards, copy)
    return copy


def test_the_trainer_names_a_corrupt_shard(demo_shards, models, tmp_path, capsys):
    shards = copy_shards(demo_shards, tmp_path)
    manifest = json.loads((shards / "manifest.json").read_text())
    name = manifest["splits"]["test"]["shards"][-1]["name"]
    data = bytearray((shards / name).read_bytes())
    data[2000] ^= 0xFF  # inside the first member's PNG
    (shards / name).write_bytes(bytes(data))
    assert (
        trainer_cli(
            [
                "evaluate",
                "--checkpoint",
                str(models["vqvae"]),
                "--shards",
                str(shards),
                "--out",
                str(tmp_path / "e"),
                "--quiet",
            ]
        )
        == 2
    )
    assert f"{shards / name}: sha256 differs from" in error_line(capsys)


def test_the_trainer_refuses_shards_of_another_image_size(demo_shards, models, tmp_path, capsys):
    shards = copy_shards(demo_shards, tmp_path)
    manifest = json.loads((shards / "manifest.json").read_text())
    (shards / "manifest.json").write_text(json.dumps({**manifest, "image_size": 64}))
    assert (
        trainer_cli(
            [
                "evaluate",
                "--checkpoint",
                str(models["vqvae"]),
                "--shards",
                str(shards),
                "--out",
                str(tmp_path / "e"),
                "--quiet",
            ]
        )
        == 2
    )
    assert "image_size 64" in error_line(capsys)


def test_decoding_an_oversized_png_from_a_shard_is_a_named_error():
    from common.errors import DataError
    from common.shard_format import decode_gray_png

    with pytest.raises(DataError, match="100000x100000"):
        decode_gray_png(png_declaring(100000, 100000), "shard.tar:case_001_slice_0")


# ---- checkpoints, resume and metrics --------------------------------------------------------------


def truncated_copy(checkpoint: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "broken" / checkpoint.name
    shutil.copytree(checkpoint, copy)
    weights = copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    return copy


def test_a_truncated_or_foreign_checkpoint_is_named(models, tmp_path, capsys):
    broken = truncated_copy(models["prior"], tmp_path)
    assert (
        trainer_cli(["sample", "--checkpoint", str(broken), "--n", "1", "--out", str(tmp_path / "s"), "--quiet"]) == 2
    )
    assert str(broken / "model.safetensors") in error_line(capsys)
    # a VQ-VAE given where a prior is expected, and a prior where a VQ-VAE is
    assert (
        trainer_cli(
            ["sample", "--checkpoint", str(models["vqvae"]), "--n", "1", "--out", str(tmp_path / "s"), "--quiet"]
        )
        == 2
    )
    assert str(models["vqvae"]) in error_line(capsys)
    assert trainer_cli(["evaluate", "--checkpoint", str(models["prior"]), "--out", str(tmp_path / "e"), "--quiet"]) == 2
    assert str(models["prior"]) in error_line(capsys)


def train_cli(demo_shards: Path, out: Path, *extra: str) -> int:
    overrides = tiny(demo_shards, out, "train.eval_every=100", *extra)
    return trainer_cli(
        ["vqvae", "--config", str(DEMO_CONFIG), "--quiet", "--resume", *[a for o in overrides for a in ("--set", o)]]
    )


def test_resume_says_it_starts_fresh_falls_back_past_a_broken_checkpoint_and_drops_a_torn_row(
    demo_shards, tmp_path, capsys
):
    out = tmp_path / "run"
    assert train_cli(demo_shards, out, "train.max_steps=4", "train.checkpoint_every=2") == 0
    assert "no checkpoint" in capsys.readouterr().out
    newest = list_checkpoints(out / "checkpoints")[-1]
    (newest / "model.safetensors").write_bytes(b"\0" * 100)
    with (out / "metrics.jsonl").open("a") as f:
        f.write('{"step": 5, "lo')
    assert train_cli(demo_shards, out, "train.max_steps=6", "train.checkpoint_every=2") == 0
    said = capsys.readouterr().out
    assert f"{newest / 'model.safetensors'}" in said and "step_0000002" in said
    assert "torn last line" in said and str(out / "metrics.jsonl") in said
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 4, 6]


# ---- encode ---------------------------------------------------------------------------------------


def test_encode_never_reuses_a_split_file_codes_json_does_not_list(demo_shards, models, tmp_path, capsys):
    out = tmp_path / "codes"
    out.mkdir()
    stale = {
        "codes": np.zeros((1, 16, 16), np.uint16),
        "slices": np.zeros(1, np.int16),
        "subjects": np.asarray(["x"]),
        "keys": np.asarray(["x"]),
    }
    np.savez(out / "test.npz", **stale)
    (out / "codes.json").write_text("{torn")
    assert (
        trainer_cli(
            ["encode", "--checkpoint", str(models["vqvae"]), "--shards", str(demo_shards), "--out", str(out), "--quiet"]
        )
        == 2
    )
    assert f"{out / 'codes.json'}: not valid JSON" in error_line(capsys)
    assert (
        trainer_cli(
            [
                "encode",
                "--checkpoint",
                str(models["vqvae"]),
                "--shards",
                str(demo_shards),
                "--out",
                str(out),
                "--quiet",
                "--force",
            ]
        )
        == 0
    )
    meta = json.loads((out / "codes.json").read_text())
    with np.load(out / "test.npz") as data:
        assert len(data["keys"]) == meta["splits"]["test"] == 32


def test_a_split_file_not_listed_in_codes_json_is_not_read(tmp_path):
    from trainer.stage2.codes import load_codes

    out = tmp_path / "codes"
    out.mkdir()
    np.savez(out / "validate.npz", codes=np.zeros((1, 2, 2), np.uint16))
    (out / "codes.json").write_text(json.dumps({"splits": {"train": 1}}))
    with pytest.raises(FileNotFoundError, match="not listed"):
        load_codes(out, "validate")


def test_a_png_that_is_not_an_image_is_named(models, tmp_path, capsys):
    bad = tmp_path / "text.png"
    bad.write_text("hello")
    Image.new("L", (256, 256)).save(tmp_path / "good.png")
    assert (
        export_cli(
            ["reconstruct", "--model-dir", str(models["onnx"]), "--out", str(tmp_path / "r"), str(bad), "--quiet"]
        )
        == 2
    )
    assert f"{bad}: not an image" in error_line(capsys)


def test_a_corrupt_shard_read_by_a_dataloader_worker_is_one_line(demo_shards, tmp_path):
    from common.errors import DataError
    from trainer.stage1.data import SliceShards, epoch_batches

    shards = copy_shards(demo_shards, tmp_path)
    name = json.loads((shards / "manifest.json").read_text())["splits"]["test"]["shards"][0]["name"]
    data = bytearray((shards / name).read_bytes())
    data[600] ^= 0xFF
    (shards / name).write_bytes(bytes(data))
    with pytest.raises(DataError) as caught:
        list(epoch_batches(SliceShards(shards, "test"), 8, num_workers=1))
    assert str(caught.value).startswith(f"{shards / name}: sha256 differs") and "\n" not in str(caught.value)


@pytest.mark.parametrize("damage", ["model.json-utf8", "prior.json", "codes.json-utf8"])
def test_json_and_utf8_errors_name_the_file(models, tmp_path, capsys, damage):
    if damage == "model.json-utf8":
        model_dir = tmp_path / "onnx"
        shutil.copytree(models["onnx"], model_dir)
        (model_dir / "model.json").write_bytes(b'{"format_version": "\xff"}')
        code = export_cli(["sample", "--model-dir", str(model_dir), "--out", str(tmp_path / "s"), "--quiet"])
        path = model_dir / "model.json"
    elif damage == "prior.json":
        run = tmp_path / "run"
        shutil.copytree(models["run"], run)
        path = list_checkpoints(run / "checkpoints")[-1] / "prior.json"
        path.write_text("{not json")
        code = trainer_cli(["sample", "--checkpoint", str(run), "--out", str(tmp_path / "s"), "--quiet"])
    else:
        codes = tmp_path / "codes"
        codes.mkdir()
        path = codes / "codes.json"
        path.write_bytes(b"\xfe\xff")
        from trainer.stage2.codes import read_codes_meta

        with pytest.raises(ValueError, match="not valid UTF-8") as caught:
            read_codes_meta(codes)
        assert str(path) in str(caught.value)
        return
    assert code == 2
    assert str(path) in error_line(capsys)


def test_a_training_out_dir_that_is_a_file_is_a_clear_error(demo_shards, tmp_path, capsys):
    out = tmp_path / "file"
    out.write_text("a file")
    assert train_cli(demo_shards, out) == 2
    assert f"{out}: out_dir exists and is not a folder" in error_line(capsys)
    assert out.read_text() == "a file"
