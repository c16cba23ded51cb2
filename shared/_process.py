"""Child processes of the coordinator and the labs: executables, PATH, ports, and stopping them all.

Flower's processes do not stay where they were started: ``flower-superlink`` starts its
``flower-superexec`` in a session of its own, which starts one ``flwr-serverapp`` per round, and
``flower-supernode`` starts a SuperExec that starts a ``flwr-clientapp`` per message. A signal to
one process group therefore misses some of them, and a process whose parent died is adopted by
init, out of reach of a walk down the tree. :func:`stop_processes` records the whole tree (by
parent, on Linux through ``/proc``) with each process's group and session *before* it signals
anything, then stops everything recorded, everything in the recorded groups and sessions, and
anything they started meanwhile: SIGTERM to the top of the tree first (Flower shuts its children
down itself), then SIGTERM to what is left, then SIGKILL. A process is named by its pid *and* start
time, so a pid reused meanwhile is never signalled. A command can also make itself the subreaper
of its descendants (:func:`adopt_orphans`), so that an orphan stays in its tree.

:class:`StopSignals` makes a long-running command (``serve``, ``join``, ``run-round``, the demo,
the loopback harness) answer SIGTERM, SIGINT and SIGHUP that way: stop every process it started,
print one line, exit with 128 + the signal's number. A command started with
``FEDARCHES_PARENT_PID`` in its environment (the loopback harness sets it) also stops when that
process dies, even by SIGKILL: a thread checks four times a second that the process with that pid
and start time still exists, and sends its own process SIGHUP when it does not. (Linux's
``PR_SET_PDEATHSIG`` would be immediate, but it fires when the *thread* that forked exits, is
Linux-only, and cannot name a grandparent such as ``make`` behind a shell.)
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any


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


SUPEREXEC_POLL_S = 0.1  # Flower's SuperExec looks for a task to start every second by default


def flower_env(flwr_home: Path) -> dict[str, str]:
    """The environment for Flower's commands: ``FLWR_HOME``, our bin first on PATH, a faster SuperExec.

    ``FLWR_SUPEREXEC_TASK_POLL_INTERVAL`` (Flower's own setting) is 0.1 s unless the environment sets
    it: a ServerApp or ClientApp then starts within 0.1 s of its message instead of within 1 s.
    """
    env = with_own_bin_on_path({**os.environ, "FLWR_HOME": str(flwr_home)})
    env.setdefault("FLWR_SUPEREXEC_TASK_POLL_INTERVAL", str(SUPEREXEC_POLL_S))
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


# --- stopping every process a command started ------------------------------------------------------------------

PARENT_PID_ENV = "FEDARCHES_PARENT_PID"  # set by a parent that wants its fedarches commands to stop when it dies
STOP_SIGNALS: tuple[int, ...] = tuple(getattr(signal, n) for n in ("SIGTERM", "SIGINT", "SIGHUP") if hasattr(signal, n))
_PROC = Path("/proc")
_POLL_S = 0.1
_started: set[int] = set()  # processes started by this command's own code (see :func:`owning`)
_notes: list[str] = []  # why a stop signal came from inside this process (its parent died)


@dataclass(frozen=True)
class ProcessInfo:
    """One process, as ``/proc/PID/stat`` describes it."""

    pid: int
    ppid: int
    pgid: int
    sid: int
    start: int  # clock ticks after boot: with the pid, it names one process (pids are reused)
    state: str
    name: str


def read_process(pid: int) -> ProcessInfo | None:
    """The process ``pid`` now, or None if there is none (or no ``/proc``)."""
    try:
        stat = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    head, _, rest = stat.rpartition(")")
    fields = rest.split()
    try:
        return ProcessInfo(
            pid, int(fields[1]), int(fields[2]), int(fields[3]), int(fields[19]), fields[0], head.partition("(")[2]
        )
    except (IndexError, ValueError):
        return None


def process_table() -> dict[int, ProcessInfo]:
    """Every process this user can see (Linux ``/proc``); empty where there is no ``/proc``."""
    table = {}
    with contextlib.suppress(OSError):
        for entry in _PROC.iterdir():
            if entry.name.isdigit():
                info = read_process(int(entry.name))
                if info is not None:
                    table[info.pid] = info
    return table


def command_name(pid: int) -> str:
    """A short name for the program ``pid`` runs: ``flower-superlink``, not ``python3.11``.

    A module run with ``python -m`` is named by its last part, underscores as hyphens: a wrapper
    module ``...flower_supernode`` is named like the program it runs.
    """
    with contextlib.suppress(OSError):
        args = [a for a in (_PROC / str(pid) / "cmdline").read_bytes().decode(errors="replace").split("\0") if a]
        if args and Path(args[0]).name.startswith("python") and len(args) > 1:
            if args[1] == "-m" and len(args) > 2:
                return args[2].rsplit(".", 1)[-1].replace("_", "-")
            if args[1] in ("-c", "-m"):
                return f"{Path(args[0]).name} {args[1]}"
            return Path(args[1]).name
        if args:
            return Path(args[0]).name
    info = read_process(pid)
    return info.name if info is not None else str(pid)


def _is_live(info: ProcessInfo, now: ProcessInfo | None) -> bool:
    return now is not None and now.start == info.start and now.state not in ("Z", "X", "x")


class _Tree:
    """The processes under ``roots``, with their groups and sessions, as far as they can be found."""

    def __init__(self, roots: set[int], groups: Iterable[int], known: Iterable[ProcessInfo]) -> None:
        table = process_table()
        self.roots = roots
        self.me = os.getpid()
        self.protected = {0, 1, self.me}
        pid = self.me
        while pid in table and pid not in (0, 1):  # never our parent or its parents
            pid = table[pid].ppid
            self.protected.add(pid)
        self.own_groups = {os.getpgid(0), os.getsid(0), 0, 1}
        self.members: dict[int, ProcessInfo] = {}
        self.groups: set[int] = set(groups) - self.own_groups
        for info in known:
            self._add(info, named=True)

    def _add(self, info: ProcessInfo, *, named: bool = False) -> bool:
        old = self.members.get(info.pid)
        if info.pid in self.protected or (old is not None and old.start == info.start):
            return False
        self.members[info.pid] = info if named else replace(info, name=command_name(info.pid))
        self.groups |= {info.pgid, info.sid} - self.own_groups
        return True

    def refresh(self, table: dict[int, ProcessInfo] | None = None) -> tuple[list[ProcessInfo], list[ProcessInfo]]:
        """Take in what belongs to the tree now; return (live members, members found just now)."""
        table = process_table() if table is None else table
        new = []
        children: dict[int, list[ProcessInfo]] = {}
        for info in table.values():
            children.setdefault(info.ppid, []).append(info)
            if info.pgid in self.groups or info.sid in self.groups:
                new.append(info)
        seeds = [table[p] for p in self.roots if p in table]
        seeds += [table[p] for p, i in self.members.items() if _is_live(i, table.get(p))]
        seen = set()
        while seeds:
            info = seeds.pop()
            if info.pid in seen:
                continue
            seen.add(info.pid)
            new.append(info)
            seeds.extend(children.get(info.pid, []))
        added = [info for info in new if info.state not in ("Z", "X", "x") and self._add(info)]
        live = [i for p, i in self.members.items() if _is_live(i, table.get(p))]
        return live, added


def process_tree(roots: Iterable[int]) -> list[ProcessInfo]:
    """``roots`` and every live process they started (by parent, group or session), named by their commands."""
    live, _ = _Tree(set(roots), (), ()).refresh()
    return live


def cpu_seconds(roots: Iterable[int]) -> float | None:
    """CPU seconds (user and system) of the process trees under ``roots``, their reaped children's included.

    Each live process counts its own time and that of the children it has waited for (``/proc``
    ``utime + stime + cutime + cstime``), so a process that ran and exited within a tree still
    counts. None where there is no ``/proc``.
    """
    if not _PROC.is_dir():
        return None
    ticks = 0
    for info in process_tree(roots):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = (_PROC / str(info.pid) / "stat").read_text().rpartition(")")[2].split()
            ticks += sum(int(f) for f in fields[11:15])
    return ticks / os.sysconf("SC_CLK_TCK")


def adopt_orphans(*, on: bool = True) -> bool:
    """Make this process the subreaper of its descendants (Linux ``PR_SET_CHILD_SUBREAPER``); return whether it is.

    A process whose parent exits is then re-parented to this one instead of init, so it stays in
    the tree :func:`stop_processes` walks even when the parent exited long before the stop (a
    double fork, or Flower's SuperExec dying and leaving its ServerApp). Elsewhere a no-op.
    """
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(36, int(on), 0, 0, 0)) == 0  # 36: PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        return False


def child_pids() -> list[int]:
    """The running children of this process (from ``/proc``; none found elsewhere)."""
    me = os.getpid()
    return [i.pid for i in process_table().values() if i.ppid == me and i.state not in ("Z", "X", "x")]


def _send(info: ProcessInfo, sig: int) -> None:
    """Signal ``info`` if it is still that process (its pid may have been reused since)."""
    now = read_process(info.pid)
    if (now is None and _PROC.is_dir()) or (now is not None and not _is_live(info, now)):
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(info.pid, sig)


def stop_processes(
    roots: Iterable[int],
    *,
    groups: Iterable[int] = (),
    known: Iterable[ProcessInfo] = (),
    grace_s: float = 10.0,
    kill_s: float = 5.0,
) -> list[ProcessInfo]:
    """Stop ``roots`` and every process they started; return the processes that were running.

    The tree (by parent, plus every process in the groups and sessions it uses) is recorded before
    anything is signalled, so a grandchild in its own session, or one adopted by init when its
    parent exits, is still found. ``groups`` adds process groups or sessions whose members belong
    to the tree (that of a root started in a session of its own and already reaped); ``known`` adds
    processes recorded earlier (a snapshot taken when a signal arrived). The roots get SIGTERM and
    ``grace_s`` to stop their own children (Flower does); what is left gets SIGTERM, then SIGKILL.
    Give only roots that have not been reaped: a reaped pid can belong to someone else by now.
    Without ``/proc`` (not Linux), the roots' and ``groups``' process groups get the same treatment.
    """
    roots = {int(r) for r in roots}
    if not _PROC.is_dir():
        return _stop_groups(roots | set(groups), grace_s, kill_s)
    tree = _Tree(roots, groups, known)
    live, _ = tree.refresh()
    for info in live:
        if info.pid in roots:
            _send(info, signal.SIGTERM)
    # what the roots start while they stop (``run-round``'s ``flwr stop``) is left alone until they are gone
    live = _wait(tree, grace_s, None, until=lambda alive: not any(i.pid in roots for i in alive))
    for info in live:
        _send(info, signal.SIGTERM)
    live = _wait(tree, min(3.0, grace_s), signal.SIGTERM)
    for info in live:
        _send(info, signal.SIGKILL)
    _wait(tree, kill_s, signal.SIGKILL)
    return sorted(tree.members.values(), key=lambda i: (i.start, i.pid))


def _reap_adopted(tree: _Tree) -> None:
    """Reap the exited processes this one adopted as their subreaper.

    Its own children are reaped by their ``Popen``: their status is not taken from it.
    """
    for info in tree.members.values():
        now = read_process(info.pid)
        if now is not None and now.start == info.start and now.state == "Z" and now.ppid == tree.me != info.ppid:
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(info.pid, os.WNOHANG)


def _wait(
    tree: _Tree, seconds: float, new_signal: int | None, until: Callable[[list[ProcessInfo]], bool] | None = None
) -> list[ProcessInfo]:
    """Poll the tree for up to ``seconds``; return what is still alive (``new_signal`` goes to newcomers)."""
    deadline = time.monotonic() + seconds
    while True:
        live, added = tree.refresh()
        for info in added:
            if new_signal is not None:
                _send(info, new_signal)
        _reap_adopted(tree)
        if not live or (until is not None and until(live)) or time.monotonic() >= deadline:
            return live
        time.sleep(_POLL_S)


def _stop_groups(roots: set[int], grace_s: float, kill_s: float) -> list[ProcessInfo]:
    """Where there is no ``/proc``: SIGTERM, then SIGKILL, each root's process group."""
    for pgid in roots:
        signal_group(pgid, signal.SIGTERM)
    for seconds, sig in ((grace_s, signal.SIGKILL), (kill_s, None)):
        deadline = time.monotonic() + seconds
        while any(_group_exists(g) for g in roots) and time.monotonic() < deadline:
            time.sleep(_POLL_S)
        for pgid in roots:
            if sig is not None:
                signal_group(pgid, sig)
    return []


def _group_exists(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def leftover_group(started: ProcessInfo | None) -> list[int]:
    """The group or session ``started`` led, if its members may outlive it: ``[pid]`` or ``[]``.

    A pid stays reserved while any process uses it as a group or session id, so if the pid is free
    or still that same process, whatever is in the group is what it started; if the pid now
    belongs to another process, the old group is empty (and the new one is not ours).
    """
    if started is None or started.pid not in (started.pgid, started.sid):
        return []
    now = read_process(started.pid)
    return [started.pid] if now is None or now.start == started.start else []


@contextlib.contextmanager
def owning(process: Any, *, grace_s: float = 10.0) -> Iterator[None]:
    """Own ``process`` (a ``Popen``) within the block, and stop its whole tree at the end.

    Within the block, ``process`` counts among this command's processes; at the end its whole tree is
    stopped (SIGTERM, then SIGKILL after ``grace_s``), whatever ended the block.

    :class:`StopSignals` records what these processes started at the moment a signal arrives.
    """
    started = read_process(process.pid)
    _started.add(process.pid)
    try:
        yield
    finally:
        try:
            roots = [process.pid] if process.poll() is None else []
            stop_processes(roots, groups=leftover_group(started), grace_s=grace_s)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=1)
        finally:
            _started.discard(process.pid)


class StopRequested(SystemExit):
    """A stop signal arrived: raised in the main thread, so ``finally`` blocks run; exits with 128 + its number."""

    def __init__(self, signum: int) -> None:
        super().__init__(128 + signum)
        self.signum = signum


def signal_name(signum: int) -> str:
    """``SIGTERM`` for 15."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def parent_from_env() -> int | None:
    """The pid in ``FEDARCHES_PARENT_PID``, taken out of the environment (so that children do not inherit it)."""
    value = os.environ.pop(PARENT_PID_ENV, "").strip()
    return int(value) if value.isdigit() and int(value) > 1 else None


class StopSignals:
    """SIGTERM, SIGINT and SIGHUP stop every process this command started, print one line, exit 128 + signal.

    Use it as a context manager around a long-running command's work, in the main thread (elsewhere
    it does nothing: Python runs signal handlers only there). When a signal arrives, the process
    tree is recorded, :class:`StopRequested` unwinds the main thread (``finally`` blocks stop what
    they started), then ``on_stop`` runs (``run-round`` cancels its round there), every process
    still running under ``roots`` is stopped, the line is printed and the exit code is 128 + the
    signal's number. Further signals while stopping do not cut the stopping short; it is bounded
    by ``grace_s`` plus a few seconds.

    Parameters
    ----------
    what
        The command, as the one-line message names it.
    roots
        Returns the pids of the processes to stop; default: those started under :func:`owning` and
        every child this process gained inside the block (adopted orphans included).
    on_stop
        Called once after a stop signal, before the processes are stopped; returns a phrase for the message.
    parent_pid
        Stop (as on SIGHUP) when this process exits, even when it is killed with SIGKILL.
    adopt
        Within the block, be the subreaper of orphaned descendants (:func:`adopt_orphans`): for a
        process of its own, such as a command's; not for a library in someone else's process.
    grace_s
        Seconds the top processes get to stop their own children before the rest gets SIGTERM and SIGKILL.
    echo
        Prints the line (default: stderr).
    """

    def __init__(
        self,
        what: str,
        *,
        roots: Callable[[], Iterable[int]] | None = None,
        on_stop: Callable[[], str] | None = None,
        parent_pid: int | None = None,
        adopt: bool = False,
        grace_s: float = 10.0,
        echo: Callable[[str], None] | None = None,
    ) -> None:
        self.what = what
        self.adopt = adopt
        self._roots = roots or self._started_here
        self._preexisting: set[int] = set()
        self._on_stop = on_stop
        self.parent_pid = parent_pid
        self.grace_s = grace_s
        self._echo = echo or _echo_stderr
        self.signum: int | None = None
        self.snapshot: list[ProcessInfo] = []
        self.stopped: list[ProcessInfo] = []
        self._previous: dict[int, Any] = {}
        self._active = False
        self._deferring = False
        self._exiting = False
        self._done = threading.Event()

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is not threading.main_thread():
            return self
        self._active = True
        self._preexisting = set(child_pids())
        for sig in STOP_SIGNALS:
            if signal.getsignal(sig) is signal.SIG_IGN:
                continue  # ignored on purpose (nohup, a background job): it stays ignored
            self._previous[sig] = signal.signal(sig, self._handle)
        self.adopt = self.adopt and adopt_orphans()
        if self.parent_pid is not None:
            threading.Thread(target=self._watch_parent, name="fedarches-parent-watch", daemon=True).start()
        return self

    def _started_here(self) -> set[int]:
        """Processes started under :func:`owning`, and every child this process gained inside the block."""
        return _started | (set(child_pids()) - self._preexisting)

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        if self.signum is not None:
            return  # already stopping
        self.signum = signum
        self.snapshot = process_tree(self._roots())  # before anything unwinds
        if not (self._deferring or self._exiting):
            raise StopRequested(signum)

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        """A stop signal inside the block takes effect at its end (e.g. while a round is being submitted)."""
        self._deferring = True
        try:
            yield
        finally:
            self._deferring = False
        if self.signum is not None and not self._exiting:
            raise StopRequested(self.signum)

    def hold(self) -> None:
        """From now on a stop signal only sets the exit code: the caller is already stopping everything."""
        self._exiting = True

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if not self._active:
            return
        self._active = False
        self._exiting = True
        detail = ""
        try:
            if self.signum is not None and self._on_stop is not None:
                detail = self._on_stop()
            self.stopped = stop_processes(self._roots(), grace_s=self.grace_s, known=self.snapshot)
        finally:
            self._done.set()
            if self.adopt:
                adopt_orphans(on=False)
            for sig, previous in self._previous.items():
                signal.signal(sig, signal.SIG_DFL if previous is None else previous)
            self._previous.clear()
        if self.signum is None:
            return
        self._echo(self.message(detail))
        if not isinstance(exc, StopRequested):
            raise StopRequested(self.signum)

    def message(self, detail: str = "") -> str:
        """The one line printed after a stop signal."""
        assert self.signum is not None
        why = f" ({_notes[-1]})" if _notes else ""
        processes = {(i.pid, i.start): i.name for i in [*self.stopped, *self.snapshot]}
        count = len(processes)
        names = Counter(processes.values())
        listed = ", ".join(name if n == 1 else f"{name} ×{n}" for name, n in names.items())
        stopped = (
            f"stopped the {count} process{'es' if count != 1 else ''} it had started ({listed})"
            if count
            else "no process it had started was running"
        )
        parts = "; ".join(p for p in (detail, stopped) if p)
        return f"{self.what}: stopped by {signal_name(self.signum)}{why}; {parts}"

    def _watch_parent(self) -> None:
        assert self.parent_pid is not None
        first = read_process(self.parent_pid)
        while True:
            now = read_process(self.parent_pid)
            gone = not _is_live(first, now) if first is not None else not _pid_exists(self.parent_pid)
            if gone:
                _notes.append(f"its parent process {self.parent_pid} exited")
                handled = [getattr(signal, n, None) for n in ("SIGHUP", "SIGTERM", "SIGINT")]
                handled = [sig for sig in handled if sig in self._previous]  # not one ignored on purpose
                os.kill(os.getpid(), handled[0] if handled else signal.SIGTERM)
                return
            if self._done.wait(0.25):
                return


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _echo_stderr(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()
