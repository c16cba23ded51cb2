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
from flwr.app import Context, Message
from flwr.client.mod import secaggplus_mod
from flwr.clientapp import ClientApp
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters
from flwr.compat.common import recorddict_compat

from fedarches.client.lab import LabDir
from fedarches.client.mods import egress_audit_mod, lab_mods_mod, secure_sum_guard_mod
from fedarches.client.release import Releaser, read_exact_counts, write_exact_counts
from fedarches.shared import protocol
from fedarches.shared.errors import ConfigError, PrivacyError

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
        """Read the SuperNode's node config; a :class:`ConfigError` names what ``join`` should have set."""
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
    """Map the lab's query onto the round's bundle; reply with what the lab's policy releases."""
    settings = NodeSettings.from_context(context)
    lab = LabDir.open(settings.lab_dir)
    request = protocol.MapRequest.from_record(msg.content.config_records.get(protocol.ROUND))
    releaser = Releaser.for_lab(lab, run_id=context.run_id, round_id=request.round_id)  # policy checked first
    k = releaser.policy.release.min_count  # the lab's policy decides its k; the round states what it accepts
    if k < request.min_count:
        msg_ = f"this lab's policy suppresses counts below k={k}; the round accepts only k>={request.min_count}"
        raise PrivacyError(msg_, hint=f"set release.min_count to at least {request.min_count} in LAB_DIR/policy.toml")
    tick = time.perf_counter()
    if protocol.BUNDLE in msg.content.array_records:
        files = protocol.BundleTransfer.from_record(msg.content.array_records[protocol.BUNDLE]).files
        bundle = lab.store_bundle(request.bundle_id, files)
        log.info("received and verified bundle %s (%d bytes)", request.bundle_id, bundle.size_bytes)
    else:
        bundle = lab.open_bundle(request.bundle_id)
        log.info("using held bundle %s", request.bundle_id)
    receive_s = time.perf_counter() - tick

    result, adata = _map_and_write(settings, lab, bundle, request, min_count=k)
    timings = {**{key: float(v) for key, v in result.timings.items()}, "receive_bundle_s": receive_s}
    from fedarches.shared.datafiles import query_obs

    released, counts, reply = releaser.release_mapping(result, query_obs(adata), timings)
    composition = reply.lab.composition
    if composition == protocol.Composition.SECURE_SUM:
        write_exact_counts(settings.out_dir, request.round_id, counts)
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
    return Message(reply.to_content(), reply_to=msg)


@app.train(mods=[secure_sum_guard_mod, secaggplus_mod])
def secure_sum(msg: Message, context: Context) -> Message:
    """SecAgg+ masked-vector stage: the lab's (noised) label-count vector, in the coordinator's type order."""
    settings = NodeSettings.from_context(context)
    lab = LabDir.open(settings.lab_dir)
    fit_ins = recorddict_compat.recorddict_to_fitins(msg.content, keep_input=True)
    request = protocol.SecureSumRequest.from_config(fit_ins.config)
    releaser = Releaser.for_lab(lab, run_id=context.run_id, round_id=request.round_id)
    counts = read_exact_counts(settings.out_dir, request.round_id)
    vector, seq = releaser.secure_sum_counts(counts, list(request.categories))
    what = "secure sum for round %s: masked count vector of %d values (ledger entry %d)"
    log.info(what, request.round_id, vector.size, seq)
    fit_res = FitRes(Status(Code.OK, ""), ndarrays_to_parameters([vector.astype(np.float64)]), 1, {})
    return Message(recorddict_compat.fitres_to_recorddict(fit_res, keep_input=False), reply_to=msg)


def _map_and_write(
    settings: NodeSettings, lab: LabDir, bundle: Any, request: protocol.MapRequest, *, min_count: int
) -> tuple[Any, Any]:
    """Map the lab's file as ``fedarches-client map`` would and write its outputs under ``out-dir``."""
    from fedarches.client.annotate import map_file
    from fedarches.client.options import MappingOptions
    from fedarches.client.outputs import ROUND_FILE_NAME, MappingOutputs
    from fedarches.shared.datafiles import query_suffix

    outputs = MappingOutputs.in_directory(settings.out_dir, suffix=query_suffix(settings.data_path))
    options = MappingOptions(
        max_epochs=request.max_epochs or None,  # 0: automatic
        seed=request.seed,
        threads=settings.threads,
        progress_bar=False,
        max_adapter_bytes=request.max_adapter_bytes,  # refused before training, not after
    )
    round_info = {"round_id": request.round_id, "bundle_id": bundle.bundle_id, "lab": lab.name}
    done = map_file(
        settings.data_path,
        bundle,
        outputs,
        batch_key=settings.batch_key,
        layer=settings.layer,
        lab_name=lab.name,
        options=options,
        confidence_threshold=request.confidence_threshold,
        min_count=min_count,
        extra={settings.out_dir / ROUND_FILE_NAME: json.dumps(round_info, indent=2).encode()},
        directory_option="--out",
    )
    return done.result, done.adata
