"""A SIGTERM, SIGINT or SIGHUP to a long-running command stops every process it started.

Flower's processes leave their parent's process group: the SuperLink starts its SuperExec in a
session of its own, which starts the round's ServerApp; a SuperNode's SuperExec starts a ClientApp
per message. Each test records, before the signal, every process under the command (walking
``/proc`` by parent, group and session), sends the signal mid-round (once the labs' ClientApps
run), and checks that the command exits with 128 + the signal and one line, and that none of the
recorded processes is left. The first two tests build process trees by hand (a grandchild in a
session of its own, a double-forked orphan, a process that ignores SIGTERM), without Flower.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from fedarches.server import superlink
from fedarches.shared._process import ProcessInfo, process_tree, read_process
from fedarches.shared.bundle import ReferenceBundle
from fedarches.testing.loopback import LoopbackFederation

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

REPO = Path(__file__).resolve().parents[2]
LABS = ("lab_a", "lab_b")
LONG_EPOCHS = "3000"  # the ClientApps keep training while the test signals (everything is stopped anyway)
SHORT_EPOCHS = "20"  # a cancelled round's ClientApps finish soon (Flower does not tell the labs)


def survivors(recorded: list[ProcessInfo]) -> list[ProcessInfo]:
    """The recorded processes still running: same pid *and* start time (pids are reused), not a zombie."""
    alive = []
    for info in recorded:
        now = read_process(info.pid)
        if now is not None and now.start == info.start and now.state not in ("Z", "X", "x"):
            alive.append(info)
    return alive


def wait_gone(recorded: list[ProcessInfo], timeout: float = 15.0) -> list[ProcessInfo]:
    deadline = time.monotonic() + timeout
    while survivors(recorded) and time.monotonic() < deadline:
        time.sleep(0.2)
    return survivors(recorded)


def wait_for(what: str, probe: Callable[[], Any], timeout: float, process: subprocess.Popen | None = None) -> Any:
    """Poll ``probe`` until it returns something truthy; fail after ``timeout`` or if ``process`` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        if process is not None and process.poll() is not None:
            pytest.fail(f"{what}: the command exited with {process.returncode} first")
        time.sleep(0.5)
    pytest.fail(f"{what}: not after {timeout:.0f} s")


def exactly(n: int, fetch: Callable[[], list[ProcessInfo]]) -> Callable[[], list[ProcessInfo]]:
    """A probe for :func:`wait_for`: ``fetch()`` once it returns ``n`` processes."""
    return lambda: found if len(found := fetch()) == n else []


def named(processes: list[ProcessInfo], name: str) -> list[ProcessInfo]:
    return [p for p in processes if p.name == name]


def use_signing_keys(fed: LoopbackFederation, keys: tuple[Path, Path]) -> None:
    """Give the coordinator the key that signed ``demo_bundle``, so that it runs that bundle as is."""
    shutil.copy2(keys[0], fed.coord.signing_key)
    shutil.copy2(keys[1], fed.coord.signing_public_key)


def log_text(fed: LoopbackFederation, name: str) -> str:
    return (fed.workdir / "logs" / f"{name}.log").read_text()


# --- process trees built by hand ------------------------------------------------------------------

TREE = textwrap.dedent(
    """
    import subprocess, time
    from fedarches.shared._process import StopSignals, owning, parent_from_env

    with StopSignals("tree", parent_pid=parent_from_env(), adopt=True, grace_s=2):
        # a shell in a session of its own that ignores SIGTERM, with a child that ignores it too, and a
        # grandchild that a subshell double-forks into yet another session before exiting (an orphan)
        shell = subprocess.Popen(
            ["sh", "-c", "(setsid sleep 1000 &); trap '' TERM; sleep 1000"], start_new_session=True
        )
        with owning(shell, grace_s=2):
            time.sleep(0.5)
            print("ready", flush=True)
            time.sleep(1000)
    """
)


