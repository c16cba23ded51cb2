"""The real federation on loopback: a SuperLink with TLS and node authentication, real SuperNodes.

One coordinator and three labs on the demo data run through the same command lines users type
(``fedarches-server serve/add-lab/run-round``, ``fedarches-client join``). Later rounds add
misbehaving labs (corrupt adapters through their own client mods), a lab that dies in the middle
of the secure sum, and kill a lab mid-round. Privacy: round 1 runs every lab's composition
through SecAgg+ with DP off (the sum must be exact); round 2 mixes policies (plain with Gaussian DP
and noised adapters; secure sum with Laplace DP).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pytest

from fedarches.shared import protocol
from fedarches.shared._process import free_port, own_executable
from fedarches.shared.bundle import ReferenceBundle
from fedarches.shared.surgery import adapter_bytes_per_batch
from fedarches.testing.loopback import LoopbackFederation

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

REPO = Path(__file__).resolve().parents[2]
LABS = ("lab_a", "lab_b", "lab_c")
EPOCHS = 30


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory, demo_bundle: ReferenceBundle, demo_dir: Path, resign):
    """Coordinator + three labs online; yields (federation, bundle signed by the coordinator)."""
    work = tmp_path_factory.mktemp("federation")
    fed = LoopbackFederation(work, threads=1, env={"PYTHONPATH": str(REPO)})
    try:
        # The demo bundle, re-signed with this coordinator's key (a coordinator only runs its own bundles).
        bundle_dir = resign(demo_bundle, work / "reference-bundle", fed.coord.signing_key)
        bundle = ReferenceBundle.open(bundle_dir, fed.coord.signing_public_key)
        fed.start_coordinator()
        for lab in LABS:
            fed.add_lab(lab, demo_dir / f"{lab}.h5ad")
            set_policy(fed, lab, "[dp]\nenabled = false\n")  # secure sum (the default), no noise: exact
            fed.join(lab)
        yield fed, bundle
    finally:
        fed.stop()
    assert not fed.running_groups(), "processes outlived the federation"


def set_policy(fed: LoopbackFederation, lab: str, text: str) -> None:
    (fed.labs[lab].export_dir / "policy.toml").write_text(text)


def ledger_vectors(fed: LoopbackFederation, lab: str, round_id: str) -> list[np.ndarray]:
    from fedarches.client.ledger import Ledger

    return [
        np.asarray(json.loads(e.payload)["vector"])
        for e in Ledger.for_lab(fed.labs[lab].export_dir).entries()
        if e.kind == "secure-sum-counts" and e.round_id == round_id
    ]


@pytest.fixture(scope="module")
def first_round(federation):
    fed, bundle = federation
    return fed.run_round(bundle.path, "--max-epochs", str(EPOCHS), "--min-labs", "3")


def test_round_completes_and_merges_every_lab(first_round, federation) -> None:
    fed, bundle = federation
    assert first_round["status"] == "completed", first_round["_cli"]["output"]
    assert {lab["name"]: lab["status"] for lab in first_round["labs"]} == dict.fromkeys(LABS, "accepted")
    atlas = ReferenceBundle.open(first_round["atlas"]["path"], fed.coord.signing_public_key)
    assert atlas.batch_categories == [*bundle.batch_categories, *LABS]
    per_batch = adapter_bytes_per_batch(bundle, bundle.reference_state())  # one new batch per lab
    for lab in first_round["labs"]:
        # first round: the whole bundle travels once; the reply is a few KB
        assert lab["bundle_sent"]
        assert lab["bytes_to_lab"] >= bundle.size_bytes
        assert lab["bytes_from_lab"] < 20_000
        assert lab["adapter"]["bytes"] == per_batch == sum(t["bytes"] for t in lab["adapter"]["tensors"])
    report = Path(first_round["atlas"]["path"]).parent
    html = (report / "report.html").read_text()
    assert all(name in html for name in LABS) and "suppressed" in html and "SecAgg+" in html
    assert sorted(first_round["consortium"]["labs"]) == list(LABS)
    assert (report / "composition.png").stat().st_size > 10_000


def test_each_lab_matches_a_local_map_and_the_atlas_reproduces_its_latent(
    first_round, federation, demo_dir, tmp_path
) -> None:
    from typer.testing import CliRunner

    from fedarches.client.cli import app as client_app
    from fedarches.client.mapping import embed_with_atlas

    fed, bundle = federation
    atlas = ReferenceBundle.open(first_round["atlas"]["path"], fed.coord.signing_public_key)
    for name in LABS:
        federated = ad.read_h5ad(fed.labs[name].out_dir / "annotated.h5ad")
        result = CliRunner().invoke(
            client_app,
            [
                "map", str(demo_dir / f"{name}.h5ad"), "--reference", str(bundle.path),
                "--trust", str(fed.labs[name].export_dir / "bundle-signing.pub"), "--lab-name", name,
                "--max-epochs", str(EPOCHS), "--seed", "0", "--threads", "1",
                "--out", str(tmp_path / f"{name}.h5ad"), "-q",
            ],
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        local = ad.read_h5ad(tmp_path / f"{name}.h5ad")
        assert (federated.obs["predicted_cell_type"] == local.obs["predicted_cell_type"]).all()
        np.testing.assert_allclose(
            federated.obs["prediction_confidence"], local.obs["prediction_confidence"], atol=1e-5
        )
        latent = embed_with_atlas(federated, atlas, lab_name=name)
        np.testing.assert_allclose(latent, federated.obsm["X_scANVI"], atol=1e-5)


def test_secure_sum_is_exact_and_the_coordinator_never_holds_a_lab_vector(first_round, federation) -> None:
    from flwr.common import bytes_to_ndarray

    from fedarches.client.ledger import Ledger
    from fedarches.server.secure_sum import CLIPPING_RANGE

    fed, bundle = federation
    round_dir = Path(first_round["atlas"]["path"]).parent
    summed = json.loads((round_dir / "secure_sum.json").read_text())
    categories = summed["categories"]
    assert categories == [*bundle.label_categories, "Unknown"] and sorted(summed["contributors"]) == list(LABS)
    expected = np.zeros(2 * len(categories), dtype=np.int64)
    for name in LABS:
        # the lab's own predictions (annotated.h5ad never left it): counted per type, Unknown cells as Unknown
        obs = ad.read_h5ad(fed.labs[name].out_dir / "annotated.h5ad").obs
        counted = np.where(obs["is_unknown"], "Unknown", obs["predicted_cell_type"].astype(str))
        cells = np.array([(counted == t).sum() for t in categories])
        low = np.array([((counted == t) & obs["is_low_confidence"].to_numpy()).sum() for t in categories])
        vector = np.concatenate([cells, low])
        (released,) = ledger_vectors(fed, name, first_round["round_id"])  # one ledger entry, DP off: exact
        np.testing.assert_array_equal(released, vector)
        expected += vector
        # the coordinator got per-lab statistics from no one
        assert next(lab for lab in first_round["labs"] if lab["name"] == name)["label_statistics"] is None
        # what left the lab in the secure sum: the masked vector, not the quantized counts (x + C)
        run_ids = {e.run_id for e in Ledger.for_lab(fed.labs[name].export_dir).entries()}
        masked = []
        for entry in map(json.loads, (fed.labs[name].export_dir / "egress" / "audit.jsonl").open()):
            if entry["message_type"] == "train" and str(entry["run_id"]) in run_ids:
                sent = json.loads(Path(entry["copy"]).with_suffix(".json").read_text())
                for hexed in sent.get(protocol.SECAGG_RECORD, {}).get("masked_params", []):
                    masked.append(bytes_to_ndarray(bytes.fromhex(hexed)))
        assert len(masked) == 2, masked  # the weight factor, then the vector
        assert not np.isin(masked[1], vector + CLIPPING_RANGE).all()
        assert masked[1].max() > 2**28  # masks spread every entry over [0, 2**32)
    np.testing.assert_array_equal(summed["total"], expected)


def test_egress_holds_only_allow_listed_adapter_tensors_and_statistics(first_round, federation, demo_dir) -> None:
    fed, _ = federation
    for name in LABS:
        source = ad.read_h5ad(demo_dir / f"{name}.h5ad")
        forbidden = {str(v) for v in source.obs_names} | {
            str(v) for column in source.obs.columns for v in source.obs[column].astype(str).unique() if len(str(v)) > 3
        }
        entries = [json.loads(line) for line in (fed.labs[name].export_dir / "egress" / "audit.jsonl").open()]
        assert {e["message_type"] for e in entries} == {"train.map", "train"}
        for entry in entries:
            assert entry["verdict"] == "sent"
            rules = protocol.ALLOWED_REPLIES[entry["message_type"]]
            assert set(entry["records"]) <= set(rules)
            copy = Path(entry["copy"])
            with np.load(copy, allow_pickle=False) as arrays:
                for key in arrays.files:
                    values = arrays[key]
                    assert entry["message_type"] == "train.map" and key.startswith(protocol.ADAPTER + "/"), key
                    assert np.issubdtype(values.dtype, np.floating)
                    assert source.n_obs not in values.shape, (key, values.shape)
                    assert source.n_vars not in values.shape, (key, values.shape)
            sent_text = copy.with_suffix(".json").read_text()
            leaked = [value for value in forbidden if f'"{value}"' in sent_text]
            # cell-type names are the reference's labels, shared by design; nothing else of obs may appear
            leaked = [v for v in leaked if v not in fed_label_names(federation)]
            assert not leaked, leaked


def fed_label_names(federation) -> set[str]:
    _, bundle = federation
    return set(bundle.label_categories)


def test_second_round_sends_only_the_bundle_id_and_rejects_malformed_adapters(first_round, federation, demo_dir):
    fed, bundle = federation
    coordinator_toml = fed.coord.config_path
    coordinator_toml.write_text(
        coordinator_toml.read_text().replace("max-adapter-bytes = 1048576", "max-adapter-bytes = 8192")
    )
    small = fed.workdir / "small_lab.h5ad"
    ad.read_h5ad(demo_dir / "lab_a.h5ad")[:80].copy().write_h5ad(small)
    faults = {"lab_nan": "nan_adapter", "lab_shape": "wrong_shape_adapter", "lab_big": "oversized_adapter"}
    for name, mod in {**faults, "lab_drop": "drop_in_secure_sum"}.items():
        fed.add_lab(name, small, extra_mods=f"tests.e2e.faulty_mods:{mod}")
        fed.join(name)
    # mixed policies: lab_a releases per-lab statistics with Gaussian DP and a clipped, noised adapter;
    # lab_b, lab_c and lab_drop keep the default (secure sum, Laplace DP)
    set_policy(
        fed,
        "lab_a",
        '[release]\ncomposition = "plain"\n[dp]\nmechanism = "gaussian"\ndelta = 1e-7\n'
        "[adapters]\nclip_norm = 5.0\nnoise_multiplier = 4.0\ndelta = 1e-6\n",
    )
    for name in ("lab_b", "lab_c"):
        set_policy(fed, name, "# every key at its default\n")  # an empty policy.toml is refused
    shutil.rmtree(fed.labs["lab_b"].export_dir / "bundles")  # lab_b lost its copy: it must get it again
    report = fed.run_round(bundle.path, "--max-epochs", "3", check=False)
    status = {lab["name"]: lab for lab in report["labs"]}
    for name in LABS:
        assert status[name]["status"] == "accepted"
    for name in ("lab_a", "lab_c"):
        assert not status[name]["bundle_sent"] and status[name]["bytes_to_lab"] < 2_000
    assert status["lab_b"]["bundle_sent"] and status["lab_b"]["bytes_to_lab"] > bundle.size_bytes
    assert status["lab_nan"]["status"] == "rejected" and "non-finite" in status["lab_nan"]["reason"]
    assert status["lab_shape"]["status"] == "rejected" and "shape" in status["lab_shape"]["reason"]
    assert status["lab_big"]["status"] == "rejected" and "limit" in status["lab_big"]["reason"]
    assert report["status"] == "completed"
    assert sorted(report["rejected"]) == sorted(faults)
    atlas = ReferenceBundle.open(report["atlas"]["path"], fed.coord.signing_public_key)
    assert atlas.batch_categories == [*bundle.batch_categories, *LABS, "lab_drop"]
    # lab_a: per-lab counts under Gaussian DP (no mean confidence), recorded with their ε in its ledger
    stats = status["lab_a"]["label_statistics"]
    assert stats["privacy"]["mechanism"] == "gaussian" and stats["privacy"]["epsilon"] <= 1.0
    assert all(t["mean_confidence"] == "suppressed" for t in stats["types"])
    from fedarches.client.ledger import Ledger

    (entry,) = [e for e in Ledger.for_lab(fed.labs["lab_a"].export_dir).entries() if e.round_id == report["round_id"]]
    assert entry.kind == "map-reply" and "gaussian" in entry.mechanism and entry.epsilon > 1.0  # counts + adapter
    # lab_drop died after sharing its keys: SecAgg+ recovered, and the sum is exactly lab_b's + lab_c's vectors
    summed = json.loads((Path(report["atlas"]["path"]).parent / "secure_sum.json").read_text())
    assert sorted(summed["asked"]) == ["lab_b", "lab_c", "lab_drop"]
    assert sorted(summed["contributors"]) == ["lab_b", "lab_c"]
    assert ledger_vectors(fed, "lab_drop", report["round_id"]) == []
    (vector_b,) = ledger_vectors(fed, "lab_b", report["round_id"])
    (vector_c,) = ledger_vectors(fed, "lab_c", report["round_id"])
    np.testing.assert_array_equal(summed["total"], vector_b + vector_c)
    for name in (*faults, "lab_drop"):  # they are not part of the next rounds
        fed.kill_lab(name)
        fed.coord.update_lab(name, registered=False)


def test_lab_killed_mid_round_is_reported_and_the_superlink_keeps_serving(first_round, federation):
    fed, bundle = federation
    holder: dict = {}
    log_path = fed.labs["lab_c"].log_path
    before = log_path.read_text().count("using held bundle")
    runner = threading.Thread(
        target=lambda: holder.update(
            report=fed.run_round(bundle.path, "--max-epochs", "200", "--min-labs", "2", "--timeout", "400", check=False)
        )
    )
    runner.start()
    deadline = time.monotonic() + 120
    while log_path.read_text().count("using held bundle") == before and time.monotonic() < deadline:
        time.sleep(0.5)
    assert log_path.read_text().count("using held bundle") > before, "lab_c never started training"
    fed.kill_lab("lab_c")
    runner.join(timeout=500)
    report = holder["report"]
    status = {lab["name"]: lab for lab in report["labs"]}
    assert status["lab_c"]["status"] == "dropped", status["lab_c"]
    assert report["dropped"] == ["lab_c"]
    assert status["lab_a"]["status"] == status["lab_b"]["status"] == "accepted"
    assert report["status"] == "completed"
    assert fed._serve is not None and fed._serve.poll() is None  # coordinator still up
    online = fed.online_nodes()
    assert {int(fed.coord.lab(n)["node-id"]) for n in ("lab_a", "lab_b")} <= online


def test_egress_audit_holds_for_every_message_under_every_policy(first_round, federation) -> None:
    """After all rounds (secure sum without and with DP, plain with Gaussian DP and noised adapters,
    corrupt adapters, a lab dying mid-protocol, a lab killed mid-round): every message any lab sent
    was audited, allow-listed for its type, and carried only float tensors of no per-cell or
    per-gene shape; SecAgg+ messages carried no arrays at all."""
    fed, _ = federation
    seen_types: set[str] = set()
    for name, lab in fed.labs.items():
        n_obs = ad.read_h5ad(lab.data, backed="r").n_obs
        for entry in map(json.loads, (lab.export_dir / "egress" / "audit.jsonl").open()):
            seen_types.add(entry["message_type"])
            assert entry["verdict"] in ("sent", "error"), (name, entry["verdict"])
            if entry["verdict"] == "error":
                assert entry["error"]["reason"].startswith("lab "), entry["error"]  # sanitized, no exception text
                continue
            rules = protocol.ALLOWED_REPLIES[entry["message_type"]]
            assert set(entry["records"]) <= set(rules), (name, entry["records"].keys())
            for record in entry["records"].values():
                for array in record.get("arrays", {}).values():
                    assert entry["message_type"] == protocol.MAP, (name, record)
                    assert array["dtype"].startswith("float") and n_obs not in array["shape"], (name, array)
    assert seen_types == {protocol.MAP, protocol.SECURE_SUM}


def test_unregistered_key_is_refused(federation, tmp_path) -> None:
    fed, _ = federation
    lab_dir = tmp_path / "intruder"
    lab_dir.mkdir()
    for name in ("ca.crt", "bundle-signing.pub", "lab.toml"):
        (lab_dir / name).write_bytes((fed.labs["lab_a"].export_dir / name).read_bytes())
    subprocess.run([_bin("fedarches-client"), "keygen", "--lab-dir", str(lab_dir)], check=True, capture_output=True)
    output = tmp_path / "join.log"
    with output.open("w") as fh:
        done = subprocess.run(
            [
                _bin("fedarches-client"), "join", "--lab-dir", str(lab_dir), "--data",
                str(fed.labs["lab_a"].data), "--out", str(tmp_path / "out"),
            ],
            stdout=fh, stderr=subprocess.STDOUT, timeout=120, check=False,
        )  # fmt: skip
    text = output.read_text()
    assert done.returncode == 40, text
    assert "refused" in text and "add-lab" in text
    assert not (lab_dir / "supernode.pid").exists()


def test_connections_without_tls_fail(federation, tmp_path) -> None:
    fed, _ = federation
    host, port = fed.coord.host, fed.coord.port
    with pytest.raises((http.client.HTTPException, ConnectionError)):
        connection = http.client.HTTPConnection(host, port, timeout=10)
        connection.request("GET", "/")
        connection.getresponse()
    untrusted = ssl.create_default_context()  # the system CAs do not know the consortium CA
    with pytest.raises(ssl.SSLCertVerificationError), socket.create_connection((host, port), timeout=10) as sock:
        untrusted.wrap_socket(sock, server_hostname=host)
    trusted = ssl.create_default_context(cafile=str(fed.coord.ca_cert))
    with socket.create_connection((host, port), timeout=10) as sock, trusted.wrap_socket(sock, server_hostname=host):
        pass
    # a registered lab's key over plain HTTP: the SuperNode never comes online
    export = fed.labs["lab_a"].export_dir
    output = tmp_path / "insecure.log"
    with output.open("w") as fh:
        process = subprocess.Popen(
            [
                _bin("flower-supernode"), "--insecure", "--superlink", f"{host}:{port}",
                "--auth-supernode-private-key", str(export / "supernode.key"), "--max-retries", "1",
                "--port", str(free_port()), "--node-config", f'lab-dir="{tmp_path}"',
            ],
            stdout=fh, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "FLWR_HOME": str(tmp_path / "flwr"), "FLWR_TELEMETRY_ENABLED": "0"},
        )  # fmt: skip
        try:
            code = process.wait(timeout=120)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)  # its SuperExec child may linger
    assert code != 0, output.read_text()


def _bin(name: str) -> str:
    return own_executable(name)
