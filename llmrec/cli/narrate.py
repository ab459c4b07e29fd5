"""`llmrec narrate`: every user's history -> a narrative under the token budget, as Parquet."""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("narrate")
    def narrate(
        dataset: str = typer.Option("ml-100k", help="Built-in name (ml-100k) or a dataset folder."),
        out: Path = typer.Option(..., help="Parquet file to write, one row per user."),
        narrative_tokens: int = typer.Option(None, "--narrative-tokens", "--max-tokens", min=32,
                                             help="Token budget per narrative (default: NarrativeConfig's); "
                                                  "--max-tokens is a deprecated alias."),
        as_of: str = typer.Option(None, help="Only events strictly before this time (ISO-8601 or epoch seconds, "
                                  "UTC); default: each user's whole history."),
        model: str = typer.Option(None, help="Local HF model folder whose tokenizer counts tokens "
                                  "(default: the packaged SmolLM2-135M-Instruct)."),
        config: Path = typer.Option(None, help="NarrativeConfig JSON file; --narrative-tokens overrides its "
                                               "budget."),
    ) -> None:
        """Render one narrative per user; print a JSON summary (users, events in, tokens out, fit share, users/s)."""
        import pandas as pd
        import pyarrow as pa
        import pyarrow.parquet as pq

        from llmrec.cli.common import load_config
        from llmrec.config import NarrativeConfig
        from llmrec.data import DataError, resolve_dataset
        from llmrec.data.ingest import parse_timestamps
        from llmrec.narrative import NarrativeReport, load_narrative_tokenizer, render_narratives

        cfg = load_config(NarrativeConfig, config, max_tokens=narrative_tokens)
        cut = None
        if as_of is not None:
            cut = parse_timestamps(pd.Series([as_of])).iloc[0]
            if pd.isna(cut):
                raise DataError(f"--as-of {as_of!r} is not an ISO-8601 time or epoch seconds")
        ds = resolve_dataset(dataset)
        tokenizer = load_narrative_tokenizer(model)
        report = NarrativeReport()
        t0 = time.perf_counter()
        narratives = render_narratives(ds.events, ds.items, cut, cfg, tokenizer, report, behaviors=ds.behavior_vocab,
                                       queries=ds.queries)
        seconds = time.perf_counter() - t0
        table = pa.Table.from_pylist([n.model_dump() for n in narratives])
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(out.suffix + ".tmp")
        pq.write_table(table, tmp)
        tmp.replace(out)
        n = max(len(narratives), 1)
        print(json.dumps({
            "out": str(out), "users": len(narratives), "max_tokens": cfg.max_tokens,
            "mean_events_in": round(sum(x.n_events_in for x in narratives) / n, 2),
            "mean_tokens_out": round(sum(x.n_tokens for x in narratives) / n, 2),
            "share_within_budget": sum(x.fits_budget for x in narratives) / n,
            "users_per_s": round(len(narratives) / max(seconds, 1e-9), 1),
            "dropped": {k: v for k, v in report.to_dict().items() if k not in ("users", "events_in")},
        }))
