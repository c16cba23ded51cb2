"""A whole consortium on one machine: the coordinator and labs as real processes on loopback.

Used by the demo, the end-to-end tests and the benchmarks. Every process is started through the
same command lines a maintainer and a lab would type (``fedarches-server serve``,
``fedarches-client join``, ``fedarches-server run-round``), with TLS and node authentication on.
Each runs in its own process group, so :meth:`LoopbackFederation.kill_lab` takes a lab's SuperNode
and its ClientApp down at once, and :meth:`LoopbackFederation.stop` leaves no process behind.
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
from fedarches.shared._process import SUPERNODE_PID_FILE, free_port, own_executable, signal_group
from fedarches.shared.errors import FederationError

ONLINE_TIMEOUT_S = 60.0


@dataclass
class LabProcess:
    """One lab's ``fedarches-client join`` process."""

    name: str
    export_dir: Path
    out_dir: Path
    data: Path
    extra_mods: str = ""
    batch_key: str | None = None
    process: subprocess.Popen[Any] | None = None
    log_path: Path | None = None


@dataclass
class LoopbackFederation:
    """Coordinator directory, SuperLink and lab SuperNodes under ``workdir``."""

    workdir: Path
    threads: int = 1
    env: dict[str, str] = field(default_factory=dict)
    coord: CoordinatorDir = field(init=False)
    labs: dict[str, LabProcess] = field(default_factory=dict, init=False)
    _serve: subprocess.Popen[Any] | None = field(default=None, init=False)
    _logs: list[IO[str]] = field(default_factory=list, init=False)
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
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- coordinator -------------------------------------------------------------------------
    def start_coordinator(self) -> float:
        """Start ``fedarches-server serve``; return seconds until the SuperLink accepted connections."""
        start = time.monotonic()
        self._serve = self._spawn(["fedarches-server", "serve", "--dir", str(self.coord.root)], "coordinator")
        superlink.wait_until_listening(self.coord.host, self.coord.port, 60, self._serve)
        self.startup_s["superlink"] = time.monotonic() - start
        return self.startup_s["superlink"]

    def add_lab(self, name: str, data: Path, *, extra_mods: str = "", batch_key: str | None = None) -> LabProcess:
        """``fedarches-server add-lab NAME`` (the key is made at the coordinator and exported)."""
        export = self.workdir / "labs" / name / "lab-dir"
        self._cli(["fedarches-server", "add-lab", name, "--dir", str(self.coord.root), "--out", str(export)])
        lab = LabProcess(name, export, self.workdir / "labs" / name / "out", Path(data), extra_mods, batch_key)
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

    def online_nodes(self) -> set[int]:
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

    # --- processes ---------------------------------------------------------------------------
    def kill_lab(self, name: str) -> None:
        """SIGKILL a lab: its ``join``, its SuperNode's process group and any running ClientApp."""
        lab = self.labs[name]
        _signal_supernode(lab, signal.SIGKILL)
        if lab.process is not None and lab.process.poll() is None:
            signal_group(lab.process.pid, signal.SIGKILL)
            lab.process.wait()

    def stop(self) -> None:
        """Stop every lab, then the coordinator; kill whatever does not stop within 20 s."""
        processes = [lab.process for lab in self.labs.values() if lab.process is not None]
        if self._serve is not None:
            processes.append(self._serve)
        for process in processes:
            if process.poll() is None:
                signal_group(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        for process in processes:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            signal_group(process.pid, signal.SIGKILL)  # children that outlived their parent
        for lab in self.labs.values():
            _signal_supernode(lab, signal.SIGKILL)
        for fh in self._logs:
            fh.close()
        self._logs.clear()

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
        log_path = self.workdir / "logs" / f"{log_name}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(log_path, "a", encoding="utf-8")
        self._logs.append(fh)
        return subprocess.Popen(
            [own_executable(command[0]), *command[1:]],
            stdout=fh,
            stderr=subprocess.STDOUT,
            env=self._env(),
            start_new_session=True,
        )

    def _cli(self, command: list[str], *, check: bool = True, capture: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [own_executable(command[0]), *command[1:]],
            env=self._env(),
            capture_output=capture,
            text=True,
            check=False,
        )
        if check and done.returncode != 0:
            msg = f"`{' '.join(command)}` exited with {done.returncode}:\n{done.stdout}\n{done.stderr}"
            raise FederationError(msg)
        return done

    def _env(self) -> dict[str, str]:
        env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "OMP_NUM_THREADS": str(self.threads), **self.env}
        return superlink.with_own_bin_on_path(env)


def _signal_supernode(lab: LabProcess, sig: int) -> None:
    """Signal the SuperNode process group that ``join`` recorded in its pid file."""
    with contextlib.suppress(OSError, ValueError):
        signal_group(int((lab.export_dir / SUPERNODE_PID_FILE).read_text()), sig)
