"""The lab's warm worker: scvi-tools imported once, bundles verified once, mapping on the ClientApp's request.

Flower starts a fresh ClientApp process for every message, and the mapping one used to import
scvi-tools (~7 s) and verify the bundle again each time. ``fedarches-client join`` therefore starts,
beside its SuperNode, one long-lived worker (``python -m fedarches.client.worker``) that imports
scvi-tools and verifies the lab's newest bundle once, then maps whenever the ClientApp asks. The
ClientApp stays the only thing that talks to Flower: it passes the map message's content to the
worker and the worker's reply content back, inside the ClientApp's egress audit
(:func:`fedarches.client.mods.egress_audit_mod`), which checks and records it exactly as before.
The worker runs :data:`fedarches.client.lab_work.WORK` (the mapping, and the count vector of a
SecAgg+ stage, OpenDP imported once too), the same code the ClientApp runs when there is no
worker; the ledger and the policy checks happen there, as they always did.

The channel is local and owner-only: a Unix socket ``LAB_DIR/worker/socket`` in a directory of
mode 0700, a new random token in ``LAB_DIR/worker/token`` (mode 0600) on every start, which each
request must carry, and, on Linux, a check that the peer process runs as the same user. Nothing
listens on the network. Requests are two length-prefixed frames (a JSON header, then Flower's own
protobuf encoding of the message content); replies the same. One request runs at a time.

A worker that dies is restarted by ``join`` (:class:`WorkerSupervisor`, at most
:data:`MAX_RESTARTS` times an hour), which first removes the temporary files an interrupted
mapping left (:func:`fedarches.shared._io.remove_staging`): the lab's outputs are written together
and atomically, so a killed worker leaves the previous outputs or none, never half of them. A
request the worker dies during is answered with an error (the round goes on without this lab);
when no worker answers at all, the ClientApp maps in its own process, as without a worker.
"""

from __future__ import annotations

import argparse
import contextlib
import hmac
import json
import logging
import os
import secrets
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from flwr.app import RecordDict

from fedarches.client.lab_work import WORK, BundleCache, NodeSettings
from fedarches.shared._constants import MAX_BUNDLE_BYTES, MAX_MANIFEST_BYTES
from fedarches.shared._io import atomic_write_bytes, remove_staging
from fedarches.shared.errors import FedarchesError, FederationError, ProtocolError

log = logging.getLogger("fedarches.client")

WORKER_DIR_NAME = "worker"
MAX_HEADER_BYTES = 64 * 1024
MAX_PAYLOAD_BYTES = MAX_BUNDLE_BYTES + MAX_MANIFEST_BYTES + 64 * 1024**2  # a bundle and the message around it
CONNECT_TIMEOUT_S = 10.0
REQUEST_TIMEOUT_S = 60.0  # to send a whole request; a peer that stalls longer is dropped
MAX_RESTARTS = 5  # per hour; then rounds map in the ClientApp, cold

Handler = Callable[..., RecordDict]  # (settings, content, *, run_id) -> reply content


class WorkerUnavailable(FederationError):
    """No worker answers on the lab's socket (not started, stopped, or another lab directory's)."""

    exit_code = 47
    hint = "`fedarches-client join` starts the worker; check its console for why the worker stopped"


class WorkerLost(FederationError):
    """The worker stopped while it was handling a request."""

    exit_code = 48
    hint = "`fedarches-client join` restarts it; the next round maps again. The worker's log says why it stopped"


@dataclass(frozen=True)
class WorkerPaths:
    """Where a lab's worker listens: ``LAB_DIR/worker/socket``, and its token ``LAB_DIR/worker/token``."""

    directory: Path

    @classmethod
    def for_lab(cls, lab_dir: Path | str) -> WorkerPaths:
        """The worker paths of the lab directory ``lab_dir``."""
        return cls(Path(lab_dir).resolve() / WORKER_DIR_NAME)

    @property
    def socket(self) -> Path:
        """The Unix socket."""
        return self.directory / "socket"

    @property
    def token(self) -> Path:
        """The token every request must carry (new on each start)."""
        return self.directory / "token"


