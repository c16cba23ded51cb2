"""``flower-supernode``, polling the SuperLink more often when it is idle.

Flower 1.41's SuperNode asks the SuperLink for a message, and when there is none sleeps a fixed
3 s (``flwr.supernode.start_client_internal``, no option or variable sets it); it also checks for
its ClientApp's reply every 0.5 s. A round's SecAgg+ sum is four exchanges in a row, and in each
the last lab to answer has just gone back to sleep when the next message arrives: about 3 s per
exchange of nothing but waiting. ``fedarches-client join`` therefore starts the SuperNode through
this module (``python -m fedarches.client.flower_supernode --poll-interval S ARGS...``), which caps
every sleep of that one Flower module at ``S`` seconds, then runs Flower's own ``flower-supernode``
with the remaining arguments. Nothing else changes: the same SuperNode, connection, TLS and node
authentication. Each idle lab then sends the SuperLink ``1 / S`` small requests a second instead
of one every 3 s.

The cap is applied only to the Flower version it was checked against (:data:`CHECKED_FLOWER`);
with any other version the SuperNode runs as Flower ships it and says so.
"""

from __future__ import annotations

import sys
import time
from types import ModuleType
from typing import Any

CHECKED_FLOWER = "1.41.0"
DEFAULT_POLL_S = 0.25
_MODULE = "flwr.supernode.start_client_internal"


class _CappedTime(ModuleType):
    """The ``time`` module, except that ``sleep`` waits at most ``cap`` seconds."""

    def __init__(self, cap: float) -> None:
        super().__init__("time")
        self.cap = cap

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    def sleep(self, seconds: float) -> None:
        """Sleep ``min(seconds, cap)``."""
        time.sleep(min(seconds, self.cap))


def cap_idle_sleep(poll_s: float) -> bool:
    """Make Flower's SuperNode loop sleep at most ``poll_s`` seconds; False (nothing changed) on another Flower."""
    import importlib

    import flwr

    if flwr.__version__ != CHECKED_FLOWER:
        return False
    module = importlib.import_module(_MODULE)
    if getattr(module, "time", None) is not time:
        return False
    module.time = _CappedTime(poll_s)  # type: ignore[attr-defined]
    return True


def main(argv: list[str] | None = None) -> None:
    """``--poll-interval S`` (first), then ``flower-supernode``'s own arguments."""
    args = list(sys.argv[1:] if argv is None else argv)
    poll_s = DEFAULT_POLL_S
    if args[:1] == ["--poll-interval"]:
        poll_s = float(args[1])
        args = args[2:]
    if not cap_idle_sleep(poll_s):
        print(
            f"fedarches: Flower is not {CHECKED_FLOWER}; the SuperNode polls the SuperLink at Flower's own pace",
            file=sys.stderr,
        )
    from flwr.supernode.cli.flower_supernode import flower_supernode

    sys.argv = ["flower-supernode", *args]
    flower_supernode()


if __name__ == "__main__":
    main()
