"""`make privacy-eval`, last step: docs/privacy.md from the evaluations' JSON. The code: fedarches.bench.report_privacy.

    python scripts/privacy_doc.py

Same as ``python -m fedarches.bench privacy-doc``.
"""

from fedarches.bench.cli import script

script("privacy-doc")
