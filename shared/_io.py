"""Atomic file and directory writes: an interrupted run leaves the old file or nothing."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


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


class OutputSet:
    """Outputs staged beside their final paths and committed together, or not at all.

    :meth:`file` gives a temporary path to write each output to; :meth:`directory` a private
    directory whose files all become outputs in the final directory. Nothing is visible under a
    final name until :meth:`commit`, which moves every staged file into place in order (so the
    last one registered appears last) and, if any move fails, puts back what was there before.
    :meth:`discard` removes every temporary file and every directory this set created. Use it
    through :func:`staged_outputs`.
    """

    def __init__(self) -> None:
        self._files: list[tuple[Path, Path]] = []  # (temporary, final)
        self._directories: list[tuple[Path, Path]] = []  # (staging, final directory)
        self._created: list[Path] = []  # directories this set made, deepest last

    def file(self, path: Path) -> Path:
        """A temporary path for the output ``path``; the temporary name keeps its suffix."""
        path = Path(path)
        self._make_parents(path.parent)
        fd, name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".partial{path.suffix}", dir=path.parent)
        os.close(fd)
        self._files.append((Path(name), path))
        return Path(name)

    def directory(self, path: Path) -> Path:
        """A private directory; every file written in it becomes ``path / name`` on commit."""
        path = Path(path)
        self._make_parents(path)
        staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".partial", dir=path))
        self._directories.append((staging, path))
        return staging

    def _make_parents(self, directory: Path) -> None:
        missing = []
        while not directory.exists():
            missing.append(directory)
            directory = directory.parent
        for parent in reversed(missing):
            parent.mkdir()
            self._created.append(parent)

    def commit(self) -> list[Path]:
        """Move every staged output into place; on failure restore the previous files and re-raise."""
        moves = [move for staging, final_dir in self._directories for move in _files_in(staging, final_dir)]
        moves += self._files
        done: list[tuple[Path, Path | None]] = []  # (final, backup of what was there)
        try:
            for _, final in moves:
                if final.is_dir() and not final.is_symlink():
                    msg = f"{final} is a directory; an output file cannot replace it"
                    raise IsADirectoryError(msg)
            for tmp, _ in moves:
                tmp.chmod(0o644)
                with open(tmp, "rb") as fh:
                    os.fsync(fh.fileno())
            for tmp, final in moves:
                backup = None
                if final.exists():
                    backup = final.with_name(f".{final.name}.{os.getpid()}.old")
                    final.replace(backup)
                done.append((final, backup))
                tmp.replace(final)
        except BaseException:
            for final, backup in reversed(done):
                if backup is not None:
                    backup.replace(final)
                else:
                    final.unlink(missing_ok=True)
            raise
        finally:
            self.discard(keep_directories=True)
        for _, backup in done:
            if backup is not None:
                backup.unlink(missing_ok=True)
        self._created.clear()
        return [final for _, final in moves]

    def discard(self, *, keep_directories: bool = False) -> None:
        """Remove every temporary file and staging directory (and, unless told, every directory made here)."""
        for tmp, _ in self._files:
            tmp.unlink(missing_ok=True)
        for staging, _ in self._directories:
            shutil.rmtree(staging, ignore_errors=True)
        if not keep_directories:
            for directory in reversed(self._created):
                with contextlib.suppress(OSError):
                    directory.rmdir()  # only if empty: never removes what someone else put there
            self._created.clear()


def _files_in(staging: Path, final_dir: Path) -> list[tuple[Path, Path]]:
    return [(p, final_dir / p.relative_to(staging)) for p in sorted(staging.rglob("*")) if p.is_file()]


@contextlib.contextmanager
def staged_outputs() -> Iterator[OutputSet]:
    """Yield an :class:`OutputSet`; commit it if the block succeeds, else leave nothing behind."""
    outputs = OutputSet()
    try:
        yield outputs
    except BaseException:
        outputs.discard()
        raise
    try:
        outputs.commit()
    except BaseException:
        outputs.discard()
        raise


def read_toml(path: Path, *, hint: str) -> dict[str, Any]:
    """A small UTF-8 TOML settings file as a dict; :class:`ConfigError` (with ``hint``) if it cannot be read."""
    import tomllib

    from fedarches.shared.errors import ConfigError
    from fedarches.shared.paths import describe_kind

    kind = describe_kind(Path(path))
    if kind != "a regular file" and not kind.startswith("a symbolic link to a regular file"):
        msg = f"{path} is {kind}, not a settings file"
        raise ConfigError(msg, hint=hint)
    try:
        with open(path, "rb") as fh:
            data = fh.read(_MAX_SETTINGS_BYTES + 1)
        if len(data) > _MAX_SETTINGS_BYTES:
            msg = f"{path} holds more than {_MAX_SETTINGS_BYTES} bytes: it is not a settings file"
            raise ConfigError(msg, hint=hint)
        return tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
        msg = f"{path} is not valid UTF-8 TOML ({err})"
        raise ConfigError(msg, hint=hint) from None
    except OSError as err:
        msg = f"cannot read {path}: {err.strerror}"
        raise ConfigError(msg, hint=hint) from None


def write_toml(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` as TOML, atomically (:func:`atomic_write_bytes`)."""
    import tomli_w

    atomic_write_bytes(Path(path), tomli_w.dumps(data).encode())


_MAX_SETTINGS_BYTES = 1_048_576


def remove_staging(directory: Path) -> list[Path]:
    """Remove what an interrupted write left in ``directory`` and its subdirectories; return what it removed.

    Only this module's temporary names are touched (``.NAME.XXXX.partial`` files and directories,
    made by :func:`atomic_path`, :func:`atomic_directory` and :class:`StagedOutputs`): a process
    killed outright (SIGKILL, power loss) cannot clean them itself. Call it only when no write into
    ``directory`` can be running.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return []
    removed = []
    for path in sorted(directory.rglob(".*.partial*"), key=lambda p: len(p.parts), reverse=True):
        if not path.name.startswith(".") or ".partial" not in path.name or not path.exists():
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed
