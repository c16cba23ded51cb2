"""Client mods: the lab's egress audit, and the lab's own extra mods.

:func:`egress_audit_mod` wraps every handler of the ClientApp. It is the last code that sees a
reply before Flower sends it, so it is where the lab enforces and records what leaves:

* the reply must pass :func:`fedarches.shared.protocol.check_egress` (allow-listed records and
  keys, float tensors only, a size limit), else an error with no content is sent instead;
* an exception inside the lab becomes an error reply naming only its class and exit code;
  Flower would otherwise send the exception's message, which can quote paths or obs columns;
* every reply is appended to ``LAB_DIR/egress/audit.jsonl`` (time, run, message type, each record
  with array shapes, bytes and sha256, and every config value), and with node-config
  ``egress-copy=true`` an exact copy of each reply's arrays and values is kept under
  ``LAB_DIR/egress/messages/``, for the lab's ethics board or a test to inspect.
"""

from __future__ import annotations

import importlib
import io
import json
import logging
import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord

from fedarches.shared import protocol
from fedarches.shared._io import atomic_write_bytes
from fedarches.shared.errors import ConfigError, FedarchesError, PrivacyError, ProtocolError
from fedarches.shared.wire import describe_content

log = logging.getLogger("fedarches.client")

Mod = Callable[[Message, Context, Callable[[Message, Context], Message]], Message]

EGRESS_LIMIT_BYTES = 1_048_576
# Error codes sent to the coordinator: base + the fedarches exit code; base + 1 for anything unexpected.
ERROR_CODE_BASE = protocol.LAB_ERROR_CODE_BASE


def egress_audit_mod(msg: Message, context: Context, call_next: Callable[[Message, Context], Message]) -> Message:
    """Enforce the egress allow-list on the reply to ``msg`` and append it to the lab's audit log."""
    lab_dir = Path(str(context.node_config.get("lab-dir", ".")))
    message_type = msg.metadata.message_type
    try:
        reply = call_next(msg, context)
    except FedarchesError as err:
        log.error("%s: %s (hint: %s)", type(err).__name__, err, err.hint)
        reply = Message(Error(ERROR_CODE_BASE + err.exit_code, f"lab error {type(err).__name__}"), reply_to=msg)
    except Exception:
        log.exception("the ClientApp failed")
        reply = Message(Error(ERROR_CODE_BASE + 1, "lab error: unexpected failure, see the lab's log"), reply_to=msg)
    if reply.has_error():
        reply = Message(Error(reply.error.code, _sanitize_reason(reply.error.reason)), reply_to=msg)
        _audit(lab_dir, msg, reply, verdict="error")
        return reply
    limit = int(context.node_config.get("egress-limit-bytes", EGRESS_LIMIT_BYTES))
    try:
        protocol.check_egress(message_type, reply.content, max_array_bytes=limit)
    except FedarchesError as err:
        log.error("egress refused: %s; nothing was sent", err)
        _audit(lab_dir, msg, reply, verdict=f"refused: {err}")
        return Message(
            Error(ERROR_CODE_BASE + err.exit_code, "lab refused to send its reply (egress policy)"), reply_to=msg
        )
    _audit(lab_dir, msg, reply, verdict="sent", copy=_truthy(context.node_config.get("egress-copy", False)))
    return reply


def secure_sum_guard_mod(msg: Message, context: Context, call_next: Callable[[Message, Context], Message]) -> Message:
    """Before SecAgg+ starts, refuse unless the lab's policy allows this secure sum.

    The policy must release composition in a secure sum over at least ``release.secure_sum_min_labs``
    labs (the number the coordinator's setup announces).
    """
    from fedarches.shared.policy import PrivacyPolicy

    configs = msg.content.config_records.get(protocol.SECAGG_RECORD)
    if configs is not None and configs.get("stage") == "setup":
        release = PrivacyPolicy.load(Path(str(context.node_config.get("lab-dir", ".")))).release
        release.require_secure_sum()
        n_labs = configs.get("sample_num", 0)
        if isinstance(n_labs, bool) or not isinstance(n_labs, int):
            msg_text = f"the secure sum's setup announces {str(n_labs)[:40]!r} labs, not a number"
            raise ProtocolError(msg_text)
        if n_labs < release.secure_sum_min_labs:
            msg_text = (
                f"a secure sum over {n_labs} labs; the lab's policy requires at least {release.secure_sum_min_labs}"
            )
            raise PrivacyError(msg_text)
    return call_next(msg, context)


