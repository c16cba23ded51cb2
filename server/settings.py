"""A round's settings and their defaults: the one table every other place reads.

``coordinator.toml``'s ``[round]`` table starts as :data:`ROUND_DEFAULTS` (``fedarches-server
init``), ``run-round`` options override it, and the ServerApp reads the result from Flower's run
config (:meth:`RoundSettings.from_run_config`). What a lab receives is :meth:`RoundSettings.map_request`.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import Any

from fedarches.shared.labels import DEFAULT_MIN_COUNT
from fedarches.shared.protocol import MapRequest

__all__ = ["ROUND_DEFAULTS", "RoundSettings"]


@dataclass(frozen=True)
class RoundSettings:
    """A round's settings (the Flower run config); the defaults are :data:`ROUND_DEFAULTS`.

    Attributes
    ----------
    coordinator_dir, bundle_dir, round_dir, round_id
        Where the coordinator, the bundle mapped against and the round's outputs live.
    min_labs
        Fewest accepted labs for an atlas to be merged.
    timeout, wait_for_labs, secure_sum_timeout
        Seconds to wait for replies, for the labs' SuperNodes to be online, for the secure sum.
    max_epochs
        Surgery epochs at every lab; 0 lets each lab choose from its query's size.
    seed, confidence_threshold
        Every lab's surgery seed, and the confidence below which a cell is flagged.
    min_count
        The smallest k the round accepts in label statistics (each lab's policy sets its own k).
    max_adapter_bytes
        The largest adapter the round accepts.
    """

    coordinator_dir: Path
    bundle_dir: Path
    round_dir: Path
    round_id: str
    min_labs: int = 1
    timeout: float = 3600.0
    wait_for_labs: float = 60.0
    max_epochs: int = 0
    seed: int = 0
    confidence_threshold: float = 0.5
    min_count: int = DEFAULT_MIN_COUNT
    max_adapter_bytes: int = 1_048_576
    secure_sum_timeout: float = 120.0

    @classmethod
    def from_run_config(cls, config: dict[str, Any]) -> RoundSettings:
        """Read Flower's run config (keys with dashes); a missing tunable takes its default."""
        values = {}
        for f in fields(cls):
            key = f.name.replace("_", "-")
            if key in config:
                values[f.name] = _CONVERT.get(f.name, type(f.default))(config[key])
            elif f.default is MISSING:
                msg = f"the round's run config lacks {key!r}"
                raise ValueError(msg)
        return cls(**values)

    def map_request(self, bundle_id: str) -> MapRequest:
        """What every lab receives for this round: the request's fields, taken from these settings."""
        shared = {f.name: getattr(self, f.name) for f in fields(MapRequest) if f.name != "bundle_id"}
        return MapRequest(bundle_id=bundle_id, **shared)


_CONVERT = {
    "coordinator_dir": lambda v: Path(str(v)),
    "bundle_dir": lambda v: Path(str(v)),
    "round_dir": lambda v: Path(str(v)),
    "round_id": str,
}
ROUND_DEFAULTS: dict[str, Any] = {
    f.name.replace("_", "-"): f.default for f in fields(RoundSettings) if f.default is not MISSING
}
