"""The lab's Flower ClientApp: local scArches mapping on the lab's own file, adapters out.

The SuperNode started by ``fedarches-client join`` passes the lab's settings as node config
(``lab-dir``, ``data-path``, ``out-dir``, ``batch-key``, ``layer``, ``threads``). One handler,
``train``: store and verify the bundle if it came with the message, map the lab's file exactly as
``fedarches-client map`` would, write the annotated ``.h5ad``, plots, adapter and statistics under
``out-dir``, and reply with the adapter and the suppressed label statistics only.

It runs inside :func:`~fedarches.client.mods.egress_audit_mod`.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedarches.client.lab import LabDir
from fedarches.client.mods import egress_audit_mod, lab_mods_mod
from fedarches.shared import __version__, protocol
from fedarches.shared._io import atomic_write_bytes
from fedarches.shared.errors import ConfigError

log = logging.getLogger("fedarches.client")
if not logging.getLogger("fedarches").handlers:  # a fresh ClientApp process: log to the SuperNode's console
    _handler = logging.StreamHandler()
    _handler.setFormatter(logging.Formatter("%(asctime)s fedarches %(levelname)s: %(message)s", "%H:%M:%S"))
    logging.getLogger("fedarches").addHandler(_handler)
    logging.getLogger("fedarches").setLevel(logging.INFO)

app = ClientApp(mods=[egress_audit_mod, lab_mods_mod])


@dataclass(frozen=True)
class NodeSettings:
    """The lab's settings, from the SuperNode's ``--node-config``."""

    lab_dir: Path
    data_path: Path
    out_dir: Path
    batch_key: str | None
    layer: str | None
    threads: int | None

    @classmethod
    def from_context(cls, context: Context) -> NodeSettings:
        config = context.node_config
        missing = [k for k in ("lab-dir", "data-path", "out-dir") if not config.get(k)]
        if missing:
            msg = f"the SuperNode's --node-config lacks {missing}"
            raise ConfigError(msg, hint="start the SuperNode with `fedarches-client join`, which sets them")
        threads = int(config.get("threads", 0) or 0)
        return cls(
            lab_dir=Path(str(config["lab-dir"])),
            data_path=Path(str(config["data-path"])),
            out_dir=Path(str(config["out-dir"])),
            batch_key=str(config.get("batch-key") or "") or None,
            layer=str(config.get("layer") or "") or None,
            threads=threads or None,
        )


@app.train()
def map_lab(msg: Message, context: Context) -> Message:
    """Map the lab's query onto the round's bundle; reply with the adapter and label statistics."""
    settings = NodeSettings.from_context(context)
    lab = LabDir.open(settings.lab_dir)
    round_cfg = dict(msg.content.config_records[protocol.ROUND])
    bundle_id = str(round_cfg["bundle-id"])
    tick = time.perf_counter()
    if protocol.BUNDLE in msg.content.array_records:
        bundle = lab.store_bundle(bundle_id, protocol.record_to_files(msg.content.array_records[protocol.BUNDLE]))
        log.info("received and verified bundle %s (%d bytes)", bundle_id, bundle.size_bytes)
    else:
        bundle = lab.open_bundle(bundle_id)
        log.info("using held bundle %s", bundle_id)
    receive_s = time.perf_counter() - tick

    result, n_cells = _map_and_write(settings, lab, bundle, round_cfg)
    timings = {**{k: float(v) for k, v in result.timings.items()}, "receive_bundle_s": receive_s}
    log.info(
        "mapped %d cells in %.1f s (%d epochs); sending a %d-byte adapter and label statistics",
        n_cells,
        timings["total_s"],
        result.n_epochs,
        result.adapter.nbytes,
    )
    content = train_reply_content(result, lab.name, timings)
    return Message(content, reply_to=msg)


def train_reply_content(result: Any, lab_name: str, timings: dict[str, float]) -> RecordDict:
    """Everything a lab sends after mapping: adapter, label statistics, its name and timings."""
    return RecordDict(
        {
            **protocol.adapter_to_records(result.adapter),
            protocol.LABEL_STATS: protocol.label_stats_to_record(result.label_statistics),
            protocol.LAB: ConfigRecord(
                {"lab-name": lab_name, "fedarches-version": __version__, "n-epochs": int(result.n_epochs)}
            ),
            protocol.TIMINGS: MetricRecord(timings),
        }
    )


def _map_and_write(settings: NodeSettings, lab: LabDir, bundle: Any, round_cfg: dict[str, Any]) -> tuple[Any, int]:
    """Run :func:`~fedarches.client.mapping.map_query` and write the lab's local outputs."""
    from fedarches.client.mapping import MappingOptions, map_query
    from fedarches.client.outputs import MappingOutputs, write_mapping_outputs
    from fedarches.client.query import read_query

    adata = read_query(settings.data_path)
    options = MappingOptions(
        max_epochs=int(round_cfg["max-epochs"]),
        seed=int(round_cfg["seed"]),
        threads=settings.threads,
        progress_bar=False,
    )
    threshold = float(round_cfg["confidence-threshold"])
    result = map_query(
        adata,
        bundle,
        batch_key=settings.batch_key,
        layer=settings.layer,
        lab_name=lab.name,
        options=options,
        confidence_threshold=threshold,
        min_count=int(round_cfg["min-count"]),
    )
    write_mapping_outputs(
        adata, result, bundle, MappingOutputs.in_directory(settings.out_dir), confidence_threshold=threshold
    )
    atomic_write_bytes(
        settings.out_dir / "round.json",
        json.dumps(
            {"round_id": round_cfg["round-id"], "bundle_id": bundle.bundle_id, "lab": lab.name}, indent=2
        ).encode(),
    )
    return result, adata.n_obs
