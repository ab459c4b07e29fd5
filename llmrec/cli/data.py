"""`llmrec data ...`: dataset download, import and inspection."""

from __future__ import annotations

import json

import typer

from llmrec.data import resolve_dataset


def register(app: typer.Typer) -> None:
    data_app = typer.Typer(help="Download, import and inspect datasets.", no_args_is_help=True)

    @data_app.command("info")
    def info(dataset: str = typer.Option("ml-100k", help="Built-in name (ml-100k) or a dataset folder.")) -> None:
        """Print a dataset's counts and load report as JSON."""
        print(json.dumps(resolve_dataset(dataset).summary()))

    app.add_typer(data_app, name="data")
