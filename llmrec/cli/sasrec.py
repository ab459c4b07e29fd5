"""`llmrec train-sasrec`: train the SASRec baseline on the shared split and print validation/test metrics."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from llmrec.config import SASRecConfig


def register(app: typer.Typer) -> None:
    @app.command("train-sasrec")
    def train_sasrec_cmd(
        dataset: str = typer.Option("ml-100k", help="Built-in name (ml-100k) or a dataset folder."),
        out: Path = typer.Option(Path("artifacts/sasrec"), help="Folder for model.safetensors, config.json, "
                                 "vocab.json and manifest.json."),
        loss: str | None = typer.Option(None, help="bce (paper: one sampled negative) or ce (full softmax, SASRec+); "
                                 "default: the config's."),
        seed: int | None = typer.Option(None, help="Random seed; default: the config's."),
        epochs: int | None = typer.Option(None, help="Maximum epochs (early stopping on validation NDCG@10 may end "
                                   "sooner); default: the config's."),
        config: Path | None = typer.Option(None, help="SASRecConfig JSON file; the options above override it."),
    ) -> None:
        """Train SASRec on the leave-one-out split; print validation and test NDCG@10/HR@10/MRR as JSON."""
        from llmrec.data import ItemVocab, resolve_dataset
        from llmrec.data.split import split_leave_one_out
        from retrieval.sasrec import evaluate_stage, train_sasrec

        from llmrec.cli.common import load_config

        cfg = load_config(SASRecConfig, config, loss=loss, seed=seed, epochs=epochs)
        ds = resolve_dataset(dataset)
        split = split_leave_one_out(ds.events, targets=ds.behavior_vocab.target_names())
        vocab = ItemVocab.from_items(ds.items)
        scorer, info = train_sasrec(split, vocab, cfg, behaviors=ds.behavior_vocab)  # per-epoch lines: INFO log on stderr
        result = {
            "model": scorer.name,
            "dataset": ds.name,
            "split_hash": split.hash,
            "best_epoch": info["best_epoch"],
            "train_seconds": info["train_seconds"],
            "valid": evaluate_stage(scorer, split, vocab, "valid"),
            "test": evaluate_stage(scorer, split, vocab, "test"),
            "config": cfg.model_dump(),
        }
        scorer.save_pretrained(out, manifest={k: result[k] for k in ("dataset", "split_hash", "best_epoch",
                                                                       "train_seconds", "valid", "test")})
        print(json.dumps(result))