# --- the worker --------------------------------------------------------------------------------
class LabWorker:
    """Serve one lab's map requests on its socket, one at a time.

    Parameters
    ----------
    lab_dir
        The lab directory; requests for any other are refused.
    handlers
        What each operation runs, in place of :data:`~fedarches.client.lab_work.WORK` (which runs
        with this worker's :class:`~fedarches.client.lab_work.BundleCache`).
    """

    def __init__(self, lab_dir: Path | str, *, handlers: dict[str, Handler] | None = None) -> None:
        self.lab_dir = Path(lab_dir).resolve()
        self.paths = WorkerPaths.for_lab(self.lab_dir)
        self.bundles = BundleCache()
        self.handlers: dict[str, Handler] = {op: partial(work, bundles=self.bundles) for op, work in WORK.items()}
        self.handlers.update(handlers or {})
        self.served = 0
        self._sock: socket.socket | None = None
        self._token = ""

    def bind(self) -> None:
        """Create the owner-only directory, a new token and the socket; start listening."""
        self.paths.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.paths.directory.chmod(0o700)
        self._token = secrets.token_hex(32)
        atomic_write_bytes(self.paths.token, self._token.encode(), mode=0o600)
        self.paths.socket.unlink(missing_ok=True)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        with _socket_address(self.paths.socket) as address:
            sock.bind(address)
        self.paths.socket.chmod(0o600)  # the directory (0700) already shuts others out
        sock.listen(8)
        sock.settimeout(0.5)
        self._sock = sock

    def warm(self) -> float:
        """Import what mapping and noise need, verify the lab's newest bundle; return the seconds it took."""
        tick = time.perf_counter()
        import scvi  # noqa: F401  # the ~7 s every cold ClientApp paid

        from fedarches.client import annotate, plots  # noqa: F401
        from fedarches.client.lab import LabDir
        from fedarches.shared import dp

        dp.warm_up()  # OpenDP's import, ~1.5 s, which each SecAgg+ stage paid for its noise

        lab = LabDir.open(self.lab_dir)
        held = lab.newest_bundle()
        if held is not None:
            self.bundles.open(lab, held.bundle_id)
        return time.perf_counter() - tick

    def serve_forever(self, stop: threading.Event) -> None:
        """Answer requests until ``stop`` is set."""
        if self._sock is None:
            self.bind()
        assert self._sock is not None
        while not stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                if stop.is_set():
                    break
                raise
            with conn:
                conn.settimeout(REQUEST_TIMEOUT_S)
                self._answer(conn)

    def close(self) -> None:
        """Stop listening and remove the socket and token."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self.paths.socket.unlink(missing_ok=True)
        self.paths.token.unlink(missing_ok=True)

    def _answer(self, conn: socket.socket) -> None:
        """Read one request from ``conn`` and answer it; a broken or unauthenticated request is dropped."""
        uid = _peer_uid(conn)
        if uid is not None and uid != os.getuid():
            log.warning("worker: refused a connection from user id %d", uid)
            return
        try:
            header = _read_json(conn)
            if not hmac.compare_digest(str(header.get("token", "")).encode(), self._token.encode()):
                log.warning("worker: refused a request without this worker's token")
                return
            op = header.get("op")
            if op == "ping":
                _write_frames(conn, {"ok": True, "pid": os.getpid(), "served": self.served})
                return
            payload = _read_frame(conn, MAX_PAYLOAD_BYTES)
            conn.settimeout(None)  # the work takes as long as it takes; the reply is written to a waiting peer
        except (OSError, ProtocolError, ValueError) as err:
            log.warning("worker: dropped a malformed request (%s)", type(err).__name__)
            return
        try:
            if op not in self.handlers:
                msg = f"the worker knows no operation {str(op)[:40]!r}"
                raise ProtocolError(msg)
            config = header.get("settings")
            if not isinstance(config, dict):
                msg = "a worker request carries no node settings"
                raise ProtocolError(msg)
            settings = NodeSettings.from_config(config)
            if settings.lab_dir.resolve() != self.lab_dir:
                msg = f"this worker serves {self.lab_dir}, not {settings.lab_dir}"
                raise ProtocolError(msg, hint="each lab directory has its own `fedarches-client join` and worker")
            content = _decode_content(payload)
            reply = self.handlers[op](settings, content, run_id=_int(header.get("run_id")))
            data = _encode_content(reply)
            answer: dict[str, Any] = {"ok": True}
        except FedarchesError as err:
            answer, data = {"ok": False, "error": _error_fields(err)}, b""
        except Exception:  # a bug: the lab's log gets the traceback, the ClientApp an unexpected failure
            log.exception("worker: %s failed", str(op)[:40])
            answer, data = {"ok": False, "error": {"type": "unexpected"}}, b""
        self.served += 1
        try:
            _write_frames(conn, answer, data if answer["ok"] else None)
        except OSError:
            log.warning("worker: the ClientApp left before the reply; outputs are written, nothing was sent")


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _error_fields(err: FedarchesError) -> dict[str, Any]:
    return {"type": type(err).__name__, "message": str(err), "hint": err.hint}


# --- the ClientApp's side ----------------------------------------------------------------------
def ask_worker(settings: NodeSettings, content: RecordDict, *, run_id: int, op: str = "map") -> RecordDict:
    """Have the lab's worker run ``op`` of :data:`~fedarches.client.lab_work.WORK`; return its reply content.

    Raises
    ------
    WorkerUnavailable
        No worker answers on the lab's socket.
    WorkerLost
        The worker stopped before it answered.
    FedarchesError
        The error the mapping raised in the worker, of the same class.
    """
    paths = WorkerPaths.for_lab(settings.lab_dir)
    sock = _connect(paths)
    with sock:
        try:
            header = {"op": op, "token": _read_token(paths), "run_id": run_id, "settings": settings.to_config()}
            _write_frames(sock, header, _encode_content(content))
        except OSError as err:
            msg = f"the lab's worker did not take the request ({type(err).__name__})"
            raise WorkerLost(msg) from None
        try:
            answer = _read_json(sock)
            data = _read_frame(sock, MAX_PAYLOAD_BYTES) if answer.get("ok") is True else b""
        except (OSError, ValueError) as err:
            msg = f"the lab's worker stopped before it answered ({type(err).__name__})"
            raise WorkerLost(msg) from None
    if answer.get("ok") is True:
        return _decode_content(data)
    raise _rebuild_error(answer.get("error"))


def ping(lab_dir: Path | str, *, timeout: float = CONNECT_TIMEOUT_S) -> dict[str, Any]:
    """The worker's answer to a ping (its pid and how many requests it served)."""
    paths = WorkerPaths.for_lab(lab_dir)
    sock = _connect(paths, timeout=timeout)
    with sock:
        try:
            _write_frames(sock, {"op": "ping", "token": _read_token(paths)})
            return _read_json(sock)
        except (OSError, ValueError) as err:
            msg = f"the lab's worker did not answer a ping ({type(err).__name__})"
            raise WorkerUnavailable(msg) from None


