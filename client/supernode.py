"""Run the lab's Flower SuperNode: TLS to the SuperLink, node authentication, the lab's settings.

The node config (where the lab's data is, where results go) is written to
``LAB_DIR/node-config.toml`` and handed to ``flower-supernode --node-config``: it never leaves
the lab, and paths with spaces survive.
"""

from __future__ import annotations

import re
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedarches.client.flower_supernode import DEFAULT_POLL_S
from fedarches.client.lab import LabDir
from fedarches.shared._io import write_toml
from fedarches.shared._process import SUPERNODE_PID_FILE, flower_env, free_port, owning
from fedarches.shared.errors import ConfigError, FederationError

_EXIT_CODE = re.compile(r"Exit Code: (\d+)")
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
    labels_key: str | None = None
    extra_mods: str = ""
    worker: bool = True
    poll_interval: float = DEFAULT_POLL_S

    def node_config(self) -> dict[str, Any]:
        """The SuperNode's node config: the lab's paths and settings, as written to ``node-config.toml``."""
        config: dict[str, Any] = {
            "lab-dir": str(self.lab.root),
            "data-path": str(Path(self.data_path).resolve()),
            "out-dir": str(Path(self.out_dir).resolve()),
            "batch-key": self.batch_key or "",
            "labels-key": self.labels_key or "",
            "layer": self.layer or "",
            "threads": int(self.threads or 0),
            "egress-copy": self.egress_copy,
            "worker": self.worker,
        }
        if self.extra_mods:
            config["extra-mods"] = self.extra_mods
        return config


@dataclass(frozen=True)
class JoinCheck:
    """What :func:`prepare_join` checked: the settings to run, the lab's cell count and policy in words."""

    settings: JoinSettings
    n_cells: int
    policy_summary: dict[str, str]


def prepare_join(
    lab_dir: Path | str,
    data: Path | str,
    out_dir: Path | str,
    *,
    superlink: str | None = None,
    batch_key: str | None = None,
    layer: str | None = None,
    threads: int | None = None,
    port: int = 0,
    egress_copy: bool = False,
    extra_mods: str = "",
    worker: bool = True,
    poll_interval: float = DEFAULT_POLL_S,
    labels_key: str | None = None,
) -> JoinCheck:
    """Check everything a round will need before the SuperNode starts: minutes before a round would find out.

    The lab directory and node key, the output directory against the data, the lab's own mods,
    the privacy policy, the query itself (counts, batches, a donor column when the policy needs
    one) and, when the lab already holds a bundle, whether the adapter fits the egress limit.

    Raises
    ------
    FedarchesError
        Naming the problem and its fix.
    """
    from fedarches.client.mapping import check_adapter_fits
    from fedarches.client.mods import EGRESS_LIMIT_BYTES, check_extra_mods
    from fedarches.client.outputs import MappingOutputs
    from fedarches.client.query import validate_query
    from fedarches.client.release import check_labels_key
    from fedarches.shared.datafiles import query_obs, query_rna, query_suffix, read_query
    from fedarches.shared.policy import PrivacyPolicy

    data, out_dir = Path(data), Path(out_dir)
    lab = LabDir.open(lab_dir)
    lab.require_node_key()
    if worker:
        _refuse_a_second_join(lab)
    MappingOutputs.in_directory(out_dir, suffix=query_suffix(data)).check([data], directory_option="--out")
    check_extra_mods(extra_mods)
    policy = PrivacyPolicy.load(lab.root)
    adata = read_query(data)
    rna = query_rna(adata, batch_key)
    batches, _, _ = validate_query(rna, batch_key=batch_key, layer=layer, batch_prefix=lab.name)
    obs = query_obs(adata)
    policy.dp.donors(obs, source=str(data))  # a donor-unit policy needs its column: refuse now
    check_labels_key(obs, labels_key)
    held = lab.newest_bundle()
    if held is not None:  # the round checks again, against its own bundle and limit, before training
        check_adapter_fits(held, batches, EGRESS_LIMIT_BYTES)
    settings = JoinSettings(
        lab=lab,
        superlink=superlink or lab.superlink,
        data_path=data,
        out_dir=out_dir,
        batch_key=batch_key,
        layer=layer,
        threads=threads,
        port=port,
        egress_copy=egress_copy,
        extra_mods=extra_mods,
        worker=worker,
        poll_interval=poll_interval,
        labels_key=labels_key,
    )
    return JoinCheck(settings, int(adata.n_obs), policy.summary())