def test_a_signal_stops_grandchildren_in_other_sessions_orphans_and_processes_ignoring_sigterm(tmp_path) -> None:
    script = tmp_path / "tree.py"
    script.write_text(TREE)
    process = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    recorded: list[ProcessInfo] = []
    try:
        assert process.stdout.readline().strip() == "ready"
        # python, sh, sleep (sh's child), and the orphaned sleep, adopted by python (its subreaper)
        recorded = wait_for("the tree", exactly(4, lambda: process_tree([process.pid])), 30)
        assert len(named(recorded, "sleep")) == 2 and all(p.ppid != 1 for p in recorded)
        assert len({p.sid for p in recorded}) == 3  # three sessions
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=60)
        assert process.returncode == 128 + signal.SIGTERM, err
        (line,) = err.strip().splitlines()
        assert line == "tree: stopped by SIGTERM; stopped the 3 processes it had started (sh, sleep ×2)", line
        assert not wait_gone(recorded, 5)
    finally:
        stop_leftovers(process, recorded)


def test_a_command_whose_parent_is_killed_stops_everything_it_started(tmp_path) -> None:
    """``FEDARCHES_PARENT_PID``: the parent dies by SIGKILL (no chance to clean up); the command notices."""
    script = tmp_path / "tree.py"
    script.write_text(TREE)
    err = tmp_path / "tree.err"
    parent = subprocess.Popen(
        [
            sys.executable, "-c",
            "import os, subprocess, sys, time\n"
            "env = {**os.environ, 'FEDARCHES_PARENT_PID': str(os.getpid())}\n"
            f"subprocess.Popen([sys.executable, {str(script)!r}], env=env, stderr=open({str(err)!r}, 'w'))\n"
            "time.sleep(1000)",
        ],
        start_new_session=True,
    )  # fmt: skip
    recorded: list[ProcessInfo] = []
    try:
        recorded = wait_for("the tree", exactly(5, lambda: process_tree([parent.pid])), 30)
        parent.kill()
        parent.wait()
        assert not wait_gone(recorded, 20), survivors(recorded)
        assert f"tree: stopped by SIGHUP (its parent process {parent.pid} exited); stopped the 3 processes" in (
            err.read_text()
        )
    finally:
        stop_leftovers(parent, recorded)


# --- the real commands, mid-round -------------------------------------------------------------------


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory, demo_bundle: ReferenceBundle, keys, demo_dir: Path):
    """A coordinator (``serve``) and two labs (``join``) online, running ``demo_bundle`` as it is."""
    fed = LoopbackFederation(tmp_path_factory.mktemp("signals"), threads=1)
    recorded: list[ProcessInfo] = []
    try:
        use_signing_keys(fed, keys)
        fed.start_coordinator()
        for lab in LABS:
            fed.add_lab(lab, demo_dir / f"{lab}.h5ad")
            fed.join(lab, wait=False)
        fed.wait_online(list(LABS))
        yield fed
        recorded = fed.processes()
    finally:
        fed.stop()
    assert not wait_gone(recorded, 5), "processes outlived the federation"


def round_processes(fed: LoopbackFederation) -> tuple[list[ProcessInfo], list[ProcessInfo]]:
    """(ServerApps, ClientApps) running now."""
    everything = fed.processes()
    return named(everything, "flwr-serverapp"), named(everything, "flwr-clientapp")


def mid_round(fed: LoopbackFederation, labs: int, runner: subprocess.Popen) -> list[ProcessInfo]:
    """Wait until the round's ServerApp and every lab's ClientApp run; return them."""

    def probe() -> list[ProcessInfo]:
        servers, clients = round_processes(fed)
        return [*servers, *clients] if servers and len(clients) >= labs else []

    return wait_for("the labs' ClientApps", probe, 240, runner)


