"""Check the user's paths before any long work: inputs that are files, outputs that can be written.

Every command reads its inputs and refuses its outputs here first, so that a wrong path fails in a
second rather than after minutes of training, and so that an output can never replace an input:

- :func:`require_file` says what a path is when it is not a regular file (a directory, a FIFO, a
  device, a socket, a broken link, ...), instead of "does not exist";
- :func:`check_outputs` refuses an output that is (or resolves to, through links or hard links) an
  input or lies inside an input directory, two outputs that are the same path, an output file that
  is an existing directory, and a place where nothing can be written (probed by creating and
  removing a temporary file, which also works for root, to whom permission bits do not apply).
"""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

from fedarches.shared.errors import OutputPathError, UserInputError


def describe_kind(path: Path) -> str:
    """What ``path`` is, in words: ``"a regular file"``, ``"a directory"``, ``"a FIFO (named pipe)"``, ..."""
    try:
        info = path.lstat()
    except (FileNotFoundError, NotADirectoryError):
        return "missing"
    except OSError as err:
        return f"unreadable ({err.strerror})"
    if stat.S_ISLNK(info.st_mode):
        try:
            target = path.resolve(strict=True)
        except (OSError, RuntimeError):
            return f"a broken symbolic link (to {path.readlink()})"
        return f"a symbolic link to {kind_of_mode(target.stat().st_mode)} ({target})"
    return kind_of_mode(info.st_mode)


def kind_of_mode(mode: int) -> str:
    """What an ``st_mode`` is, in words: ``"a regular file"``, ``"a directory"``, ``"a FIFO (named pipe)"``, ..."""
    for test, kind in (
        (stat.S_ISLNK, "a symbolic link"),
        (stat.S_ISREG, "a regular file"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return kind
    return "not a regular file"


def require_file(path: Path | str, *, what: str, hint: str) -> Path:
    """Return ``path`` if it is a regular file (or a link to one), else say what it is (:class:`UserInputError`)."""
    path = Path(path)
    try:
        if stat.S_ISREG(path.stat().st_mode):
            return path
    except OSError:
        pass
    kind = describe_kind(path)
    if kind == "missing":
        msg = f"{what} {path} does not exist"
    else:
        msg = f"{what} {path} is {kind}, not a regular file"
    raise UserInputError(msg, hint=hint)


def check_outputs(
    inputs: Iterable[Path | str | None],
    files: Mapping[str, Path | str | None] = {},
    directories: Mapping[str, Path | str | None] = {},
) -> None:
    """Refuse output paths that would replace an input, clash, or cannot be written.

    Parameters
    ----------
    inputs
        Every path the command reads (files or directories); ``None`` entries are skipped.
    files
        Output files by option name (``{"--out": path}``); ``None`` entries are skipped.
    directories
        Output directories by option name; an existing one is reused, its files replaced.

    Raises
    ------
    OutputPathError
        Naming the option, the path and the fix.
    """
    sources = [Path(p) for p in inputs if p is not None]
    outputs = [(name, Path(p), False) for name, p in files.items() if p is not None]
    outputs += [(name, Path(p), True) for name, p in directories.items() if p is not None]
    seen: dict[Path, str] = {}
    for name, path, is_dir in outputs:
        resolved = _resolve(path)
        for source in sources:
            _refuse_input(name, path, resolved, source)
        for other, other_name in seen.items():
            if resolved == other:
                msg = f"{name} {path} and {other_name} name the same place"
                raise OutputPathError(msg, hint=f"give {name} and {other_name} different paths")
        seen[resolved] = name
        _check_writable(name, path, is_dir=is_dir)


def _resolve(path: Path) -> Path:
    return Path(path).absolute().resolve(strict=False)


def _inside(path: Path, directory: Path) -> bool:
    return path != directory and path.is_relative_to(directory)


def _refuse_input(name: str, path: Path, resolved: Path, source: Path) -> None:
    source_resolved = _resolve(source)
    same = resolved == source_resolved
    if not same and path.exists() and source.exists():
        try:
            same = path.samefile(source)  # hard links, bind mounts
        except OSError:
            same = False
    if same:
        msg = f"{name} {path} is the input {source}: writing it would replace your input"
        raise OutputPathError(msg, hint=f"give {name} a new path, for example {_suggest(path)}")
    if source_resolved.is_dir() and _inside(resolved, source_resolved):
        msg = f"{name} {path} lies inside the input directory {source}, which must not change"
        raise OutputPathError(msg, hint=f"give {name} a path outside {source}")


def _suggest(path: Path) -> Path:
    return path.with_name(f"{path.stem}.annotated{path.suffix or '.h5ad'}")


def _check_writable(name: str, path: Path, *, is_dir: bool) -> None:
    kind = describe_kind(path)
    if is_dir and kind not in ("missing", "a directory") and not kind.startswith("a symbolic link to a directory"):
        msg = f"{name} {path} is {kind}, not a directory"
        raise OutputPathError(msg, hint=f"give {name} a directory (it is created if missing)")
    if not is_dir and kind not in ("missing", "a regular file") and not kind.startswith("a symbolic link to a regular"):
        fix = (
            f"give a file name, for example {path / 'annotated.h5ad'}"
            if kind == "a directory" or kind.startswith("a symbolic link to a directory")
            else "give a path to a new or regular file"
        )
        msg = f"{name} {path} is {kind}; it must be a file to write"
        raise OutputPathError(msg, hint=fix)
    probe_dir = path if is_dir and path.is_dir() else path.parent
    existing = _nearest_existing(probe_dir)
    if not existing.is_dir():
        msg = f"{name} {path} cannot be created: {existing} is {describe_kind(existing)}, not a directory"
        raise OutputPathError(msg, hint=f"give {name} a path under a directory")
    try:
        fd, probe = tempfile.mkstemp(prefix=".fedarches-write-test.", dir=existing)
    except OSError as err:
        msg = f"{name} {path} cannot be written: {existing} is not writable ({err.strerror})"
        raise OutputPathError(msg, hint=f"give {name} a path in a directory you can write to") from None
    os.close(fd)
    Path(probe).unlink(missing_ok=True)


def _nearest_existing(path: Path) -> Path:
    path = Path(os.path.normpath(Path(path).absolute()))
    while not path.exists() and path != path.parent:
        if path.is_symlink():  # a broken link in the way
            return path
        path = path.parent
    return path
