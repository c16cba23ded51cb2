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

Only a path that does not exist is made into a new ledger (the lab's first release). An existing
file that is empty, truncated, not SQLite, fails SQLite's integrity check, or whose table or
triggers differ from the ledger's schema raises :class:`~fedarches.shared.errors.LedgerError` and
is left exactly as it is: never re-created, never "repaired".

The chain alone cannot show a deleted or rewritten tail: whoever can write the file can recompute
every hash after the one they changed. So every mapping reply carries the lab's newest entry
(``ledger-seq``, ``ledger-head``), and the coordinator keeps it in the round's ``report.json``: an
anchor outside the lab. :meth:`Ledger.verify` checks the chain against any number of anchors
(:func:`read_anchor` reads one from a coordinator's report or from a receipt that
:meth:`Ledger.receipt` makes), so an entry deleted or rewritten after it was anchored shows.

A receipt is a small JSON object::

    {"format": "fedarches-ledger-receipt", "format_version": 1,
     "lab": "lab_a", "ledger_seq": 7, "ledger_head": "<64 hex digits>", "time": "2026-..."}
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import re
import sqlite3
import stat
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fedarches.shared._io import read_toml
from fedarches.shared._json import strict_loads
from fedarches.shared.dp import PrivacySpend
from fedarches.shared.errors import (
    BudgetExceededError,
    ConfigError,
    LedgerAnchorError,
    LedgerError,
    LedgerTamperedError,
)
from fedarches.shared.paths import kind_of_mode

LEDGER_FILE_NAME = "ledger.sqlite"
RECEIPT_FORMAT = "fedarches-ledger-receipt"
RECEIPT_FORMAT_VERSION = 1
GENESIS_HASH = "0" * 64  # the head of a ledger with no entry yet
HEAD_PATTERN = re.compile(r"^[0-9a-f]{64}$")
MAX_ANCHOR_FILE_BYTES = 64 * 1024 * 1024  # a report or receipt; bigger is not one
_SQLITE_MAGIC = b"SQLite format 3\x00"
_SIDE_FILES = ("-wal", "-shm", "-journal")
# The schema text is stored verbatim in sqlite_master and compared on every open: do not reformat it.
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
        """The unique id of this context's ``kind`` release (a retry of it gets the same id)."""
        return f"{self.coordinator}|{self.run_id}|{self.round_id}|{kind}"


@dataclass(frozen=True)
class Release:
    """What a release makes: the exact bytes that leave, their spend, and details for the record."""

    payload: bytes
    spend: PrivacySpend
    detail: dict[str, Any]


@dataclass(frozen=True)
class LedgerEntry:
    """One ledger row: what was released, when, to whom, its (ε, δ) spend and its place in the hash chain."""

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
        """Whether the release spent any privacy budget (ε or δ above zero)."""
        return self.epsilon > 0 or self.delta > 0

    def to_dict(self, *, with_payload: bool = False) -> dict[str, Any]:
        """The entry as JSON-ready values, with the payload's size (and the payload, as text or hex, if asked)."""
        out = {k: getattr(self, k) for k in _COLUMNS if k != "payload"}
        out["detail"] = json.loads(self.detail)
        out["bytes"] = len(self.payload)
        if with_payload:
            out["payload"] = self.payload.decode() if self.payload_is_text else self.payload.hex()
        return out

    @property
    def payload_is_text(self) -> bool:
        """Whether the payload is valid UTF-8 text."""
        try:
            self.payload.decode()
        except UnicodeDecodeError:
            return False
        return True


@dataclass(frozen=True)
class LedgerAnchor:
    """One ledger entry's hash kept outside the lab: ``ledger_seq`` and ``ledger_head`` of a reply or receipt."""

    lab: str
    seq: int
    entry_hash: str
    source: str = ""  # where it was read, for messages


class Ledger:
    """The append-only release ledger of one lab directory.

    ``Ledger(path)`` creates the ledger only when nothing exists at ``path`` (with ``create=False``
    that is an error too); an existing file is checked and refused with :class:`LedgerError` unless
    it is an intact ledger.
    """

    def __init__(self, path: Path | str, *, create: bool = True) -> None:
        self.path = Path(path)
        if not os.path.lexists(self.path):
            if not create:
                msg = f"{self.path} does not exist"
                raise LedgerError(msg, hint="this lab has released nothing yet, or its ledger was moved or deleted")
            _create(self.path)
        _check(self.path)

    @classmethod
    def for_lab(cls, lab_dir: Path | str, *, create: bool = True) -> Ledger:
        """The ledger of the lab directory ``lab_dir`` (``LAB_DIR/ledger.sqlite``)."""
        return cls(Path(lab_dir) / LEDGER_FILE_NAME, create=create)

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=60.0, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        return db

    def entries(self) -> list[LedgerEntry]:
        """Every entry, oldest first."""
        with contextlib.closing(self._connect()) as db:
            rows = db.execute(f"SELECT {', '.join(_COLUMNS)} FROM releases ORDER BY seq").fetchall()
        return [LedgerEntry(*row) for row in rows]

    def head(self) -> tuple[int, str]:
        """The newest entry's ``(seq, entry_hash)``; ``(0, GENESIS_HASH)`` while the ledger is empty."""
        with contextlib.closing(self._connect()) as db:
            row = db.execute("SELECT seq, entry_hash FROM releases ORDER BY seq DESC LIMIT 1").fetchone()
        return (0, GENESIS_HASH) if row is None else (int(row[0]), str(row[1]))

    def spent(self) -> tuple[float, float]:
        """Total (ε, δ) spent so far (basic composition: the sum over releases)."""
        with contextlib.closing(self._connect()) as db:
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

    def verify(self, anchors: Sequence[LedgerAnchor] = ()) -> list[str]:
        """Problems with the hash chain and with each anchor (an empty list when every entry is intact).

        Without an anchor only edits that break the chain show; an anchor (from :func:`read_anchor`)
        also shows a tail deleted or rewritten after the anchored entry was reported.
        """
        entries = self.entries()
        problems = []
        prev_hash, prev_seq = "", 0
        for entry in entries:
            values = {k: getattr(entry, k) for k in _COLUMNS if k not in ("seq", "entry_hash")}
            if entry.seq != prev_seq + 1:
                gone = (
                    f"entry {prev_seq + 1}" if entry.seq == prev_seq + 2 else f"entries {prev_seq + 1}-{entry.seq - 1}"
                )
                problems.append(f"{gone} missing before entry {entry.seq}")
            if entry.prev_hash != prev_hash:
                problems.append(f"entry {entry.seq}: does not follow entry {prev_seq}")
            if _entry_hash(values) != entry.entry_hash:
                problems.append(f"entry {entry.seq}: content does not match its hash")
            if hashlib.sha256(entry.payload).hexdigest() != entry.sha256:
                problems.append(f"entry {entry.seq}: payload does not match its sha256")
            prev_hash, prev_seq = entry.entry_hash, entry.seq
        with contextlib.closing(self._connect()) as db:
            counter = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'releases'").fetchone()
        if counter is not None and int(counter[0]) > prev_seq:
            problems.append(
                f"entries after {prev_seq} were deleted (SQLite's counter says {int(counter[0])} were written)"
            )
        by_seq = {entry.seq: entry for entry in entries}
        for anchor in anchors:
            entry = by_seq.get(anchor.seq)
            where = f"anchored in {anchor.source}" if anchor.source else "anchored"
            if entry is None and anchor.seq > prev_seq:
                problems.append(
                    f"entry {anchor.seq} ({where}) is missing: the ledger ends at entry {prev_seq}, "
                    "so its tail was deleted"
                )
            elif entry is None:
                problems.append(f"entry {anchor.seq} ({where}) is missing")
            elif entry.entry_hash != anchor.entry_hash:
                problems.append(
                    f"entry {anchor.seq} differs from the one {where}: hash {entry.entry_hash[:12]}... here, "
                    f"{anchor.entry_hash[:12]}... there, so it or an entry before it was rewritten"
                )
        return problems

    def require_intact(self, anchors: Sequence[LedgerAnchor] = ()) -> None:
        """Raise :class:`LedgerTamperedError` unless :meth:`verify` finds nothing."""
        problems = self.verify(anchors)
        if problems:
            shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
            msg = f"{self.path} was altered: {shown}"
            raise LedgerTamperedError(msg)

    def receipt(self, lab: str | None = None) -> dict[str, Any]:
        """A receipt for the newest entry (see the module docstring), after checking the chain.

        Raises :class:`LedgerTamperedError` for a broken chain and :class:`LedgerAnchorError` for an
        empty ledger (there is nothing to anchor yet).
        """
        self.require_intact()
        seq, head = self.head()
        if seq == 0:
            msg = f"{self.path} holds no entry yet: there is nothing to anchor"
            raise LedgerAnchorError(msg, hint="a receipt can be written after the lab's first release")
        return {
            "format": RECEIPT_FORMAT,
            "format_version": RECEIPT_FORMAT_VERSION,
            "lab": lab or self.lab_name(),
            "ledger_seq": seq,
            "ledger_head": head,
            "time": datetime.now(UTC).isoformat(timespec="seconds"),
        }

    def lab_name(self) -> str | None:
        """The lab named by the newest entry (None while the ledger is empty)."""
        with contextlib.closing(self._connect()) as db:
            row = db.execute("SELECT lab FROM releases ORDER BY seq DESC LIMIT 1").fetchone()
        return None if row is None else str(row[0])


def open_lab_ledger(lab_dir: Path | str) -> Ledger | None:
    """``LAB_DIR``'s ledger, checked; None when the lab has released nothing (no ledger and nothing left of one)."""
    path = Path(lab_dir) / LEDGER_FILE_NAME
    if not os.path.lexists(path):
        _refuse_leftovers(path)
        return None
    return Ledger(path, create=False)


def verify_lab_ledger(lab_dir: Path | str, anchors: Sequence[LedgerAnchor] = ()) -> Ledger | None:
    """Open ``LAB_DIR``'s ledger and check its chain and ``anchors``; None when it has none and nothing anchors one.

    Raises :class:`LedgerError` for a file that is not an intact ledger and
    :class:`LedgerTamperedError` for a broken chain, an anchored entry that is missing or differs,
    or a ledger that does not exist although an anchor says it held entries.
    """
    book = open_lab_ledger(lab_dir)
    if book is None:
        if anchors:
            anchor = max(anchors, key=lambda a: a.seq)
            msg = (
                f"{Path(lab_dir) / LEDGER_FILE_NAME} does not exist, but {anchor.source or 'an anchor'} records "
                f"entry {anchor.seq} of lab {anchor.lab}'s ledger: the ledger was deleted"
            )
            raise LedgerTamperedError(msg)
        return None
    book.require_intact(anchors)
    return book


def lab_name_of(lab_dir: Path | str) -> str | None:
    """The lab's name: from ``LAB_DIR/lab.toml`` when it is readable, else from its ledger's newest entry."""
    root = Path(lab_dir)
    try:
        name = read_toml(root / "lab.toml", hint="").get("name")
    except ConfigError:
        name = None
    if isinstance(name, str) and name:
        return name
    book = open_lab_ledger(root)
    return None if book is None else book.lab_name()


def read_anchor(path: Path | str, *, lab: str | None) -> LedgerAnchor:
    """The anchor for ``lab`` in a coordinator's ``report.json`` or in a receipt.

    A report (a JSON object with a ``labs`` list) anchors the lab's entry named ``lab``; a receipt
    anchors one lab's. Raises :class:`LedgerAnchorError` when the file is unreadable, not JSON,
    holds no valid anchor for ``lab``, or is a receipt for another lab.
    """
    path = Path(path)
    try:
        if not path.is_file():
            msg = f"{path} is {'a directory' if path.is_dir() else 'missing'}, not a report or receipt"
            raise LedgerAnchorError(msg)
        if path.stat().st_size > MAX_ANCHOR_FILE_BYTES:
            msg = f"{path} holds {path.stat().st_size} bytes, too many for a report or receipt"
            raise LedgerAnchorError(msg)
        data = strict_loads(path.read_bytes(), str(path), max_chars=MAX_ANCHOR_FILE_BYTES)
    except OSError as err:
        msg = f"cannot read {path} ({err.strerror})"
        raise LedgerAnchorError(msg) from err
    except ValueError as err:
        msg = f"{path} is not a JSON report or receipt ({err})"
        raise LedgerAnchorError(msg) from err
    if not isinstance(data, dict):
        msg = f"{path} is not a JSON object, so neither a coordinator's report nor a ledger receipt"
        raise LedgerAnchorError(msg)
    if "labs" in data:
        return _anchor_from_report(data, path, lab)
    return _anchor_from_receipt(data, path, lab)


def write_receipt(path: Path | str, receipt: dict[str, Any]) -> Path:
    """Write ``receipt`` (from :meth:`Ledger.receipt`) as JSON; it replaces only an older receipt, never other files."""
    from fedarches.shared._io import atomic_write_bytes

    path = Path(path)
    if os.path.lexists(path):
        try:
            read_anchor(path, lab=None)
            replaces_receipt = "labs" not in json.loads(path.read_text(encoding="utf-8"))
        except (LedgerAnchorError, OSError, ValueError):
            replaces_receipt = False
        if not replaces_receipt:
            msg = f"{path} exists and is not a ledger receipt; it is left as it is"
            raise LedgerAnchorError(msg, hint="give --receipt a new .json path, e.g. receipts/ledger-2026-01-31.json")
    try:
        atomic_write_bytes(path, (json.dumps(receipt, indent=2) + "\n").encode())
    except OSError as err:
        msg = f"cannot write the receipt {path} ({err.strerror})"
        raise LedgerAnchorError(msg, hint="give --receipt a path in a writable directory") from err
    return path


_RECEIPT_KEYS = {"format", "format_version", "lab", "ledger_seq", "ledger_head", "time"}


def _anchor_from_report(data: dict[str, Any], path: Path, lab: str | None) -> LedgerAnchor:
    labs = data["labs"]
    round_id = data.get("round_id")
    source = f"{path} (round {round_id})" if isinstance(round_id, str) else str(path)
    if not isinstance(labs, list) or not all(isinstance(e, dict) for e in labs):
        msg = f"{path}: 'labs' is not a list of lab entries, so this is not a coordinator's report"
        raise LedgerAnchorError(msg)
    names = [str(e.get("name")) for e in labs]
    if lab is None and len(labs) == 1:
        lab = names[0]
    matches = [e for e in labs if e.get("name") == lab]
    if lab is None or not matches:
        wanted = "this lab" if lab is None else f"lab {lab!r}"
        msg = f"{source} has no entry for {wanted} (labs in it: {', '.join(names) or 'none'})"
        raise LedgerAnchorError(msg)
    entry = matches[0]
    seq, head = entry.get("ledger_seq"), entry.get("ledger_head")
    if seq is None and not head:
        msg = f"{source} records no ledger anchor for lab {lab!r} (status {entry.get('status', '?')}): nothing to check"
        raise LedgerAnchorError(msg, hint="pass the report of a round this lab's reply reached the coordinator in")
    return LedgerAnchor(str(lab), *_checked_anchor(seq, head, source), source)


def _anchor_from_receipt(data: dict[str, Any], path: Path, lab: str | None) -> LedgerAnchor:
    missing = sorted({"lab", "ledger_seq", "ledger_head"} - set(data))
    unknown = sorted(set(data) - _RECEIPT_KEYS)
    if missing or unknown:
        parts = [f"lacks {missing}" if missing else "", f"has unknown keys {unknown}" if unknown else ""]
        problem = " and ".join(p for p in parts if p)
        msg = f"{path} is neither a coordinator's report (no 'labs') nor a ledger receipt: it {problem}"
        raise LedgerAnchorError(msg)
    if data.get("format", RECEIPT_FORMAT) != RECEIPT_FORMAT or data.get("format_version", 1) != 1:
        msg = f"{path} is a receipt of format {data.get('format')!r} version {data.get('format_version')!r}"
        raise LedgerAnchorError(msg, hint=f"this fedarches reads {RECEIPT_FORMAT} version {RECEIPT_FORMAT_VERSION}")
    if not isinstance(data["lab"], str) or (lab is not None and data["lab"] != lab):
        msg = f"{path} is a receipt for lab {data['lab']!r}, not for {lab!r}"
        raise LedgerAnchorError(msg, hint="pass the receipt this lab's ledger wrote")
    return LedgerAnchor(data["lab"], *_checked_anchor(data["ledger_seq"], data["ledger_head"], str(path)), str(path))


def _checked_anchor(seq: Any, head: Any, source: str) -> tuple[int, str]:
    if isinstance(seq, bool) or not isinstance(seq, int) or seq < 1:
        msg = f"{source}: ledger_seq must be a whole number >= 1, not {seq!r}"
        raise LedgerAnchorError(msg)
    if not isinstance(head, str) or not HEAD_PATTERN.match(head):
        msg = f"{source}: ledger_head must be 64 lowercase hex digits, not {str(head)[:80]!r}"
        raise LedgerAnchorError(msg)
    return seq, head


def _create(path: Path) -> None:
    """Make a new, empty ledger at ``path``, which does not exist: built aside, then linked into place."""
    _refuse_leftovers(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".new", dir=path.parent)
        os.close(fd)
        tmp = Path(name)
        db = sqlite3.connect(tmp, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(_SCHEMA)
        finally:
            db.close()
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)  # atomic and exclusive: no one ever sees a half-made ledger
        except FileExistsError:
            pass  # another process made it first; it is checked like any existing ledger
        except OSError:  # no hard links on this file system
            with open(path, "xb") as out:
                out.write(tmp.read_bytes())
                os.fsync(out.fileno())
    except FileExistsError:
        pass  # made by another process between our check and our write
    except (OSError, sqlite3.Error) as err:
        msg = f"cannot create the ledger {path} ({getattr(err, 'strerror', None) or err})"
        raise LedgerError(msg, hint="the lab's user must be able to write the lab directory; nothing was sent") from err
    finally:
        if tmp is not None:
            for leftover in (tmp, *(tmp.with_name(tmp.name + suffix) for suffix in _SIDE_FILES)):
                leftover.unlink(missing_ok=True)


def _refuse_leftovers(path: Path) -> None:
    """Raise :class:`LedgerError` when ``path`` is gone but SQLite's files beside it remain (a deleted ledger)."""
    left = [path.with_name(path.name + suffix) for suffix in _SIDE_FILES]
    left = [p for p in left if os.path.lexists(p)]
    if left:
        msg = (
            f"{path} does not exist, but {left[0].name} beside it does: the ledger was deleted or moved, "
            "and a new one would hide what it recorded"
        )
        raise LedgerError(msg)


def _check(path: Path) -> None:
    """Raise :class:`LedgerError` unless ``path`` is an intact ledger; read only, never writes to it."""
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):
            msg = f"{path} is {kind_of_mode(info.st_mode)}, not a ledger"
            raise LedgerError(msg)
        with open(path, "rb") as fh:
            header = fh.read(100)
    except OSError as err:
        what = "a link to a file that does not exist" if path.is_symlink() else f"unreadable ({err.strerror})"
        msg = f"{path} is {what}"
        raise LedgerError(msg) from err
    if info.st_size == 0:
        msg = f"{path} is empty (0 bytes): the ledger was emptied or truncated"
        raise LedgerError(msg)
    if len(header) < 100 or not header.startswith(_SQLITE_MAGIC):
        msg = f"{path} is not a SQLite database ({info.st_size} bytes): it was overwritten or truncated"
        raise LedgerError(msg)
    page_size = int.from_bytes(header[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    if page_size < 512 or page_size & (page_size - 1):
        msg = f"{path} has a corrupted SQLite header (page size {page_size})"
        raise LedgerError(msg)
    if info.st_size % page_size:
        msg = f"{path} is truncated: {info.st_size} bytes is not a whole number of {page_size}-byte pages"
        raise LedgerError(msg)
    pages = int.from_bytes(header[28:32], "big")
    wal = path.with_name(path.name + "-wal")
    pending = wal.is_file() and wal.stat().st_size > 0  # a checkpoint may be under way: SQLite completes it
    if header[24:28] == header[92:96] and info.st_size < pages * page_size and not pending:
        msg = f"{path} is truncated: it holds {info.st_size // page_size} of its {pages} pages"
        raise LedgerError(msg)
    try:
        db = sqlite3.connect(path, timeout=60.0, isolation_level=None)
        try:
            result = [str(row[0]) for row in db.execute("PRAGMA integrity_check").fetchall()]
            schema = db.execute("SELECT type, name, tbl_name, sql FROM sqlite_master").fetchall()
        finally:
            db.close()
    except sqlite3.DatabaseError as err:  # "file is not a database", "database disk image is malformed", ...
        msg = f"{path} cannot be read as a ledger: it is corrupted or unreadable (SQLite: {err})"
        raise LedgerError(msg) from err
    if result != ["ok"]:
        msg = f"{path} fails SQLite's integrity check: {'; '.join(result[:3])}"
        raise LedgerError(msg)
    differences = _schema_differences({(row[0], row[1]): row for row in schema})
    if differences:
        msg = f"{path} is not an intact fedarches ledger: {'; '.join(differences)}"
        raise LedgerError(msg)


def _schema_differences(found: dict[tuple[str, str], tuple[Any, ...]]) -> list[str]:
    """What differs between ``sqlite_master`` rows (keyed by type and name) and a new ledger's."""
    expected = _expected_schema()
    out = []
    for key, row in expected.items():
        if key not in found:
            out.append(f"{key[0]} {key[1]} is missing")
        elif found[key] != row:
            out.append(f"{key[0]} {key[1]} was altered")
    out += [f"{kind} {name} was added" for kind, name in found if (kind, name) not in expected]
    return out


@functools.cache
def _expected_schema() -> dict[tuple[str, str], tuple[Any, ...]]:
    """``sqlite_master`` of a new ledger, made by this SQLite from :data:`_SCHEMA`."""
    db = sqlite3.connect(":memory:")
    try:
        db.executescript(_SCHEMA)
        rows = db.execute("SELECT type, name, tbl_name, sql FROM sqlite_master").fetchall()
    finally:
        db.close()
    return {(row[0], row[1]): row for row in rows}


def _entry_hash(values: dict[str, Any]) -> str:
    fields = {k: (v.hex() if isinstance(v, bytes) else v) for k, v in values.items() if k != "entry_hash"}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()
