"""Checkpoints that are safe to load and never half-written.

A checkpoint is a folder `step_0000250/` holding
    model.safetensors   weights and buffers (the EMA codebook included): loading runs no code
    NAME.safetensors    the weights of a module trained beside the model, when the run has one (stage 1's
                        discriminator.safetensors): only training reads them, never the commands that use the model
    state.pt            optimizer, scheduler, step, RNG states (and the optimizer of each module beside the model):
                        plain tensors and numbers, loaded with torch.load(weights_only=True)
    config.yaml         the config it was trained with
    *.json              facts the config does not hold (stage 2: the grid, K and the VQ-VAE it models)
    health.json         whether the weights are good: {"good": true} once a finite training loss was computed
                        from them or their evaluation was finite, {"good": false} when the loss that followed was
                        not finite (finite weights, e.g. about 1e30 after a huge lr, can still give a NaN loss);
                        absent while nothing has been seen after them
It is written as `.step_0000250.tmp/` and renamed when complete, so a crash mid-write leaves
the previous checkpoints intact (a failed or interrupted write removes it; a full disk is one line naming
it); only the newest `keep` are kept, and the newest good one besides.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import torch
import yaml
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from common.output_dir import OutputError, write_file_atomically
from trainer.run.config_file import build

STEP_DIR = re.compile(r"^step_(\d{7})$")
# What writing a checkpoint raises when the disk is full: OSError, torch.save's RuntimeError ("file write failed"),
# safetensors' own error
WRITE_ERRORS = (OSError, RuntimeError, SafetensorError)
HEALTH = "health.json"


def rng_state() -> dict:
    """torch's RNGs. Data order and quantizer restarts use their own seeded generators, and
    nothing draws from Python's or numpy's global RNG, so these are all a step can touch."""
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    directory: Path,
    step: int,
    model: torch.nn.Module,
    training_state: dict,
    config: dict,
    keep: int,
    extra_json: dict[str, dict] | None = None,
    beside: dict[str, torch.nn.Module] | None = None,
) -> Path:
    """Write checkpoint `step` atomically under `directory`, then prune to the newest `keep`. `beside` holds
    modules trained beside the model ({name: module}), saved as NAME.safetensors."""
    final = directory / f"step_{step:07d}"
    tmp = directory / f".step_{step:07d}.tmp"
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for name, module in {"model": model, **(beside or {})}.items():
            weights = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
            save_file(weights, tmp / f"{name}.safetensors")
        torch.save({**training_state, "step": step, "rng": rng_state()}, tmp / "state.pt")
        (tmp / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        for name, content in (extra_json or {}).items():
            (tmp / name).write_text(json.dumps(content, indent=1))
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
    except WRITE_ERRORS as err:  # a full disk: torch and safetensors raise their own types, naming no file
        raise OutputError(
            f"{final}: cannot write the checkpoint ({str(err).splitlines()[0]}); the checkpoints before it are kept"
        ) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # on any failure or interrupt: no hidden half-written checkpoint
    spared = last_good_checkpoint(directory)  # the newest checkpoints may be the ones that diverged
    for old in list_checkpoints(directory)[:-keep]:
        if old != spared:
            shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(directory: Path) -> list[Path]:
    """Complete checkpoints, oldest first (temporary folders are never listed)."""
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if p.is_dir() and STEP_DIR.match(p.name))


def checkpoint_health(checkpoint: Path) -> dict | None:
    """The checkpoint's health.json ({"good": bool, "why": str}), or None while nothing was seen after it."""
    try:
        health = json.loads((checkpoint / HEALTH).read_text())
    except (OSError, ValueError):
        return None
    return health if isinstance(health, dict) and isinstance(health.get("good"), bool) else None


def record_health(checkpoint: Path, good: bool, why: str) -> None:
    write_file_atomically(checkpoint / HEALTH, json.dumps({"good": good, "why": why}).encode())


def health_record(good: bool, why: str) -> dict[str, dict]:
    """health.json as an `extra_json` entry of save_checkpoint, for weights judged before they are saved."""
    return {HEALTH: {"good": good, "why": why}}


def last_good_checkpoint(directory: Path) -> Path | None:
    """The newest checkpoint known to be good (see health.json), the one to go back to after a divergence."""
    good = [p for p in list_checkpoints(directory) if (checkpoint_health(p) or {}).get("good")]
    return good[-1] if good else None


class CheckpointError(ValueError):
    """A checkpoint file is missing, truncated or not ours; the message names it."""


def weights_are_finite(*models: torch.nn.Module) -> bool:
    """Whether every weight and buffer is finite: a checkpoint of NaN weights is never worth writing."""
    return all(
        bool(torch.isfinite(v).all()) for model in models for v in model.state_dict().values() if v.is_floating_point()
    )


def load_weights(checkpoint: Path, name: str = "model") -> dict[str, torch.Tensor]:
    """The weights of NAME.safetensors: the model's, or those of a module trained beside it."""
    path = checkpoint / f"{name}.safetensors"
    if not path.is_file():
        raise CheckpointError(f"{path}: no {name} weights (is {checkpoint} a checkpoint folder?)")
    try:
        return load_file(path)
    except Exception as err:  # safetensors raises its own error types for a truncated or foreign file
        raise CheckpointError(f"{path}: not a readable safetensors file ({err}); truncated or foreign?") from None


def load_training_state(checkpoint: Path) -> dict:
    path = checkpoint / "state.pt"
    try:
        return torch.load(path, weights_only=True)
    except Exception as err:  # truncated zip, foreign pickle refused by weights_only, missing file
        raise CheckpointError(f"{path}: cannot load the training state ({str(err).splitlines()[0]})") from None


def load_checkpoint_config(checkpoint: Path) -> dict:
    path = checkpoint / "config.yaml"
    try:
        config = yaml.safe_load(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise CheckpointError(f"{path}: cannot read the checkpoint's config ({str(err).splitlines()[0]})") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: expected a YAML mapping")
    return config


PRIOR_INFO = "prior.json"  # in a stage-2 checkpoint: grid, K, conditions, and the VQ-VAE whose codes it models


def resolve_checkpoint(path: Path) -> Path:
    """A checkpoint folder, or a run folder (its newest checkpoint)."""
    if (path / "model.safetensors").is_file():
        return path
    found = list_checkpoints(path / "checkpoints")
    if not found:
        raise FileNotFoundError(f"{path}: neither a checkpoint folder nor a run folder with checkpoints/")
    return found[-1]


def load_state(model: nn.Module, checkpoint: Path) -> None:
    """Load a checkpoint's weights into `model`; weights of another architecture are an error naming it."""
    try:
        model.load_state_dict(load_weights(checkpoint))
    except RuntimeError as err:  # its first line only says "Error(s) in loading state_dict": name the first key
        detail = next((line.strip() for line in str(err).splitlines()[1:] if line.strip()), str(err))
        raise CheckpointError(f"{checkpoint / 'model.safetensors'}: weights of another model ({detail})") from None


def build_checked(cls: type, checkpoint: Path):
    """The config of `cls` from a checkpoint's config.yaml; another stage's config is an error naming it."""
    try:
        return build(cls, load_checkpoint_config(checkpoint), "")
    except CheckpointError:
        raise
    except (ValueError, TypeError, KeyError) as err:
        raise CheckpointError(f"{checkpoint}: not a {cls.__name__[:-6]} checkpoint ({err})") from None
