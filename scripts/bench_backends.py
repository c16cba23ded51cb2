"""`make bench-backends`: every model backend on real data, beside plain scvi-tools. The code: fedarches.bench.backends.

    .venv/bin/python scripts/bench_backends.py [--out bench-output/backends] [--quick] [--resume] [--threads 1]

Same as ``python -m fedarches.bench backends``.
"""

from fedarches.bench.cli import script

script("backends")
