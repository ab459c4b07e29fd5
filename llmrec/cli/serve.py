"""`llmrec serve`: the HTTP service (FastAPI under uvicorn) over a built recommender folder."""

from __future__ import annotations

import logging
from pathlib import Path

import typer

logger = logging.getLogger(__name__)


def register(app: typer.Typer) -> None:
    @app.command("serve")
    def serve_cmd(
        artifacts: Path = typer.Option(Path("artifacts/ml-100k"), help="Recommender folder (built by `llmrec demo`)."),
        host: str = typer.Option("127.0.0.1", help="Interface to bind; 0.0.0.0 exposes the service to the network."),
        port: int = typer.Option(8000, min=0, max=65535, help="TCP port (0: any free one)."),
        log_level: str = typer.Option("info", help="uvicorn log level: critical, error, warning, info, debug."),
        threads: int = typer.Option(1, min=1, help="Torch intra-op threads per request (1: concurrency comes from "
                                                   "concurrent requests)."),
    ) -> None:
        """Serve recommendations over HTTP: /users/{id}/recommendations, POST /recommendations, /health, /docs."""
        from llmrec.pipeline import Recommender
        from llmrec.serve import serve

        rec = Recommender.load(artifacts)
        logger.info("loaded %s: %d users, %d items", artifacts, len(rec._sequences), len(rec.vocab.ids))
        serve(rec, host=host, port=port, log_level=log_level, threads=threads)
