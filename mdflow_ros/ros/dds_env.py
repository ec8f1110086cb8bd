"""The process environment that ROS 2 processes exchanging large images need (Fast DDS).

With Fast DDS' default transports, messages above ~512 kB (the default shared-memory
segment) are silently dropped at camera rates: a 640x480 rgb8 frame is 0.9 MB and its 32FC2
flow 2.4 MB. config/fastdds_large_data.xml gives every participant a 64 MB shared-memory
segment (plus UDP), which delivered every frame at 30 Hz here, where the builtin LARGE_DATA
transports lost a third to a half of them under CPU load. Every process on both ends of such a
topic needs it: the launch file and the harness (demo, benchmark, tests) set it, and the node
sets it for itself when the user has configured no Fast DDS transports.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

PROFILE_VARIABLE = "FASTDDS_DEFAULT_PROFILES_FILE"
TRANSPORT_VARIABLE = "FASTDDS_BUILTIN_TRANSPORTS"
PROFILE_NAME = "fastdds_large_data.xml"


def large_data_profile() -> Path | None:
    """config/fastdds_large_data.xml: from the source tree, else from an installed share/mdflow_ros."""
    candidates = [Path(__file__).resolve().parents[2] / "config" / PROFILE_NAME]
    prefixes = [*os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep), sys.prefix]
    candidates += [Path(p) / "share" / "mdflow_ros" / "config" / PROFILE_NAME for p in prefixes if p]
    return next((path for path in candidates if path.is_file()), None)


def transport_configured(environ: Mapping[str, str]) -> bool:
    """True when the environment already chooses Fast DDS transports (XML profile or builtin set)."""
    return bool(environ.get(PROFILE_VARIABLE) or environ.get(TRANSPORT_VARIABLE))


def large_data_settings() -> dict[str, str]:
    """The variables to set: the large-segment profile, or the builtin LARGE_DATA set when the file is missing."""
    profile = large_data_profile()
    return {PROFILE_VARIABLE: str(profile)} if profile else {TRANSPORT_VARIABLE: "LARGE_DATA"}


def large_data_environment(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """A copy of ``base`` (default os.environ) with the large-data settings unless transports are configured."""
    env = dict(os.environ if base is None else base)
    if not transport_configured(env):
        env.update(large_data_settings())
    return env


def use_large_data_transport() -> dict[str, str]:
    """Apply the large-data settings to this process (before rclpy.init); returns them ({} if already configured)."""
    if transport_configured(os.environ):
        return {}
    settings = large_data_settings()
    os.environ.update(settings)
    return settings
