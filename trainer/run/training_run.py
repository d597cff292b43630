"""What both training stages share around their loop: the Accelerator, resuming, the window of metrics summed
between two reports, divergence checks and checkpoints. The metrics log, wandb, the LR schedule and the
launcher check are modules of their own beside this one. The loops themselves (stage1/train.py,
stage2/train.py) stay plain PyTorch and read top to bottom; this module only keeps them from repeating each
other.

Gradient accumulation is Accelerate's own: each micro-step runs inside `accelerator.accumulate(model)`
(no gradient all-reduce but on the last one; `accelerator.backward` divides the loss by `grad_accum`),
and the optimizer steps once per `grad_accum` micro-steps.

A module trained beside the model with an optimizer of its own (stage 1's discriminator) is a Companion: restored,
compiled, wrapped for the devices and saved with the model, so a resumed run continues it exactly too.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator, DistributedDataParallelKwargs, InitProcessGroupKwargs

from common.output_dir import OutputError
from trainer.run.checkpoint import (
    CheckpointError,
    checkpoint_health,
    health_record,
    last_good_checkpoint,
    list_checkpoints,
    load_training_state,
    load_weights,
    record_health,
    save_checkpoint,
    set_rng_state,
    weights_are_finite,
)
from trainer.run.config_file import config_to_dict
from trainer.run.launcher import _launcher_cmdline, process_report, requested_processes
from trainer.run.metrics_file import read_metrics
from trainer.run.peers import timeouts, watch_peers
from trainer.run.resume_check import ResumeMismatch, check_resumable
from trainer.run.train_config import TrainConfig, WandbConfig
from trainer.run.wandb_logging import quiet_wandb, wandb_location, wandb_mode


class TrainingDiverged(ValueError):
    """The loss or the weights became NaN or Inf; the message names the step and the last good checkpoint.
    A ValueError, so the command line ends with that one line and exit 2: the config's values (learning
    rate, clipping) are what to change."""


def diverged(what: str, step: int, checkpoints: Path) -> TrainingDiverged:
    """The stop, naming the newest checkpoint a finite loss or evaluation followed (see checkpoint.py): the
    newest one saved may hold finite weights (about 1e30 after a huge lr) that give a NaN loss."""
    good = last_good_checkpoint(checkpoints)
    return TrainingDiverged(
        f"{what} by step {step}; stopping. Last good checkpoint: {good or 'none'} "
        "(lower train.lr, or keep train.grad_clip on)"
    )


def is_due(step: int, every: int, last: int) -> bool:
    return step % every == 0 or step == last


@dataclass
class Companion:
    """A module trained beside the model with an optimizer of its own. TrainingRun.start restores both from the
    checkpoint it resumes (NAME.safetensors, the optimizer's state in state.pt), compiles the module when the model
    is (`compiled`: torch.compile's module, or the module itself), wraps it for the devices (`wrapped`: DDP on several
    processes) and replaces `optimizer` by the prepared one; every checkpoint saves them. `built_by` names the config
    keys that shape the module, for the message when a checkpoint holds one of another shape."""

    name: str
    module: torch.nn.Module
    optimizer: torch.optim.Optimizer
    built_by: str
    compiled: torch.nn.Module | None = None
    wrapped: torch.nn.Module | None = None


class TrainingRun:
    """One run folder: `checkpoints/`, `metrics.jsonl`, `figures/` and (when enabled) wandb's files."""

    def __init__(self, out_dir: str, train: TrainConfig, wandb: WandbConfig, resume: bool):
        self.out = Path(out_dir)
        self.checkpoints = self.out / "checkpoints"
        self.metrics_file = self.out / "metrics.jsonl"
        self.train, self.wandb, self.resume = train, wandb, resume
        if self.out.exists() and not self.out.is_dir():
            raise OutputError(f"{self.out}: out_dir exists and is not a folder")
        if list_checkpoints(self.checkpoints) and not resume:
            raise FileExistsError(
                f"{self.checkpoints} already holds checkpoints: pass --resume to continue that "
                f"run, or choose another out_dir"
            )
        collective_timeout, heartbeat_timeout = timeouts()
        self.accelerator = Accelerator(
            # Without cpu=True, Accelerate on a CUDA-less machine ignores torchrun's ranks and every
            # process trains alone; with it, the processes form one gloo job.
            cpu=not torch.cuda.is_available(),
            mixed_precision=train.mixed_precision,
            gradient_accumulation_steps=train.grad_accum,
            log_with="wandb" if wandb.enabled else None,
            project_dir=str(self.out),
            # Stage 1's buffers are kept identical by the quantizer's own all-reduce; DDP's broadcast
            # of rank 0's buffers at every forward would only cost bandwidth.
            kwargs_handlers=[
                DistributedDataParallelKwargs(broadcast_buffers=False),
                InitProcessGroupKwargs(timeout=timedelta(seconds=collective_timeout)),
            ],
        )
        # Several processes: each watches the others' heartbeat, so a lost one stops the job (trainer/run/peers.py).
        hint = f"the newest checkpoint in {self.checkpoints}"
        self.watch = watch_peers(
            self.accelerator.process_index, self.accelerator.num_processes, heartbeat_timeout, hint
        )
        if self.accelerator.is_main_process:
            requested = requested_processes(_launcher_cmdline(), dict(os.environ))
            for line in process_report(self.accelerator.num_processes, self.accelerator.device, requested):
                print(line, file=sys.stderr if line.startswith("warning") else sys.stdout)
        self.window: torch.Tensor | None = None  # metrics summed over the micro-steps since the last report
        self.window_steps, self.window_start = 0, time.perf_counter()
        # Checkpoints whose weights no report has judged yet (health.json), and the last step whose evaluation
        # was finite: the weights saved at that step are good without waiting for the next loss.
        self.unjudged: list[Path] = []
        self.evaluated_at = -1
        self.companions: list[Companion] = []
        # The gradients of 1x1 convolutions come back with other strides on their size-1 axes than
        # the weights have; DDP then copies them (a few KiB) and warns at every backward.
        warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")

    def start(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        config: Any,
        facts: dict[str, tuple[Path, dict]] | None = None,
        companions: Sequence[Companion] = (),
    ) -> tuple[torch.nn.Module, torch.optim.Optimizer, int]:
        """Restore the newest checkpoint when resuming (`config` and `facts` must describe its model:
        trainer/run/resume_check.py), wrap model and optimizer, and the companions', for the devices (compiling
        first if asked), open the logs. Returns (wrapped model, optimizer, start step)."""
        accelerator, start_step, kept_rows = self.accelerator, 0, []
        self.companions = list(companions)
        if self.resume:
            start_step = self.restore(model, optimizer, scheduler, config, facts or {})
            self.check_same_start(start_step)
            if self.metrics_file.is_file() and start_step:  # drop rows logged after the checkpoint we resume from
                rows, torn = read_metrics(self.metrics_file)
                if torn:
                    accelerator.print(f"{self.metrics_file}: dropped its torn last line (left by a crash)")
                kept_rows = [json.dumps(r) for r in rows if r["step"] <= start_step]

        trained = torch.compile(model) if self.train.compile else model
        with warnings.catch_warnings():  # torch renames broadcast_buffers; Accelerate cannot pass the new name yet
            warnings.filterwarnings("ignore", message="`broadcast_buffers` is deprecated", category=FutureWarning)
            trained, optimizer = accelerator.prepare(trained, optimizer)
            for companion in self.companions:
                companion.compiled = torch.compile(companion.module) if self.train.compile else companion.module
                companion.wrapped, companion.optimizer = accelerator.prepare(companion.compiled, companion.optimizer)
        if accelerator.is_main_process:
            self.out.mkdir(parents=True, exist_ok=True)
            self.write_metrics("".join(r + "\n" for r in kept_rows), "w")
        if self.wandb.enabled:
            quiet_wandb()
            accelerator.init_trackers(
                self.wandb.project,
                config=config_to_dict(config),
                init_kwargs={
                    "wandb": {"mode": wandb_mode(self.wandb.mode), "dir": str(self.out), "name": self.out.name}
                },
            )
        self.window_start = time.perf_counter()
        return trained, optimizer, start_step

    def restore(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        config: Any,
        facts: dict[str, tuple[Path, dict]],
    ) -> int:
        """Load the newest checkpoint that loads (saying which, and why a newer one was passed over);
        returns its step, or 0, saying so, when there is none: --resume on a new run starts it fresh.
        A run whose config or facts describe another model stops, naming what differs (ResumeMismatch),
        before any weights load: its checkpoints are not broken, and none is passed over."""
        found = list_checkpoints(self.checkpoints)
        if not found:
            self.accelerator.print(f"--resume: no checkpoint in {self.checkpoints}; starting a fresh run")
            return 0
        for checkpoint in reversed(found):
            health = checkpoint_health(checkpoint)
            if health and not health["good"]:
                self.accelerator.print(f"cannot resume from {checkpoint}: {health['why']}; trying an older checkpoint")
                continue
            try:
                weights, state = load_weights(checkpoint), load_training_state(checkpoint)
                changed = check_resumable(checkpoint, config, facts)
                model.load_state_dict(weights)
                self.restore_companions(checkpoint, state)
            except (CheckpointError, RuntimeError) as err:
                self.accelerator.print(f"cannot resume from {checkpoint}: {err}; trying an older checkpoint")
                continue
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            set_rng_state(state["rng"])
            self.accelerator.print(f"resuming from {checkpoint} (step {state['step']})")
            if changed:
                self.accelerator.print(f"--resume with changed {', '.join(changed)}")
            self.unjudged = [] if health else [checkpoint]
            return state["step"]
        raise CheckpointError(
            f"{self.checkpoints}: no checkpoint loads (see above); remove them or choose another out_dir"
        )

    def restore_companions(self, checkpoint: Path, state: dict) -> None:
        """Load each companion and its optimizer from `checkpoint`; one the checkpoint lacks (the run trained
        without it until now) starts untrained, saying so. A companion of another shape stops the run
        (ResumeMismatch): the checkpoint is not broken, the config differs."""
        for companion in self.companions:
            path = checkpoint / f"{companion.name}.safetensors"
            if not path.is_file():
                self.accelerator.print(f"{checkpoint} holds no {companion.name}: it starts untrained")
                continue
            weights = load_weights(checkpoint, companion.name)
            try:
                companion.module.load_state_dict(weights)
            except RuntimeError as err:
                raise ResumeMismatch(
                    f"{path}: a {companion.name} of another shape than this run's ({str(err).splitlines()[0]}); "
                    f"resume with the {companion.built_by} of {checkpoint / 'config.yaml'}, or choose another out_dir"
                ) from None
            optimizer_state = state.get("companions", {}).get(companion.name)
            if optimizer_state is None:
                raise CheckpointError(f"{checkpoint / 'state.pt'}: no optimizer state for the {companion.name}")
            companion.optimizer.load_state_dict(optimizer_state)

    def check_same_start(self, step: int) -> None:
        """Every process must resume from the same step: a machine that sees another out_dir (no shared
        filesystem) would start elsewhere and train out of step with the others."""
        if self.accelerator.num_processes == 1:
            return
        steps = self.accelerator.gather(torch.tensor([step], device=self.accelerator.device)).tolist()
        if len(set(steps)) > 1:
            raise CheckpointError(
                f"--resume: the processes found different newest checkpoints in {self.checkpoints} (step by "
                f"rank: {steps}); out_dir must be one folder every machine sees (a shared filesystem)"
            )

    def add_metrics(self, *values: torch.Tensor) -> None:
        """Add one micro-step's metrics (the loss first) to the window, on the device: no host sync."""
        stacked = torch.stack(values).detach()
        self.window = stacked if self.window is None else self.window + stacked

    def optimizer_step(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any) -> None:
        """After the last micro-step: clip gradients (if configured), step, clear the gradients, advance the
        schedule."""
        self.clip_and_step(model.parameters(), optimizer)
        scheduler.step()
        self.window_steps += 1

    def clip_and_step(self, parameters: Iterable[torch.nn.Parameter], optimizer: torch.optim.Optimizer) -> None:
        """Clip the gradients of `parameters` to train.grad_clip (if set), step `optimizer`, clear them."""
        if self.train.grad_clip:
            self.accelerator.clip_grad_norm_(parameters, self.train.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def reports_at(self, step: int) -> bool:
        """Whether `step` logs, evaluates or checkpoints (the only steps that sync with the host)."""
        tc = self.train
        return any(is_due(step, every, tc.max_steps) for every in (tc.log_every, tc.eval_every, tc.checkpoint_every))

    def take_window(self, step: int, names: Sequence[str] = ("loss",)) -> tuple[list[float], int, float]:
        """(per-micro-step means of the window's metrics over all ranks, optimizer steps and seconds it
        spans), then empty it (its clock restarts after `log`, so evaluation time is not training time).
        One host sync; stops the run on NaN/Inf in any metric (a loss, a discriminator's too), naming the first by
        `names` (the metrics' names in the order add_metrics takes them)."""
        means = (self.accelerator.reduce(self.window, "mean") / (self.window_steps * self.train.grad_accum)).tolist()
        bad = [i for i, mean in enumerate(means) if not math.isfinite(mean)]
        self.judge(not bad, f"{'a non-finite' if bad else 'a finite'} loss followed (reported at step {step})")
        if bad:
            name = names[bad[0]] if bad[0] < len(names) else f"metric {bad[0]}"
            raise diverged(f"{name} became {means[bad[0]]}", step, self.checkpoints)
        taken = (means, self.window_steps, time.perf_counter() - self.window_start)
        self.window, self.window_steps = None, 0
        return taken

    def judge(self, good: bool, why: str) -> None:
        """Record in the checkpoints saved since the last report whether the loss computed from their weights
        (each window holds the first step after them) was finite."""
        if self.accelerator.is_main_process:
            for checkpoint in self.unjudged:
                record_health(checkpoint, good, why)
        self.unjudged = []

    def log(self, record: dict, images: dict[str, Path] | None = None) -> None:
        """Append a metrics row (main process) and send it, with any figures, to the trackers; the
        next window's clock starts here. Finite validation metrics (`val_*`) make this step's weights good."""
        step = record["step"]
        evaluation = [value for key, value in record.items() if key.startswith("val_")]
        if evaluation and all(map(math.isfinite, evaluation)):
            self.evaluated_at = step
        if self.wandb.enabled and images and self.accelerator.is_main_process:
            import wandb

            self.accelerator.get_tracker("wandb", unwrap=True).log(
                {name: wandb.Image(str(path)) for name, path in images.items()}, step=step
            )
        self.accelerator.log(record, step=step)
        if self.accelerator.is_main_process:
            self.write_metrics(json.dumps(record) + "\n", "a")
        self.window_start = time.perf_counter()

    def write_metrics(self, text: str, mode: str) -> None:
        """Write to metrics.jsonl; a full disk is one line naming it (the OS names no file)."""
        try:
            with self.metrics_file.open(mode) as f:
                f.write(text)
        except OSError as err:
            raise OutputError(f"{self.metrics_file}: cannot write the metrics ({err.strerror or err})") from None

    def save(
        self,
        step: int,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        config: Any,
        extra_json: dict[str, dict] | None = None,
    ) -> None:
        """Write checkpoint `step`, unless its weights are not finite: then stop without saving them (the loss
        of a step is computed before its update, so a finite loss does not mean finite weights). Weights
        evaluated finite at this step are saved as good; others wait for the next report's loss."""
        if not weights_are_finite(model, *(c.module for c in self.companions)):  # the same on every rank: all stop
            raise diverged("weights became NaN/Inf (not saved)", step, self.checkpoints)
        evaluated = self.evaluated_at == step
        if evaluated:
            extra_json = {**(extra_json or {}), **health_record(True, f"finite evaluation at step {step}")}
        if self.accelerator.is_main_process:
            state = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}
            if self.companions:
                state["companions"] = {c.name: c.optimizer.state_dict() for c in self.companions}
            saved = save_checkpoint(
                self.checkpoints,
                step,
                model,
                state,
                config_to_dict(config),
                self.train.keep_checkpoints,
                extra_json,
                beside={c.name: c.module for c in self.companions},
            )
            self.unjudged += [] if evaluated else [saved]
        self.accelerator.wait_for_everyone()

    def finish(self) -> Path:
        if self.watch:  # after the last collective: this process is done, not lost
            self.watch.stop()
        location = (
            wandb_location(self.accelerator.get_tracker("wandb", unwrap=True))
            if self.wandb.enabled and self.accelerator.is_main_process
            else None
        )
        self.accelerator.end_training()
        if location:
            print(location, file=sys.stderr)
        final = list_checkpoints(self.checkpoints)[-1]
        self.accelerator.print(f"final checkpoint: {final}")
        return final
