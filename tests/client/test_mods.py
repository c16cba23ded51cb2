"""The egress audit mod on real Flower messages: what it lets out, refuses, and records."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fedarches.client.mods import egress_audit_mod, lab_mods_mod
from fedarches.shared import protocol
from fedarches.shared.errors import QueryDataError


@pytest.fixture
def context(tmp_path: Path) -> Context:
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 7, 11, 1  # what a ClientApp process has
    return Context(run_id=7, node_id=11, node_config={"lab-dir": str(tmp_path)}, state=RecordDict(), run_config={})


def train_message() -> Message:
    return Message(RecordDict(), dst_node_id=11, message_type=protocol.MAP)


def audit(tmp_path: Path) -> list[dict]:
    return [json.loads(line) for line in (tmp_path / "egress" / "audit.jsonl").read_text().splitlines()]


def test_an_allowed_reply_leaves_and_is_recorded(context: Context, tmp_path: Path) -> None:
    hello = RecordDict({protocol.LAB: ConfigRecord({"lab-name": "lab_a", "n-epochs": 3})})
    reply = egress_audit_mod(train_message(), context, lambda m, c: Message(hello, reply_to=m))
    assert not reply.has_error()
    (entry,) = audit(tmp_path)
    assert entry["verdict"] == "sent" and entry["records"][protocol.LAB]["values"]["lab-name"] == "lab_a"


def test_a_reply_off_the_allow_list_is_replaced_by_an_empty_error(context: Context, tmp_path: Path) -> None:
    barcodes = RecordDict({"cells": ArrayRecord({"ids": Array(np.arange(210))})})
    reply = egress_audit_mod(train_message(), context, lambda m, c: Message(barcodes, reply_to=m))
    assert reply.has_error() and "egress policy" in reply.error.reason
    (entry,) = audit(tmp_path)
    assert entry["verdict"].startswith("refused") and "cells" in entry["verdict"]


def test_a_lab_error_leaves_only_its_class(context: Context, tmp_path: Path) -> None:
    def fail(_m: Message, _c: Context) -> Message:
        raise QueryDataError("obs['donor_secret_id'] is missing in /data/patients/cohort7.h5ad")

    reply = egress_audit_mod(train_message(), context, fail)
    assert reply.has_error() and reply.error.reason == "lab error QueryDataError"
    assert reply.error.code == 1000 + QueryDataError.exit_code
    assert "cohort7" not in json.dumps(audit(tmp_path))


def test_a_crash_leaves_no_exception_text(context: Context) -> None:
    def crash(_m: Message, _c: Context) -> Message:
        raise RuntimeError("/data/patients/cohort7.h5ad: donor 1234")

    reply = egress_audit_mod(train_message(), context, crash)
    assert reply.has_error() and "cohort7" not in reply.error.reason


def test_lab_mods_run_in_order_inside_the_audit(context: Context, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    module = type("Mods", (), {})()
    module.first = lambda m, c, nxt: (calls.append("first"), nxt(m, c))[1]
    module.second = lambda m, c, nxt: (calls.append("second"), nxt(m, c))[1]
    monkeypatch.setitem(__import__("sys").modules, "lab_owned_mods", module)
    context.node_config["extra-mods"] = "lab_owned_mods:first, lab_owned_mods:second"
    lab_mods_mod(train_message(), context, lambda m, c: (calls.append("handler"), m)[1])
    assert calls == ["first", "second", "handler"]
