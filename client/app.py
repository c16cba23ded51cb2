"""The lab's Flower ClientApp: local scArches mapping on the lab's own file, adapters out.

The SuperNode started by ``fedarches-client join`` passes the lab's settings as node config
(``lab-dir``, ``data-path``, ``out-dir``, ``batch-key``, ``layer``, ``threads``, ``worker``). Two
handlers:

- ``train.map`` (:func:`fedarches.client.lab_work.map_round`, run by the lab's warm worker when
  ``join`` started one, see :mod:`fedarches.client.worker`): store and verify the bundle if it
  came with the message, map the lab's file
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

import logging

import numpy as np
from flwr.app import Context, Message
from flwr.client.mod import secaggplus_mod
from flwr.clientapp import ClientApp
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters
from flwr.compat.common import recorddict_compat

from fedarches.client.lab_work import NodeSettings, secure_sum_request, secure_sum_vector
from fedarches.client.mods import egress_audit_mod, lab_mods_mod, secure_sum_guard_mod
from fedarches.client.worker import run_lab_work
from fedarches.shared import protocol

log = logging.getLogger("fedarches.client")
if not logging.getLogger("fedarches").handlers:  # a fresh ClientApp process: log to the SuperNode's console
    _handler = logging.StreamHandler()
    _handler.setFormatter(logging.Formatter("%(asctime)s fedarches %(levelname)s: %(message)s", "%H:%M:%S"))
    logging.getLogger("fedarches").addHandler(_handler)
    logging.getLogger("fedarches").setLevel(logging.INFO)

app = ClientApp(mods=[egress_audit_mod, lab_mods_mod])


@app.train("map")
def map_lab(msg: Message, context: Context) -> Message:
    """Map the lab's query onto the round's bundle (in the lab's warm worker when ``join`` started one)."""
    settings = NodeSettings.from_config(context.node_config)
    return Message(run_lab_work(settings, "map", msg.content, run_id=context.run_id), reply_to=msg)


@app.train(mods=[secure_sum_guard_mod, secaggplus_mod])
def secure_sum(msg: Message, context: Context) -> Message:
    """SecAgg+ masked-vector stage: the lab's (noised) label-count vector, in the coordinator's type order."""
    settings = NodeSettings.from_config(context.node_config)
    fit_ins = recorddict_compat.recorddict_to_fitins(msg.content, keep_input=True)
    request = protocol.SecureSumRequest.from_config(fit_ins.config)
    work = run_lab_work(settings, "secure-sum", secure_sum_request(request), run_id=context.run_id)
    vector, seq = secure_sum_vector(work)
    log.info("secure sum for round %s: %d values to mask (ledger entry %d)", request.round_id, len(vector), seq)
    fit_res = FitRes(Status(Code.OK, ""), ndarrays_to_parameters([np.asarray(vector, dtype=np.float64)]), 1, {})
    return Message(recorddict_compat.fitres_to_recorddict(fit_res, keep_input=False), reply_to=msg)