def test_run_round_on_sighup_cancels_its_round(federation, demo_bundle) -> None:
    fed = federation
    runner = fed.start_round(demo_bundle.path, "--max-epochs", SHORT_EPOCHS, "--min-labs", "2")
    started = mid_round(fed, len(LABS), runner)
    own = process_tree([runner.pid])
    runner.send_signal(signal.SIGHUP)
    assert runner.wait(timeout=120) == 128 + signal.SIGHUP
    output = log_text(fed, "run-round")
    run_id = int(re.search(r"submitted as Flower run (\d+)", output).group(1))
    assert re.search(
        rf"fedarches-server run-round: stopped by SIGHUP; cancelled round \S+ \(Flower run {run_id}\) at the SuperLink",
        output,
    ), output
    assert not wait_gone(own, 5)  # its own `flwr` calls
    servers = named(started, "flwr-serverapp")
    assert not wait_gone(servers, 30), "the ServerApp outlived its cancelled round"
    assert superlink.run_status(fed.coord, run_id).startswith("finished:stopped")
    # Flower 1.41 does not tell the SuperNodes: each lab's ClientApp ends its training, finds the run
    # stopped, and exits (a lab's own `join` stops it at once: next test)
    assert not wait_gone(named(started, "flwr-clientapp"), 180), "a ClientApp of the cancelled round never ended"
    assert all(fed.labs[lab].process.poll() is None for lab in LABS)


def test_join_on_sigint_then_serve_on_sigterm_stop_their_flower_processes_mid_round(federation, demo_bundle) -> None:
    fed = federation
    runner = fed.start_round(demo_bundle.path, "--max-epochs", LONG_EPOCHS, "--min-labs", "2")
    mid_round(fed, len(LABS), runner)

    lab = fed.labs["lab_a"]
    recorded = process_tree([lab.process.pid])
    assert {"fedarches-client", "flower-supernode", "flower-superexec", "flwr-clientapp"} <= {
        p.name for p in recorded
    }, recorded
    assert len({p.sid for p in recorded}) == 2  # join, and the SuperNode's own session
    lab.process.send_signal(signal.SIGINT)
    assert lab.process.wait(timeout=60) == 128 + signal.SIGINT
    assert not wait_gone(recorded, 5), survivors(recorded)
    line = stop_line(log_text(fed, "lab-lab_a"), "fedarches-client join (lab_a): stopped by SIGINT; stopped the ")
    assert "flower-supernode" in line and "flwr-clientapp" in line, line

    coordinator = fed._serve
    recorded = process_tree([coordinator.pid])
    assert {"fedarches-server", "flower-superlink", "flower-superexec", "flwr-serverapp"} <= {
        p.name for p in recorded
    }, recorded
    assert len({p.sid for p in recorded}) == 3  # serve, the SuperLink's session, the SuperExec's session
    coordinator.send_signal(signal.SIGTERM)
    assert coordinator.wait(timeout=60) == 128 + signal.SIGTERM
    assert not wait_gone(recorded, 5), survivors(recorded)
    line = stop_line(log_text(fed, "coordinator"), "fedarches-server serve: stopped by SIGTERM; stopped the ")
    assert "flower-superlink" in line and "flwr-serverapp" in line, line
    assert fed.labs["lab_b"].process.poll() is None  # another lab's processes are not the coordinator's


HARNESS = textwrap.dedent(
    """
    import shutil, sys
    from pathlib import Path
    from fedarches.testing.loopback import LoopbackFederation

    work, key, pub, bundle, data = map(Path, sys.argv[1:6])
    with LoopbackFederation(work, threads=1) as fed:
        shutil.copy2(key, fed.coord.signing_key)
        shutil.copy2(pub, fed.coord.signing_public_key)
        fed.start_coordinator()
        fed.add_lab("lab_c", data)
        fed.join("lab_c")
        fed.run_round(bundle, "--max-epochs", sys.argv[6])
    """
)