def lab_mods_mod(msg: Message, context: Context, call_next: Callable[[Message, Context], Message]) -> Message:
    """Run the lab's own mods named in node-config ``extra-mods`` (``module:attribute``, comma-separated).

    They run inside :func:`egress_audit_mod`, so whatever they change is still checked and recorded.
    """
    spec = str(context.node_config.get("extra-mods", "")).strip()
    handler = call_next
    for ref in reversed([s.strip() for s in spec.split(",") if s.strip()]):
        handler = _wrap(handler, _import_mod(ref))
    return handler(msg, context)


def _wrap(handler: Callable[[Message, Context], Message], mod: Mod) -> Callable[[Message, Context], Message]:
    return lambda m, c: mod(m, c, handler)


def _import_mod(ref: str) -> Mod:
    module_name, _, attribute = ref.partition(":")
    hint = "pass --extra-mods as module:attribute, comma-separated, with the module on the SuperNode's PYTHONPATH"
    if not module_name or not attribute:
        msg = f"extra-mods entry {ref!r} is not of the form module:attribute"
        raise ConfigError(msg, hint=hint)
    try:
        mod = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as err:
        msg = f"extra-mods entry {ref!r} cannot be loaded ({type(err).__name__}: {err})"
        raise ConfigError(msg, hint=hint) from None
    if not callable(mod):
        msg = f"extra-mods entry {ref!r} is not a function"
        raise ConfigError(msg, hint=hint)
    return mod


def check_extra_mods(spec: str) -> None:
    """Import every mod ``spec`` names (``module:attribute``, comma-separated): ``join`` fails before connecting."""
    for ref in (s.strip() for s in spec.split(",")):
        if ref:
            _import_mod(ref)


def _sanitize_reason(reason: str | None) -> str:
    """Keep an error reason only when fedarches wrote it (no paths, no exception text)."""
    if reason and reason.startswith(("lab error", "lab refused")):
        return reason
    return "lab error: the ClientApp failed, see the lab's log"


def _audit(lab_dir: Path, msg: Message, reply: Message, *, verdict: str, copy: bool = False) -> None:
    """Append one JSON line describing ``reply`` to ``egress/audit.jsonl`` (and keep a copy if asked)."""
    egress = lab_dir / "egress"
    egress.mkdir(parents=True, exist_ok=True)
    entry: dict[str, Any] = {
        "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
        "run_id": msg.metadata.run_id,
        "message_type": msg.metadata.message_type,
        "reply_to": msg.metadata.message_id,
        "verdict": verdict,
    }
    if reply.has_error():
        entry["error"] = {"code": reply.error.code, "reason": reply.error.reason}
    else:
        entry["records"] = describe_content(reply.content)
        if copy:
            entry["copy"] = str(_keep_copy(egress, msg, reply))
    line = json.dumps(entry, sort_keys=True) + "\n"
    with open(egress / "audit.jsonl", "a", encoding="utf-8") as fh:
        fh.write(line)
        fh.flush()
        os.fsync(fh.fileno())


def _keep_copy(egress: Path, msg: Message, reply: Message) -> Path:
    """Exact copy of a reply's content: arrays in an .npz, config and metric values in JSON beside it."""
    stem = f"{msg.metadata.run_id}-{msg.metadata.message_type}-{msg.metadata.message_id[:12]}"
    arrays: dict[str, np.ndarray] = {}
    values: dict[str, Any] = {}
    for name, record in reply.content.items():
        if isinstance(record, ArrayRecord):
            arrays.update({f"{name}/{k}": a.numpy() for k, a in record.items()})
        elif isinstance(record, ConfigRecord | MetricRecord):
            values[name] = {k: _hex_bytes(v) for k, v in record.items()}
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    target = egress / "messages" / f"{stem}.npz"
    atomic_write_bytes(target, buffer.getvalue())
    atomic_write_bytes(target.with_suffix(".json"), json.dumps(values, indent=2, sort_keys=True).encode())
    return target


def _hex_bytes(value: Any) -> Any:
    """Bytes (alone or in a list, as SecAgg+ sends keys and masked vectors) as hex text for the JSON copy."""
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, list):
        return [_hex_bytes(v) for v in value]
    return value


def _truthy(value: object) -> bool:
    return value is True or str(value).lower() in ("true", "1", "yes")
