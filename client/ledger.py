"""The lab's release ledger: an append-only record of everything that left, and the ε it spent.

``LAB_DIR/ledger.sqlite`` (SQLite, so appends are transactional and survive a crash; triggers
refuse UPDATE and DELETE). Each entry says what was released (kind, sha256 and the exact
payload), when, to which coordinator, run and round, under which mechanism, and the (ε, δ) it
spent; each entry's hash covers the previous one, so an edit made behind SQLite's back shows.

:meth:`Ledger.release` is the only way a release is made: in one write transaction it checks
the budget, draws the noise (the caller's ``make``) and appends the entry. The reply is sent only
after the commit, so an entry may describe a release that a crash stopped from arriving (ε is
counted conservatively), never the reverse. A release id is unique: a retried release returns
the stored payload instead of drawing fresh noise, so it spends nothing twice and adds no entry.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fedarches.shared.dp import PrivacySpend
from fedarches.shared.errors import BudgetExceededError

LEDGER_FILE_NAME = "ledger.sqlite"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS releases (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    release_id TEXT NOT NULL UNIQUE,
    time TEXT NOT NULL,
    lab TEXT NOT NULL,
    coordinator TEXT NOT NULL,
    run_id TEXT NOT NULL,
    round_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    mechanism TEXT NOT NULL,
    epsilon REAL NOT NULL,
    delta REAL NOT NULL,
    unit TEXT NOT NULL,
    detail TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    payload BLOB NOT NULL,
    prev_hash TEXT NOT NULL,
    entry_hash TEXT NOT NULL
);
CREATE TRIGGER IF NOT EXISTS releases_no_update BEFORE UPDATE ON releases
BEGIN SELECT RAISE(ABORT, 'the ledger is append-only'); END;
CREATE TRIGGER IF NOT EXISTS releases_no_delete BEFORE DELETE ON releases
BEGIN SELECT RAISE(ABORT, 'the ledger is append-only'); END;
"""
_SPENT = "SELECT COALESCE(SUM(epsilon), 0), COALESCE(SUM(delta), 0) FROM releases"
_COLUMNS = (
    "seq",
    "release_id",
    "time",
    "lab",
    "coordinator",
    "run_id",
    "round_id",
    "kind",
    "mechanism",
    "epsilon",
    "delta",
    "unit",
    "detail",
    "sha256",
    "payload",
    "prev_hash",
    "entry_hash",
)


@dataclass(frozen=True)
class ReleaseContext:
    """Where a release goes: the lab, the coordinator (SuperLink address), the Flower run and round."""

    lab: str
    coordinator: str
    run_id: str
    round_id: str

    def release_id(self, kind: str) -> str:
        return f"{self.coordinator}|{self.run_id}|{self.round_id}|{kind}"


@dataclass(frozen=True)
class Release:
    """What a release makes: the exact bytes that leave, their spend, and details for the record."""

    payload: bytes
    spend: PrivacySpend
    detail: dict[str, Any]


@dataclass(frozen=True)
class LedgerEntry:
    seq: int
    release_id: str
    time: str
    lab: str
    coordinator: str
    run_id: str
    round_id: str
    kind: str
    mechanism: str
    epsilon: float
    delta: float
    unit: str
    detail: str
    sha256: str
    payload: bytes
    prev_hash: str
    entry_hash: str

    @property
    def spends_budget(self) -> bool:
        return self.epsilon > 0 or self.delta > 0

    def to_dict(self, *, with_payload: bool = False) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in _COLUMNS if k != "payload"}
        out["detail"] = json.loads(self.detail)
        out["bytes"] = len(self.payload)
        if with_payload:
            out["payload"] = self.payload.decode() if self.payload_is_text else self.payload.hex()
        return out

    @property
    def payload_is_text(self) -> bool:
        try:
            self.payload.decode()
        except UnicodeDecodeError:
            return False
        return True


