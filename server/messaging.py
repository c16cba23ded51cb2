"""Pushing messages and pulling their replies, polling faster than Flower's ``send_and_receive``.

Flower 1.41's ``Grid.send_and_receive`` sleeps 3 s between pulls; a SecAgg+ sum makes four such
exchanges in a row. :class:`PollingGrid` gives Flower's strategy loop and the legacy SecAgg+
workflow the same Grid with this module's polling every :data:`POLL_S` seconds (a pull is one
small request to the SuperLink on the same machine).

:class:`PollingGrid` also records how long each exchange took (:attr:`PollingGrid.exchanges`), for
the round's phase table.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from flwr.app import Message
from flwr.serverapp import Grid

POLL_S = 0.1


def exchange(grid: Grid, messages: list[Message], timeout: float, on_reply: Any = None) -> dict[int, Message]:
    """Push ``messages``; pull replies until each has one or ``timeout`` passes. Keyed by destination node."""
    if not messages:
        return {}
    dst_by_id = {}
    ids = list(grid.push_messages(messages))
    for message_id, message in zip(ids, messages, strict=True):
        dst_by_id[message_id] = message.metadata.dst_node_id
    replies: dict[int, Message] = {}
    pending = set(ids)
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        for reply in grid.pull_messages(list(pending)):
            node = dst_by_id.get(reply.metadata.reply_to_message_id)
            if node is None:
                continue
            pending.discard(reply.metadata.reply_to_message_id)
            replies[node] = reply
            if on_reply is not None:
                on_reply(node, reply)
        if pending:
            time.sleep(POLL_S)
    return replies


class PollingGrid:
    """A :class:`Grid` whose ``send_and_receive`` polls every :data:`POLL_S` seconds.

    ``on_reply(node_id, reply)``, when given, is called as each reply arrives, with the node the
    message was sent to.
    """

    def __init__(self, grid: Grid, *, on_reply: Callable[[int, Message], None] | None = None) -> None:
        self._grid = grid
        self._on_reply = on_reply
        self.exchanges: list[float] = []  # seconds from push to the last reply (or the timeout), per exchange

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        """Send ``messages`` and return the replies received within ``timeout`` seconds (no limit if None)."""
        tick = time.monotonic()
        replies = exchange(self._grid, list(messages), 1e9 if timeout is None else timeout, on_reply=self._on_reply)
        self.exchanges.append(time.monotonic() - tick)
        return list(replies.values())
