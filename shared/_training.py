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
def scoped_seed(seed: int) -> Iterator[None]:
    """Seed scvi-tools for the block (``scvi.settings.seed``: Python, NumPy, torch), then restore them all.

    A library call must leave the caller's random state as it found it, as scanpy's tools do.
    """
    import os
    import random

    import numpy as np
    import scvi
    import torch

    saved = (random.getstate(), np.random.get_state(), torch.random.get_rng_state(), scvi.settings._seed)
    env = {key: os.environ.get(key) for key in ("PL_GLOBAL_SEED", "PL_SEED_WORKERS", "XLA_FLAGS")}
    cudnn = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    scvi.settings.seed = seed
    try:
        yield
    finally:
        random.setstate(saved[0])
        np.random.set_state(saved[1])
        torch.random.set_rng_state(saved[2])
        scvi.settings._seed = saved[3]
        for key, value in env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = cudnn
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


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
