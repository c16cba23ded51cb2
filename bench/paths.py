"""Where the benchmarks read and write: the source checkout, ``../shared/data`` beside it, ``data/demo``, ``docs``.

The benchmarks run from a source checkout (``pip install -e .``): every path is relative to the repository
root, the folder that holds ``bench/``.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"  # real data sets, outside the repository (see its README)
DEMO = ROOT / "data" / "demo"  # the small demo files shipped with the repository
DOCS = ROOT / "docs"
OUTPUT = ROOT / "bench-output"  # working directories of the runs (not committed)
SCRIPTS = ROOT / "scripts"


class MissingDataError(FileNotFoundError):
    """A data set a benchmark reads is not where it should be (the command line reports it as a usage error)."""
