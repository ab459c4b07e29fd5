"""`llmrec model ...`: prepare the packaged default LLM, merge a LoRA adapter into it."""

from __future__ import annotations

from pathlib import Path

import typer

from llmrec.llm.model import merge_adapter, prepare_default_model


def register(app: typer.Typer) -> None:
    model_app = typer.Typer(help="Prepare and inspect the LLM (SmolLM2-135M-Instruct by default).",
                            no_args_is_help=True)

    @model_app.command("prepare")
    def prepare(
        out: Path = typer.Option(None, "--out", help="Target folder (default: $LLMREC_HOME/models/"
                                 "smollm2-135m-instruct)."),
    ) -> None:
        """Convert the packaged SmolLM2 GGUF into a fp32 Hugging Face folder (once) and print its path."""
        print(prepare_default_model(out))

    @model_app.command("merge")
    def merge(
        adapter: Path = typer.Option(..., "--adapter", help="peft LoRA adapter folder (adapter_config.json)."),
        out: Path = typer.Option(..., "--out", help="Folder for the merged model."),
        model: str = typer.Option(None, "--model", help="Base model folder (default: the packaged model)."),
    ) -> None:
        """Fold a LoRA adapter into the base weights so one-adapter jobs run at base speed; print the folder."""
        print(merge_adapter(model, adapter, out))

    app.add_typer(model_app, name="model")
