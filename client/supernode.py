"""Run the lab's Flower SuperNode: TLS to the SuperLink, node authentication, the lab's settings.

The node config (where the lab's data is, where results go) is written to
``LAB_DIR/node-config.toml`` and handed to ``flower-supernode --node-config``: it never leaves
the lab, and paths with spaces survive.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w

from fedarches.client.lab import LabDir
from fedarches.shared._io import atomic_write_bytes
from fedarches.shared.errors import FederationError

# flower-supernode exit codes worth explaining (flwr.common.exit.ExitCode, 1.41).
_EXIT_HELP = {
    305: (
        "the SuperLink refused this lab: its key is not registered, or the SuperLink is not reachable",
        "ask the atlas maintainers to run `fedarches-server add-lab` with this lab's supernode.pub, "
        "and check --superlink",
    ),
}


@dataclass(frozen=True)
class JoinSettings:
    """What ``fedarches-client join`` runs with."""

    lab: LabDir
    superlink: str
    data_path: Path
    out_dir: Path
    batch_key: str | None = None
    layer: str | None = None
    threads: int | None = None
    port: int = 0
    egress_copy: bool = False
    extra_mods: str = ""

    def node_config(self) -> dict[str, Any]:
        config: dict[str, Any] = {
            "lab-dir": str(self.lab.root),
            "data-path": str(Path(self.data_path).resolve()),
            "out-dir": str(Path(self.out_dir).resolve()),
            "batch-key": self.batch_key or "",
            "layer": self.layer or "",
            "threads": int(self.threads or 0),
            "egress-copy": self.egress_copy,
        }
        if self.extra_mods:
            config["extra-mods"] = self.extra_mods
        return config


def supernode_command(settings: JoinSettings, node_config_path: Path) -> list[str]:
    """The ``flower-supernode`` command line for ``settings``."""
    port = settings.port or free_port()
    return [
        str(Path(sys.executable).parent / "flower-supernode"),
        "--superlink",
        settings.superlink,
        "--root-certificates",
        str(settings.lab.ca_cert),
        "--auth-supernode-private-key",
        str(settings.lab.require_node_key()),
        "--node-config",
        str(node_config_path),
        "--port",
        str(port),
    ]


def run_supernode(settings: JoinSettings, *, env: dict[str, str] | None = None) -> int:
    """Run the SuperNode in the foreground until it exits or we are stopped; return its exit code."""
    config_path = settings.lab.root / "node-config.toml"
    atomic_write_bytes(config_path, tomli_w.dumps(settings.node_config()).encode())
    settings.out_dir.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(supernode_command(settings, config_path), env=env)
    stopping = {"requested": False}

    def handler(_signum: int, _frame: object) -> None:
        stopping["requested"] = True
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    try:
        while process.poll() is None:
            time.sleep(0.5)
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
    code = int(process.returncode or 0)
    if stopping["requested"]:
        return 0
    if code in _EXIT_HELP:
        message, hint = _EXIT_HELP[code]
        msg = f"{message} (flower-supernode exit code {code})"
        raise FederationError(msg, hint=hint)
    return code


def free_port() -> int:
    """A TCP port on loopback that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
