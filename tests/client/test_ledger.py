"""The release ledger: append-only, budget enforced before anything is drawn, crash-safe, idempotent."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from fedarches.client.ledger import Ledger, Release, ReleaseContext
from fedarches.shared.dp import PrivacySpend
from fedarches.shared.errors import BudgetExceededError

SPEND = PrivacySpend("laplace", 1.0, 0.0, "cell", 2.0, 2.0)


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