def run_lab_work(settings: NodeSettings, op: str, content: RecordDict, *, run_id: int) -> RecordDict:
    """Run ``op`` in the lab's worker when ``join`` started one, else (or when none answers) in this process."""
    if settings.worker:
        try:
            tick = time.perf_counter()
            reply = ask_worker(settings, content, run_id=run_id, op=op)
            log.info("the lab's warm worker did %s in %.1f s", op, time.perf_counter() - tick)
            return reply
        except WorkerUnavailable as err:
            log.warning("%s; doing %s in this ClientApp instead (a cold start)", err, op)
    return WORK[op](settings, content, run_id=run_id)


def wait_until_answering(lab_dir: Path | str, timeout: float, *, stop: threading.Event | None = None) -> bool:
    """Wait until the lab's worker answers a ping (it has warmed up); False after ``timeout`` s or on ``stop``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not (stop is not None and stop.is_set()):
        with contextlib.suppress(WorkerUnavailable):
            ping(lab_dir, timeout=max(0.1, deadline - time.monotonic()))
            return True
        time.sleep(0.2)
    return False


def _connect(paths: WorkerPaths, *, timeout: float = CONNECT_TIMEOUT_S) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        with _socket_address(paths.socket) as address:
            sock.connect(address)
    except OSError as err:
        sock.close()
        msg = f"no worker answers on {paths.socket} ({type(err).__name__})"
        raise WorkerUnavailable(msg) from None
    sock.settimeout(None)  # a mapping takes as long as it takes; the round has its own timeout
    return sock


def _read_token(paths: WorkerPaths) -> str:
    try:
        return paths.token.read_text().strip()
    except OSError as err:
        msg = f"cannot read the worker's token {paths.token} ({type(err).__name__})"
        raise WorkerUnavailable(msg) from None


def _rebuild_error(info: Any) -> Exception:
    """The worker's error as an exception of the same class (from :mod:`fedarches.shared.errors`)."""
    from fedarches.shared import errors

    info = info if isinstance(info, dict) else {}
    cls = getattr(errors, str(info.get("type", "")), None)
    if isinstance(cls, type) and issubclass(cls, FedarchesError):
        return cls(str(info.get("message", ""))[:2000], hint=str(info.get("hint", ""))[:2000] or None)
    return RuntimeError("the lab's worker failed unexpectedly; its log has the traceback")


