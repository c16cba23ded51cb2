"""What both command-line tools share: error display, logging, and the stderr console."""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import sys
import threading
import warnings
from collections.abc import Iterator
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.logging import RichHandler

from fedarches.shared.errors import FedarchesError

console = Console(stderr=True, soft_wrap=True)

# Options both command-line tools take, spelled once.
Debug = Annotated[bool, typer.Option("--debug", help="Show full tracebacks.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or info logs.")]
CountsLayer = Annotated[
    str | None, typer.Option("--layer", help="Layer with raw counts (default: 'counts' if present, else X).")
]


def setup_logging(*, quiet: bool = False, debug: bool = False) -> None:
    """Log fedarches messages to stderr through rich."""
    level = logging.DEBUG if debug else logging.WARNING if quiet else logging.INFO
    logger = logging.getLogger("fedarches")
    logger.handlers[:] = [RichHandler(console=console, show_path=False, show_time=False)]
    logger.setLevel(level)
    logger.propagate = False


class StopSignal(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised like Ctrl-C so that ``finally`` blocks clean up (temporary outputs)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextlib.contextmanager
def _stop_signals_raise() -> Iterator[None]:
    """While the block runs, SIGTERM and SIGHUP raise :class:`StopSignal` (process-starting commands set their own)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _raise(signum: int, _frame: object) -> None:
        raise StopSignal(signum)

    previous = {sig: signal.signal(sig, _raise) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def handle_errors(*, debug: bool = False, json_output: bool = False) -> Iterator[None]:
    """Turn a FedarchesError into one line plus a hint and its exit code; anything else into a pointer to --debug."""
    try:
        with warnings.catch_warnings(), _stop_signals_raise():
            warnings.simplefilter("default")
            warnings.showwarning = _show_warning
            yield
    except FedarchesError as err:
        if debug:
            raise
        _report(str(err), err.hint, err.exit_code, json_output=json_output)
        raise typer.Exit(code=err.exit_code) from None
    except KeyboardInterrupt as err:
        signum = err.signum if isinstance(err, StopSignal) else signal.SIGINT
        console.print(f"[red]interrupted[/red] ({signal.Signals(signum).name}): no output was left behind")
        raise typer.Exit(code=128 + signum) from None
    except (typer.Exit, typer.Abort):
        raise
    except Exception as err:
        if debug:
            raise
        _report(
            f"unexpected {type(err).__name__}: {err}",
            "this is a bug in fedarches; run again with --debug and report the traceback",
            1,
            json_output=json_output,
        )
        raise typer.Exit(code=1) from None


def _show_warning(message: Warning | str, category: type[Warning], *_args: object, **_kwargs: object) -> None:
    """One line per warning; library-internal warnings only with --debug."""
    if category.__module__.startswith("fedarches") or logging.getLogger("fedarches").isEnabledFor(logging.DEBUG):
        console.print(f"[yellow]warning:[/yellow] {message}", highlight=False, soft_wrap=True)


def _report(message: str, hint: str, code: int, *, json_output: bool) -> None:
    if json_output:
        sys.stdout.write(json.dumps({"success": False, "error": message, "hint": hint, "code": code}) + "\n")
        return
    console.print(f"[bold red]error:[/bold red] {message}", highlight=False, soft_wrap=True)
    console.print(f"[yellow]hint:[/yellow] {hint}", highlight=False, soft_wrap=True)


def text_table(header: list[str], rows: list[list[Any]]) -> str:
    """A plain-text table for scripts' output: floats to 3 decimals, first column left-aligned."""
    cells = [header] + [[f"{v:.3f}" if isinstance(v, float) else str(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = [
        "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
        for r in cells
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