class Ledger:
    """The append-only release ledger of one lab directory."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.executescript(_SCHEMA)

    @classmethod
    def for_lab(cls, lab_dir: Path | str) -> Ledger:
        return cls(Path(lab_dir) / LEDGER_FILE_NAME)

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=60.0, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        return db

    def entries(self) -> list[LedgerEntry]:
        with self._connect() as db:
            rows = db.execute(f"SELECT {', '.join(_COLUMNS)} FROM releases ORDER BY seq").fetchall()
        return [LedgerEntry(*row) for row in rows]

    def spent(self) -> tuple[float, float]:
        """Total (ε, δ) spent so far (basic composition: the sum over releases)."""
        with self._connect() as db:
            eps, delta = db.execute(_SPENT).fetchone()
        return float(eps), float(delta)

    def release(
        self,
        context: ReleaseContext,
        kind: str,
        make: Callable[[], Release],
        *,
        budget: tuple[float, float],
        expected_spend: PrivacySpend,
    ) -> tuple[bytes, LedgerEntry]:
        """Make and record one release, or return the recorded one for a retried ``release_id``.

        ``expected_spend`` is checked against ``budget`` before ``make`` draws any noise; a release
        that would exceed it raises :class:`BudgetExceededError` and records nothing.
        """
        release_id = context.release_id(kind)
        db = self._connect()
        try:
            db.execute("BEGIN IMMEDIATE")  # one writer at a time: two releases cannot both fit a budget
            existing = db.execute(f"SELECT {', '.join(_COLUMNS)} FROM releases WHERE release_id = ?", (release_id,))
            row = existing.fetchone()
            if row is not None:
                db.execute("ROLLBACK")
                entry = LedgerEntry(*row)
                return entry.payload, entry
            eps, delta = db.execute(_SPENT).fetchone()
            if eps + expected_spend.epsilon > budget[0] + 1e-9 or delta + expected_spend.delta > budget[1] + 1e-15:
                db.execute("ROLLBACK")
                msg = (
                    f"releasing {kind} would spend ε={expected_spend.epsilon:g} δ={expected_spend.delta:g}; "
                    f"this lab has spent ε={eps:g} δ={delta:g} of its budget ε={budget[0]:g} δ={budget[1]:g}"
                )
                raise BudgetExceededError(msg)
            made = make()
            prev = db.execute("SELECT entry_hash FROM releases ORDER BY seq DESC LIMIT 1").fetchone()
            values = {
                "release_id": release_id,
                "time": datetime.now(UTC).isoformat(timespec="seconds"),
                "lab": context.lab,
                "coordinator": context.coordinator,
                "run_id": context.run_id,
                "round_id": context.round_id,
                "kind": kind,
                "mechanism": made.spend.mechanism,
                "epsilon": made.spend.epsilon,
                "delta": made.spend.delta,
                "unit": made.spend.unit,
                "detail": json.dumps({**made.detail, "spend": made.spend.to_dict()}, sort_keys=True),
                "sha256": hashlib.sha256(made.payload).hexdigest(),
                "payload": made.payload,
                "prev_hash": prev[0] if prev else "",
            }
            values["entry_hash"] = _entry_hash(values)
            names = ", ".join(values)
            cursor = db.execute(
                f"INSERT INTO releases ({names}) VALUES ({', '.join('?' * len(values))})", tuple(values.values())
            )
            db.execute("COMMIT")
            return made.payload, LedgerEntry(seq=int(cursor.lastrowid or 0), **values)
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        finally:
            db.close()

    def verify(self) -> list[str]:
        """Problems with the hash chain (an empty list when every entry is intact)."""
        problems = []
        prev = ""
        for entry in self.entries():
            values = {k: getattr(entry, k) for k in _COLUMNS if k not in ("seq", "entry_hash")}
            if entry.prev_hash != prev:
                problems.append(f"entry {entry.seq}: does not follow entry {entry.seq - 1}")
            if _entry_hash(values) != entry.entry_hash:
                problems.append(f"entry {entry.seq}: content does not match its hash")
            if hashlib.sha256(entry.payload).hexdigest() != entry.sha256:
                problems.append(f"entry {entry.seq}: payload does not match its sha256")
            prev = entry.entry_hash
        return problems


def _entry_hash(values: dict[str, Any]) -> str:
    fields = {k: (v.hex() if isinstance(v, bytes) else v) for k, v in values.items() if k != "entry_hash"}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()
