"""Running statistics of the flow node for /diagnostics: counters, publish rate, latency percentiles.

Thread-safe: the ROS callback counts arrivals and drops, the worker records what it publishes,
and the diagnostics timer reads a snapshot.
"""
from __future__ import annotations

import threading
from collections import deque

import numpy as np

COUNTERS = ("received", "dropped", "bad", "oversized", "resets", "errors", "published")
"""received: frames that arrived; dropped: replaced before the worker took them; bad: not usable
images (malformed, or not a colour or mono image); oversized: larger than max_input_pixels,
refused before decoding; resets: pairs broken by a camera/size/encoding/time change; errors:
failed inferences; published: OpticalFlow messages sent."""


class FlowStats:
    """Counters plus rolling windows (the last ``window`` publications) of latency and inference time."""

    def __init__(self, window: int = 300, rate_window_s: float = 5.0):
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(COUNTERS, 0)
        self._latency_s: deque[float] = deque(maxlen=window)
        self._inference_s: deque[float] = deque(maxlen=window)
        self._published_at: deque[float] = deque(maxlen=window)
        self._rate_window_s = rate_window_s

    def count(self, name: str, n: int = 1) -> None:
        """Add ``n`` to counter ``name`` (one of COUNTERS)."""
        with self._lock:
            self._counts[name] += n

    def record_publish(self, now_s: float, latency_s: float, inference_s: float) -> None:
        """One OpticalFlow published at monotonic time ``now_s``, ``latency_s`` after its frame arrived."""
        with self._lock:
            self._counts["published"] += 1
            self._published_at.append(now_s)
            self._latency_s.append(latency_s)
            self._inference_s.append(inference_s)

    def snapshot(self, now_s: float) -> dict[str, float]:
        """Counters, publish rate (Hz, over the last few seconds) and latency/inference percentiles (ms)."""
        with self._lock:
            out: dict[str, float] = dict(self._counts)
            recent = [t for t in self._published_at if now_s - t <= self._rate_window_s]
            latency = np.array(self._latency_s) * 1000.0
            inference = np.array(self._inference_s) * 1000.0
        span = recent[-1] - recent[0] if recent else 0.0
        out["publish_rate_hz"] = (len(recent) - 1) / span if span > 0 else 0.0
        for name, values in (("latency", latency), ("inference", inference)):
            for pct in (50, 95):
                out[f"{name}_p{pct}_ms"] = float(np.percentile(values, pct)) if values.size else 0.0
            out[f"{name}_max_ms"] = float(values.max()) if values.size else 0.0
        return out
