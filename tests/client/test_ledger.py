"""The release ledger: append-only, budget enforced before anything is drawn, crash-safe, idempotent."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from fedarches.client.cli import app as cli_app
from fedarches.client.lab import LabDir
from fedarches.client.ledger import (
    _COLUMNS,
    GENESIS_HASH,
    HEAD_PATTERN,
    Ledger,
    LedgerAnchor,
    Release,
    ReleaseContext,
    _entry_hash,
    read_anchor,
    write_receipt,
)
from fedarches.client.release import Releaser
from fedarches.shared import protocol
from fedarches.shared.adapters import Adapter, TensorSlice
from fedarches.shared.dp import PrivacySpend
from fedarches.shared.errors import BudgetExceededError, LedgerAnchorError, LedgerError, LedgerTamperedError
from fedarches.shared.labels import LabelCounts

SPEND = PrivacySpend("laplace", 1.0, 0.0, "cell", 2.0, 2.0)
runner = CliRunner()


def context(round_id: str = "r1") -> ReleaseContext:
    return ReleaseContext(lab="lab_a", coordinator="127.0.0.1:9092", run_id="7", round_id=round_id)


def make(payload: bytes, spend: PrivacySpend = SPEND):
    calls = []

    def inner() -> Release:
        calls.append(1)
        return Release(payload, spend, {"note": "test"})

    return inner, calls


def test_release_is_recorded_with_what_when_and_to_whom(tmp_path: Path) -> None:
    book = Ledger(tmp_path / "ledger.sqlite")
    fn, _ = make(b'{"counts": [1]}')
    payload, entry = book.release(context(), "map-reply", fn, budget=(10, 1e-5), expected_spend=SPEND)
    assert payload == b'{"counts": [1]}'
    (stored,) = book.entries()
    assert stored == entry
    assert (stored.lab, stored.coordinator, stored.run_id, stored.round_id, stored.kind) == (
        "lab_a", "127.0.0.1:9092", "7", "r1", "map-reply"
    )  # fmt: skip
    assert stored.epsilon == 1.0 and stored.mechanism == "laplace"
    assert book.spent() == (1.0, 0.0)
    assert book.verify() == []


def test_a_retried_release_reuses_the_recorded_payload(tmp_path: Path) -> None:
    book = Ledger(tmp_path / "ledger.sqlite")
    first, calls_1 = make(b"noise drawn once")
    again, calls_2 = make(b"fresh noise")
    book.release(context(), "map-reply", first, budget=(10, 1e-5), expected_spend=SPEND)
    payload, _ = book.release(context(), "map-reply", again, budget=(10, 1e-5), expected_spend=SPEND)
    assert payload == b"noise drawn once" and calls_2 == [] and calls_1 == [1]
    assert len(book.entries()) == 1 and book.spent() == (1.0, 0.0)


def test_budget_is_refused_before_noise_is_drawn(tmp_path: Path) -> None:
    book = Ledger(tmp_path / "ledger.sqlite")
    for i in range(3):
        fn, _ = make(b"x")
        book.release(context(f"r{i}"), "map-reply", fn, budget=(3.0, 0.0), expected_spend=SPEND)
    fn, calls = make(b"x")
    with pytest.raises(BudgetExceededError, match=r"spent ε=3 .* budget ε=3"):
        book.release(context("r9"), "map-reply", fn, budget=(3.0, 0.0), expected_spend=SPEND)
    assert calls == [] and len(book.entries()) == 3


def test_entries_cannot_be_changed_or_deleted(tmp_path: Path) -> None:
    book = Ledger(tmp_path / "ledger.sqlite")
    fn, _ = make(b"x")
    book.release(context(), "map-reply", fn, budget=(10, 0), expected_spend=SPEND)
    db = sqlite3.connect(book.path)
    for statement in ("UPDATE releases SET epsilon = 0", "DELETE FROM releases"):
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            db.execute(statement)
    # an edit behind SQLite's back (triggers dropped) breaks the hash chain
    db.execute("DROP TRIGGER releases_no_update")
    db.execute("UPDATE releases SET epsilon = 0")
    db.commit()
    db.close()
    assert any("does not match its hash" in p for p in book.verify())


_CHILD = textwrap.dedent(
    """
    import sys, time
    from fedarches.client.ledger import Ledger, Release, ReleaseContext
    from fedarches.shared.dp import PrivacySpend
    spend = PrivacySpend("laplace", 1.0, 0.0, "cell", 2.0, 2.0)
    ctx = ReleaseContext("lab_a", "coord", "7", sys.argv[2])
    def slow():
        print("drawing", flush=True)
        time.sleep(60)  # killed here, inside the release transaction
        return Release(b"never", spend, {})
    def fast():
        return Release(b"kept", spend, {})
    payload, entry = Ledger(sys.argv[1]).release(ctx, "map-reply", slow if sys.argv[3] == "slow" else fast,
                                                 budget=(1.0, 0.0), expected_spend=spend)
    print("recorded", entry.seq, flush=True)
    time.sleep(60 if sys.argv[3] == "fast-then-hang" else 0)  # killed after the commit, before 'sending'
    """
)


def _run_and_kill(path: Path, round_id: str, mode: str, wait_for: str) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(path), round_id, mode], stdout=subprocess.PIPE, text=True
    )
    assert child.stdout is not None
    line = child.stdout.readline()
    assert line.startswith(wait_for), line
    os.kill(child.pid, signal.SIGKILL)
    child.wait()


def test_a_release_killed_midway_leaves_no_entry_and_one_after_commit(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    Ledger(path)
    _run_and_kill(path, "r1", "slow", "drawing")  # killed before the commit: nothing recorded, nothing spent
    assert Ledger(path).entries() == [] and Ledger(path).spent() == (0.0, 0.0)
    _run_and_kill(path, "r1", "fast-then-hang", "recorded")  # killed after the commit: recorded once
    book = Ledger(path)
    assert len(book.entries()) == 1 and book.spent() == (1.0, 0.0)
    # the retry of the same release returns the recorded payload: no second entry, nothing spent twice
    fn, calls = make(b"fresh")
    payload, _ = book.release(
        ReleaseContext("lab_a", "coord", "7", "r1"), "map-reply", fn, budget=(1.0, 0.0), expected_spend=SPEND
    )
    assert payload == b"kept" and calls == [] and len(book.entries()) == 1
    assert book.verify() == []


def test_concurrent_releases_cannot_both_fit_the_budget(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    Ledger(path)
    script = textwrap.dedent(
        """
        import sys, time
        from fedarches.client.ledger import Ledger, Release, ReleaseContext
        from fedarches.shared.dp import PrivacySpend
        from fedarches.shared.errors import BudgetExceededError
        spend = PrivacySpend("laplace", 1.0, 0.0, "cell", 2.0, 2.0)
        def slow():
            time.sleep(1.0)
            return Release(b"x", spend, {})
        try:
            Ledger(sys.argv[1]).release(ReleaseContext("lab_a", "c", "7", sys.argv[2]), "map-reply", slow,
                                        budget=(1.5, 0.0), expected_spend=spend)
            print("released")
        except BudgetExceededError:
            print("refused")
        """
    )
    children = [
        subprocess.Popen([sys.executable, "-c", script, str(path), f"r{i}"], stdout=subprocess.PIPE, text=True)
        for i in range(2)
    ]
    outcomes = sorted(child.communicate(timeout=120)[0].strip() for child in children)
    assert outcomes == ["refused", "released"]
    assert len(Ledger(path).entries()) == 1


# --- a ledger file that is not an intact ledger is refused and left exactly as it is -----------------------


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _ledger_with(path: Path, n: int, *, lab: str = "lab_a") -> Ledger:
    book = Ledger(path)
    for i in range(n):
        fn, _ = make(f'{{"round": {i}}}'.encode())
        book.release(
            ReleaseContext(lab, "127.0.0.1:9092", "7", f"r{i + 1}"),
            "map-reply",
            fn,
            budget=(10, 0),
            expected_spend=SPEND,
        )
    return book


def _behind_sqlites_back(path: Path, *statements: str, restore_triggers: bool = True) -> None:
    """What an attacker with write access does: drop the triggers, edit, put the triggers back."""
    db = sqlite3.connect(path, isolation_level=None)
    triggers = db.execute("SELECT sql FROM sqlite_master WHERE type = 'trigger'").fetchall()
    db.execute("DROP TRIGGER releases_no_update")
    db.execute("DROP TRIGGER releases_no_delete")
    for statement in statements:
        db.execute(statement)
    if restore_triggers:
        for (sql,) in triggers:
            db.execute(sql)
    db.close()


def _corrupt(kind: str, path: Path) -> None:
    if kind == "empty (0 bytes)":
        path.write_bytes(b"")
    elif kind == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "truncated inside a page":
        data = path.read_bytes()
        path.write_bytes(data[:-100])
    elif kind == "garbage":
        path.write_bytes(os.urandom(8192))
    elif kind == "text":
        path.write_text("seq,epsilon\n1,0.0\n")
    elif kind == "bad pages":  # header intact, every other page overwritten
        data = bytearray(path.read_bytes())
        data[4096:] = b"\xff" * (len(data) - 4096)
        path.write_bytes(bytes(data))
    elif kind == "another database":
        path.unlink()
        db = sqlite3.connect(path)
        db.execute("CREATE TABLE notes (x TEXT)")
        db.commit()
        db.close()
    elif kind == "table dropped":
        _behind_sqlites_back(path, "DROP TABLE releases", restore_triggers=False)
    elif kind == "trigger dropped":
        _behind_sqlites_back(path, "SELECT 1", restore_triggers=False)
    elif kind == "trigger altered":
        _behind_sqlites_back(path, restore_triggers=False)
        db = sqlite3.connect(path)
        db.execute("CREATE TRIGGER releases_no_update BEFORE UPDATE ON releases BEGIN SELECT 1; END")
        db.execute("CREATE TRIGGER releases_no_delete BEFORE DELETE ON releases BEGIN SELECT 1; END")
        db.commit()
        db.close()
    elif kind == "trigger added":
        db = sqlite3.connect(path)
        db.execute("CREATE TRIGGER sneaky AFTER INSERT ON releases BEGIN SELECT 1; END")
        db.commit()
        db.close()


REFUSED = {
    "empty (0 bytes)": r"is empty \(0 bytes\)",
    "truncated": "truncated",
    "truncated inside a page": "truncated: .* is not a whole number of 4096-byte pages",
    "garbage": "not a SQLite database",
    "text": "not a SQLite database",
    "bad pages": "corrupted|integrity check",
    "another database": "table releases is missing",
    "table dropped": "table releases is missing",
    "trigger dropped": "trigger releases_no_update is missing",
    "trigger altered": "trigger releases_no_update was altered",
    "trigger added": "trigger sneaky was added",
}


@pytest.mark.parametrize("kind", REFUSED)
def test_a_broken_ledger_is_refused_and_never_recreated_or_repaired(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "ledger.sqlite"
    _ledger_with(path, 3)
    _corrupt(kind, path)
    before = _sha(path)
    with pytest.raises(LedgerError, match=REFUSED[kind]) as err:
        Ledger(path)
    assert str(path) in str(err.value) and err.value.exit_code == 33
    assert _sha(path) == before  # byte-identical: not re-created, not repaired
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ledger.sqlite"]  # nothing left beside it either
    with pytest.raises(LedgerError):
        Releaser.for_lab(LabDir(tmp_path, "lab_a", "c:1"), run_id=1, round_id="r9")  # refused before any mapping
    assert _sha(path) == before


def test_a_ledger_that_is_a_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "ledger.sqlite").mkdir()
    with pytest.raises(LedgerError, match="is a directory, not a ledger"):
        Ledger.for_lab(tmp_path)
    assert list((tmp_path / "ledger.sqlite").iterdir()) == []


def test_a_deleted_ledger_whose_wal_remains_is_not_recreated(tmp_path: Path) -> None:
    (tmp_path / "ledger.sqlite-wal").write_bytes(b"\x37\x7f\x06\x82" + bytes(28))
    with pytest.raises(LedgerError, match=r"does not exist, but ledger\.sqlite-wal beside it does"):
        Ledger.for_lab(tmp_path)
    assert not (tmp_path / "ledger.sqlite").exists()


def test_only_a_path_that_does_not_exist_is_created(tmp_path: Path) -> None:
    with pytest.raises(LedgerError, match="does not exist"):
        Ledger.for_lab(tmp_path / "lab", create=False)
    assert not (tmp_path / "lab").exists()
    book = Ledger.for_lab(tmp_path / "lab")
    assert book.entries() == [] and book.head() == (0, GENESIS_HASH)
    assert sorted(p.name for p in (tmp_path / "lab").iterdir()) == ["ledger.sqlite"]  # no temporary file left
    Ledger.for_lab(tmp_path / "lab", create=False)  # a new ledger passes its own checks


# --- the external anchor: a deleted or rewritten tail shows ------------------------------------------------


def _anchor(book: Ledger) -> LedgerAnchor:
    seq, head = book.head()
    return LedgerAnchor("lab_a", seq, head, "report.json (round r3)")


def test_a_deleted_tail_is_detected_only_with_an_anchor(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    anchor = _anchor(_ledger_with(path, 3))
    # delete the last entry and hide it: triggers dropped and put back, SQLite's counter wound back
    _behind_sqlites_back(path, "DELETE FROM releases WHERE seq = 3", "UPDATE sqlite_sequence SET seq = 2")
    book = Ledger(path)  # the file itself is an intact ledger again
    assert book.verify() == []  # the chain alone cannot tell: this is why the anchor exists
    (problem,) = book.verify([anchor])
    assert "entry 3 (anchored in report.json (round r3)) is missing" in problem and "tail was deleted" in problem
    with pytest.raises(LedgerTamperedError, match="tail was deleted") as err:
        book.require_intact([anchor])
    assert err.value.exit_code == 34


def test_a_deleted_tail_shows_in_sqlites_counter_even_without_an_anchor(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    _ledger_with(path, 3)
    _behind_sqlites_back(path, "DELETE FROM releases WHERE seq = 3")
    assert Ledger(path).verify() == ["entries after 2 were deleted (SQLite's counter says 3 were written)"]


def _rehash(path: Path, first: int) -> None:
    """Recompute every entry's hash from ``first`` on, as an attacker covering an edit would."""
    book = Ledger(path)
    prev = "" if first == 1 else book.entries()[first - 2].entry_hash
    statements = []
    for entry in book.entries()[first - 1 :]:
        values = {k: getattr(entry, k) for k in _COLUMNS if k not in ("seq", "entry_hash")}
        values["prev_hash"] = prev
        prev = _entry_hash(values)
        statements.append(
            f"UPDATE releases SET prev_hash = '{values['prev_hash']}', entry_hash = '{prev}' WHERE seq = {entry.seq}"
        )
    _behind_sqlites_back(path, *statements)


