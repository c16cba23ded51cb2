"""The files of a bundle on disk: which names a bundle may list, and reading them without trusting the disk.

:func:`check_file_names` holds the name rules every reader of bundle files applies (the lab's
bundle reader and the receiver of a bundle sent over the network). The readers below open each
file relative to the bundle directory without following a link, refuse anything but a regular
file before reading a byte, check its size against the signed manifest before reading it, and
hash it in chunks in the same pass that keeps its bytes.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import stat
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Protocol

from fedarches.shared._constants import BUNDLE_KEYS, MAX_BUNDLE_ENTRIES
from fedarches.shared.errors import BundleError, BundleIntegrityError, BundlePathError, BundleSizeError
from fedarches.shared.paths import kind_of_mode

MAX_NAME_DEPTH = 4  # segments in a bundle file name ("model/model.pt" has 2)
_SEGMENT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,99}")
_CHUNK = 1024**2


class ListedFile(Protocol):
    """What the signed manifest says of one file."""

    sha256: str
    size: int


def check_file_name(name: object, *, allow_manifest: bool = False) -> str:
    """``name`` if it may name a file of a bundle; else raise :class:`BundlePathError` saying why.

    A bundle file name is a relative POSIX path of at most :data:`MAX_NAME_DEPTH` segments, each of
    letters, digits, ``_``, ``-`` and ``.`` and not starting with a dot: no absolute path, no empty,
    ``.`` or ``..`` segment, no backslash, no NUL. ``manifest.json`` and ``manifest.sig`` name only the
    bundle's own signed manifest, never a listed file (unless ``allow_manifest``, for the receiver).
    """
    reason = _name_problem(name, allow_manifest=allow_manifest)
    if reason is not None:
        msg = f"bundle file name {show(name)} {reason}"
        raise BundlePathError(msg)
    return str(name)


def check_file_names(names: Iterable[object], *, allow_manifest: bool = False) -> list[str]:
    """Check every name with :func:`check_file_name`, and that no two clash on disk.

    Names clash when one is a directory of another (``model`` and ``model/model.pt``), or when they
    differ only in case (one file on a case-insensitive file system).
    """
    checked = [check_file_name(name, allow_manifest=allow_manifest) for name in names]
    folded: dict[str, str] = {}
    for name in checked:
        other = folded.setdefault(name.casefold(), name)
        if other != name:
            msg = f"bundle file names {show(other)} and {show(name)} differ only in case"
            raise BundlePathError(msg)
    directories = {"/".join(name.split("/")[:i]).casefold() for name in checked for i in range(1, name.count("/") + 1)}
    for name in checked:
        if name.casefold() in directories:
            msg = f"bundle file name {show(name)} is also a directory of another file in the bundle"
            raise BundlePathError(msg)
    return checked


def _name_problem(name: object, *, allow_manifest: bool) -> str | None:
    if not isinstance(name, str):
        return f"is a {type(name).__name__}, not a string"
    if not name:
        return "is empty"
    if "\0" in name:
        return "contains a NUL character"
    if "\\" in name:
        return "contains a backslash (a bundle names files with '/')"
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        return "escapes the bundle directory (an absolute path)"
    segments = name.split("/")
    if ".." in segments:
        return "escapes the bundle directory (a '..' segment)"
    if "" in segments or "." in segments:
        return "is not normalized (an empty or '.' segment)"
    if len(segments) > MAX_NAME_DEPTH:
        return f"is nested deeper than {MAX_NAME_DEPTH} levels"
    bad = next((seg for seg in segments if not _SEGMENT.fullmatch(seg)), None)
    if bad is not None:
        return f"has a segment {show(bad)} that is not letters, digits, '_', '-' and '.' (not first)"
    if not allow_manifest and name in (BUNDLE_KEYS.MANIFEST, BUNDLE_KEYS.SIGNATURE):
        return "names the signed manifest itself, which a manifest cannot list"
    return None


def show(value: object) -> str:
    """The ``repr`` of ``value`` for a message, cut to 80 characters."""
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:77]}..."


def shown_names(names: list[str]) -> str:
    """The first ten of ``names``, comma-separated, and how many more there are."""
    shown = ", ".join(names[:10])
    return shown if len(names) <= 10 else f"{shown} and {len(names) - 10} more"


# --- reading the directory: never following a link ---------------------------------------------


def open_root(path: Path) -> int:
    """A file descriptor of the bundle directory ``path``, or a :class:`BundleError` saying why not."""
    try:
        return os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except (FileNotFoundError, NotADirectoryError):
        msg = f"{path} is not a directory; a reference bundle is a directory with a manifest.json"
        raise BundleError(msg, hint="pass the bundle directory that fedarches' reference builder wrote") from None
    except OSError as err:
        msg = f"cannot open the bundle directory {path}: {err.strerror}"
        raise BundleError(msg, hint="check the directory's permissions") from None


def _open_member(root: int, path: Path, name: str) -> int | None:
    """An fd of bundle file ``name`` (already checked), opened without following links; None if absent."""
    parts = name.split("/")
    opened: list[int] = []
    try:
        directory = root
        for part in parts[:-1]:
            directory = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=directory)
            opened.append(directory)
        # O_NONBLOCK: opening a FIFO must not wait for a writer; the fstat below refuses it
        return os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=directory)
    except FileNotFoundError:
        return None
    except OSError as err:
        if err.errno in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK):
            msg = f"{name} in {path} is, or lies under, a symbolic link or a non-directory; bundles hold no links"
            raise BundlePathError(msg) from None
        msg = f"cannot read {name} in {path}: {err.strerror}"
        raise BundleError(msg, hint="check the bundle's file permissions") from None
    finally:
        for fd in opened:
            os.close(fd)


def _regular_size(fd: int, path: Path, name: str) -> int:
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        msg = f"{name} in {path} is {kind_of_mode(info.st_mode)}, not a regular file"
        raise BundlePathError(msg)
    return info.st_size


def read_small(root: int, path: Path, name: str, limit: int) -> bytes | None:
    """The bytes of ``manifest.json`` or ``manifest.sig``, or None when absent; refused unread over ``limit``."""
    fd = _open_member(root, path, name)
    if fd is None:
        return None
    with os.fdopen(fd, "rb", buffering=0) as fh:
        size = _regular_size(fd, path, name)
        if size > limit:
            msg = f"{name} in {path} is {size} bytes, over the limit of {limit}; it is not a bundle manifest"
            raise BundleSizeError(msg)
        data = fh.read(limit + 1)
    if len(data) > limit:
        msg = f"{name} in {path} grew over {limit} bytes while being read"
        raise BundleSizeError(msg)
    return data


def read_verified(root: int, path: Path, name: str, entry: ListedFile) -> bytes:
    """Read a listed file in chunks, hashing as it goes; its size is checked before the first byte."""
    fd = _open_member(root, path, name)
    if fd is None:
        msg = f"{path} is missing {name}, which its manifest lists"
        raise BundleIntegrityError(msg)
    with os.fdopen(fd, "rb", buffering=0) as fh:
        size = _regular_size(fd, path, name)
        if size != entry.size:
            msg = f"{name} in {path} is {size} bytes, but its signed manifest says {entry.size} (altered or truncated)"
            raise BundleSizeError(msg)
        digest = hashlib.sha256()
        buffer = bytearray(size)
        view = memoryview(buffer)
        filled = 0
        while filled < size:
            n = fh.readinto(view[filled : filled + _CHUNK])
            if not n:
                break
            digest.update(view[filled : filled + n])
            filled += n
        changed = filled != size or fh.read(1) != b""
        view.release()
    if changed:
        msg = f"{name} in {path} changed size while being read"
        raise BundleSizeError(msg)
    if digest.hexdigest() != entry.sha256:
        msg = f"{name} in {path} does not match the sha256 in the signed manifest (altered or corrupted)"
        raise BundleIntegrityError(msg)
    return bytes(buffer)


def present_files(path: Path) -> list[str]:
    """Relative names of the regular files under ``path`` (manifest and signature aside).

    Refuses any link (to a file or a directory: none is followed) and anything that is not a
    regular file or a directory, and stops at :data:`MAX_BUNDLE_ENTRIES` entries.
    """
    found: list[str] = []
    count = 0
    pending = [""]
    while pending:
        prefix = pending.pop()
        try:
            with os.scandir(path / prefix if prefix else path) as entries:
                listing = list(entries)
        except OSError as err:
            msg = f"cannot list {path / prefix}: {err.strerror}"
            raise BundleError(msg, hint="check the bundle's permissions") from None
        for entry in listing:
            count += 1
            if count > MAX_BUNDLE_ENTRIES:
                msg = f"{path} holds more than {MAX_BUNDLE_ENTRIES} files and directories; a bundle holds a handful"
                raise BundleSizeError(msg)
            name = f"{prefix}{entry.name}"
            try:
                mode = entry.stat(follow_symlinks=False).st_mode
            except OSError as err:
                msg = f"cannot read {name} in {path}: {err.strerror}"
                raise BundleError(msg, hint="check the bundle's permissions") from None
            if stat.S_ISDIR(mode):
                pending.append(f"{name}/")
            elif stat.S_ISREG(mode):
                if name not in (BUNDLE_KEYS.MANIFEST, BUNDLE_KEYS.SIGNATURE):
                    found.append(name)
            else:
                msg = f"{name!r} in {path} is {kind_of_mode(mode)}; a bundle holds only regular files and directories"
                raise BundlePathError(msg)
    return found


def check_sizes(listed: Mapping[str, ListedFile], path: Path, *, max_bytes: int, max_file_bytes: int) -> None:
    """Refuse a manifest whose listed sizes exceed ``max_file_bytes`` for a file or ``max_bytes`` in all."""
    for name, entry in listed.items():
        if entry.size > max_file_bytes:
            msg = f"{name} in {path} is {entry.size} bytes by its manifest, over the limit of {max_file_bytes} per file"
            raise BundleSizeError(msg)
    total = sum(entry.size for entry in listed.values())
    if total > max_bytes:
        msg = f"{path} holds {total} bytes by its manifest, over the limit of {max_bytes} per bundle"
        raise BundleSizeError(msg)
