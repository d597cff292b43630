"""The error every reader of input data raises: a bad file, named with its problem (exit 2, one line)."""

from __future__ import annotations


class DataError(Exception):
    """Bad input data; the message names the file (or folder) and the problem."""
