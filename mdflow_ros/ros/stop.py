"""How the flow node stops on SIGINT and SIGTERM: promptly, with status 0, without a traceback or an abort.

rclpy's own signal handlers are not used (the node calls ``rclpy.init`` with
``SignalHandlerOptions.NO``): they shut the context down under a node that is still loading its
model, and leave the interpreter to finish while the worker thread is inside ONNX Runtime or
PyTorch, which aborts the process (``terminate called without an active exception``). Instead:

- from the first line of the entry point (mdflow_ros/node.py, before rclpy, numpy or a backend
  is imported) until the node spins, a signal ends the process at once with status 0: nothing is
  held that needs cleaning up, and a model still loading or exporting is abandoned;
- while the node spins, a signal only sets ``requested``; the spin loop (which wakes every
  SPIN_PERIOD_S) then returns, the node cancels an inference in flight, gives its worker up to
  WORKER_DEADLINE_S, destroys itself and returns 0; a worker still busy after that (an
  inference that cannot be interrupted) is abandoned with ``exit_now(0)``;
- a second signal while stopping exits at once.

Only this module and the entry point know about signals; it imports nothing but the standard library.
"""
from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Any

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
SPIN_PERIOD_S = 0.1
"""Longest time the spin loop waits before it looks at ``requested``."""
WORKER_DEADLINE_S = 0.5
"""Longest time a stopping node waits for its worker, so that the whole stop stays well under 2 s."""


def exit_now(code: int) -> None:
    """End the process at once with ``code``: flush the logs, skip the interpreter's finalisation
    (which aborts while a thread is inside ONNX Runtime or PyTorch)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


class StopSignals:
    """SIGINT / SIGTERM handling of the node process (see the module docstring); install() it first thing."""

    def __init__(self):
        self.requested = threading.Event()
        self._deferred = False

    @classmethod
    def install(cls) -> StopSignals:
        """Handle STOP_SIGNALS from now on (main thread only): exit at once until ``defer()`` is called."""
        stop = cls()
        for number in STOP_SIGNALS:
            signal.signal(number, stop._handle)
        return stop

    def defer(self) -> None:
        """The node spins now: a signal sets ``requested`` for the spin loop instead of exiting at once."""
        self._deferred = True

    def _handle(self, number: int, frame: Any) -> None:
        if not self._deferred or self.requested.is_set():
            exit_now(0)
        self.requested.set()
