"""Research (issue 15): candidate Unknown calls on real PBMC splits. The code: fedarches.bench.unknown_research.

    .venv/bin/python scripts/research_unknown.py build [--datasets symphony zheng kang] [--only NAME ...] [--force]
    .venv/bin/python scripts/research_unknown.py eval [--methods ...]

Same as ``python -m fedarches.bench unknown-research``.
"""

from fedarches.bench.cli import script

script("unknown-research")
