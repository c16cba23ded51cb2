"""How surgery trains: :class:`MappingOptions` and the automatic epoch count. Imports nothing heavy.

The command line reads these defaults for its ``--help``, so this module stays free of torch,
scvi-tools and pandas.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["MAX_SURGERY_EPOCHS", "MIN_SURGERY_EPOCHS", "SURGERY_STEPS", "MappingOptions", "auto_max_epochs"]

SURGERY_STEPS = 1_000
MIN_SURGERY_EPOCHS = 2
MAX_SURGERY_EPOCHS = 100


def auto_max_epochs(
    n_cells: int, batch_size: int = 128, steps: int = SURGERY_STEPS, train_size: float = 0.9, *, cap: int | None = None
) -> int:
    """scvi-tools' tutorial epochs (100, or ``cap``: a model's own tutorial), capped at about ``steps`` gradient steps.

    At least 2 epochs.

    Surgery trains only the query's new batch columns (a few hundred values), so a large query needs
    a fixed number of steps rather than 100 passes over its cells: 100 epochs up to about 1,400 cells,
    15 for 10k, 2 for 100k. ``make bench`` measured the tutorial's 100 epochs against fewer; see
    docs/benchmarks.md.
    """
    steps_per_epoch = max(1, math.ceil(n_cells * train_size / batch_size))
    return min(cap or MAX_SURGERY_EPOCHS, max(MIN_SURGERY_EPOCHS, math.ceil(steps / steps_per_epoch)))


@dataclass(frozen=True)
class MappingOptions:
    """How surgery trains.

    The defaults are scvi-tools' scArches tutorial (learning rate 1e-3, 100 epochs, no early stopping)
    with the epochs capped by :func:`auto_max_epochs` for large queries, and the validation ELBO computed
    every 10 epochs as in the tutorial (every epoch with early stopping, which needs it). A learning rate of 1e-2 was
    faster and as accurate in ``make bench``, but moved known cells past the Unknown threshold (5 to 43 %
    called Unknown in ``make bench-unknown``, against 1 to 3 % at 1e-3), so it is not the default.
    """

    max_epochs: int | None = None  # None: auto_max_epochs(n_cells, batch_size, surgery_steps)
    surgery_steps: int = SURGERY_STEPS
    batch_size: int = 128
    learning_rate: float = 1e-3
    early_stopping: bool = False
    early_stopping_patience: int = 10
    seed: int = 0
    threads: int | None = None
    progress_bar: bool = True
    max_adapter_bytes: int | None = None  # refuse, before training, a query whose adapter would be larger
