"""The coordinator as a service: run the SuperLink, and submit and follow rounds.

:func:`serve` keeps a TLS, node-authenticating SuperLink running in the foreground (what a systemd
unit or container runs), registers labs added while it was down, and stops it with everything it
started (its SuperExec and any running ServerApp) however it ends: the CLI turns SIGTERM, SIGINT
and SIGHUP into :class:`~fedarches.shared._process.StopRequested`. :func:`start_round` submits a
round through ``flwr run``; :func:`follow_round` waits for it while echoing the ServerApp's log;
:func:`cancel_round` stops it at the SuperLink.
"""

from __future__ import annotations

import json
import logging
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fedarches.server import superlink
from fedarches.server.coordinator import CoordinatorDir
from fedarches.shared._process import owning
from fedarches.shared.bundle import ReferenceBundle
from fedarches.shared.errors import FederationError, UserInputError

log = logging.getLogger("fedarches.server")

STARTUP_TIMEOUT_S = 60.0
STOP_GRACE_S = 20.0  # seconds the SuperLink gets to stop its SuperExec and ServerApp before SIGKILL


def serve(coord: CoordinatorDir, *, on_ready: Callable[[float], None] | None = None) -> int:
    """Run the SuperLink until it exits; return its exit code.

    However this ends (the SuperLink exits, an error, or a stop signal turned into an exception by
    the caller), the SuperLink and every process it started are stopped before it returns.
    """
    if superlink.is_listening(coord.host, coord.port):
        msg = f"something already listens on {coord.local_address}"
        raise FederationError(msg, hint="is `fedarches-server serve` already running? stop it, or change the port")
    coord.logs_dir.mkdir(parents=True, exist_ok=True)
    log_path = coord.logs_dir / "superlink.log"
    start = time.monotonic()
    with open(log_path, "a", encoding="utf-8") as log_file:
        log_file.write(f"\n=== fedarches-server serve {datetime.now(UTC).isoformat(timespec='seconds')}\n")
        log_file.flush()
        process = subprocess.Popen(
            superlink.superlink_command(coord),
            env=superlink.flower_env(coord),
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    with owning(process, grace_s=STOP_GRACE_S):
        superlink.wait_until_listening(coord.host, coord.port, STARTUP_TIMEOUT_S, process)
        ready_s = time.monotonic() - start
        registered = superlink.register_pending_labs(coord)
        for name, node_id in registered.items():
            log.info("registered lab %s as node %d", name, node_id)
        if on_ready is not None:
            on_ready(ready_s)
        while process.poll() is None:
            time.sleep(0.5)
    return int(process.returncode or 0)


@dataclass(frozen=True)
class SubmittedRound:
    """A round handed to the SuperLink."""

    round_id: str
    run_id: int
    round_dir: Path


def start_round(coord: CoordinatorDir, bundle_dir: Path, **overrides: Any) -> SubmittedRound:
    """Check the bundle, write the run config and ``flwr run`` it."""
    bundle_dir = Path(bundle_dir).resolve()
    ReferenceBundle.open(bundle_dir, coord.signing_public_key)  # our own key: refuse foreign bundles early
    if not superlink.is_listening(coord.host, coord.port):
        msg = f"no SuperLink listens on {coord.local_address}"
        raise FederationError(msg, hint=f"start it with `fedarches-server serve --dir {coord.root}`")
    if not any(info.get("registered") for info in coord.labs().values()):
        msg = "no lab is registered with the SuperLink"
        raise UserInputError(msg, hint="add labs with `fedarches-server add-lab NAME --dir COORD_DIR` while serve runs")
    round_id = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    round_dir = coord.rounds_dir / round_id
    suffix = 1
    while round_dir.exists():
        suffix += 1
        round_dir = coord.rounds_dir / f"{round_id}-{suffix}"
    round_dir.mkdir(parents=True)
    config = {
        **coord.round_defaults,
        **{k.replace("_", "-"): v for k, v in overrides.items() if v is not None},
        "coordinator-dir": str(coord.root),
        "bundle-dir": str(bundle_dir),
        "round-dir": str(round_dir),
        "round-id": round_dir.name,
    }
    run_id = superlink.submit_run(coord, config)
    return SubmittedRound(round_dir.name, run_id, round_dir)


def follow_round(
    coord: CoordinatorDir,
    submitted: SubmittedRound,
    *,
    echo: Callable[[str], None] | None = None,
    poll_s: float = 0.1,
    flower_poll_s: float = 15.0,
) -> dict[str, Any]:
    """Wait for the round, echoing new ``round.log`` lines; return its report.

    The ServerApp writes ``status.json`` when it ends: watching for it costs nothing, whereas each
    ``flwr ls`` starts a Python process (about a CPU-second taken from the labs on a shared
    machine), so Flower is only asked every ``flower_poll_s`` whether the run died without one.
    """
    log_path = submitted.round_dir / "round.log"
    status_path = submitted.round_dir / "status.json"
    offset = 0
    next_flower_check = time.monotonic() + flower_poll_s
    while not status_path.is_file():
        time.sleep(poll_s)
        offset = _echo_new_lines(log_path, offset, echo)
        if time.monotonic() >= next_flower_check:
            next_flower_check = time.monotonic() + flower_poll_s
            if superlink.run_status(coord, submitted.run_id).startswith("finished") and not status_path.is_file():
                break
    _echo_new_lines(log_path, offset, echo)
    report_path = submitted.round_dir / "report.json"
    if not report_path.is_file():
        detail = json.loads(status_path.read_text())["message"] if status_path.is_file() else "the ServerApp ended"
        msg = f"round {submitted.round_id} (Flower run {submitted.run_id}) ended without a report: {detail}"
        raise FederationError(
            msg, hint=f"see `FLWR_HOME={coord.flwr_home} flwr log {submitted.run_id}` and {coord.logs_dir}"
        )
    return json.loads(report_path.read_text())


def cancel_round(coord: CoordinatorDir, submitted: SubmittedRound) -> str:
    """Stop a submitted round at the SuperLink (its ServerApp exits); return what happened, as a phrase.

    Flower 1.41 does not tell the labs' SuperNodes: a ClientApp already mapping for the round
    finishes, finds the run gone, and exits.
    """
    name = f"round {submitted.round_id} (Flower run {submitted.run_id})"
    try:
        superlink.stop_run(coord, submitted.run_id)
    except FederationError as err:
        return f"could not cancel {name}: {err}"
    return f"cancelled {name} at the SuperLink"


def _echo_new_lines(path: Path, offset: int, echo: Callable[[str], None] | None) -> int:
    if not path.is_file():
        return offset
    with open(path, encoding="utf-8") as fh:
        fh.seek(offset)
        chunk = fh.read()
        if echo is not None:
            for line in chunk.splitlines():
                echo(line)
        return fh.tell()
