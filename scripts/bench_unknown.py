"""`make bench-unknown`: unseen cell types and calibration on CellBench. The code: fedarches.bench.unknown.

    .venv/bin/python scripts/bench_unknown.py [HELD_OUT ...]

Same as ``python -m fedarches.bench unknown``.
"""

from fedarches.bench.cli import script

script("unknown")
