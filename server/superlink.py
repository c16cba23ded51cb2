"""Drive Flower 1.41 for the coordinator: the SuperLink process and the ``flwr`` CLI.

Everything goes through Flower's own commands (``flower-superlink``, ``flwr supernode register``,
``flwr run``, ``flwr ls``, ``flwr log``) with ``FLWR_HOME`` set to the coordinator directory, so a
maintainer can run the same commands by hand (``FLWR_HOME=COORD_DIR/flwr flwr ls``).
"""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from fedarches.server.coordinator import CONNECTION_NAME, CoordinatorDir
from fedarches.shared import __version__
from fedarches.shared._io import write_toml
from fedarches.shared._process import flower_env as shared_flower_env
from fedarches.shared._process import own_executable
from fedarches.shared.errors import FederationError

log = logging.getLogger("fedarches.server")

APP_NAME = "fedarches-round"


def flower_env(coord: CoordinatorDir) -> dict[str, str]:
    """Environment for Flower commands: our FLWR_HOME, no telemetry, the SuperExec polling every 0.1 s."""
    env = shared_flower_env(coord.flwr_home)
    env["FLWR_TELEMETRY_ENABLED"] = "0"
    return env


def superlink_command(coord: CoordinatorDir) -> list[str]:
    """``flower-superlink`` with TLS, node authentication, persistent state, and no runtime installs."""
    return [
        own_executable("flower-superlink"),
        "--ssl-ca-certfile",
        str(coord.ca_cert),
        "--ssl-certfile",
        str(coord.server_cert),
        "--ssl-keyfile",
        str(coord.server_key),
        "--enable-supernode-auth",
        "--disable-runtime-dependency-installation",
        "--database",
        str(coord.database),
        "--host",
        coord.host,
        "--port",
        str(coord.port),
    ]


def wait_until_listening(host: str, port: int, timeout: float, process: subprocess.Popen[Any] | None = None) -> float:
    """Block until ``host:port`` accepts TCP connections; return the seconds waited."""
    start = time.monotonic()
    host = "127.0.0.1" if host in ("0.0.0.0", "") else "::1" if host == "::" else host
    while time.monotonic() - start < timeout:
        if process is not None and process.poll() is not None:
            msg = f"the SuperLink exited with code {process.returncode} while starting"
            raise FederationError(msg, hint="see its log; is another SuperLink already using the port?")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return time.monotonic() - start
        except OSError:
            time.sleep(0.1)
    msg = f"nothing listens on {host}:{port} after {timeout:.0f} s"
    raise FederationError(msg)


def is_listening(host: str, port: int) -> bool:
    """Whether something accepts connections on ``host:port`` right now."""
    try:
        wait_until_listening(host, port, 0.6)
    except FederationError:
        return False
    return True


def flwr(coord: CoordinatorDir, *args: str, timeout: float = 120) -> dict[str, Any]:
    """Run ``flwr ARGS --format json`` against this coordinator's SuperLink; return its JSON output."""
    command = [own_executable("flwr"), *args, "--format", "json"]
    try:
        done = subprocess.run(
            command, env=flower_env(coord), capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as err:
        msg = f"`flwr {' '.join(args)}` did not answer within {timeout:.0f} s"
        raise FederationError(msg) from err
    payload = _last_json(done.stdout)
    if done.returncode != 0 or not payload.get("success", False):
        detail = payload.get("error-message") or payload.get("error") or (done.stderr or done.stdout).strip()[-500:]
        msg = f"`flwr {' '.join(args)}` failed: {detail}"
        raise FederationError(msg)
    return payload


def register_lab(coord: CoordinatorDir, name: str) -> int:
    """Register lab ``name``'s public key with the running SuperLink; return its Flower node id."""
    public_key = coord.labs_dir / name / "supernode.pub"
    payload = flwr(coord, "supernode", "register", str(public_key), CONNECTION_NAME, "--name", name)
    node_id = int(payload["node-id"])
    coord.update_lab(name, registered=True, **{"node-id": node_id})
    return node_id


def register_pending_labs(coord: CoordinatorDir) -> dict[str, int]:
    """Register every lab added while the SuperLink was down."""
    done = {}
    for name, info in coord.labs().items():
        if not info.get("registered"):
            done[name] = register_lab(coord, name)
    return done


def write_app(coord: CoordinatorDir, run_config: dict[str, Any]) -> Path:
    """Write the Flower app that ``flwr run`` submits: a pyproject naming fedarches' installed apps.

    The app carries no code: the SuperLink and every SuperNode run the ``fedarches`` installed in
    their own environment, so the FAB is a few hundred bytes and installs nothing at run time.
    """
    pyproject = {
        "build-system": {"requires": ["hatchling"], "build-backend": "hatchling.build"},
        "project": {
            "name": APP_NAME,
            "version": __version__ if __version__ != "0.0.0" else "0.1.0",
            "description": "fedarches mapping round (uses the fedarches installed at each node)",
            "dependencies": [],
        },
        "tool": {
            "flwr": {
                "app": {
                    "publisher": "fedarches",
                    "components": {
                        "serverapp": "fedarches.server.app:app",
                        "clientapp": "fedarches.client.app:app",
                    },
                    "config": run_config,
                }
            }
        },
    }
    coord.app_dir.mkdir(parents=True, exist_ok=True)
    write_toml(coord.app_dir / "pyproject.toml", pyproject)
    return coord.app_dir


def submit_run(coord: CoordinatorDir, run_config: dict[str, Any]) -> int:
    """``flwr run`` the round app with ``run_config``; return the Flower run id."""
    app_dir = write_app(coord, run_config)
    payload = flwr(coord, "run", str(app_dir), CONNECTION_NAME)
    return int(payload["run-id"])


def stop_run(coord: CoordinatorDir, run_id: int, *, timeout: float = 20) -> None:
    """``flwr stop`` a run: the SuperLink marks it stopped, and its ServerApp exits."""
    flwr(coord, "stop", str(run_id), CONNECTION_NAME, timeout=timeout)


def run_status(coord: CoordinatorDir, run_id: int) -> str:
    """Flower's status of a run, e.g. ``running`` or ``finished:completed``."""
    payload = flwr(coord, "ls", CONNECTION_NAME, "--run-id", str(run_id))
    runs = payload.get("runs") or []
    return str(runs[0].get("status", "unknown")) if runs else "unknown"


def _last_json(text: str) -> dict[str, Any]:
    """The JSON object Flower prints on stdout (after any banner lines)."""
    start = text.find("{")
    while start != -1:
        try:
            value = json.loads(text[start:])
        except json.JSONDecodeError:
            start = text.find("{", start + 1)
            continue
        return value if isinstance(value, dict) else {}
    return {}
