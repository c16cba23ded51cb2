"""The lab's warm worker: an owner-only, authenticated local channel; the egress audit still has the last word.

Real sockets, a real lab directory exported by a real coordinator directory, the real tiny bundle
(tests/data/tiny_bundle) and real surgery for a few epochs; the one stand-in is a worker handler
that answers with cells, as a compromised or buggy worker would.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fedarches.client.app import map_lab
from fedarches.client.lab import LabDir
from fedarches.client.lab_work import BundleCache, NodeSettings, secure_sum_request, secure_sum_vector
from fedarches.client.mods import egress_audit_mod
from fedarches.client.worker import (
    LabWorker,
    WorkerLost,
    WorkerPaths,
    WorkerSupervisor,
    WorkerUnavailable,
    ask_worker,
    ping,
)
from fedarches.server.coordinator import add_lab, init_coordinator
from fedarches.shared import protocol
from fedarches.shared.bundle import ReferenceBundle
from fedarches.shared.errors import PrivacyError
from fedarches.shared.protocol import SecureSumRequest

DEMO = Path(__file__).resolve().parents[2] / "data" / "demo"


@pytest.fixture
def lab(tmp_path: Path, files_bundle: ReferenceBundle, resign) -> tuple[LabDir, ReferenceBundle]:
    """A lab exported by a fresh coordinator, holding the tiny bundle signed with that coordinator's key.

    The lab directory sits deep enough that its socket path exceeds the ~107 bytes a Unix socket
    address may have.
    """
    coord = init_coordinator(tmp_path / "coord", hosts=["127.0.0.1"], port=8123)
    deep = tmp_path / ("a-lab-directory-with-a-long-name-" * 3) / "lab"
    lab_dir = LabDir.open(add_lab(coord, "lab_w", export_dir=deep))
    bundle = ReferenceBundle.open(resign(files_bundle, tmp_path / "signed", coord.signing_key), lab_dir.trusted_key)
    lab_dir.store_bundle(bundle.bundle_id, bundle.verified_files())
    assert len(str(WorkerPaths.for_lab(lab_dir.root).socket).encode()) > 107
    return lab_dir, bundle


@pytest.fixture
def serve() -> Iterator:
    """``serve(worker)``: run a LabWorker's loop in a thread until the test ends."""
    started: list[tuple[LabWorker, threading.Event, threading.Thread]] = []

    def _serve(worker: LabWorker) -> LabWorker:
        stop = threading.Event()
        worker.bind()
        thread = threading.Thread(target=worker.serve_forever, args=(stop,), daemon=True)
        thread.start()
        started.append((worker, stop, thread))
        return worker

    yield _serve
    for worker, stop, thread in started:
        stop.set()
        thread.join(timeout=5)
        worker.close()


def _settings(lab: LabDir, out: Path, **kw) -> NodeSettings:
    return NodeSettings(lab.root, DEMO / "lab_a.h5ad", out, None, None, 1, **kw)


def _map_message(bundle: ReferenceBundle, *, hostile: bool = False) -> Message:
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 7, 11, 1  # what a ClientApp process has
    request = protocol.MapRequest("r1", bundle.bundle_id, 3, 0, 0.5, min_count=5, max_adapter_bytes=1_000_000)
    content = RecordDict({protocol.ROUND: request.to_record()})
    if hostile:  # whatever else a message carries, the lab's reply is what its policy releases
        content["fedarches.please"] = ConfigRecord({"send": "X", "obs": "all"})
        content["fedarches.extra"] = ArrayRecord([np.zeros(3, dtype=np.float32)])
    return Message(content, dst_node_id=11, message_type=protocol.MAP)


def _context(settings: NodeSettings) -> Context:
    node = {
        "lab-dir": str(settings.lab_dir),
        "data-path": str(settings.data_path),
        "out-dir": str(settings.out_dir),
        "threads": 1,
        "worker": settings.worker,
    }
    return Context(run_id=7, node_id=11, node_config=node, state=RecordDict(), run_config={})


def _audit(lab: LabDir) -> list[dict]:
    return [json.loads(line) for line in (lab.egress_dir / "audit.jsonl").read_text().splitlines()]


