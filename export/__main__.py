"""`python -m export COMMAND ...`: export the trained models to ONNX, then sample or reconstruct with
onnxruntime alone (only `onnx` imports torch).

    onnx -> sample | reconstruct | anomaly
"""

from __future__ import annotations

import sys

from common.cli import run_command_line

COMMANDS = {
    "onnx": ("export.onnx_export", "export a prior checkpoint and its VQ-VAE to ONNX (needs torch)"),
    "sample": ("export.runtime.sample", "generate brains with onnxruntime (no torch)"),
    "reconstruct": ("export.runtime.reconstruct", "encode and decode slices with onnxruntime (no torch)"),
    "anomaly": ("export.runtime.anomaly", "anomaly maps: heal the codes the prior finds unlikely (no torch)"),
}


def main(argv: list[str] | None = None) -> int:
    return run_command_line("python -m export", __doc__, COMMANDS, argv)


if __name__ == "__main__":
    sys.exit(main())
