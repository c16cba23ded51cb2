"""Test harnesses that run the real parts together: a whole consortium on loopback.

Neither role imports this package; the demo, the end-to-end tests and the benchmarks do.
"""

from __future__ import annotations

from fedarches.testing.loopback import LabProcess, LoopbackFederation

__all__ = ["LabProcess", "LoopbackFederation"]
