"""`make privacy-eval`: composition error of private label statistics against ε. The code: fedarches.bench.privacy_utility.

    python scripts/eval_privacy_utility.py [--draws 300]

Same as ``python -m fedarches.bench privacy-utility``.
"""

from fedarches.bench.cli import script

script("privacy-utility")
