"""Consortium label counts through Flower's SecAgg+: the coordinator learns only the sum over labs.

Flower 1.41 runs SecAgg+ only through its legacy workflow (``SecAggPlusWorkflow`` on a
``LegacyContext`` with a ``Strategy``, ``secaggplus_mod`` at the labs); the Message API has no
SecAgg+ of its own. This module drives that workflow from the Message-API ServerApp, for one
integer vector per lab (cells per type, then low-confidence cells per type):

- each lab's handler gives its (noised) vector and weight 1; the mod quantizes, masks and sends it;
- with ``max_weight = 1`` and ``quantization_range = 2 * clipping_range``, quantization maps each
  integer to itself, so the sum is exact; the workflow returns the sum divided by the number of
  labs whose masked vector arrived, which :func:`secure_sum` multiplies back;
- a lab that drops out after sharing its keys is unmasked from its neighbours' shares (SecAgg+'s
  dropout recovery) and its vector is simply not in the sum.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Context
from flwr.common import FitIns, FitRes, Parameters, Scalar, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.compat.common import recorddict_compat
from flwr.server.client_manager import SimpleClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.compat.grid_client_proxy import GridClientProxy
from flwr.server.compat.legacy_context import LegacyContext
from flwr.server.server_config import ServerConfig
from flwr.server.strategy import Strategy
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD, Key
from flwr.serverapp import Grid

from fedarches.server.messaging import PollingGrid
from fedarches.shared.protocol import SecureSumRequest

log = logging.getLogger("fedarches.server")

# Counts up to 2**24 per entry and lab (noise included); at most 2**32 / 2**25 - 1 = 127 labs.
CLIPPING_RANGE = 2**24
MODULUS_RANGE = 2**32
MAX_LABS = MODULUS_RANGE // (2 * CLIPPING_RANGE) - 1


@dataclass
class SecureSumResult:
    """The sum over the labs whose masked vector arrived, and who they were (by node id)."""

    total: np.ndarray | None
    contributors: list[int] = field(default_factory=list)
    failures: int = 0
    message: str = ""
    stages_s: list[float] = field(default_factory=list)  # each SecAgg+ exchange, push to last reply


class _SumStrategy(Strategy):
    """Asks exactly the given nodes for their vector; keeps the aggregate SecAgg+ hands it."""

    def __init__(self, node_ids: list[int], config: dict[str, Scalar]) -> None:
        self.node_ids = node_ids
        self.config = config
        self.mean: np.ndarray | None = None
        self.contributors: list[int] = []
        self.failures = 0

    def initialize_parameters(self, client_manager: Any) -> Parameters | None:
        return None

    def configure_fit(self, server_round: int, parameters: Parameters, client_manager: Any) -> list:
        proxies = {p.node_id: p for p in client_manager.all().values()}
        return [(proxies[n], FitIns(parameters, dict(self.config))) for n in self.node_ids if n in proxies]

    def aggregate_fit(
        self, server_round: int, results: list[tuple[ClientProxy, FitRes]], failures: list[Any]
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        self.failures = len(failures)
        self.contributors = sorted(proxy.node_id for proxy, _ in results)
        if results:  # SecAgg+ puts the same aggregate into every result
            self.mean = np.asarray(parameters_to_ndarrays(results[0][1].parameters)[0], dtype=np.float64)
        return None, {}

    def configure_evaluate(self, server_round: int, parameters: Parameters, client_manager: Any) -> list:
        return []

    def aggregate_evaluate(self, server_round: int, results: list, failures: list) -> tuple[float | None, dict]:
        return None, {}

    def evaluate(self, server_round: int, parameters: Parameters) -> tuple[float, dict] | None:
        return None


def secure_sum(
    grid: Grid,
    context: Context,
    node_ids: list[int],
    *,
    round_id: str,
    categories: list[str],
    timeout: float,
) -> SecureSumResult:
    """Sum the labs' count vectors over ``categories`` with SecAgg+; the coordinator never sees one lab's."""
    if len(node_ids) < 2:
        return SecureSumResult(None, message=f"{len(node_ids)} lab(s) chose the secure sum; it needs at least 2")
    if len(node_ids) > MAX_LABS:
        return SecureSumResult(None, message=f"{len(node_ids)} labs exceed the {MAX_LABS} the quantization allows")
    manager = SimpleClientManager()
    for node_id in node_ids:
        manager.register(GridClientProxy(node_id=node_id, grid=grid, run_id=grid.run.run_id))
    strategy = _SumStrategy(node_ids, SecureSumRequest(round_id, tuple(categories)).to_config())
    legacy = LegacyContext(context, config=ServerConfig(num_rounds=1), strategy=strategy, client_manager=manager)
    legacy.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord({Key.CURRENT_ROUND: 1})
    legacy.state.array_records[MAIN_PARAMS_RECORD] = recorddict_compat.parameters_to_arrayrecord(
        ndarrays_to_parameters([]), keep_input=True
    )
    workflow = SecAggPlusWorkflow(
        num_shares=1.0,  # every lab shares its keys with every other (few labs)
        reconstruction_threshold=2,
        max_weight=1.0,
        clipping_range=float(CLIPPING_RANGE),
        quantization_range=2 * CLIPPING_RANGE,
        modulus_range=MODULUS_RANGE,
        timeout=timeout,
    )
    polling = PollingGrid(grid)
    workflow(polling, legacy)  # type: ignore[arg-type]
    if strategy.mean is None:
        message = "SecAgg+ halted: too few labs answered"
        return SecureSumResult(None, failures=strategy.failures, message=message, stages_s=polling.exchanges)
    total = np.rint(strategy.mean * len(strategy.contributors)).astype(np.int64)
    return SecureSumResult(total, strategy.contributors, strategy.failures, "", polling.exchanges)
