"""One run of Flower's simulation engine for `make bench`. The code: fedarches.bench.simulation.

    python scripts/bench_simulation.py SPEC.json RESULT.json

Same as ``python -m fedarches.bench worker simulation round SPEC.json RESULT.json``.
"""

import sys

from fedarches.bench.cli import script

script("worker", ["simulation", "round", *sys.argv[1:]])
