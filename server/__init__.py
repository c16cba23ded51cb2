"""The coordinator: reference bundles, the lab registry, the SuperLink, federated rounds and their reports.

The coordinator's Python API; ``fedarches-server`` is a thin command line over it. Names load on
first use, so importing the package does not import torch or scvi-tools.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fedarches.shared._lazy import lazy_api

if TYPE_CHECKING:
    from fedarches.server.coordinator import CoordinatorDir, add_lab, init_coordinator
    from fedarches.server.merge import merge_adapters
    from fedarches.server.publish import build_bundle, import_bundle
    from fedarches.server.reference import ReferenceOptions, build_reference, import_reference
    from fedarches.server.report import write_report
    from fedarches.server.service import cancel_round, follow_round, serve, start_round
    from fedarches.server.settings import ROUND_DEFAULTS, RoundSettings
    from fedarches.server.validation import Expected, validate_reply

_API = {  # where each name of __all__ lives (tests/test_layout.py checks that they agree)
    "CoordinatorDir": "coordinator",
    "Expected": "validation",
    "ROUND_DEFAULTS": "settings",
    "ReferenceOptions": "reference",
    "RoundSettings": "settings",
    "add_lab": "coordinator",
    "build_bundle": "publish",
    "build_reference": "reference",
    "cancel_round": "service",
    "follow_round": "service",
    "import_bundle": "publish",
    "import_reference": "reference",
    "init_coordinator": "coordinator",
    "merge_adapters": "merge",
    "serve": "service",
    "start_round": "service",
    "validate_reply": "validation",
    "write_report": "report",
}
__all__ = [
    "ROUND_DEFAULTS",
    "CoordinatorDir",
    "Expected",
    "ReferenceOptions",
    "RoundSettings",
    "add_lab",
    "build_bundle",
    "build_reference",
    "cancel_round",
    "follow_round",
    "import_bundle",
    "import_reference",
    "init_coordinator",
    "merge_adapters",
    "serve",
    "start_round",
    "validate_reply",
    "write_report",
]


__getattr__, __dir__ = lazy_api(__name__, _API)
