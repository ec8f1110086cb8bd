"""One-off speed measurements on this machine, cached: what ``auto`` decides CPU choices from.

``backend="auto"`` takes OpenVINO over ONNX Runtime CPU only where OpenVINO measured faster on
this CPU, and ``precision="auto"`` the fastest checked precision; both decide from a timing made
once per machine and kept as a small JSON record in the cache (``$MDFLOW_CACHE``). The timing
is round-robin (the candidates' calls interleaved, the median of each), so host noise hits
them alike, and takes a few seconds. A record is keyed by everything that changes the answer:
the CPU (model name and vector extensions), the thread count, the library versions and the
graph; a missing, unreadable or foreign record is measured again, never trusted. A timing during
which other processes kept the CPUs busy (more than BUSY_SHARE of them, from /proc/stat) decides
for this run only and is not cached: the runtimes suffer unequally from contention (OpenVINO at
bf16 went from 55 to 126-210 ms next to a niced training job, ONNX Runtime from 185 to 204 ms), so
such a timing must not decide for good.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from mdflow_ros.files import atomic_write_bytes, file_sha256
from mdflow_ros.inference.backend import Backend
from mdflow_ros.inference.onnx_files import cache_dir

TIMING_SIZE = (384, 512)
"""Network (height, width) at which auto's one-off timings run (the size the benchmarks quote)."""
TIMING_ROUNDS = 5
"""Timed rounds of each candidate (after one warm-up round)."""
CHALLENGER_MARGIN = 0.9
"""A challenger (OpenVINO) replaces the incumbent (ONNX Runtime CPU) only at this fraction of its time
or less, so that a tie within timing noise keeps the default."""
BUSY_SHARE = 0.2
"""Share of the machine's CPU time that other processes may take during a timing for it to be cached."""
SIMD_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")
"""The CPU flags that change which runtime or precision is faster."""


def cpu_description() -> str:
    """The CPU's model name and vector extensions (from /proc/cpuinfo where there is one)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    fields = {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in info.splitlines()) if v}
    flags = [f for f in SIMD_FLAGS if f in fields.get("flags", "").split()]
    return f"{fields.get('model name', platform.machine())} ({platform.machine()}; {', '.join(flags) or 'no AVX'})"


def timing_pair(size: tuple[int, int] = TIMING_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Two (1, 3, H, W) float32 frames in [0, 1] for timing (a smooth random texture, shifted)."""
    rng = np.random.default_rng(0)
    height, width = size
    base = rng.random((1, 3, height // 8 + 2, width // 8 + 2), dtype=np.float32)
    img = np.repeat(np.repeat(base, 8, axis=2), 8, axis=3)
    return (np.ascontiguousarray(img[:, :, 1:height + 1, 1:width + 1]),
            np.ascontiguousarray(img[:, :, :height, 2:width + 2]))


def round_robin_ms(calls: dict[str, Callable[[], object]], rounds: int = TIMING_ROUNDS, warmup: int = 1,
                   pause_s: float = 0.0) -> dict[str, float]:
    """Median milliseconds of each zero-argument call, the calls interleaved for ``rounds`` rounds
    (the order rotating every round) after ``warmup`` warm-up rounds, ``pause_s`` seconds before each call."""
    names = list(calls)
    for _ in range(warmup):
        for name in names:
            calls[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for i in range(rounds):
        for name in names[i % len(names):] + names[:i % len(names)]:
            time.sleep(pause_s)
            start = time.perf_counter()
            calls[name]()
            times[name].append(1000.0 * (time.perf_counter() - start))
    return {name: statistics.median(t) for name, t in times.items()}


def record_path(kind: str, key: dict[str, object]) -> Path:
    """Where the record of ``kind`` for ``key`` lives in the cache (one file per key)."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir() / "timings" / f"{kind}-{digest}.json"


def read_record(kind: str, key: dict[str, object]) -> dict | None:
    """The cached record of ``kind`` for exactly ``key``, or None (missing, unreadable or another key's)."""
    try:
        record = json.loads(record_path(kind, key).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("key") == key else None


def write_record(kind: str, key: dict[str, object], values: dict) -> Path:
    """Cache ``values`` as the record of ``kind`` for ``key`` (atomically); returns its path."""
    path = record_path(kind, key)
    atomic_write_bytes(path, json.dumps({"key": key, **values}, indent=1, sort_keys=True).encode())
    return path


def _busy_cpu_seconds() -> float | None:
    """CPU seconds all processes have spent busy since boot (every /proc/stat state but idle and iowait),
    or None where there is no /proc/stat."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    except OSError:
        return None
    ticks = [int(v) for v in fields[1:9]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def others_share(measure: Callable[[], dict]) -> tuple[dict, float | None]:
    """``measure()``'s result and the share (0-1) of the machine's CPU time that other processes used
    while it ran (None where unknown): all busy CPU time minus this process's, over wall time x CPUs."""
    busy, own, start = _busy_cpu_seconds(), time.process_time(), time.perf_counter()
    result = measure()
    if busy is None:
        return result, None
    wall = time.perf_counter() - start
    others = (_busy_cpu_seconds() - busy) - (time.process_time() - own)
    return result, max(0.0, others) / (wall * (os.cpu_count() or 1))


def timed_record(kind: str, key: dict[str, object], measure: Callable[[], dict]) -> tuple[dict, str]:
    """The record of ``kind`` for ``key``: cached, or ``measure()``d now and cached when the machine was
    quiet meanwhile (other processes under BUSY_SHARE of the CPU time); and where it came from."""
    record = read_record(kind, key)
    if record is not None:
        return record, f"measured once on this machine: {record_path(kind, key)}"
    record, share = others_share(measure)
    if share is not None and share > BUSY_SHARE:
        return record, (f"measured now while other processes used {share:.0%} of the CPUs: decides for this run only, "
                        "not cached (measured again at the next start)")
    return record, f"measured now, cached in {write_record(kind, key, record)}"


def faster_backend(challenger: Backend, incumbent: Backend, size: tuple[int, int] = TIMING_SIZE) -> tuple[Backend, str]:
    """The backend to run at ``size`` on this machine, and why: ``challenger`` when it measured at most
    CHALLENGER_MARGIN of ``incumbent``'s time, else ``incumbent``; from the cached record, or from
    a round-robin timing made now (and cached if the machine was quiet, see ``timed_record``).

    The record is keyed by the CPU, both backends' descriptions (library versions, precision,
    threads, file) and the graph file's digest, so a new library, CPU or model is timed again.
    """
    onnx = [str(getattr(b, "onnx_path", "")) for b in (challenger, incumbent)]
    key = {"cpu": cpu_description(), "size": list(size), "backends": [challenger.description, incumbent.description],
           "graphs": [file_sha256(p) if p else "" for p in onnx]}
    def measure() -> dict:
        a, b = timing_pair(size)
        ms = round_robin_ms({"challenger": lambda: challenger.run(a, b), "incumbent": lambda: incumbent.run(a, b)})
        return {"challenger_ms": ms["challenger"], "incumbent_ms": ms["incumbent"]}

    record, where = timed_record("cpu-backend", key, measure)
    where = f"{where}; round-robin at {size[1]}x{size[0]}"
    wins = record["challenger_ms"] <= CHALLENGER_MARGIN * record["incumbent_ms"]
    times = (f"{challenger.name} {record['challenger_ms']:.0f} ms, {incumbent.name} {record['incumbent_ms']:.0f} ms; "
             f"the challenger needs at most {CHALLENGER_MARGIN:.0%} of the time")
    return (challenger if wins else incumbent), f"{times} ({where})"
