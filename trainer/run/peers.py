"""The processes of a job on several processes or machines watch each other, so that a lost one stops the rest.

Without this, a process whose peer died waits in its next collective: for the collective timeout when the peer's
machine vanished (a crash, a power or network loss: nothing closes the connection), or ends in a gloo or NCCL
traceback that names an address, not the rank. Here every process beats, once a second and from a thread of
its own (so a long step, a checkpoint being written or a blocked collective do not stop it), a counter in the
store the launcher (torchrun, or `accelerate launch` on GPUs) already runs for the job at MAIN_ADDR:MAIN_PORT.
A process whose counter stands still for HEARTBEAT_TIMEOUT seconds is lost: each other process prints one line
naming its rank, machine rank and host, and exits 1; the store's host not answering means machine rank 0 is
lost. A process started by torchrun also stops when its launcher ends (killed with its process group).
COLLECTIVE_TIMEOUT bounds a collective that waits for a process that is alive but stuck.
"""

from __future__ import annotations

import math
import os
import socket
import sys
import threading
import time
from collections.abc import Mapping
from datetime import timedelta

import torch.distributed as dist

HEARTBEAT_TIMEOUT = 30.0  # seconds without a beat before a process is lost (env HEARTBEAT_TIMEOUT)
COLLECTIVE_TIMEOUT = 600.0  # seconds a collective waits for the slowest process (env COLLECTIVE_TIMEOUT)
BEAT = 1.0  # seconds between beats
STOPPED = 1 << 40  # added to a counter by a process that ends normally: it is done, not lost
LOST_EXIT_CODE = 1


def env_seconds(name: str, default: float, env: Mapping[str, str] = os.environ) -> float:
    """Seconds from environment variable `name` (`default` when unset or empty); a bad value is a ValueError
    naming the variable (exit 2 from the command line)."""
    value = env.get(name, "").strip()
    if not value:
        return default
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not 0 < seconds <= 7 * 24 * 3600:
        raise ValueError(f"{name}={value!r}: must be a number of seconds, > 0 and at most 604800 (a week)")
    return seconds


class PeerWatch:
    """Beats for this process and watches every other one's beat (see the module docstring)."""

    def __init__(self, rank: int, world_size: int, timeout: float, hint: str, env: Mapping[str, str] = os.environ):
        self.rank, self.timeout, self.hint = rank, timeout, hint
        self.others = [r for r in range(world_size) if r != rank]
        self.address = f"{env['MASTER_ADDR']}:{env['MASTER_PORT']}"
        self.prefix = f"brain_vqvae/peers/{env.get('TORCHELASTIC_RESTART_COUNT', '0')}"
        # torchrun starts its processes in sessions of their own: one outliving its launcher would train on
        # unsupervised, and the other machines' launchers would wait for this one's at their exit.
        self.launcher = os.getppid() if "TORCHELASTIC_RUN_ID" in env else None
        self.store = dist.TCPStore(
            env["MASTER_ADDR"], int(env["MASTER_PORT"]), is_master=False, timeout=timedelta(seconds=timeout)
        )
        who = f"machine rank {env.get('GROUP_RANK', '?')}, host {socket.gethostname()}"
        self.store.set(f"{self.prefix}/who/{rank}", who)
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._watch, name="peer-watch", daemon=True)
        self.thread.start()
        self._previous_hook, sys.excepthook = sys.excepthook, self._excepthook

    def stop(self) -> None:
        """This process ends normally: stop beating and tell the others it is done, not lost."""
        self.stopping.set()
        self.thread.join()
        sys.excepthook = self._previous_hook
        try:
            self.store.add(self._counter(self.rank), STOPPED)
        except Exception:  # the store's host ended first: then the job ended, and no one is left to tell
            pass

    def _counter(self, rank: int) -> str:
        return f"{self.prefix}/beats/{rank}"

    def _watch(self) -> None:
        changed = {r: (-1, time.monotonic()) for r in self.others}  # rank -> (last count seen, when it changed)
        while not self.stopping.wait(BEAT):
            if self.launcher is not None and os.getppid() != self.launcher:
                self._stop(f"this machine's launcher (torchrun, pid {self.launcher}) ended")
            try:
                self.store.add(self._counter(self.rank), 1)
                counts = {r: self.store.add(self._counter(r), 0) for r in self.others}
            except Exception as err:  # any failure to reach the store: its host is gone
                self._stop(f"lost the job's store at {self.address}, kept by machine rank 0's launcher ({err})")
            now = time.monotonic()
            for r, count in counts.items():
                if count != changed[r][0]:
                    changed[r] = (count, now)
            lost = [r for r, (count, since) in changed.items() if count < STOPPED and now - since > self.timeout]
            if lost:
                names = ", ".join(f"rank {r} ({self._who(r)})" for r in lost)
                self._stop(
                    f"lost {names}: no heartbeat for {self.timeout:g} s (killed, frozen, ended by an error of its "
                    f"own, or its machine down or cut off)"
                )

    def _who(self, rank: int) -> str:
        key = f"{self.prefix}/who/{rank}"
        return self.store.get(key).decode() if self.store.check([key]) else "machine rank unknown: it never beat"

    def _stop(self, why: str) -> None:
        """Say why and end this process (its main thread may be blocked in a collective)."""
        print(
            f"error: {why}; stopping rank {self.rank}. Run every machine's command again with --resume to "
            f"continue from {self.hint}",
            file=sys.stderr,
            flush=True,
        )
        sys.stdout.flush()
        os._exit(LOST_EXIT_CODE)

    def _excepthook(self, kind: type[BaseException], value: BaseException, traceback: object) -> None:
        """An error the main thread did not catch (gloo's 'Connection reset by peer', a collective's timeout)
        is most often a lost peer: give the watch the time to name it, which ends the process; else report it."""
        self.thread.join(self.timeout + 3 * BEAT)
        self._previous_hook(kind, value, traceback)


def timeouts(env: Mapping[str, str] = os.environ) -> tuple[float, float]:
    """(collective timeout, heartbeat timeout) in seconds, read before the processes join: a bad value stops
    every process at once, naming the variable."""
    collective = env_seconds("COLLECTIVE_TIMEOUT", COLLECTIVE_TIMEOUT, env)
    return collective, env_seconds("HEARTBEAT_TIMEOUT", HEARTBEAT_TIMEOUT, env)


def watch_peers(
    rank: int, world_size: int, timeout: float, hint: str, env: Mapping[str, str] = os.environ
) -> PeerWatch | None:
    """A PeerWatch for a job of several processes started by a launcher with a store (torchrun sets MASTER_ADDR
    and MASTER_PORT), else None."""
    if world_size < 2 or "MASTER_ADDR" not in env or "MASTER_PORT" not in env:
        return None
    return PeerWatch(rank, world_size, timeout, hint, env)
