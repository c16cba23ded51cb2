"""The lab's Flower ClientApp: local scArches mapping on the lab's own file, adapters out.

The SuperNode started by ``fedarches-client join`` passes the lab's settings as node config
(``lab-dir``, ``data-path``, ``out-dir``, ``batch-key``, ``layer``, ``threads``). Two handlers:

- ``train.map``: store and verify the bundle if it came with the message, map the lab's file
  (``.h5ad`` or ``.h5mu``) exactly as ``fedarches-client map`` would, write the annotated file of
  the same kind, plots, adapter and statistics under ``out-dir``, and reply with what the lab's
  privacy policy releases (see :mod:`fedarches.client.release`): the adapter and, for plain
  composition, label statistics.
- ``train``: the lab's side of Flower's SecAgg+ (``secaggplus_mod``); the handler itself gives
  the lab's (noised) count vector at the stage where the masked vector is made.

Both run inside :func:`~fedarches.client.mods.egress_audit_mod`; every release is recorded in
the lab's ledger before it leaves.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.client.mod import secaggplus_mod
from flwr.clientapp import ClientApp
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters
from flwr.compat.common import recorddict_compat

from fedarches.client.lab import LabDir
from fedarches.client.mods import egress_audit_mod, lab_mods_mod, secure_sum_guard_mod
from fedarches.client.release import MapRelease, Releaser, read_exact_counts, write_exact_counts
from fedarches.shared import __version__, protocol
from fedarches.shared.errors import ConfigError
from fedarches.shared.labels import LabelCounts

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


@app.train("map")
def map_lab(msg: Message, context: Context) -> Message:
    """Map the lab's query onto the round's bundle; reply with the adapter and label statistics."""
    settings = NodeSettings.from_context(context)
    lab = LabDir.open(settings.lab_dir)
    round_cfg = protocol.RoundConfig.from_record(msg.content.config_records.get(protocol.ROUND))
    bundle_id = round_cfg.bundle_id
    tick = time.perf_counter()
    if protocol.BUNDLE in msg.content.array_records:
        bundle = lab.store_bundle(bundle_id, protocol.record_to_files(msg.content.array_records[protocol.BUNDLE]))
        log.info("received and verified bundle %s (%d bytes)", bundle_id, bundle.size_bytes)
    else:
        bundle = lab.open_bundle(bundle_id)
        log.info("using held bundle %s", bundle_id)
    receive_s = time.perf_counter() - tick
    releaser = Releaser.for_lab(lab, run_id=context.run_id, round_id=round_cfg.round_id)  # policy checked first

    result, adata = _map_and_write(settings, lab, bundle, round_cfg)
    timings = {**{k: float(v) for k, v in result.timings.items()}, "receive_bundle_s": receive_s}
    from fedarches.shared.datafiles import query_obs

    released, counts, content = release_reply(releaser, result, query_obs(adata), lab.name, timings)
    composition = releaser.policy.release.composition
    if composition == "secure-sum":
        write_exact_counts(settings.out_dir, round_cfg.round_id, counts)
    log.info(
        "mapped %d cells in %.1f s (%d epochs); releasing %s (ledger entry %d; composition: %s)",
        adata.n_obs,
        timings["total_s"],
        result.n_epochs,
        " and ".join(
            part
            for part, present in (
                (f"a {released.adapter.nbytes if released.adapter else 0}-byte adapter", released.adapter),
                ("label statistics", released.label_statistics),
            )
            if present
        )
        or "nothing but its name and timings",
        released.entry_seq,
        composition,
    )
    return Message(content, reply_to=msg)


def release_reply(
    releaser: Releaser, result: Any, obs: Any, lab_name: str, timings: dict[str, float]
) -> tuple[MapRelease, LabelCounts, RecordDict]:
    """Release a mapping result under the lab's policy: what was released, the exact counts, the reply."""
    counts = releaser.exact_counts(result, obs)
    released = releaser.map_reply(result.adapter, counts)
    composition = releaser.policy.release.composition
    return released, counts, map_reply_content(released, lab_name, int(result.n_epochs), composition, timings)


