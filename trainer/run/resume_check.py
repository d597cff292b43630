"""What a resumed run must share with the checkpoint it continues: the model its config builds (the config
sections its class names in MODEL_SECTIONS) and the facts recorded beside the weights (stage 2's prior.json: the
grid, K and the VQ-VAE of its codes). Compared before any weight is loaded, so that a changed architecture is
named key by key instead of surfacing as state_dict errors that make every valid checkpoint look broken. Other
changed keys (`train.max_steps`, `out_dir`, ...) are allowed, and said."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from common.json_file import read_json_object
from trainer.run.checkpoint import CheckpointError, build_checked
from trainer.run.config_file import config_to_dict

RUN_ONLY = ("compile",)  # keys of a model section that say how the model runs, not what it is


class ResumeMismatch(ValueError):
    """The run's config or codes describe another model than the checkpoint's; the message names the keys."""


def flatten(values: dict, prefix: str = "") -> dict[str, Any]:
    """{"model": {"channels": 16}} -> {"model.channels": 16}."""
    flat = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        flat.update(flatten(value, f"{name}.") if isinstance(value, dict) else {name: value})
    return flat


def config_changes(config: Any, checkpoint: Path) -> tuple[list[str], list[str]]:
    """The keys whose values differ between `config` and the checkpoint's config.yaml, as
    'key (old in the checkpoint, new now)': (those that change the model, the others)."""
    recorded = flatten(config_to_dict(build_checked(type(config), checkpoint)))
    now = flatten(config_to_dict(config))
    sections = getattr(type(config), "MODEL_SECTIONS", ("model",))
    model, other = [], []
    for key in sorted(set(recorded) | set(now)):
        if recorded.get(key) != now.get(key):
            said = f"{key} ({recorded.get(key)} in the checkpoint, {now.get(key)} now)"
            builds_model = key.split(".")[0] in sections and key.split(".")[-1] not in RUN_ONLY
            (model if builds_model else other).append(said)
    return model, other


def check_resumable(checkpoint: Path, config: Any, facts: dict[str, tuple[Path, dict]]) -> list[str]:
    """Raise ResumeMismatch when `config` builds another model than the checkpoint's config.yaml, or when a fact
    of `facts` ({json file in the checkpoint: (the file the run took it from, {key: value})}) differs from what
    the checkpoint recorded. Returns the other changed config keys. A checkpoint whose config.yaml or json file
    cannot be read is a CheckpointError (it is broken: the caller tries an older one)."""
    model, other = config_changes(config, checkpoint)
    if model:
        raise ResumeMismatch(
            f"{checkpoint / 'config.yaml'}: --resume continues the same model, but the run's config differs in "
            f"{', '.join(model)}; restore those values, or choose another out_dir for a new run"
        )
    for name, (source, values) in facts.items():
        path = checkpoint / name
        try:
            recorded = read_json_object(path)
        except (OSError, ValueError) as err:
            raise CheckpointError(str(err)) from None
        for key, value in values.items():
            if recorded.get(key) != value:
                raise ResumeMismatch(
                    f"{path}: {key} is {recorded.get(key)!r}, but {source} has {value!r} (it changed since this "
                    f"run started); resume with what the checkpoint was trained on, or choose another out_dir"
                )
    return other