# --- frames ------------------------------------------------------------------------------------
def _encode_content(content: RecordDict) -> bytes:
    from flwr.common.serde import recorddict_to_proto

    return recorddict_to_proto(content).SerializeToString()


def _decode_content(data: bytes) -> RecordDict:
    from flwr.common.serde import recorddict_from_proto
    from flwr.proto.recorddict_pb2 import RecordDict as ProtoRecordDict

    try:
        return recorddict_from_proto(ProtoRecordDict.FromString(data))
    except Exception as err:  # noqa: BLE001  # protobuf raises its own DecodeError, and Flower others
        msg = f"a worker message does not decode ({type(err).__name__})"
        raise ProtocolError(msg) from None


def _write_frames(sock: socket.socket, header: dict[str, Any], payload: bytes | None = None) -> None:
    for data in (json.dumps(header).encode(), payload):
        if data is not None:
            sock.sendall(struct.pack(">Q", len(data)))
            sock.sendall(data)


def _read_json(sock: socket.socket) -> dict[str, Any]:
    value = json.loads(_read_frame(sock, MAX_HEADER_BYTES))
    if not isinstance(value, dict):
        msg = "a worker message header is not a JSON object"
        raise ValueError(msg)
    return value


def _read_frame(sock: socket.socket, limit: int) -> bytes:
    (size,) = struct.unpack(">Q", _read_exact(sock, 8))
    if size > limit:
        msg = f"a worker message of {size} bytes, over the limit of {limit}"
        raise ValueError(msg)
    return _read_exact(sock, size)


def _read_exact(sock: socket.socket, size: int) -> bytes:
    buffer = bytearray(size)
    view = memoryview(buffer)
    done = 0
    while done < size:
        n = sock.recv_into(view[done:], min(size - done, 1 << 20))
        if n == 0:
            msg = "the peer closed the connection"
            raise ConnectionError(msg)
        done += n
    return bytes(buffer)


@contextlib.contextmanager
def _socket_address(path: Path) -> Iterator[str]:
    """A path for ``bind``/``connect`` under the ~107-byte limit of Unix socket addresses.

    A long path goes through the socket's directory opened as a file descriptor (Linux's
    ``/proc/self/fd``), which needs no change of the working directory.
    """
    text = str(path)
    if len(text.encode()) < 100 or not Path("/proc/self/fd").is_dir():
        yield text
        return
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)


def _peer_uid(conn: socket.socket) -> int | None:
    """The user id of the process at the other end (Linux), or None where the system does not say."""
    if not hasattr(socket, "SO_PEERCRED"):
        return None
    size = struct.calcsize("3i")
    _pid, uid, _gid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, size))
    return uid


