"""Many labs in Flower's simulation engine (Ray): how a round's cost grows past what loopback SuperNodes show.

Each simulated lab does a real lab's work: it opens the verified bundle, runs fedarches' ``map_query`` on its
own cells (one torch thread) and replies with its adapter; the ServerApp then merges every adapter into a
signed atlas with ``fedarches.server.merge.merge_adapters``, as a round does. What the simulation leaves
out: TLS, SuperLink and SuperNode processes, the privacy layer (policy, ledger, secure sum). Its ClientApps
run in Ray actors that stay alive from one lab to the next, so scvi-tools is imported once per actor
rather than once per message.

    python -m fedarches.bench worker simulation round SPEC.json RESULT.json      (suite.simulation_section)

Ray comes with ``flwr[simulation]`` (the `bench` extra); :func:`run` imports it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from fedarches.shared import __version__, protocol
from fedarches.shared.wire import PlainContent

FACTS = "bench.facts"
client_app = ClientApp()
server_app = ServerApp()
RESULT: dict[str, Any] = {}
SPEC: dict[str, Any] = {}


@client_app.train()
def map_lab(msg: Message, context: Context) -> Message:
    """One lab: map its cells onto the bundle, reply with the adapter and what it measured."""
    import anndata as ad

    from fedarches.client.mapping import MappingOptions, map_query
    from fedarches.shared.bundle import ReferenceBundle
    from fedarches.shared.evaluation import annotated_calls, label_transfer_metrics

    start = time.perf_counter()
    config = msg.content.config_records["config"]
    lab = int(context.node_config["partition-id"])
    path = json.loads(str(config["labs"]))[lab]
    bundle = ReferenceBundle.open(Path(str(config["bundle"])), Path(str(config["trust"])))
    adata = ad.read_h5ad(path)
    name = f"lab{lab:03d}"
    result = map_query(adata, bundle, lab_name=name, options=MappingOptions(threads=1, progress_bar=False))
    metrics = label_transfer_metrics(*annotated_calls(adata), bundle.label_categories)
    facts = {"lab": lab, "accuracy": metrics["accuracy"], "n_cells": int(adata.n_obs),
             "map_s": result.timings["total_s"], "handler_s": time.perf_counter() - start}  # fmt: skip
    info = protocol.LabInfo(name, __version__, result.n_epochs, protocol.Composition.NONE)
    content = protocol.MapReply(info, result.timings, result.adapter).to_content()  # what a real lab's reply holds
    content[FACTS] = ConfigRecord({"json": json.dumps(facts)})  # the benchmark's own measurements, beside it
    return Message(content, reply_to=msg)


@server_app.main()
def coordinate(grid: Grid, context: Context) -> None:
    """Send every lab a train message, wait for all replies, merge the adapters."""
    from fedarches.server.merge import merge_adapters
    from fedarches.shared.bundle import ReferenceBundle

    n_labs = len(SPEC["labs"])
    while len(grid.get_node_ids()) < n_labs:
        time.sleep(0.2)
    config = ConfigRecord({"labs": json.dumps(SPEC["labs"]), "bundle": SPEC["bundle"], "trust": SPEC["trust"]})
    messages = [
        Message(RecordDict({"config": config}), dst_node_id=node, message_type="train") for node in grid.get_node_ids()
    ]
    tick = time.perf_counter()
    replies = list(grid.send_and_receive(messages))
    RESULT["train_s"] = time.perf_counter() - tick
    adapters, facts = [], []
    for reply in replies:
        if reply.has_error():
            RESULT.setdefault("errors", []).append(str(reply.error.reason)[:300])
            continue
        fact = json.loads(str(reply.content.config_records.pop(FACTS)["json"]))
        decoded = protocol.MapReply.from_plain(PlainContent.from_content(reply.content))
        facts.append(fact)
        adapters.append((decoded.lab.lab_name, decoded.adapter))
    tick = time.perf_counter()
    bundle = ReferenceBundle.open(Path(SPEC["bundle"]), Path(SPEC["trust"]))
    atlas = merge_adapters(bundle, adapters, Path(SPEC["workdir"]) / "atlas", Path(SPEC["signing_key"]))
    RESULT["merge_s"] = time.perf_counter() - tick
    RESULT["labs"] = sorted(facts, key=lambda f: f["lab"])
    RESULT["atlas_batches"] = len(atlas.batch_categories)


def run(spec_path: Path, result_path: Path) -> None:
    """Run the simulation the spec at ``spec_path`` describes; write what it measured to ``result_path``."""
    from flwr.simulation import run_simulation

    from fedarches.shared._process import peak_rss_bytes

    SPEC.update(json.loads(spec_path.read_text()))
    tick = time.perf_counter()
    run_simulation(
        server_app=server_app,
        client_app=client_app,
        num_supernodes=len(SPEC["labs"]),
        backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}, "init_args": {"num_cpus": SPEC["cpus"]}},
    )
    RESULT["simulation_s"] = time.perf_counter() - tick
    RESULT["peak_rss_bytes_driver"] = peak_rss_bytes()
    result_path.write_text(json.dumps(RESULT, indent=1))
