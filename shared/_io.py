"""Atomic file and directory writes: an interrupted run leaves the old file or nothing."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path


def atomic_write_bytes(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same directory."""
    with atomic_path(path, mode=mode) as tmp:
        tmp.write_bytes(data)


@contextlib.contextmanager
def atomic_path(path: Path, *, mode: int | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it into place only if the block succeeds.

    The temporary name keeps ``path``'s suffix, so writers that dispatch on it (``.h5ad``,
    ``.png``) behave as they would on the final name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".partial{path.suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        if mode is not None:
            tmp.chmod(mode)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_directory(path: Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory beside ``path``; rename it to ``path`` if the block succeeds."""
    path = Path(path)
    if path.exists() and not overwrite:
        msg = f"{path} already exists"
        raise FileExistsError(msg)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent))
    try:
        yield tmp
        tmp.chmod(0o755)
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            path.rename(old)
            tmp.rename(path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_atomically(path: Path, writer: Callable[[Path], object], *, mode: int = 0o644) -> None:
    """Call ``writer(tmp_path)`` and move the result to ``path`` atomically (mode 0644, like a plain write)."""
    with atomic_path(path, mode=mode) as tmp:
        writer(tmp)