# --- supervision (fedarches-client join) ---------------------------------------------------------
class WorkerSupervisor:
    """Start the lab's worker beside its SuperNode and restart it when it dies.

    Parameters
    ----------
    lab_dir, out_dir
        The lab directory and the round's output directory (swept of temporary files at each start).
    env
        The worker's environment.
    """

    def __init__(self, lab_dir: Path, out_dir: Path, *, env: dict[str, str] | None = None) -> None:
        self.lab_dir = Path(lab_dir)
        self.out_dir = Path(out_dir)
        self.env = env
        self.process: subprocess.Popen[bytes] | None = None
        self.restarts: list[float] = []
        self._stopping = threading.Event()
        self._watcher: threading.Thread | None = None

    def command(self) -> list[str]:
        """The worker's command line."""
        lab, out = str(self.lab_dir), str(self.out_dir)
        return [sys.executable, "-m", "fedarches.client.worker", "--lab-dir", lab, "--out-dir", out]

    def start(self) -> None:
        """Start the worker and the thread that restarts it."""
        self.process = subprocess.Popen(self.command(), env=self.env)
        self._watcher = threading.Thread(target=self._watch, name="fedarches-worker-watch", daemon=True)
        self._watcher.start()

    def wait_ready(self, timeout: float) -> bool:
        """Wait until the worker answers a ping (it has warmed up); False after ``timeout`` seconds."""
        return wait_until_answering(self.lab_dir, timeout, stop=self._stopping)

    def _watch(self) -> None:
        while not self._stopping.is_set():
            process = self.process
            assert process is not None
            code = process.wait()
            if self._stopping.is_set():
                return
            now = time.monotonic()
            self.restarts = [t for t in self.restarts if now - t < 3600] + [now]
            if len(self.restarts) > MAX_RESTARTS:
                log.error(
                    "the lab's worker stopped (exit code %s) %d times within an hour; not restarting it: "
                    "rounds now map in the ClientApp, importing scvi-tools each time",
                    code,
                    len(self.restarts),
                )
                return
            log.warning("the lab's worker stopped (exit code %s); restarting it", code)
            self.process = subprocess.Popen(self.command(), env=self.env)

    def stop(self, grace_s: float = 10.0) -> None:
        """Stop the worker (SIGTERM, then SIGKILL after ``grace_s``) and its watcher."""
        self._stopping.set()
        process = self.process
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(grace_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._watcher is not None:
            self._watcher.join(timeout=5)


def main(argv: list[str] | None = None) -> int:
    """``python -m fedarches.client.worker --lab-dir LAB_DIR [--out-dir OUT]``: run the lab's worker."""
    parser = argparse.ArgumentParser(prog="python -m fedarches.client.worker", description=__doc__.splitlines()[0])
    parser.add_argument("--lab-dir", required=True, type=Path)
    parser.add_argument("--out-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s fedarches worker %(levelname)s: %(message)s", "%H:%M:%S"))
    logging.getLogger("fedarches").handlers[:] = [handler]
    logging.getLogger("fedarches").setLevel(logging.INFO)
    stop = threading.Event()

    def _stop(signum: int, _frame: object) -> None:
        stop.set()
        raise SystemExit(128 + signum)  # interrupts a mapping: its staged outputs are discarded

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGHUP, _stop)
    worker = LabWorker(args.lab_dir)
    try:
        if args.out_dir is not None:
            for path in remove_staging(args.out_dir):
                log.info("removed %s, left by an interrupted mapping", path)
        worker.bind()
        log.info("warming up: importing scvi-tools and verifying the lab's newest bundle")
        log.info("ready after %.1f s (pid %d, %s)", worker.warm(), os.getpid(), worker.paths.socket)
        worker.serve_forever(stop)
    except FedarchesError as err:
        log.error("%s: %s (hint: %s)", type(err).__name__, err, err.hint)
        return err.exit_code
    finally:
        worker.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