def map_reply_content(
    released: MapRelease, lab_name: str, n_epochs: int, composition: str, timings: dict[str, float]
) -> RecordDict:
    """Everything a lab sends after mapping: what its policy released, its name, timings and ledger head."""
    content = RecordDict(
        {
            protocol.LAB: ConfigRecord(
                {
                    "lab-name": lab_name,
                    "fedarches-version": __version__,
                    "n-epochs": n_epochs,
                    "composition": composition,
                    "ledger-seq": released.ledger_seq,  # the lab's newest ledger entry: an anchor kept outside the lab
                    "ledger-head": released.ledger_head,
                }
            ),
            protocol.TIMINGS: MetricRecord(timings),
        }
    )
    if released.adapter is not None:
        for name, record in protocol.adapter_to_records(released.adapter).items():
            content[name] = record
    if released.label_statistics is not None:
        content[protocol.LABEL_STATS] = protocol.label_stats_to_record(released.label_statistics)
    return content


@app.train(mods=[secure_sum_guard_mod, secaggplus_mod])
def secure_sum(msg: Message, context: Context) -> Message:
    """SecAgg+ masked-vector stage: the lab's (noised) label-count vector, in the coordinator's type order."""
    settings = NodeSettings.from_context(context)
    lab = LabDir.open(settings.lab_dir)
    fit_ins = recorddict_compat.recorddict_to_fitins(msg.content, keep_input=True)
    round_id, categories = protocol.secure_sum_settings(fit_ins.config)
    releaser = Releaser.for_lab(lab, run_id=context.run_id, round_id=round_id)
    vector, seq = releaser.secure_sum_counts(read_exact_counts(settings.out_dir, round_id), categories)
    log.info("secure sum for round %s: masked count vector of %d values (ledger entry %d)", round_id, vector.size, seq)
    fit_res = FitRes(Status(Code.OK, ""), ndarrays_to_parameters([vector.astype(np.float64)]), 1, {})
    return Message(recorddict_compat.fitres_to_recorddict(fit_res, keep_input=False), reply_to=msg)


def _map_and_write(
    settings: NodeSettings, lab: LabDir, bundle: Any, round_cfg: protocol.RoundConfig
) -> tuple[Any, Any]:
    """Run :func:`~fedarches.client.mapping.map_query` and write the lab's local outputs."""
    from fedarches.client.mapping import MappingOptions, map_query
    from fedarches.client.outputs import ROUND_FILE_NAME, MappingOutputs, write_mapping_outputs
    from fedarches.shared.datafiles import query_suffix, read_query

    outputs = MappingOutputs.in_directory(settings.out_dir, suffix=query_suffix(settings.data_path))
    adata = read_query(settings.data_path)
    options = MappingOptions(
        max_epochs=round_cfg.max_epochs or None,  # 0: automatic
        seed=round_cfg.seed,
        threads=settings.threads,
        progress_bar=False,
        max_adapter_bytes=round_cfg.max_adapter_bytes,  # refused before training, not after
    )
    threshold = round_cfg.confidence_threshold
    result = map_query(
        adata,
        bundle,
        batch_key=settings.batch_key,
        layer=settings.layer,
        lab_name=lab.name,
        options=options,
        confidence_threshold=threshold,
        min_count=round_cfg.min_count,
    )
    round_info = {"round_id": round_cfg.round_id, "bundle_id": bundle.bundle_id, "lab": lab.name}
    write_mapping_outputs(
        adata,
        result,
        bundle,
        outputs,
        confidence_threshold=threshold,
        extra={settings.out_dir / ROUND_FILE_NAME: json.dumps(round_info, indent=2).encode()},
    )
    return result, adata
