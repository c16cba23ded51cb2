"""`make bench`: the benchmark suite (PBMC, then CellBench). The code: fedarches.bench.suite.

    .venv/bin/python scripts/bench.py [--out bench-output/bench] [--quick] [--resume] [--no-pbmc | --no-cellbench]

Same as ``python -m fedarches.bench suite``.
"""

from fedarches.bench.cli import script

script("suite")
