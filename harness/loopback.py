"""A whole consortium on one machine: the coordinator and labs as real processes on loopback.

Used by the demo, the end-to-end tests and the benchmarks. Every process is started through the
same command lines a maintainer and a lab would type (``fedarches-server serve``,
``fedarches-client join``, ``fedarches-server run-round``), with TLS and node authentication on.
Each runs in its own process group, so :meth:`LoopbackFederation.kill_lab` takes a lab's SuperNode
and its ClientApp down at once, and :meth:`LoopbackFederation.stop` leaves no process behind: it
stops each command's whole tree (SuperLink, SuperExec, ServerApp, SuperNodes, ClientApps), even the
parts that left their parent's group or session (:func:`fedarches.shared._process.stop_processes`).

Used as a context manager (``with LoopbackFederation(...) as fed``) in the main thread, it also
answers SIGTERM, SIGINT and SIGHUP by stopping everything, printing one line and exiting with
128 + the signal. Every command it starts gets ``FEDARCHES_PARENT_PID``: if this process dies
without a chance to clean up (SIGKILL), each command notices and stops its own processes.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from fedarches.server import superlink
from fedarches.server.coordinator import CoordinatorDir, init_coordinator
from fedarches.shared._process import (
    PARENT_PID_ENV,
    SUPERNODE_PID_FILE,
    ProcessInfo,
    StopSignals,
    command_name,
    cpu_seconds,
    free_port,
    leftover_group,
    own_executable,
    process_tree,
    read_process,
    signal_group,
    stop_processes,
    with_own_bin_on_path,
)
from fedarches.shared.errors import FederationError

ONLINE_TIMEOUT_S = 60.0
COMMAND_GRACE_S = 30.0  # a running `run-round` cancels its round (a `flwr stop`) before it exits
STOP_GRACE_S = 25.0  # `serve` and `join` stop their own trees (SIGKILL after 10-20 s) before they exit


@dataclass
class LabProcess:
    """One lab's ``fedarches-client join`` process."""

    name: str
    export_dir: Path
    out_dir: Path
    data: Path
    extra_mods: str = ""
    batch_key: str | None = None
    labels_key: str | None = None
    process: subprocess.Popen[Any] | None = None
    log_path: Path | None = None


