"""launch.sh across machines, on one host: two machine ranks (one process each, 127.0.0.1) train the weights one
two-process run trains; a machine that dies stops the other within a bounded time, naming the lost rank; and
`--resume` on both machines finishes the run from the last checkpoint. Then the heartbeat alone
(trainer/run/peers.py): a frozen process, one that ended normally, and the timeouts' settings."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch

from conftest import DEMO_CONFIG, REPO, free_port, tiny
from trainer.__main__ import main as cli
from trainer.run.checkpoint import list_checkpoints, load_weights
from trainer.run.peers import COLLECTIVE_TIMEOUT, HEARTBEAT_TIMEOUT, timeouts

MAX_STEPS = 24
STEPS = [f"train.max_steps={MAX_STEPS}", "train.checkpoint_every=6", "train.eval_every=12", "train.keep_checkpoints=8"]
STOP_WITHIN = 60  # seconds from a machine's death to the other machine's exit
TEST_HEARTBEAT = 10  # seconds; the default (30 s) would also stop within STOP_WITHIN


def launch(log: Path, out: Path, shards: Path, env: dict[str, str], *flags: str) -> subprocess.Popen:
    """`bash launch.sh stage1` of the tiny demo config, its output in `log`."""
    sets = [arg for item in tiny(shards, out, *STEPS) for arg in ("--set", item)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HEARTBEAT_TIMEOUT": str(TEST_HEARTBEAT), **env}
    return start(["bash", str(REPO / "launch.sh"), "stage1", str(DEMO_CONFIG), *sets, "--quiet", *flags], env, log)


def start(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    """`command` in a session of its own, its output in `log`."""
    with log.open("w") as output:
        return subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)


def machines(tmp_path: Path, name: str, outs: list[Path], shards: Path, *flags: str) -> list[subprocess.Popen]:
    """Machine ranks 0 and 1 of a two-machine job, one process each, with out_dir outs[rank] (the same folder
    when they share a filesystem), logs in tmp_path/{name}{rank}.log."""
    port = str(free_port())
    return [
        launch(
            tmp_path / f"{name}{rank}.log",
            out,
            shards,
            {"NUM_PROCESSES": "1", "NUM_MACHINES": "2", "MACHINE_RANK": str(rank), "MAIN_ADDR": "127.0.0.1"}
            | {"MAIN_PORT": port},
            *flags,
        )
        for rank, out in enumerate(outs)
    ]


def kill_machine(launched: subprocess.Popen) -> None:
    """SIGKILL every process the launch started, as a machine's death does (torchrun starts each worker in a
    session of its own: its launch's process group does not hold it)."""
    try:
        root = psutil.Process(launched.pid)
        victims = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for process in victims:
        try:
            process.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass


def stop_all(launched: list[subprocess.Popen]) -> None:
    """Kill whatever is left of the launches and reap them."""
    for process in launched:
        kill_machine(process)
        process.wait(timeout=30)


def finish(launched: list[subprocess.Popen], logs: list[Path], timeout: float) -> list[int]:
    """Exit codes of all launches, each within `timeout` seconds; a launch still running then fails the test."""
    deadline = time.monotonic() + timeout
    try:
        return [process.wait(timeout=max(0.1, deadline - time.monotonic())) for process in launched]
    except subprocess.TimeoutExpired:
        pytest.fail(f"a launch was still running after {timeout:.0f} s:\n" + "\n".join(log.read_text() for log in logs))
    finally:
        stop_all(launched)


def assert_same_weights(a: Path, b: Path) -> None:
    """Bit for bit: the ranks, their data, and each all-reduce (one addition of two numbers, which commutes)
    are the same whether the two processes share a machine or not, so any difference is a defect."""
    wa, wb = load_weights(a), load_weights(b)
    assert wa.keys() == wb.keys()
    assert [k for k in wa if not torch.equal(wa[k], wb[k])] == [], f"{a} and {b} differ"


