"""`make privacy-eval`: membership inference against released adapters (LiRA). The code: fedarches.bench.membership.

    .venv/bin/python scripts/eval_membership.py [--n-models 16] [--pool lab_c] [--max-epochs 100]
        [--noise-multipliers 0.03 0.1 0.3 0.5 1 2 4] [--mc-draws 16] [--seed 0] [--pbmc] [--out-dir docs]

Same as ``python -m fedarches.bench membership``.
"""

from fedarches.bench.cli import script

script("membership")