def test_loopback_harness_on_sigterm_stops_the_whole_federation(tmp_path, demo_bundle, keys, demo_dir) -> None:
    script = tmp_path / "harness.py"
    script.write_text(HARNESS)
    log = tmp_path / "harness.log"
    with log.open("w") as fh:
        harness = subprocess.Popen(
            [
                sys.executable, str(script), str(tmp_path / "fed"), str(keys[0]), str(keys[1]), str(demo_bundle.path),
                str(demo_dir / "lab_c.h5ad"), LONG_EPOCHS,
            ],
            stdout=fh, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    recorded: list[ProcessInfo] = []
    try:
        wait_for("the lab's ClientApp", lambda: named(process_tree([harness.pid]), "flwr-clientapp"), 300, harness)
        recorded = process_tree([harness.pid])
        harness.send_signal(signal.SIGTERM)
        assert harness.wait(timeout=120) == 128 + signal.SIGTERM, log.read_text()
        assert not wait_gone(recorded, 5), survivors(recorded)
        line = stop_line(log.read_text(), "loopback federation: stopped by SIGTERM; stopped the ")
        for name in ("fedarches-server ×2", "flower-superlink", "flwr-serverapp", "flower-supernode", "flwr-clientapp"):
            assert name in line, (name, line)  # serve and run-round; the SuperLink's; the lab's
    finally:
        stop_leftovers(harness, recorded)


def test_make_demo_killed_by_timeout_stops_every_process_it_started(tmp_path) -> None:
    """``timeout T make demo`` when T runs out: timeout sends SIGTERM to make and to its process group
    (the demo driver); make forwards SIGTERM to the driver and waits for it. SIGALRM to timeout is
    exactly its own timer running out, mid-round."""
    if shutil.which("make") is None or shutil.which("timeout") is None:
        pytest.skip("needs GNU make and coreutils timeout")
    out = tmp_path / "demo-output"
    log = tmp_path / "demo.log"
    with log.open("w") as fh:
        limited = subprocess.Popen(
            [
                "timeout", "900", "make", "--no-print-directory", "-C", str(REPO), "demo",
                "--assume-old", ".venv/.installed-stamp", f"PY={sys.executable}",  # never (re)install here
                f"DEMO_OUT={out}", f"DEMO_ARGS=--reference-epochs 2 --max-epochs {LONG_EPOCHS}",
            ],
            stdout=fh, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    recorded: list[ProcessInfo] = []
    try:
        clientapps = wait_for(
            "three labs' ClientApps",
            exactly(3, lambda: named(process_tree([limited.pid]), "flwr-clientapp")),
            420,
            limited,
        )
        recorded = process_tree([limited.pid])
        assert len(clientapps) == 3 and len(named(recorded, "flower-supernode")) == 3
        assert named(recorded, "flower-superlink") and named(recorded, "flwr-serverapp")
        limited.send_signal(signal.SIGALRM)
        assert limited.wait(timeout=120) == 124, log.read_text()
        assert not wait_gone(recorded, 5), survivors(recorded)
        text = log.read_text()
        line = stop_line(text, "demo: stopped by SIGTERM; stopped the ")  # printed by the LoopbackFederation
        assert "flower-superlink" in line and "flower-supernode ×3" in line and "flwr-clientapp ×3" in line, line
        assert stop_line(text, "fedarches-server run-round: stopped by SIGTERM; cancelled round "), text
    finally:
        stop_leftovers(limited, recorded)


def stop_line(text: str, start: str) -> str:
    """The one line a stopped command printed."""
    lines = [line for line in text.splitlines() if line.startswith(start)]
    assert len(lines) == 1, text[-3000:]
    return lines[0]


def stop_leftovers(process: subprocess.Popen, recorded: list[ProcessInfo]) -> None:
    """Whatever the test found, leave nothing running."""
    for info in [*survivors(recorded), *process_tree([process.pid] if process.poll() is None else [])]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(info.pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()