def _refuse_a_second_join(lab: LabDir) -> None:
    """A :class:`ConfigError` when a worker already answers for this lab directory (another ``join`` runs)."""
    from fedarches.client.worker import WorkerUnavailable, ping

    try:
        pid = ping(lab.root, timeout=2.0).get("pid")
    except WorkerUnavailable:
        return
    msg = f"another `fedarches-client join` is running for {lab.root}: its worker (pid {pid}) answers"
    hint = f"stop it first (its SuperNode pid is in {lab.root / SUPERNODE_PID_FILE}); one join per lab directory"
    raise ConfigError(msg, hint=hint)


def supernode_command(settings: JoinSettings, node_config_path: Path) -> list[str]:
    """The ``flower-supernode`` command line for ``settings``."""
    port = settings.port or free_port()
    return [
        sys.executable,
        "-m",
        "fedarches.client.flower_supernode",  # flower-supernode, polling every poll_interval when idle
        "--poll-interval",
        str(settings.poll_interval),
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


def run_supernode(settings: JoinSettings) -> int:
    """Run the SuperNode in the foreground until it exits; return its exit code.

    Its output is passed through to our stdout. The SuperNode runs in its own process group (the
    pid file names it). However this ends (the SuperNode exits, or a stop signal turned into an
    exception by the caller), the SuperNode and every process it started (its SuperExec, a running
    ClientApp) are stopped before it returns: flower-supernode 1.41 can exit and leave its SuperExec
    child retrying forever. With ``settings.worker``, the lab's warm worker
    (:mod:`fedarches.client.worker`) runs beside it for as long, restarted if it dies.
    """
    config_path = settings.lab.root / "node-config.toml"
    write_toml(config_path, settings.node_config())
    settings.out_dir.mkdir(parents=True, exist_ok=True)
    # Flower keeps installed apps under FLWR_HOME: keep them in the lab directory, not in ~/.flwr.
    env = flower_env(settings.lab.root / "flwr")
    env.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    worker = None
    if settings.worker:
        from fedarches.client.worker import WorkerSupervisor

        worker = WorkerSupervisor(settings.lab.root, settings.out_dir, env=env)
        worker.start()
    try:
        return _run_supernode_process(settings, config_path, env)
    finally:
        if worker is not None:
            worker.stop()


def _run_supernode_process(settings: JoinSettings, config_path: Path, env: dict[str, str]) -> int:
    process = subprocess.Popen(
        supernode_command(settings, config_path),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
        start_new_session=True,
    )
    pid_file = settings.lab.root / SUPERNODE_PID_FILE
    pid_file.write_text(f"{process.pid}\n")
    seen: list[int] = []
    relay = threading.Thread(target=_relay_output, args=(process, seen), daemon=True)
    relay.start()
    try:
        with owning(process):
            process.wait()
    finally:
        relay.join(timeout=5)
        pid_file.unlink(missing_ok=True)
    for code in seen:
        if code in _EXIT_HELP:
            message, hint = _EXIT_HELP[code]
            msg = f"{message} (Flower exit code {code})"
            raise FederationError(msg, hint=hint)
    return int(process.returncode or 0)


def _relay_output(process: subprocess.Popen[str], exit_codes: list[int]) -> None:
    """Copy the SuperNode's output to ours, noting the Flower exit codes it reports."""
    assert process.stdout is not None
    for line in process.stdout:
        sys.stdout.write(line)
        sys.stdout.flush()
        match = _EXIT_CODE.search(line)
        if match:
            exit_codes.append(int(match.group(1)))
