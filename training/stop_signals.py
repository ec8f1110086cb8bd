"""SIGINT and SIGTERM during training: finish the step in flight, write the checkpoint there, then stop.

Training boxes are stopped by Ctrl-C, ``systemctl stop`` and ``docker stop``. Inside the training
loop (``Trainer.run``) the first SIGINT or SIGTERM becomes a request that the loop reads after each
step: it writes ``latest.pt`` at that step and raises ``TrainingStopped``, which the scripts report
in one line with the ``--resume`` to continue (exit status 128 + the signal's number, the shell's
convention for a stop by a signal). A second signal while the first is being honoured ends the
process at once; the last checkpoint stays. Data-loader workers ignore both signals
(``ignore_in_worker``, their ``worker_init_fn``): a Ctrl-C reaches the whole process group, and a
worker killed by it would take the batch of the step that is finishing; the main process ends
the workers itself.
"""
from __future__ import annotations

import logging
import signal
import threading
from types import FrameType, TracebackType

LOG = logging.getLogger("mdflow_ros.training")

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
"""The signals that stop training after the step in flight."""


class TrainingStopped(RuntimeError):
    """Training stopped on a signal after writing its checkpoint at ``step``."""

    def __init__(self, signum: int, step: int, checkpoint: str):
        self.signum, self.step = signum, step
        super().__init__(f"stopped by {signal.Signals(signum).name} at step {step}; checkpoint written to "
                         f"{checkpoint}; continue with --resume")

    @property
    def exit_status(self) -> int:
        return 128 + self.signum


class StopSignals:
    """While entered (in the main thread), records the first SIGINT/SIGTERM as ``received`` instead of
    ending the process; a second one exits at once with status 128 + its number."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in STOP_SIGNALS}
        return self

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is not None:
            raise SystemExit(128 + signum)
        self.received = signum
        LOG.warning("%s: stopping after the step in flight, with a checkpoint there (send it again to stop at once, "
                    "keeping the last checkpoint)", signal.Signals(signum).name)


def ignore_in_worker(worker_id: int) -> None:
    """A data-loader worker's ``worker_init_fn``: ignore the stop signals (the main process ends the worker)."""
    for number in STOP_SIGNALS:
        signal.signal(number, signal.SIG_IGN)
