"""`python -m data_tools COMMAND ...`: scans -> shards, the first step of the data flow; see each `--help`.

shard -> verify | preview;  lesions: a labelled synthetic-lesion set to score anomaly maps on
"""

from __future__ import annotations

import sys

from common.cli import missing_training_install, run_command_line

try:  # the shard writer needs webdataset (the training extra): a runtime-only install gets one line
    import webdataset  # noqa: F401
except ImportError as err:
    sys.exit(missing_training_install("python -m data_tools", err))

COMMANDS = {
    "shard": ("data_tools.shard", "write the OASIS PNG layout as WebDataset shards + manifest"),
    "verify": ("data_tools.verify", "re-read every shard and check it against manifest.json"),
    "preview": ("data_tools.preview", "write a PNG contact sheet of samples decoded from the shards"),
    "lesions": ("data_tools.lesions", "paint synthetic lesions into half of a split's slices, with their masks"),
}


def main(argv: list[str] | None = None) -> int:
    return run_command_line("python -m data_tools", __doc__, COMMANDS, argv)


if __name__ == "__main__":
    sys.exit(main())
