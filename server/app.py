"""The coordinator's Flower ServerApp: reads the run config and hands over to the round loop."""

from __future__ import annotations

import logging

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from common.config import RunConfig
from common.infra.console import STOP_MARK
from common.errors import ConsortiumError
from common.infra.logs import configure_logging
from server.coordinator import run_federation

logger = logging.getLogger(__name__)
app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    configure_logging()
    try:
        config = RunConfig.from_mapping(context.run_config)
        out = run_federation(grid, config)
    except ConsortiumError as exc:  # an expected stop: one line; Flower records the failure
        logger.error("%s%s", STOP_MARK, " ".join(str(exc).split()))
        raise
    logger.info("done: outputs in %s", out)