def test_the_channel_is_owner_only_and_needs_the_token(lab, serve, tmp_path: Path) -> None:
    lab_dir, bundle = lab
    worker = serve(LabWorker(lab_dir.root, handlers={"map": lambda s, c, run_id: RecordDict()}))
    paths = worker.paths
    assert stat.S_IMODE(paths.directory.stat().st_mode) == 0o700
    assert stat.S_IMODE(paths.token.stat().st_mode) == 0o600
    assert stat.S_IMODE(paths.socket.stat().st_mode) == 0o600 and stat.S_ISSOCK(paths.socket.stat().st_mode)
    assert ping(lab_dir.root)["pid"] == os.getpid()

    token = paths.token.read_text()
    paths.token.write_text("0" * 64)  # a caller without the token gets nothing, not even an error
    with pytest.raises(WorkerLost):
        ask_worker(_settings(lab_dir, tmp_path / "out"), _map_message(bundle).content, run_id=7)
    assert worker.served == 0
    paths.token.write_text(token)
    assert ask_worker(_settings(lab_dir, tmp_path / "out"), RecordDict(), run_id=7) == RecordDict()
    assert worker.served == 1

    other = NodeSettings(tmp_path, DEMO / "lab_a.h5ad", tmp_path, None, None, 1)
    with pytest.raises(WorkerUnavailable):  # another lab directory has no worker of its own
        ask_worker(other, RecordDict(), run_id=7)


def test_a_worker_reply_outside_the_allow_list_never_leaves(lab, serve, tmp_path: Path) -> None:
    lab_dir, bundle = lab

    def leaky(settings: NodeSettings, content: RecordDict, *, run_id: int) -> RecordDict:
        expression = np.ones((50, 300), dtype=np.float32)  # a worker that would send the lab's cells
        return RecordDict({"cells": ArrayRecord([expression])})

    serve(LabWorker(lab_dir.root, handlers={"map": leaky}))
    settings = _settings(lab_dir, tmp_path / "out", worker=True)
    reply = egress_audit_mod(_map_message(bundle), _context(settings), map_lab)
    assert reply.has_error() and reply.error.reason == "lab refused to send its reply (egress policy)"
    assert not reply.has_content()
    (entry,) = _audit(lab_dir)
    assert entry["verdict"].startswith("refused:") and "cells" in entry["verdict"]


def test_the_worker_maps_a_hostile_message_into_exactly_the_allowed_reply(lab, serve, tmp_path: Path) -> None:
    lab_dir, bundle = lab
    worker = serve(LabWorker(lab_dir.root))
    worker.warm()
    settings = _settings(lab_dir, tmp_path / "out", worker=True)
    reply = egress_audit_mod(_map_message(bundle, hostile=True), _context(settings), map_lab)

    assert not reply.has_error()
    protocol.check_egress(protocol.MAP, reply.content, max_array_bytes=1_048_576)
    allowed = set(protocol.ALLOWED_REPLIES[protocol.MAP])
    assert set(reply.content.keys()) <= allowed and "fedarches.extra" not in reply.content
    (entry,) = _audit(lab_dir)
    assert entry["verdict"] == "sent"
    assert (tmp_path / "out" / "annotated.h5ad").is_file() and worker.served == 1
    timings = reply.content.metric_records[protocol.TIMINGS]
    assert timings["handler_s"] >= timings["total_s"] > timings["train_s"] > 0 and timings["cpu_s"] > 0

    # the bundle was verified once, at warm-up: the round's message used the worker's copy
    held, verified_now = worker.bundles.open(lab_dir, bundle.bundle_id)
    assert not verified_now and held.bundle_id == bundle.bundle_id

    # the SecAgg+ stage's count vector comes from the worker too (OpenDP imported once), recorded in the ledger
    categories = (*bundle.label_categories, "Unknown")
    work = ask_worker(settings, secure_sum_request(SecureSumRequest("r1", categories)), run_id=7, op="secure-sum")
    vector, seq = secure_sum_vector(work)
    assert len(vector) == 2 * len(categories) and seq == 2 and worker.served == 2

    # an error in the worker reaches the ClientApp as the same error, and the coordinator as its class only
    (lab_dir.root / "policy.toml").write_text("[release]\nmin_count = 2\n")
    with pytest.raises(PrivacyError, match="k=2"):
        ask_worker(settings, _map_message(bundle).content, run_id=7)
    reply = egress_audit_mod(_map_message(bundle), _context(settings), map_lab)
    assert reply.error.reason == "lab error PrivacyError"


def test_the_bundle_cache_verifies_again_when_a_file_changes(lab) -> None:
    lab_dir, bundle = lab
    cache = BundleCache()
    assert cache.open(lab_dir, bundle.bundle_id)[1] is True
    assert cache.open(lab_dir, bundle.bundle_id)[1] is False
    manifest = lab_dir.bundles_dir / bundle.bundle_id / "manifest.json"
    os.utime(manifest, ns=(time.time_ns(), time.time_ns()))
    assert cache.open(lab_dir, bundle.bundle_id)[1] is True


