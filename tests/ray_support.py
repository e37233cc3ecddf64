"""Ray for tests: a private network namespace with only loopback, and small local clusters.

Ray opens connections to its own external address unless it is alone in a network
namespace, so every Ray test runs inside one: `netns_command(argv)` prefixes a command with
`unshare --net` (adding `--map-root-user` where plain unshare needs privileges we lack),
and the process inside calls `loopback_up()` first. `RAY_TMPDIR` points Ray at a private
temporary directory, so that nothing of another Ray on this machine (its
`/tmp/ray/ray_current_cluster`, its sockets) is seen or touched.
"""

from __future__ import annotations

import fcntl
import functools
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

NETNS_ENV = "THREADLAB_RAY_NETNS"  # set inside the private namespace
LOOPBACK = "127.0.0.1"
_SIOCGIFFLAGS, _SIOCSIFFLAGS, _IFF_UP = 0x8913, 0x8914, 0x1


def loopback_up() -> None:
    """Bring `lo` up in this (new) network namespace; no other interface is touched."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        ifr = fcntl.ioctl(s, _SIOCGIFFLAGS, struct.pack("16sH", b"lo", 0))
        flags = struct.unpack("16sH", ifr[:18])[1]
        fcntl.ioctl(s, _SIOCSIFFLAGS, struct.pack("16sH", b"lo", flags | _IFF_UP))


def interfaces() -> list[str]:
    return sorted(name for _, name in socket.if_nameindex())


def inside() -> bool:
    return os.environ.get(NETNS_ENV) == "1"


@functools.cache
def netns_prefix() -> tuple[list[str] | None, str]:
    """(the unshare prefix that works here, or None; why not)."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return None, "`unshare` (util-linux) is not installed"
    reasons = []
    for prefix in ([unshare, "--net"], [unshare, "--net", "--map-root-user"]):
        probe = [*prefix, sys.executable, "-c", "import socket; print(socket.if_nameindex())"]
        try:
            done = subprocess.run(probe, capture_output=True, text=True, timeout=30, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            reasons.append(f"{' '.join(prefix)}: {exc}")
            continue
        if done.returncode == 0:
            return prefix, ""
        reasons.append(f"{' '.join(prefix)}: {done.stderr.strip()[-200:]}")
    return None, "cannot create a private network namespace: " + "; ".join(reasons)


def netns_env(tmp: Path) -> dict[str, str]:
    """The environment of a process run inside the namespace."""
    ray_tmp = Path(tempfile.mkdtemp(prefix="tlray", dir="/tmp"))  # short: Ray's socket paths
    (ray_tmp / "ray").mkdir()
    env = dict(os.environ)
    for key in [k for k in env if k.startswith("RAY_")]:
        del env[key]
    env.update({NETNS_ENV: "1", "RAY_TMPDIR": str(ray_tmp), "RAY_USAGE_STATS_ENABLED": "0",
                "THREADLAB_RAY_WORKDIR": str(tmp / "ray-workers")})
    (tmp / "ray-workers").mkdir(parents=True, exist_ok=True)
    return env


def start_cluster(num_cpus: int = 2, **head: Any):
    """A local Ray cluster (ray.cluster_utils.Cluster) on 127.0.0.1, kept small."""
    from ray.cluster_utils import Cluster

    args = dict(num_cpus=num_cpus, include_dashboard=False, object_store_memory=80 << 20,
                node_ip_address=LOOPBACK, temp_dir=os.path.join(os.environ["RAY_TMPDIR"], "ray"))
    args.update(head)
    return Cluster(initialize_head=True, head_node_args=args, shutdown_at_exit=True)
