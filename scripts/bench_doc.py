"""docs/benchmarks.md and docs/benchmarks_cellbench.md from a `make bench` results.json. The code: fedarches.bench.report_suite.

    .venv/bin/python scripts/bench_doc.py [bench-output/bench/results.json]

Same as ``python -m fedarches.bench doc``.
"""

from fedarches.bench.cli import script

script("doc")