def test_two_machines_train_as_one_stop_when_one_dies_and_resume(demo_shards: Path, tmp_path: Path):
    one, two = tmp_path / "one_machine", tmp_path / "two_machines"
    reference = launch(tmp_path / "one.log", one, demo_shards, {"NUM_PROCESSES": "2", "MAIN_PORT": str(free_port())})
    assert finish([reference], [tmp_path / "one.log"], 300) == [0], (tmp_path / "one.log").read_text()

    logs = [tmp_path / "killed0.log", tmp_path / "killed1.log"]
    launched = machines(tmp_path, "killed", [two, two], demo_shards)
    deadline = time.monotonic() + 300
    try:
        while not (two / "checkpoints" / "step_0000006").is_dir():  # machine rank 1 trains: kill it
            alive = all(p.poll() is None for p in launched) and time.monotonic() < deadline
            assert alive, "no step-6 checkpoint:\n" + "\n".join(log.read_text() for log in logs)
            time.sleep(0.05)
        os.killpg(launched[1].pid, signal.SIGKILL)  # bash and torchrun; the worker, in a session of its own, follows
        killed_at = time.monotonic()
        code = finish(launched[:1], logs[:1], STOP_WITHIN)[0]
    finally:
        stop_all(launched)
    stopped = logs[0].read_text()
    assert time.monotonic() - killed_at < STOP_WITHIN
    assert code == 1, stopped
    assert "lost rank 1 (machine rank 1" in stopped and "Traceback" not in stopped, stopped
    assert "error: this machine's launcher (torchrun, pid " in logs[1].read_text()  # rank 1 did not train on
    kept = list_checkpoints(two / "checkpoints")
    assert kept[0].name == "step_0000006" and kept[-1].name != f"step_{MAX_STEPS:07d}"  # stopped mid-run
    assert_same_weights(one / "checkpoints" / "step_0000006", two / "checkpoints" / "step_0000006")

    elsewhere = tmp_path / "elsewhere"  # machine rank 1 does not see the checkpoints: no shared filesystem
    logs = [tmp_path / "elsewhere0.log", tmp_path / "elsewhere1.log"]
    assert finish(machines(tmp_path, "elsewhere", [two, elsewhere], demo_shards, "--resume"), logs, 300) == [2, 2]
    refused = logs[0].read_text()
    assert "out_dir must be one folder every machine sees" in refused and "Traceback" not in refused, refused
    assert list_checkpoints(two / "checkpoints") == kept and not (elsewhere / "checkpoints").exists()

    logs = [tmp_path / "resumed0.log", tmp_path / "resumed1.log"]
    resumed = finish(machines(tmp_path, "resumed", [two, two], demo_shards, "--resume"), logs, 300)
    assert resumed == [0, 0], logs[0].read_text()
    assert f"resuming from {kept[-1]}" in logs[0].read_text()
    assert_same_weights(one / "checkpoints" / f"step_{MAX_STEPS:07d}", two / "checkpoints" / f"step_{MAX_STEPS:07d}")


def peer_ranks(mode: str, tmp_path: Path) -> list[subprocess.Popen]:
    """tests/scripts/peer_ranks.py as ranks 0 and 1 of one gloo job, each its own machine rank."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HEARTBEAT_TIMEOUT": "2"}
    env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), WORLD_SIZE="2")
    script = [sys.executable, str(REPO / "tests" / "scripts" / "peer_ranks.py"), mode]
    return [
        start(script, {**env, "RANK": str(rank), "GROUP_RANK": str(rank)}, tmp_path / f"{mode}{rank}.log")
        for rank in (0, 1)
    ]


def test_a_frozen_process_stops_the_others_naming_it_instead_of_a_hung_collective(tmp_path: Path):
    """SIGSTOP is a machine gone from the network: nothing closes its connections, so rank 0's all-reduce
    would wait the whole collective timeout (600 s here); the heartbeat stops it in seconds."""
    ranks = peer_ranks("freeze", tmp_path)
    logs = [tmp_path / "freeze0.log", tmp_path / "freeze1.log"]
    try:
        code = finish(ranks[:1], logs, 60)[0]
    finally:
        stop_all(ranks)
    output = logs[0].read_text()
    assert code == 1, output
    assert output.startswith("error: lost rank 1 (machine rank 1, host ") and "no heartbeat for 2 s" in output
    assert "Traceback" not in output and len(output.splitlines()) == 1, output


def test_a_process_that_ended_normally_is_not_lost(tmp_path: Path):
    ranks = peer_ranks("finish", tmp_path)
    logs = [tmp_path / "finish0.log", tmp_path / "finish1.log"]
    assert finish(ranks, logs, 60) == [0, 0], logs[0].read_text()
    assert logs[0].read_text() == "done\n"


@pytest.mark.parametrize("name", ["COLLECTIVE_TIMEOUT", "HEARTBEAT_TIMEOUT"])
@pytest.mark.parametrize("value", ["abc", "0", "-5", "nan", "inf", "1e300"])
def test_bad_timeout_is_one_line_naming_the_variable(name: str, value: str, tmp_path: Path, monkeypatch, capsys):
    monkeypatch.setenv(name, value)
    assert cli(["vqvae", "--config", str(DEMO_CONFIG), "--set", f"out_dir={tmp_path / 'run'}"]) == 2
    assert (
        capsys.readouterr().err
        == f"error: {name}={value!r}: must be a number of seconds, > 0 and at most 604800 (a week)\n"
    )
    assert not (tmp_path / "run").exists()
    assert (
        timeouts({}) == (COLLECTIVE_TIMEOUT, HEARTBEAT_TIMEOUT) and timeouts({name: " 12.5 "})[name[0] == "H"] == 12.5
    )


@pytest.mark.parametrize(
    "script, code, line", [("exit 3", 3, ""), ("kill -KILL $BASHPID", 137, "error: rank 0 was killed by SIGKILL\n")]
)
def test_launcher_ends_in_the_failed_process_exit_code_not_its_traceback(script: str, code: int, line: str):
    """launch.sh runs torchrun through trainer/run/launcher.py: the process said why it failed (a killed one
    cannot: the launcher names the signal), torchrun's ChildFailedError traceback would only bury it."""
    command = ["torchrun", "--nproc_per_node", "1", "--master_port", str(free_port()), "--no-python", "bash", "-c"]
    result = subprocess.run(
        [sys.executable, "-m", "trainer.run.launcher", *command, script],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == code and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.endswith(line) and result.stdout == ""
