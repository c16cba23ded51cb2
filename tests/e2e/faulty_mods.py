"""Client mods that corrupt a lab's adapter after real mapping: a misbehaving or compromised lab.

A lab installs them with ``fedarches-client join --extra-mods tests.e2e.faulty_mods:nan_adapter``;
they run inside the egress audit, so the audit records what they made the lab send.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from flwr.app import Array, Context, Message

from fedarches.shared import protocol

Handler = Callable[[Message, Context], Message]


def _corrupt(msg: Message, context: Context, call_next: Handler, change: Callable[[np.ndarray], np.ndarray]) -> Message:
    reply = call_next(msg, context)
    if reply.has_error() or protocol.ADAPTER not in reply.content.array_records:
        return reply
    record = reply.content.array_records[protocol.ADAPTER]
    first = sorted(record)[0]
    record[first] = Array(np.ascontiguousarray(change(record[first].numpy())))
    return reply


def nan_adapter(msg: Message, context: Context, call_next: Handler) -> Message:
    """One adapter value becomes NaN."""

    def change(values: np.ndarray) -> np.ndarray:
        values = values.copy()
        values.flat[0] = np.nan
        return values

    return _corrupt(msg, context, call_next, change)


def wrong_shape_adapter(msg: Message, context: Context, call_next: Handler) -> Message:
    """One adapter tensor loses half its rows."""
    return _corrupt(msg, context, call_next, lambda v: v[: v.shape[0] // 2])


def oversized_adapter(msg: Message, context: Context, call_next: Handler) -> Message:
    """One adapter tensor grows 40 extra columns (about 20 KB)."""
    return _corrupt(msg, context, call_next, lambda v: np.concatenate([v] + [v] * 40, axis=1))


def drop_in_secure_sum(msg: Message, context: Context, call_next: Handler) -> Message:
    """The lab's SuperNode dies (SIGKILL to its process group) when SecAgg+ asks for its masked vector:
    a lab that drops out in the middle of the secure-sum protocol, after sharing its keys."""
    import os
    import signal
    from pathlib import Path

    from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS

    from fedarches.shared._process import SUPERNODE_PID_FILE

    configs = msg.content.config_records.get(RECORD_KEY_CONFIGS)
    if configs is not None and configs.get("stage") == "collect_masked_vectors":
        pid = int((Path(str(context.node_config["lab-dir"])) / SUPERNODE_PID_FILE).read_text())
        os.killpg(pid, signal.SIGKILL)
    return call_next(msg, context)
