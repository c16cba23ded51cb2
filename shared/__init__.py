"""What the coordinator and the labs both use: bundles, adapters, label statistics, crypto.

Names load on first use: a process that needs only the wire format or the privacy policy (a
SecAgg+ stage of the ClientApp) does not import pandas, scipy or the bundle code.
"""

from __future__ import annotations

from importlib import metadata
from typing import TYPE_CHECKING

from fedarches.shared._lazy import lazy_api

if TYPE_CHECKING:
    from fedarches.shared.adapters import Adapter, apply_adapters, check_reference_unchanged, extract_adapter
    from fedarches.shared.bundle import BundleContents, ReferenceBundle, write_bundle
    from fedarches.shared.errors import FedarchesError
    from fedarches.shared.labels import LabelStatistics, compute_label_statistics

try:
    __version__ = metadata.version("fedarches")
except metadata.PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

_API = {
    "Adapter": "adapters",
    "BundleContents": "bundle",
    "FedarchesError": "errors",
    "LabelStatistics": "labels",
    "ReferenceBundle": "bundle",
    "apply_adapters": "adapters",
    "check_reference_unchanged": "adapters",
    "compute_label_statistics": "labels",
    "extract_adapter": "adapters",
    "write_bundle": "bundle",
}
__all__ = [  # the names of _API (tests/test_layout.py checks that they agree)
    "Adapter",
    "BundleContents",
    "FedarchesError",
    "LabelStatistics",
    "ReferenceBundle",
    "__version__",
    "apply_adapters",
    "check_reference_unchanged",
    "compute_label_statistics",
    "extract_adapter",
    "write_bundle",
]

__getattr__, __dir__ = lazy_api(__name__, _API)
