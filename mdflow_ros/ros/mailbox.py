"""A one-slot mailbox between a ROS callback and the worker: the newest item wins, nothing queues."""
from __future__ import annotations

import threading
from typing import Any


class LatestOnly:
    """Holds at most one item. ``put`` replaces an item the worker has not taken yet (a drop)."""

    def __init__(self):
        self._cond = threading.Condition()
        self._item: Any = None
        self._closed = False

    def put(self, item: Any) -> bool:
        """Store ``item`` as the newest; True when it replaced one that was never taken."""
        with self._cond:
            replaced = self._item is not None
            self._item = item
            self._cond.notify()
        return replaced

    def take(self, timeout: float | None = None) -> Any:
        """Wait for an item and remove it; None when closed or after ``timeout`` seconds."""
        with self._cond:
            self._cond.wait_for(lambda: self._item is not None or self._closed, timeout)
            item, self._item = self._item, None
            return None if self._closed else item

    @property
    def closed(self) -> bool:
        """True once close() was called."""
        return self._closed

    def close(self) -> None:
        """Wake the worker for good: every later take() returns None."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
