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