@dataclass
class LoopbackFederation:
    """Coordinator directory, SuperLink and lab SuperNodes under ``workdir``."""

    workdir: Path
    threads: int = 1
    env: dict[str, str] = field(default_factory=dict)
    label: str = "loopback federation"  # names it in the line printed when a signal stops it
    join_args: tuple[str, ...] = ()  # passed to every lab's `fedarches-client join`
    coord: CoordinatorDir = field(init=False)
    labs: dict[str, LabProcess] = field(default_factory=dict, init=False)
    _serve: subprocess.Popen[Any] | None = field(default=None, init=False)
    _commands: list[subprocess.Popen[Any]] = field(default_factory=list, init=False)  # add-lab, run-round, ...
    _logs: list[IO[str]] = field(default_factory=list, init=False)
    _signals: StopSignals | None = field(default=None, init=False)
    _spawned: dict[int, ProcessInfo | None] = field(default_factory=dict, init=False)  # pid: as started
    startup_s: dict[str, float] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        self.workdir = Path(self.workdir).resolve()
        self.workdir.mkdir(parents=True, exist_ok=True)
        coord_dir = self.workdir / "coordinator"
        if (coord_dir / "coordinator.toml").exists():
            self.coord = CoordinatorDir.open(coord_dir)
        else:
            port = free_port()
            self.coord = init_coordinator(coord_dir, port=port)

    def __enter__(self) -> LoopbackFederation:
        self._signals = StopSignals(self.label, roots=self._root_pids, grace_s=STOP_GRACE_S)
        self._signals.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        signals, self._signals = self._signals, None
        if signals is not None:
            signals.hold()  # a signal now only makes the exit code 128 + signal: stopping goes on
        try:
            self.stop()
        finally:
            if signals is not None:
                signals.__exit__(*exc)

    # --- coordinator -------------------------------------------------------------------------
    def start_coordinator(self) -> float:
        """Start ``fedarches-server serve``; return seconds until the SuperLink accepted connections."""
        start = time.monotonic()
        self._serve = self._spawn(["fedarches-server", "serve", "--dir", str(self.coord.root)], "coordinator")
        superlink.wait_until_listening(self.coord.host, self.coord.port, 60, self._serve)
        self.startup_s["superlink"] = time.monotonic() - start
        return self.startup_s["superlink"]

    def add_lab(
        self,
        name: str,
        data: Path,
        *,
        extra_mods: str = "",
        batch_key: str | None = None,
        labels_key: str | None = None,
    ) -> LabProcess:
        """``fedarches-server add-lab NAME`` (the key is made at the coordinator and exported)."""
        export = self.workdir / "labs" / name / "lab-dir"
        self._cli(["fedarches-server", "add-lab", name, "--dir", str(self.coord.root), "--out", str(export)])
        out = self.workdir / "labs" / name / "out"
        lab = LabProcess(name, export, out, Path(data), extra_mods, batch_key, labels_key)
        self.labs[name] = lab
        return lab

    def join(self, name: str, *, wait: bool = True) -> float:
        """Start the lab's ``fedarches-client join``; return seconds until the SuperLink saw it online."""
        lab = self.labs[name]
        command = [
            "fedarches-client",
            "join",
            "--lab-dir",
            str(lab.export_dir),
            "--data",
            str(lab.data),
            "--out",
            str(lab.out_dir),
            "--threads",
            str(self.threads),
            "--egress-copy",
        ]
        if lab.extra_mods:
            command += ["--extra-mods", lab.extra_mods]
        if lab.batch_key:
            command += ["--batch-key", lab.batch_key]
        if lab.labels_key:
            command += ["--labels-key", lab.labels_key]
        command += list(self.join_args)
        start = time.monotonic()
        lab.process = self._spawn(command, f"lab-{name}")
        lab.log_path = self.workdir / "logs" / f"lab-{name}.log"
        if wait:
            self.wait_online([name])
        self.startup_s[f"supernode:{name}"] = time.monotonic() - start
        return self.startup_s[f"supernode:{name}"]

    def wait_online(self, names: list[str], timeout: float = ONLINE_TIMEOUT_S) -> None:
        """Block until the SuperLink lists each named lab's node as online."""
        wanted = {int(self.coord.lab(n)["node-id"]) for n in names}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name in names:
                process = self.labs[name].process
                if process is not None and process.poll() is not None:
                    msg = f"lab {name}'s join exited with code {process.returncode}; see {self.labs[name].log_path}"
                    raise FederationError(msg)
            if wanted <= self.online_nodes():
                return
            time.sleep(0.5)
        msg = f"labs {names} not online after {timeout:.0f} s"
        raise FederationError(msg)

    def wait_workers(self, names: list[str], timeout: float = ONLINE_TIMEOUT_S) -> None:
        """Block until each named lab's warm worker answers (it has imported scvi-tools); no-op with --no-worker."""
        if "--no-worker" in self.join_args:
            return
        from fedarches.client.worker import wait_until_answering

        deadline = time.monotonic() + timeout
        for name in names:
            if not wait_until_answering(self.labs[name].export_dir, max(0.0, deadline - time.monotonic())):
                msg = f"lab {name}'s worker did not answer within {timeout:.0f} s; see {self.labs[name].log_path}"
                raise FederationError(msg)

    def lab_cpu_s(self, name: str) -> float | None:
        """CPU seconds the lab's processes have used so far (``join``, worker, SuperNode, SuperExec, ClientApps)."""
        lab = self.labs[name]
        roots = _live([lab.process])
        if (group := _supernode_group(lab)) is not None:
            roots.append(group)
        return cpu_seconds(roots)

    def online_nodes(self) -> set[int]:
        """The Flower node ids of the SuperNodes that the SuperLink lists as online."""
        payload = superlink.flwr(self.coord, "supernode", "list")
        return {int(n["node-id"]) for n in payload.get("nodes", []) if n.get("status") == "online"}

    def run_round(self, bundle: Path, *extra: str, check: bool = True, echo: bool = False) -> dict[str, Any]:
        """``fedarches-server run-round``; return its report, with the CLI's exit code and wall time under ``_cli``.

        With ``echo`` the CLI prints to this console instead of being captured.
        """
        command = ["fedarches-server", "run-round", "--dir", str(self.coord.root), "--bundle", str(bundle), *extra]
        start = time.monotonic()
        done = self._cli(command, check=check, capture=not echo)
        wall = time.monotonic() - start
        rounds = sorted(p for p in self.coord.rounds_dir.iterdir() if (p / "report.json").is_file())
        report = json.loads((rounds[-1] / "report.json").read_text())
        report["_cli"] = {
            "returncode": done.returncode,
            "output": (done.stdout or "") + (done.stderr or ""),
            "wall_s": wall,
        }
        return report

    def start_round(self, bundle: Path, *extra: str) -> subprocess.Popen[Any]:
        """Start ``fedarches-server run-round`` in the background (output in ``logs/run-round.log``).

        :meth:`stop` stops it first, so that it cancels its round while the SuperLink is up.
        """
        command = ["fedarches-server", "run-round", "--dir", str(self.coord.root), "--bundle", str(bundle), *extra]
        process = self._spawn(command, "run-round")
        self._commands.append(process)
        return process

    # --- processes ---------------------------------------------------------------------------
    def kill_lab(self, name: str) -> None:
        """SIGKILL a lab: its ``join``, its SuperNode's process group and any running ClientApp."""
        lab = self.labs[name]
        _signal_supernode(lab, signal.SIGKILL)
        if lab.process is not None and lab.process.poll() is None:
            signal_group(lab.process.pid, signal.SIGKILL)
            lab.process.wait()

    def stop(self) -> list[ProcessInfo]:
        """Stop every process started here, and all they started; return those that were running.

        Commands still running go first (``run-round`` cancels its round while the SuperLink is
        up), then the labs and the coordinator together, each of which stops its own processes;
        whatever outlives that gets SIGTERM, then SIGKILL.
        """
        stopped = stop_processes(_live(self._commands), grace_s=COMMAND_GRACE_S)
        spawned = [lab.process for lab in self.labs.values() if lab.process is not None]
        if self._serve is not None:
            spawned.append(self._serve)
        live = _live(spawned)  # the others are reaped: only their sessions may live on
        groups = [g for p in spawned if p.pid not in live for g in leftover_group(self._spawned.get(p.pid))]
        groups += [pid for lab in self.labs.values() if (pid := _supernode_group(lab)) is not None]
        stopped += stop_processes(live, groups=groups, grace_s=STOP_GRACE_S)
        for process in [*self._commands, *spawned]:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=5)
        self._commands.clear()
        for fh in self._logs:
            fh.close()
        self._logs.clear()
        return stopped

    def processes(self) -> list[ProcessInfo]:
        """Every live process started here, directly or not (by parent, process group or session)."""
        spawned = [lab.process for lab in self.labs.values() if lab.process is not None]
        roots = _live([*spawned, self._serve, *self._commands])
        roots += [pid for lab in self.labs.values() if (pid := _supernode_group(lab)) is not None]
        return process_tree(roots)

    def _root_pids(self) -> list[int]:
        spawned = [lab.process for lab in self.labs.values() if lab.process is not None]
        return _live([*self._commands, *spawned, self._serve])

    def running_groups(self) -> list[int]:
        """Process groups started here that still have a live process (empty after :meth:`stop`)."""
        groups = [lab.process.pid for lab in self.labs.values() if lab.process is not None]
        if self._serve is not None:
            groups.append(self._serve.pid)
        for lab in self.labs.values():
            with contextlib.suppress(OSError, ValueError):
                groups.append(int((lab.export_dir / SUPERNODE_PID_FILE).read_text()))
        alive = []
        for group in groups:
            try:
                os.killpg(group, 0)
            except ProcessLookupError:
                continue
            except PermissionError:
                pass
            alive.append(group)
        return alive

    def _spawn(self, command: list[str], log_name: str) -> subprocess.Popen[Any]:
        """Start a long-running command in a session of its own, its output in ``logs/LOG_NAME.log``."""
        log_path = self.workdir / "logs" / f"{log_name}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(log_path, "a", encoding="utf-8")
        self._logs.append(fh)
        process = subprocess.Popen(
            [own_executable(command[0]), *command[1:]],
            stdout=fh,
            stderr=subprocess.STDOUT,
            env=self._env(),
            start_new_session=True,
        )
        self._spawned[process.pid] = read_process(process.pid)
        return process

    def _cli(self, command: list[str], *, check: bool = True, capture: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a command to its end.

        Unlike ``subprocess.run``, an exception here (a stop signal) does not SIGKILL it: it stays among
        the running commands, and :meth:`stop` gives it SIGTERM (``run-round`` then cancels its round).
        """
        pipe = subprocess.PIPE if capture else None
        process = subprocess.Popen(
            [own_executable(command[0]), *command[1:]], env=self._env(), stdout=pipe, stderr=pipe, text=True
        )
        self._commands.append(process)
        stdout, stderr = process.communicate()
        self._commands.remove(process)
        done = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
        if check and done.returncode != 0:
            msg = f"`{' '.join(command)}` exited with {done.returncode}:\n{done.stdout}\n{done.stderr}"
            raise FederationError(msg)
        return done

    def _env(self) -> dict[str, str]:
        env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "OMP_NUM_THREADS": str(self.threads), **self.env}
        env[PARENT_PID_ENV] = str(os.getpid())  # each command stops its processes if this one dies
        return with_own_bin_on_path(env)


def _signal_supernode(lab: LabProcess, sig: int) -> None:
    """Signal the SuperNode process group that ``join`` recorded in its pid file."""
    pgid = _supernode_group(lab)
    if pgid is not None:
        signal_group(pgid, sig)


def _supernode_group(lab: LabProcess) -> int | None:
    """The process group in the lab's SuperNode pid file, if a process of it still runs a SuperNode."""
    with contextlib.suppress(OSError, ValueError):
        pgid = int((lab.export_dir / SUPERNODE_PID_FILE).read_text())
        info = read_process(pgid)
        if info is None:  # no /proc, or the leader is gone: the group may live on
            return pgid
        if info.pgid == pgid and command_name(pgid) == "flower-supernode":
            return pgid
    return None


def _live(processes: list[subprocess.Popen[Any] | None]) -> list[int]:
    """The pids of those not yet reaped (a reaped pid may belong to someone else by now)."""
    return [p.pid for p in processes if p is not None and p.poll() is None]
