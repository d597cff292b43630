"""`python -m trainer COMMAND ...`: the data flow of both stages, in order; see each `--help`.

vqvae -> evaluate -> encode -> prior -> sample -> evaluate-prior -> anomaly
"""

from __future__ import annotations

import sys

from common.cli import missing_training_install, run_command_line

try:  # every command here trains or runs a torch model: a runtime-only install gets one line
    import torch  # noqa: F401
except ImportError as err:
    sys.exit(missing_training_install("python -m trainer", err))

COMMANDS = {
    "vqvae": ("trainer.stage1.train", "train the VQ-VAE (stage 1)"),
    "evaluate": ("trainer.stage1.evaluate", "SSIM/PSNR, codebook usage and figures of a trained VQ-VAE on a split"),
    "encode": ("trainer.stage2.encode", "encode every split with a frozen VQ-VAE into code grids (input of stage 2)"),
    "prior": ("trainer.stage2.train", "train the prior (transformer or gated PixelCNN) on code grids (stage 2)"),
    "sample": ("trainer.stage2.sample", "generate brains: sample code grids from the prior and decode them"),
    "evaluate-prior": ("trainer.stage2.evaluate", "test bits per code and accuracy, and how real generated brains are"),
    "anomaly": ("trainer.stage2.anomaly", "anomaly maps: heal the codes the prior finds unlikely, map the difference"),
}


def main(argv: list[str] | None = None) -> int:
    return run_command_line("python -m trainer", __doc__, COMMANDS, argv)


if __name__ == "__main__":
    sys.exit(main())
