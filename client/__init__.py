"""The lab: local scArches mapping of its own data, its privacy policy and ledger, and its SuperNode.

The lab's Python API; ``fedarches-client`` is a thin command line over it. Names load on first
use, so importing the package does not import torch or scvi-tools.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fedarches.shared._lazy import lazy_api

if TYPE_CHECKING:
    from fedarches.client.annotate import MappedFile, map_file
    from fedarches.client.egress_preview import Preview, preview
    from fedarches.client.lab import LabDir, keygen
    from fedarches.client.ledger import Ledger, verify_lab_ledger
    from fedarches.client.mapping import MappingResult, map_query
    from fedarches.client.options import MappingOptions, auto_max_epochs
    from fedarches.client.outputs import MappingOutputs, write_mapping_outputs
    from fedarches.client.release import Releaser
    from fedarches.client.supernode import JoinCheck, JoinSettings, prepare_join, run_supernode

_API = {  # where each name of __all__ lives (tests/test_layout.py checks that they agree)
    "JoinCheck": "supernode",
    "JoinSettings": "supernode",
    "LabDir": "lab",
    "MappedFile": "annotate",
    "Ledger": "ledger",
    "MappingOptions": "options",
    "MappingOutputs": "outputs",
    "MappingResult": "mapping",
    "Preview": "egress_preview",
    "Releaser": "release",
    "auto_max_epochs": "options",
    "keygen": "lab",
    "map_file": "annotate",
    "map_query": "mapping",
    "prepare_join": "supernode",
    "preview": "egress_preview",
    "run_supernode": "supernode",
    "verify_lab_ledger": "ledger",
    "write_mapping_outputs": "outputs",
}
__all__ = [
    "JoinCheck",
    "JoinSettings",
    "LabDir",
    "Ledger",
    "MappedFile",
    "MappingOptions",
    "MappingOutputs",
    "MappingResult",
    "Preview",
    "Releaser",
    "auto_max_epochs",
    "keygen",
    "map_file",
    "map_query",
    "prepare_join",
    "preview",
    "run_supernode",
    "verify_lab_ledger",
    "write_mapping_outputs",
]


__getattr__, __dir__ = lazy_api(__name__, _API)
