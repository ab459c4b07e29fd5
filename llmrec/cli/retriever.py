"""`llmrec train-retriever`: train the three-tower retriever on a dataset's leave-one-out split.

Writes the model folder (`ThreeTowerModel.save_pretrained`: safetensors weights and features, config.json,
model.json, manifest.json with split hash, encoder and tags source, and the FAISS index) and prints the
validation/test NDCG@10 and HR@10 with and without tags, and the chosen beta, as one JSON line on stdout
(per-epoch progress is logged at INFO on stderr).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import typer

log = logging.getLogger(__name__)


def register(app: typer.Typer) -> None:
    @app.command("train-retriever")
    def train_retriever(
        dataset: str = typer.Option("ml-100k", help="Built-in name (ml-100k) or a dataset folder."),
        out: Path = typer.Option(Path("artifacts/towers"), help="Model folder to write (created if missing)."),
        tags: Path = typer.Option(None, help="Parquet of mined interests (columns user_id, tags); "
                                             "default: heuristic history tags."),
        no_logq: bool = typer.Option(False, "--no-logq", help="Ablation: no logQ correction of sampled logits."),
        no_mixed_negatives: bool = typer.Option(False, "--no-mixed-negatives",
                                                help="Ablation: in-batch negatives only (no uniform draws)."),
        fixed_temperature: bool = typer.Option(False, "--fixed-temperature",
                                               help="Ablation: keep the cosine temperature fixed."),
        seed: int = typer.Option(None, help="Random seed (initialisation, batches, negatives); default "
                                            "TowerConfig's (0) or --config's."),
        epochs: int = typer.Option(None, min=1, help="Maximum epochs; default TowerConfig's (early stopping)."),
        encoder: str = typer.Option(None, help="Text encoder: minilm (default) or hashed-bow."),
        threads: int = typer.Option(None, min=1, help="Torch CPU threads; default TowerConfig's (2)."),
        config: Path = typer.Option(None, help="TowerConfig JSON to start from; the flags above override it."),
    ) -> None:
        """Train user/item/tag towers, choose beta on validation, save model + FAISS index, print metrics."""
        from llmrec.cli.common import load_config
        from llmrec.config import DataConfig, TowerConfig
        from llmrec.data import resolve_dataset
        from llmrec.data.split import split_leave_one_out
        from retrieval.train import build_manifest, read_tags_table, train_towers

        # An ablation switch given turns its feature off; not given, the file (or default) decides.
        tcfg = load_config(TowerConfig, config, seed=seed, epochs=epochs, encoder=encoder, threads=threads,
                           logq=False if no_logq else None,
                           mixed_negatives=False if no_mixed_negatives else None,
                           learnable_temperature=False if fixed_temperature else None)
        ds = resolve_dataset(dataset)
        split = split_leave_one_out(ds.events, DataConfig().min_events_for_split,
                                    targets=ds.behavior_vocab.target_names())
        llm_tags, tags_info = read_tags_table(tags) if tags is not None else (None, None)
        result = train_towers(ds, split, tcfg, llm_tags=llm_tags, tags_info=tags_info,
                              progress=lambda rec: log.info(json.dumps(rec)))
        manifest = {**build_manifest(split, tcfg, result.report, tags_info), "dataset": ds.name}
        result.model.save_pretrained(out, manifest=manifest)
        (Path(out) / "train_report.json").write_text(json.dumps(result.report, indent=2) + "\n")
        r = result.report
        print(json.dumps({
            "out": str(out), "beta": r["beta"], "tags": r["tags_source"],
            "valid": {k: round(v, 4) for k, v in r["valid"].items()},
            "test": {k: round(v, 4) for k, v in r["test"].items()},
            "valid_notag": {k: round(v, 4) for k, v in r["valid_notag"].items()},
            "test_notag": {k: round(v, 4) for k, v in r["test_notag"].items()},
            "best_epoch": r["best_epoch"], "train_seconds": r["train_seconds"],
        }))
