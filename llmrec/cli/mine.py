"""`llmrec mine-interests`: narratives -> LLM interests + tags per user -> Parquet + manifest.

The narratives are rendered as of each user's TEST target from the events a model may see for it
(`Split.history("test")`), so nothing mined here leaks the held-out item. `--as-of valid` renders them as of
the validation target instead (`Split.history("valid")`): the table an evaluation trains and validates on.
The output folder holds `profiles.parquet` (one row per user, `llmrec.interests.PROFILES_SCHEMA`),
`config.json` (mining and narrative configs, command options) and `manifest.json` (split hash, prompt hashes,
model, adapter, package version, `MiningStats`, `merge_seconds`); the last stdout line is a JSON summary.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Sequence

import pyarrow.parquet as pq
import typer

from llmrec.interests import PROMPTS, MiningStats, profiles_to_table
from llmrec.io import package_version
from llmrec.llm.prompts import prompt_hashes
from llmrec.schema import InterestProfile


def save_profiles(out: str | Path, profiles: Sequence[InterestProfile], stats: MiningStats,
                  config: dict[str, Any], manifest: dict[str, Any]) -> Path:
    """Write profiles.parquet, config.json and manifest.json (with prompt hashes and stats) to `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "profiles.parquet.tmp"
    pq.write_table(profiles_to_table(profiles), tmp)
    tmp.replace(out / "profiles.parquet")
    full = {**manifest, "prompt_hashes": prompt_hashes(PROMPTS), "stats": stats.to_dict(),
            "llmrec_version": package_version("llmrec")}
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True, default=str) + "\n")
    (out / "manifest.json").write_text(json.dumps(full, indent=2, sort_keys=True, default=str) + "\n")
    return out


def register(app: typer.Typer) -> None:
    @app.command("mine-interests")
    def mine_interests_cmd(
        dataset: str = typer.Option("ml-100k", help="Built-in name (ml-100k) or a dataset folder."),
        out: Path = typer.Option(..., help="Output folder (e.g. artifacts/interests); created if missing."),
        model: str = typer.Option(None, help="Local HF model folder; default: the packaged SmolLM2-135M-Instruct."),
        adapter: str = typer.Option(None, help="LoRA adapter folder (peft format) to decode with."),
        backend: str = typer.Option(None, help="LLM backend: vllm or transformers; default --config's (vllm)."),
        users: int = typer.Option(None, min=1, help="Mine only the first N users (by id order); default all."),
        narrative_tokens: int = typer.Option(None, "--narrative-tokens", "--max-tokens", min=32,
                                             help="Narrative token budget (MiningConfig.narrative_tokens; default "
                                                  "128); --max-tokens is a deprecated alias."),
        batch_size: int = typer.Option(None, min=1, help="Prompts per backend call (wide batches decode faster); "
                                                         "default: the whole shard in one call."),
        executor: str = typer.Option(None, help="local (in-process engine) or ray (Ray Data actors); default local."),
        shard_size: int = typer.Option(None, min=1, help="Users per shard: the unit of atomic write and resume; "
                                                         "default JobConfig's (256)."),
        as_of_stage: str = typer.Option("test", "--as-of", help="Mine as of each user's test target (serving, "
                                        "test slices) or validation target (`llmrec evaluate --llm-*-tags-valid`)."),
        config_file: Path = typer.Option(None, "--config", help="RecommenderConfig JSON (its mining, llm, jobs "
                                                                "parts); the options above override it."),
    ) -> None:
        """Mine interests and predict tags for every user; write Parquet + manifest, print a JSON summary.

        Runs as a resumable sharded job under OUT/shards: kill it at any moment and rerun the same command;
        finished shards are skipped, no user is lost or duplicated.
        """
        from llmrec.build import mine_all
        from llmrec.cli.common import load_config, merge_given
        from llmrec.config import RecommenderConfig
        from llmrec.data import resolve_dataset
        from llmrec.llm import make_backend
        from llmrec.narrative import load_narrative_tokenizer, render_narratives
        from llmrec.data.split import split_leave_one_out

        if backend not in (None, "vllm", "transformers"):
            raise typer.BadParameter(f"--backend must be vllm or transformers, got {backend!r}")
        if as_of_stage not in ("test", "valid"):
            raise typer.BadParameter(f"--as-of must be test or valid, got {as_of_stage!r}")
        ds = resolve_dataset(dataset)
        split = split_leave_one_out(ds.events, targets=ds.behavior_vocab.target_names())
        as_of = split.as_of(as_of_stage)
        chosen = sorted(as_of.index, key=lambda u: (len(u), u))[:users] if users else list(as_of.index)
        events = split.history(as_of_stage)
        events = events[events["user_id"].isin(set(chosen))]
        given = load_config(RecommenderConfig, config_file, mining={"batch_size": batch_size,
                                                                    "narrative_tokens": narrative_tokens},
                            llm={"model": model, "backend": backend}, jobs={"shard_size": shard_size,
                                                                           "executor": executor})
        model = given.llm.model
        served, merged_from, merge_seconds = model, None, 0.0
        if adapter is not None:  # one adapter for the whole job: serve it merged into the weights
            from llmrec.llm.model import merged_model

            t = time.perf_counter()  # a first run merges (~10-30 s), later ones find the merge cached
            served, merged_from = str(merged_model(model, adapter)), adapter
            merge_seconds = time.perf_counter() - t
        # The mining prompt's budget (MiningConfig.narrative_tokens) is the narrative budget. One adapter for
        # the whole job is served merged into the weights (base decoding speed), so no LoRA engine either way.
        config = RecommenderConfig.model_validate(merge_given(given.model_dump(), {
            "narrative": {"max_tokens": given.mining.narrative_tokens},
            "llm": {"model": served, "enable_lora": False}}))
        backend, executor = config.llm.backend, config.jobs.executor
        if backend not in ("vllm", "transformers"):
            raise typer.BadParameter(f"llm.backend must be vllm or transformers for mining, got {backend!r}")
        narratives = render_narratives(events, ds.items, as_of.loc[chosen], config.narrative,
                                       load_narrative_tokenizer(model), behaviors=ds.behavior_vocab,
                                       queries=ds.queries)
        llm = make_backend(config.llm) if executor == "local" else None
        try:
            profiles, stats = mine_all(narratives, ds, out / "shards", config, llm, executor,
                                       label=f"{backend}+{merged_from}" if merged_from else None)
        finally:
            if llm is not None:
                llm.close()
        save_profiles(
            out, profiles, stats,
            config={"mining": config.mining.model_dump(mode="json"), "narrative": config.narrative.model_dump(mode="json"),
                    "llm": config.llm.model_dump(mode="json"), "jobs": config.jobs.model_dump(mode="json"),
                    "dataset": dataset, "users": users},
            manifest={"split_hash": split.hash, "as_of": as_of_stage, "model": model or "smollm2-135m-instruct",
                      "adapter": adapter, "dataset": ds.name, "n_users": len(profiles),
                      "merge_seconds": round(merge_seconds, 2)},
        )
        summary = {"out": str(out), "users": len(profiles), "adapter": adapter, "executor": executor,
                   **{k: v for k, v in stats.to_dict().items() if k != "errors"}}
        print(json.dumps(summary))
