"""`llmrec demo` (the whole pipeline on ML-100K, end to end) and `llmrec recommend` (query a built folder)."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import typer

log = logging.getLogger(__name__)


def _print_recs(title: str, recs) -> None:
    print(f"\n{title}")
    for n, r in enumerate(recs, 1):
        year = f" ({r.item.year})" if r.item.year else ""
        flag = " [template]" if r.explanation_flagged else ""
        print(f"{n:2d}. {r.item.title}{year} — {', '.join(r.item.genres)}  score={r.score:.3f} via {r.source}")
        if r.interest or r.tag:
            print(f"    interest: {r.interest!r}  tag: {r.tag!r}")
        if r.explanation:
            print(f"    why: {r.explanation}{flag}")


def _progress(message: str) -> None:
    """Stage progress is an INFO log line on stderr; stdout keeps the recommendations and the final JSON line."""
    log.info(message)


def demo_finetune_config(tokens: int):
    """The demo's short LoRA run (`--finetune-tokens`)."""
    from llmrec.config import FinetuneConfig

    # A short run needs more steps and a larger rate than the 150k-token default. Measured on ML-100K, 30k
    # tokens: lr 3e-4 x 4 examples/step (14 steps) -> valid loss 0.92, 35/200 users valid when mining;
    # lr 1e-3 x 2 (28 steps) -> valid loss 0.52 (the full run: 0.51), 100/100 valid (95 at the first try).
    return FinetuneConfig(max_train_tokens=tokens, learning_rate=1e-3, batch_size=2, warmup_steps=2)


def adapter_is_current(folder: Path) -> bool:
    """False when the adapter's manifest records another mining prompt than today's (it learnt an older answer
    format, which schema-guided decoding would now fight); True when it matches or records none."""
    from llmrec.interests import PROMPTS
    from llmrec.llm.prompts import prompt_hashes

    manifest = folder / "manifest.json"
    recorded = json.loads(manifest.read_text()).get("prompt_hashes", {}) if manifest.is_file() else {}
    return all(recorded.get(name, h) == h for name, h in prompt_hashes(PROMPTS).items())


def demo_adapter(choice: str, dataset, finetune_tokens: int) -> str | None:
    """The adapter the demo mines with: an explicit folder, the full `llmrec finetune` one, or a short run."""
    if choice == "none":
        return None
    if choice != "auto":
        return choice
    for folder in (Path("adapters/ml-100k-lora"), Path("adapters/ml-100k-lora-demo")):
        if (folder / "adapter_config.json").is_file():
            if adapter_is_current(folder):
                return str(folder)
            _progress(f"{folder} was tuned on another mining prompt (answer format); not used: retrain it with "
                      f"`llmrec finetune --out {folder}`")
    from finetune import finetune_dataset

    out = Path("adapters/ml-100k-lora-demo")
    _progress(f"no adapter yet: a short demo fine-tune ({finetune_tokens} tokens) into {out}; "
              f"`llmrec finetune --out adapters/ml-100k-lora` trains the full one (150k tokens, ~20 min)")
    finetune_dataset(dataset, demo_finetune_config(finetune_tokens), out)
    return str(out)


