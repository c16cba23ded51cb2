"""The coordinator's Flower ServerApp: one mapping round, then the report.

Started by the SuperLink for each run that ``fedarches-server run-round`` submits; its settings
come from the run config (see :class:`~fedarches.server.settings.RoundSettings`). It logs to the
console (``flwr log``) and to ``ROUND_DIR/round.log``, which ``run-round`` follows.
"""

from __future__ import annotations

import json
import logging

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedarches.server.report import write_report
from fedarches.server.round import run_round
from fedarches.server.settings import RoundSettings
from fedarches.shared._io import atomic_write_bytes
from fedarches.shared.errors import FederationError

app = ServerApp()
log = logging.getLogger("fedarches.server")


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run one round and write its report; fail the Flower run when the round failed."""
    settings = RoundSettings.from_run_config(dict(context.run_config))
    settings.round_dir.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(settings.round_dir / "round.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    logger = logging.getLogger("fedarches")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        result = run_round(grid, settings, context)
        paths = write_report(result, settings.round_dir)
        log.info("report: %s", paths["html"])
    except Exception as err:
        log.exception("round %s failed", settings.round_id)
        status = {"round_id": settings.round_id, "status": "error", "message": f"{type(err).__name__}: {err}"}
        atomic_write_bytes(settings.round_dir / "status.json", json.dumps(status).encode())
        raise
    finally:
        handler.close()
        logger.removeHandler(handler)
    atomic_write_bytes(
        settings.round_dir / "status.json",
        json.dumps({"round_id": settings.round_id, "status": result.status, "message": result.message}).encode(),
    )
    if result.status != "completed":
        raise FederationError(result.message)
