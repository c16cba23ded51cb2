"""Child processes of the coordinator and the labs: executables, PATH, ports."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
from collections.abc import Callable
from pathlib import Path


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far.

    On Linux this is ``VmHWM`` of ``/proc/self/status``: the high-water mark of this program's own
    memory. ``getrusage``'s ``ru_maxrss`` is not: it survives ``fork`` and ``exec``, so a child started by a
    large parent reports at least the parent's size. Elsewhere ``ru_maxrss`` is the best there is.
    """
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    import resource

    peak = int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    return peak if sys.platform == "darwin" else peak * 1024


def own_executable(name: str) -> str:
    """Path of an executable (Flower's or fedarches') in the environment running fedarches."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


def with_own_bin_on_path(env: dict[str, str]) -> dict[str, str]:
    """``env`` with this environment's bin directory first on PATH.

    flower-superlink and flower-supernode start ``flower-superexec``, ``flwr-serverapp`` and
    ``flwr-clientapp`` by name; without this, a virtual environment that is not activated would
    make them fail (or run another installation's).
    """
    own = str(Path(sys.executable).parent)
    if env.get("PATH", "").split(os.pathsep)[0] != own:
        env["PATH"] = os.pathsep.join([own, env.get("PATH", "")])
    return env


def free_port() -> int:
    """A TCP port on loopback that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


SUPERNODE_PID_FILE = "supernode.pid"  # in a lab directory: process group of the SuperNode `join` runs


def signal_group(pgid: int, sig: int) -> None:
    """Send ``sig`` to process group ``pgid``; a group that is already gone is not an error."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def on_stop_signals(stop: Callable[[], None]) -> dict[str, bool]:
    """Call ``stop`` on SIGTERM or SIGINT; the returned dict's ``"requested"`` tells whether it happened."""
    state = {"requested": False}

    def handler(_signum: int, _frame: object) -> None:
        state["requested"] = True
        stop()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return state
