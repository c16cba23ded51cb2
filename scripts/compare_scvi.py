"""`make compare`: fedarches against plain scvi-tools scArches surgery on CellBench. The code: fedarches.bench.compare.

    .venv/bin/python scripts/compare_scvi.py

Same as ``python -m fedarches.bench compare``.
"""

from fedarches.bench.cli import script

script("compare")