def register(app: typer.Typer) -> None:
    @app.command("demo")
    def demo(
        out: Path = typer.Option(Path("artifacts/ml-100k"), help="Recommender folder to write."),
        users: int = typer.Option(None, min=3, help="Quick mode: build on the first N users only; default all 943."),
        mine_users: int = typer.Option(200, min=1, help="Users whose interests/tags the LLM mines (the rest get "
                                       "heuristic history tags); 943 mines everyone."),
        explain_users: int = typer.Option(100, min=1, help="Users whose served (interest, item) pairs get LLM explanations."),
        backend: str = typer.Option("vllm", help="LLM backend: vllm or transformers."),
        executor: str = typer.Option("local", help="Batch-job executor: local or ray."),
        adapter: str = typer.Option("auto", help="LoRA adapter (peft folder) for mining; 'auto': adapters/ml-100k-lora "
                                    "if `llmrec finetune` made it, else a short demo fine-tune (--finetune-tokens) "
                                    "into adapters/ml-100k-lora-demo, reused on reruns; 'none': the base model."),
        finetune_tokens: int = typer.Option(30_000, min=1000, help="Token budget of the demo fine-tune (LoRA "
                                            "trains ~120 tokens/s on 2 cores)."),
        user: str = typer.Option("42", help="Warm user to show recommendations for."),
        k: int = typer.Option(10, min=1, help="Items per recommendation list."),
    ) -> None:
        """Run the whole pipeline on MovieLens-100K and print recommendations for a warm and a cold user."""
        from llmrec.config import LLMConfig, RecommenderConfig
        from llmrec.data import Dataset, load_ml100k, ml100k_dir
        from llmrec.build import build_recommender
        from llmrec.llm.model import resolve_model
        from llmrec.pipeline import Recommender

        t0 = time.perf_counter()
        try:
            ml100k_dir()
        except FileNotFoundError:
            from llmrec.data.download import download_ml100k

            _progress("MovieLens-100K not found locally: downloading it from GroupLens")
            download_ml100k()
        ds = load_ml100k()
        if users:
            keep = sorted(ds.events["user_id"].unique(), key=lambda u: (len(u), u))[:users]
            ds = Dataset(name=f"{ds.name}-first{users}", events=ds.events[ds.events["user_id"].isin(keep)],
                         items=ds.items, users=ds.users[ds.users["user_id"].isin(keep)], domain=ds.domain)
        model_dir = resolve_model(None)
        _progress(f"model: {model_dir}")
        adapter = demo_adapter(adapter, ds, finetune_tokens)
        _progress(f"mining adapter: {adapter or 'none (base model)'}")
        # The adapter is served merged for mining (build_recommender); the base engine needs no LoRA support.
        config = RecommenderConfig(llm=LLMConfig(backend=backend, enable_lora=False))
        build_recommender(ds, out, config, executor=executor, adapter=adapter, mine_users=mine_users,
                          explain_users=explain_users, k=k)

        rec = Recommender.load(out)
        warm = user if user in set(ds.events["user_id"]) else str(ds.events["user_id"].iloc[0])
        _print_recs(f"Warm user {warm} ({len(rec._sequences[warm])} events):", rec.recommend(user_id=warm, k=k))
        cold_hist = list(ds.events[ds.events["user_id"] == warm]["item_id"].iloc[-2:])
        cold_profile = {"age": "27", "gender": "F", "occupation": "writer"}
        _print_recs(f"Cold user (2 events {cold_hist}, profile {cold_profile}):",
                    rec.recommend(history=cold_hist, profile=cold_profile, k=k))
        print(f"\nartifacts: {out.resolve()} (config.json, manifest.json, build_report.json, towers/, "
              f"interests.parquet, explanations/, coldstart.parquet, dataset/)")
        print(json.dumps({"demo_seconds": round(time.perf_counter() - t0, 1), "out": str(out)}))

    @app.command("recommend")
    def recommend(
        artifacts: Path = typer.Option(Path("artifacts/ml-100k"), help="Recommender folder (built by `llmrec demo`)."),
        user: str = typer.Option(None, help="Known user id."),
        history: str = typer.Option(None, help="Comma-separated item ids, for a user we have not seen."),
        profile: str = typer.Option(None, help='Profile as JSON, e.g. \'{"age": "30", "occupation": "writer"}\'.'),
        k: int = typer.Option(10, min=1, help="Items to return."),
    ) -> None:
        """Recommend items with explanations from a built recommender folder (prints JSON lines)."""
        from llmrec.pipeline import Recommender

        rec = Recommender.load(artifacts)
        hist = [h.strip() for h in history.split(",") if h.strip()] if history is not None else None
        prof = json.loads(profile) if profile else None
        for r in rec.recommend(user, history=hist, profile=prof, k=k):
            print(r.model_dump_json())