def test_a_rewritten_last_entry_with_a_recomputed_chain_is_detected(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    anchor = _anchor(_ledger_with(path, 3))
    _behind_sqlites_back(path, "UPDATE releases SET epsilon = 0 WHERE seq = 3")
    assert any("entry 3: content does not match its hash" in p for p in Ledger(path).verify())
    _rehash(path, 3)
    book = Ledger(path)
    assert book.verify() == [] and book.entries()[-1].epsilon == 0
    (problem,) = book.verify([anchor])
    assert problem.startswith("entry 3 differs from the one anchored in report.json") and "rewritten" in problem


def test_a_rewritten_history_before_the_anchor_is_detected(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    anchor = _anchor(_ledger_with(path, 3))
    _behind_sqlites_back(path, "UPDATE releases SET coordinator = 'elsewhere' WHERE seq = 1")
    _rehash(path, 1)
    assert Ledger(path).verify() == []
    assert "entry 3 differs" in Ledger(path).verify([anchor])[0]
    # entries added after the anchored one are fine: the anchor only pins what it saw
    fresh = tmp_path / "fresh.sqlite"
    early = _anchor(_ledger_with(fresh, 2))
    fn, _ = make(b"later")
    Ledger(fresh).release(context("r9"), "map-reply", fn, budget=(10, 0), expected_spend=SPEND)
    assert Ledger(fresh).verify([early]) == []


# --- anchors from the coordinator's report and from receipts -------------------------------------------------


def _report(path: Path, anchors: dict[str, tuple[int | None, str]], round_id: str = "r3") -> Path:
    labs = [
        {"name": name, "status": "accepted", "ledger_seq": seq, "ledger_head": head}
        for name, (seq, head) in anchors.items()
    ]
    path.write_text(json.dumps({"round_id": round_id, "labs": labs}))
    return path


def test_read_anchor_from_a_report_and_from_a_receipt(tmp_path: Path) -> None:
    book = _ledger_with(tmp_path / "ledger.sqlite", 2)
    seq, head = book.head()
    report = _report(tmp_path / "report.json", {"lab_b": (5, "a" * 64), "lab_a": (seq, head)})
    assert read_anchor(report, lab="lab_a") == LedgerAnchor("lab_a", 2, head, f"{report} (round r3)")
    receipt = write_receipt(tmp_path / "receipt.json", book.receipt())
    data = json.loads(receipt.read_text())
    assert data["format"] == "fedarches-ledger-receipt" and (data["lab"], data["ledger_seq"]) == ("lab_a", 2)
    assert read_anchor(receipt, lab="lab_a") == LedgerAnchor("lab_a", 2, head, str(receipt))
    minimal = tmp_path / "minimal.json"
    minimal.write_text(json.dumps({"lab": "lab_a", "ledger_seq": 2, "ledger_head": head}))
    assert read_anchor(minimal, lab=None).seq == 2


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\xff\xfe{", "not a JSON report or receipt"),
        (b"[1, 2]", "not a JSON object"),
        (
            b'{"labs": [{"name": "lab_b", "ledger_seq": 1, "ledger_head": "' + b"a" * 64 + b'"}]}',
            "no entry for lab 'lab_a'",
        ),
        (
            b'{"labs": [{"name": "lab_a", "status": "dropped", "ledger_seq": null, "ledger_head": ""}]}',
            "records no ledger anchor",
        ),
        (
            b'{"labs": [{"name": "lab_a", "ledger_seq": true, "ledger_head": "' + b"a" * 64 + b'"}]}',
            "ledger_seq must be",
        ),
        (b'{"labs": [{"name": "lab_a", "ledger_seq": 1, "ledger_head": "' + b"A" * 64 + b'"}]}', "64 lowercase hex"),
        (b'{"lab": "lab_b", "ledger_seq": 1, "ledger_head": "' + b"a" * 64 + b'"}', "receipt for lab 'lab_b'"),
        (b'{"lab": "lab_a", "seq": 1}', "neither a coordinator's report"),
    ],
)
def test_a_file_that_is_no_anchor_is_a_clear_error(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "report.json"
    path.write_bytes(content)
    with pytest.raises(LedgerAnchorError, match=re.escape(message)) as err:
        read_anchor(path, lab="lab_a")
    assert err.value.exit_code == 35


# --- the command line -------------------------------------------------------------------------------------


def test_cli_verify_with_the_coordinators_report_detects_a_deleted_tail(tmp_path: Path) -> None:
    book = _ledger_with(tmp_path / "ledger.sqlite", 3)
    report = _report(tmp_path / "report.json", {"lab_a": book.head()})
    args = ["ledger", "--lab-dir", str(tmp_path), "--verify", "--report", str(report)]
    ok = runner.invoke(cli_app, args, terminal_width=200)
    assert ok.exit_code == 0, ok.output
    assert "hash chain intact over 3 entries" in ok.output and "entry 3 matches the anchor in" in ok.output
    _behind_sqlites_back(book.path, "DELETE FROM releases WHERE seq = 3", "UPDATE sqlite_sequence SET seq = 2")
    assert runner.invoke(cli_app, ["ledger", "--lab-dir", str(tmp_path), "--verify"]).exit_code == 0  # no anchor
    result = runner.invoke(cli_app, args, terminal_width=200)
    assert result.exit_code == 34, result.output
    assert "entry 3" in result.output and "tail was deleted" in result.output and "hint:" in result.output
    assert "Traceback" not in result.output and "unexpected" not in result.output


def test_cli_receipt_then_verify_detects_a_rewritten_entry(tmp_path: Path) -> None:
    book = _ledger_with(tmp_path / "ledger.sqlite", 2)
    receipt = tmp_path / "kept-elsewhere" / "receipt.json"
    made = runner.invoke(cli_app, ["ledger", "--lab-dir", str(tmp_path), "--receipt", str(receipt)])
    assert made.exit_code == 0, made.output
    assert json.loads(receipt.read_text())["ledger_head"] == book.head()[1]
    before = _sha(book.path)
    onto_ledger = runner.invoke(cli_app, ["ledger", "--lab-dir", str(tmp_path), "--receipt", str(book.path)])
    assert onto_ledger.exit_code == 35 and "is not a ledger receipt; it is left as it is" in onto_ledger.output
    assert _sha(book.path) == before  # a receipt never replaces another file (here: the ledger itself)
    _behind_sqlites_back(book.path, "UPDATE releases SET epsilon = 0 WHERE seq = 2")
    _rehash(book.path, 2)
    result = runner.invoke(cli_app, ["ledger", "--lab-dir", str(tmp_path), "--report", str(receipt)])
    assert result.exit_code == 34 and "entry 2 differs" in result.output


def test_cli_refuses_a_broken_ledger_a_deleted_one_and_a_bad_report(tmp_path: Path) -> None:
    book = _ledger_with(tmp_path / "ledger.sqlite", 1)
    report = _report(tmp_path / "report.json", {"lab_a": book.head()})
    book.path.write_bytes(b"")
    emptied = runner.invoke(cli_app, ["ledger", "--lab-dir", str(tmp_path)])
    assert emptied.exit_code == 33 and "is empty (0 bytes)" in emptied.output
    assert book.path.read_bytes() == b""
    book.path.unlink()
    deleted = runner.invoke(cli_app, ["ledger", "--lab-dir", str(tmp_path), "--report", str(report)])
    assert deleted.exit_code == 34 and "the ledger was deleted" in deleted.output
    report.write_text("{not json")
    bad = runner.invoke(cli_app, ["ledger", "--lab-dir", str(tmp_path), "--report", str(report)])
    assert bad.exit_code == 35 and "not a JSON report or receipt" in bad.output and "Traceback" not in bad.output
    none_yet = runner.invoke(cli_app, ["ledger", "--lab-dir", str(tmp_path), "--receipt", str(tmp_path / "r.json")])
    assert none_yet.exit_code == 35 and "nothing to anchor" in none_yet.output


# --- every mapping reply carries the ledger's head -----------------------------------------------------------


@pytest.fixture
def toy_adapter() -> Adapter:
    rng = np.random.default_rng(0)
    tensors = {f"layer{i}.weight": TensorSlice(rng.normal(size=(16, 1)).astype(np.float32), 1, 3) for i in range(2)}
    return Adapter("0123456789abcdef", ("lab_a",), tensors)


@pytest.fixture
def toy_counts() -> LabelCounts:
    predicted = ["T"] * 120 + ["B"] * 40
    confidence = np.r_[np.full(120, 0.9), np.full(40, 0.4)]
    return LabelCounts.from_cells(predicted, confidence, confidence < 0.5, ["T", "B", "Unknown"])


def _lab_record(released) -> dict:
    content = released.to_reply("lab_a", 10, "secure-sum", {"total_s": 1.0}).to_content()
    protocol.check_egress(protocol.MAP, content, max_array_bytes=1_048_576)
    return dict(content.config_records[protocol.LAB])


def test_map_reply_carries_the_ledger_head_and_passes_egress(tmp_path: Path, toy_adapter, toy_counts) -> None:
    lab = LabDir(tmp_path, "lab_a", "127.0.0.1:9092")
    releaser = Releaser.for_lab(lab, run_id=7, round_id="r1")
    record = _lab_record(releaser.map_reply(toy_adapter, toy_counts))
    (entry,) = releaser.ledger.entries()
    assert (record["ledger-seq"], record["ledger-head"]) == (entry.seq, entry.entry_hash) == (1, entry.entry_hash)
    assert HEAD_PATTERN.match(record["ledger-head"])
    # a retried release re-sends the recorded entry and the newest head
    assert _lab_record(releaser.map_reply(toy_adapter, toy_counts)) == record
    # the secure-sum entry of round 1 is anchored by round 2's reply
    releaser.secure_sum_counts(toy_counts, ["T", "B", "Unknown"])
    second = Releaser.for_lab(lab, run_id=7, round_id="r2").map_reply(toy_adapter, toy_counts)
    assert (second.entry_seq, second.ledger_seq) == (3, 3)
    assert second.ledger_head == Ledger.for_lab(tmp_path).entries()[-1].entry_hash


def test_preview_shows_the_current_head_and_writes_nothing(tmp_path: Path, toy_adapter, toy_counts) -> None:
    lab = LabDir(tmp_path, "lab_a", "127.0.0.1:9092")
    first = Releaser.for_lab(lab, run_id="preview", round_id="preview", preview=True).map_reply(toy_adapter, toy_counts)
    record = _lab_record(first)
    assert (record["ledger-seq"], record["ledger-head"]) == (0, GENESIS_HASH)
    assert list(tmp_path.iterdir()) == []  # no ledger created by a preview
    book = _ledger_with(tmp_path / "ledger.sqlite", 2)
    before = _sha(book.path)
    shown = Releaser.for_lab(lab, run_id="preview", round_id="preview", preview=True).map_reply(toy_adapter, toy_counts)
    assert (shown.entry_seq, shown.ledger_seq, shown.ledger_head) == (0, *book.head())
    assert len(book.entries()) == 2 and _sha(book.path) == before
