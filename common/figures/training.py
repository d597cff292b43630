"""Training's figure: the loss curves of a run's metrics log, training and validation."""

from __future__ import annotations

from pathlib import Path

from common.figures.style import (
    saved_figure,
)

LOSS_KEYS = {"loss": "total", "recon_loss": "reconstruction", "commitment_loss": "commitment"}


VAL_KEYS = {
    "val_ssim": "validation SSIM",
    "val_psnr": "validation PSNR (dB)",
    "val_bits_per_code": "validation bits per code",
    "val_accuracy": "validation top-1 accuracy",
}


def _series(history: list[dict], key: str) -> tuple[list[float], list[float]]:
    """(steps, values) of the rows that logged `key`; other rows are skipped."""
    rows = [row for row in history if row.get(key) is not None]
    return [row["step"] for row in rows], [float(row[key]) for row in rows]


def loss_curves(history: list[dict], path: Path) -> Path:
    """Training losses on one log axis (they differ by orders of magnitude), then one panel per
    validation metric that was logged, all sharing the step axis."""
    path = Path(path)
    val_keys = [key for key in VAL_KEYS if any(row.get(key) is not None for row in history)]
    with saved_figure(path, figsize=(7, 3 * (1 + len(val_keys)))) as fig:
        axes = fig.subplots(1 + len(val_keys), 1, sharex=True, squeeze=False)[:, 0]
        for key, label in LOSS_KEYS.items():
            steps, values = _series(history, key)
            if steps:
                axes[0].plot(steps, values, label=label)
        axes[0].set_yscale("log")
        axes[0].set_ylabel("training loss")
        if axes[0].get_lines():
            axes[0].legend()
        for ax, key in zip(axes[1:], val_keys, strict=True):
            ax.plot(*_series(history, key), marker="o")
            ax.set_ylabel(VAL_KEYS[key])
        for ax in axes:
            ax.grid(alpha=0.3)
        axes[-1].set_xlabel("step")
    return path
