"""Training-time helpers shared by reference building and query mapping."""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator


@contextlib.contextmanager
def quiet_training() -> Iterator[None]:
    """Silence Lightning's banner and advice; keep the progress bar and real warnings."""
    import scvi  # noqa: F401 - Lightning sets its loggers' levels on import; do that first

    loggers = [logging.getLogger(n) for n in ("lightning.pytorch", "lightning.fabric", "lightning", "scvi")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    with warnings.catch_warnings():
        for pattern in (
            ".*LeafSpec.*",
            ".*log_every_n_steps.*",
            ".*litlogger.*",
            ".*in eval mode at the start of training.*",
            ".*does not have many workers.*",
        ):
            warnings.filterwarnings("ignore", message=pattern)
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels, strict=True):
                lg.setLevel(level)


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run the block with ``threads`` torch threads (None: torch's choice), then restore the previous number.

    ``--threads`` of ``map``, ``join`` and ``build-reference``: a user running several torch jobs on
    one machine gives each its share of the cores.
    """
    import torch

    if not threads:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
