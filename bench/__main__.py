"""``python -m fedarches.bench COMMAND [OPTIONS]``."""

from fedarches.bench.cli import main

main()