def test_without_a_worker_the_clientapp_maps_itself(lab, tmp_path: Path) -> None:
    lab_dir, bundle = lab
    settings = _settings(lab_dir, tmp_path / "out", worker=True)  # join said there is one, but none answers
    reply = egress_audit_mod(_map_message(bundle), _context(settings), map_lab)
    assert not reply.has_error() and (tmp_path / "out" / "annotated.h5ad").is_file()


@pytest.mark.slow
def test_a_killed_worker_is_restarted_and_leaves_no_half_written_output(lab, tmp_path: Path) -> None:
    lab_dir, bundle = lab
    out = tmp_path / "out"
    supervisor = WorkerSupervisor(lab_dir.root, out)
    supervisor.start()
    try:
        assert supervisor.wait_ready(120)
        first = ping(lab_dir.root)["pid"]
        request = protocol.MapRequest("r1", bundle.bundle_id, 400, 0, 0.5, min_count=5, max_adapter_bytes=1_000_000)
        content = RecordDict({protocol.ROUND: request.to_record()})
        errors: list[BaseException] = []

        def ask() -> None:
            try:
                ask_worker(_settings(lab_dir, out), content, run_id=7)
            except BaseException as err:  # noqa: BLE001
                errors.append(err)

        asking = threading.Thread(target=ask)
        asking.start()
        time.sleep(3)  # the worker is training (400 epochs)
        os.kill(first, signal.SIGKILL)
        asking.join(timeout=30)
        assert len(errors) == 1 and isinstance(errors[0], WorkerLost)
        assert not (out / "annotated.h5ad").exists()  # the previous outputs or none, never half

        out.mkdir(exist_ok=True)
        (out / ".annotated.x1y2.partial.h5ad").write_bytes(b"half")  # as a kill during the write leaves
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if ping(lab_dir.root, timeout=1)["pid"] != first:
                    break
            except WorkerUnavailable:
                time.sleep(0.5)
        assert supervisor.process is not None and supervisor.process.pid != first
        assert len(supervisor.restarts) == 1
        assert not list(out.glob(".*.partial*"))  # swept before the new worker served anything
    finally:
        supervisor.stop()
    assert supervisor.process.poll() is not None
    assert not WorkerPaths.for_lab(lab_dir.root).socket.exists()


def test_a_peer_that_stalls_does_not_hang_the_worker(lab, serve, monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    from fedarches.client import worker as worker_module

    lab_dir, _ = lab
    monkeypatch.setattr(worker_module, "REQUEST_TIMEOUT_S", 0.5)
    worker = serve(LabWorker(lab_dir.root, handlers={"map": lambda s, c, run_id: RecordDict()}))
    stalled = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with worker_module._socket_address(worker.paths.socket) as address:
        stalled.connect(address)
    stalled.sendall(b"\x00\x00")  # half a length prefix, then nothing
    try:
        assert ping(lab_dir.root, timeout=5)["served"] == 0  # answered once the stalled peer was dropped
    finally:
        stalled.close()


def test_a_second_join_for_the_same_lab_directory_is_refused(lab, serve, tmp_path: Path) -> None:
    from fedarches.client.supernode import prepare_join
    from fedarches.shared.errors import ConfigError

    lab_dir, _ = lab
    serve(LabWorker(lab_dir.root, handlers={"map": lambda s, c, run_id: RecordDict()}))
    with pytest.raises(ConfigError, match="another `fedarches-client join` is running") as refused:
        prepare_join(lab_dir.root, DEMO / "lab_a.h5ad", tmp_path / "out")
    assert "one join per lab directory" in refused.value.hint
    checked = prepare_join(lab_dir.root, DEMO / "lab_a.h5ad", tmp_path / "out", worker=False)
    assert checked.n_cells == 210 and checked.settings.worker is False


def test_join_checks_the_labels_column_before_connecting_and_passes_it_to_the_rounds(lab, tmp_path: Path) -> None:
    from fedarches.client.lab_work import NodeSettings
    from fedarches.client.supernode import prepare_join
    from fedarches.shared.errors import ConfigError

    lab_dir, _ = lab
    with pytest.raises(ConfigError, match=r"no obs column 'celltype'.*'cell_type'"):
        prepare_join(lab_dir.root, DEMO / "lab_a.h5ad", tmp_path / "out", worker=False, labels_key="celltype")
    checked = prepare_join(lab_dir.root, DEMO / "lab_a.h5ad", tmp_path / "out", worker=False, labels_key="cell_type")
    config = checked.settings.node_config()
    assert config["labels-key"] == "cell_type"
    assert NodeSettings.from_config(config).labels_key == "cell_type"
    assert NodeSettings.from_config({**config, "labels-key": ""}).labels_key is None
