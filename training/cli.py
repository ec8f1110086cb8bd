"""What the training command lines share: a bad argument or a refused input is one line, ``<script>: <why>``.

train.py, evaluate.py and quantize_onnx.py parse with ``OneLineParser`` (argparse's usage block
becomes a pointer to --help) and report the errors they expect (missing or unreadable paths,
refused model files, bad configs and data) with ``error_line``; a traceback means a bug.
"""
from __future__ import annotations

import argparse


class OneLineParser(argparse.ArgumentParser):
    """argparse, with each command-line error as one line ``<prog>: <message> (see --help)``, status 2."""

    def error(self, message: str) -> None:
        self.exit(2, f"{self.prog}: {message} (see --help)\n")


def positive_int(text: str) -> int:
    """argparse type: an integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not at least 1")
    return value


def error_line(prog: str, err: BaseException) -> str:
    """``<prog>: <err>``, with an OSError written as ``<file>: <reason>``."""
    if isinstance(err, OSError) and err.strerror and err.filename:
        return f"{prog}: {err.filename}: {err.strerror}"
    return f"{prog}: {err}"
