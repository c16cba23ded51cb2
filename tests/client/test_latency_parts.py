"""Issue 17's pieces that need no federation: the SuperNode wrapper, process CPU, staging sweeps, join options."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedarches.client import flower_supernode
from fedarches.client.supernode import JoinSettings, supernode_command
from fedarches.shared._io import remove_staging, staged_outputs
from fedarches.shared._process import command_name, cpu_seconds


def test_the_wrapper_caps_the_supernode_loops_sleeps_on_the_checked_flower() -> None:
    import flwr
    import flwr.supernode.start_client_internal as loop

    # the wrapper was written against this Flower: on an upgrade this fails, and the cap needs checking again
    assert flwr.__version__ == flower_supernode.CHECKED_FLOWER
    assert "time.sleep(3)" in inspect.getsource(loop.start_client_internal)
    assert loop.time is time
    try:
        assert flower_supernode.cap_idle_sleep(0.05)
        tick = time.monotonic()
        loop.time.sleep(3)
        assert time.monotonic() - tick < 1.0
        assert loop.time.monotonic() > 0  # everything else is the time module's
    finally:
        loop.time = time
    assert time.sleep is not flower_supernode._CappedTime.sleep  # the time module itself is untouched


def test_the_wrapper_runs_flowers_own_supernode(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "fedarches.client.flower_supernode", "--poll-interval", "0.2", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0 and "--auth-supernode-private-key" in done.stdout


def test_join_starts_the_wrapper_with_its_poll_interval(tmp_path: Path) -> None:
    from fedarches.client.lab import LabDir
    from fedarches.server.coordinator import add_lab, init_coordinator

    lab = LabDir.open(add_lab(init_coordinator(tmp_path / "c", port=8123), "lab_a"))
    settings = JoinSettings(lab, "127.0.0.1:8123", tmp_path / "q.h5ad", tmp_path / "out", poll_interval=0.5, port=9)
    command = supernode_command(settings, tmp_path / "node-config.toml")
    assert command[1:5] == ["-m", "fedarches.client.flower_supernode", "--poll-interval", "0.5"]
    assert settings.node_config()["worker"] is True
    no_worker = JoinSettings(lab, "127.0.0.1:8123", tmp_path / "q.h5ad", tmp_path / "out", worker=False)
    assert no_worker.node_config()["worker"] is False


def test_a_module_run_with_python_m_is_named_like_its_program() -> None:
    child = subprocess.Popen([sys.executable, "-m", "timeit", "-n", "1", "import time; time.sleep(30)"])
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not (
            command_name(child.pid) == "timeit" and command_name(other.pid).endswith(" -c")
        ):  # until both have started their program
            time.sleep(0.05)
        assert command_name(child.pid) == "timeit"  # a wrapper module flower_supernode is "flower-supernode"
        assert command_name(other.pid).endswith(" -c")
    finally:
        for p in (child, other):
            p.kill()
            p.wait()


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_cpu_seconds_count_a_tree_and_its_finished_children() -> None:
    busy = "import subprocess, sys, time\n"
    busy += "subprocess.run([sys.executable, '-c', 'x = sum(i * i for i in range(20_000_000))'])\n"
    busy += "time.sleep(30)"
    parent = subprocess.Popen([sys.executable, "-c", busy])
    try:
        deadline = time.monotonic() + 30
        used = 0.0
        while time.monotonic() < deadline:  # the child ran and was waited for: its time is in the parent's
            used = cpu_seconds([parent.pid]) or 0.0
            if used > 0.5:
                break
            time.sleep(0.2)
        assert used > 0.5
        assert cpu_seconds([os.getpid()]) > 0
    finally:
        parent.kill()
        parent.wait()


def test_remove_staging_removes_only_what_an_interrupted_write_left(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt), staged_outputs() as staged:
        names = [staged.file(out / "annotated.h5ad"), staged.directory(out / "plots")]
        raise KeyboardInterrupt  # the names a kill would leave behind are the ones the sweep takes:
    assert all(p.name.startswith(".") and ".partial" in p.name for p in names)
    (out / "plots").mkdir(parents=True, exist_ok=True)
    (out / "annotated.h5ad").write_bytes(b"previous, complete")
    (out / "notes.partial.txt").write_text("the user's own file")
    (out / ".hidden").write_text("the user's own hidden file")
    (out / ".annotated.k3j2.partial.h5ad").write_bytes(b"half")  # what SIGKILL during a write leaves
    (out / "plots" / ".plots.x9.partial").mkdir()
    (out / "plots" / ".plots.x9.partial" / "umap.png").write_bytes(b"half")

    removed = remove_staging(out)

    assert sorted(p.name for p in removed) == [".annotated.k3j2.partial.h5ad", ".plots.x9.partial"]
    assert sorted(p.name for p in out.rglob("*")) == [".hidden", "annotated.h5ad", "notes.partial.txt", "plots"]
    assert (out / "annotated.h5ad").read_bytes() == b"previous, complete"
    assert remove_staging(tmp_path / "missing") == []
