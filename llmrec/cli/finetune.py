"""`llmrec finetune`: LoRA SFT of the interest/tag prompts on targets built from the dataset's own events."""

from __future__ import annotations

import json
from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("finetune")
    def finetune_cmd(
        dataset: str = typer.Option("ml-100k", help="Built-in name (ml-100k) or a dataset folder."),
        out: Path = typer.Option(..., help="Adapter folder to write (e.g. adapters/ml-100k-lora); replaced."),
        model: str = typer.Option(None, help="Local HF model folder; default: the packaged SmolLM2-135M-Instruct."),
        train_tokens: int = typer.Option(None, "--train-tokens", "--max-tokens", min=1,
                                         help="Training token budget (~120 tokens/s on 2 idle cores); default "
                                              "FinetuneConfig's 150000 (~20 min); --max-tokens is a deprecated "
                                              "alias."),
        epochs: int = typer.Option(None, min=1, help="Passes over the SFT data (the token budget still caps it)."),
        r: int = typer.Option(None, min=1, help="LoRA rank (vLLM serves it if r <= LLMConfig.max_lora_rank)."),
        alpha: float = typer.Option(None, help="LoRA alpha (scale = alpha / r)."),
        max_minutes: float = typer.Option(None, help="Wall-clock guard: stop after this many training minutes and "
                                                     "still save the adapter (manifest says stopped_by)."),
        config_file: Path = typer.Option(None, "--config", help="FinetuneConfig JSON (SelfTrainConfig JSON for "
                                                                "--task tags-self-train); the flags override it."),
        tiny: bool = typer.Option(False, help="A few steps on 20 users with short examples (smoke test)."),
        task: str = typer.Option("interests", help="interests: the mining prompt (interests + tags); ranker: the "
                                                   "listwise ranker (llmrec.listwise) over --ranker-retriever; "
                                                   "tags-self-train: RecGPT self-training of --adapter's tags."),
        ranker_retriever: str = typer.Option("sasrec", help="--task ranker: the retriever whose top-K are the hard "
                                                            "negatives (popularity, item_knn, sasrec)."),
        adapter: Path = typer.Option(None, help="--task tags-self-train: the SFT adapter of round 0 (from --task "
                                                "interests); its config.json gives the cuts and LoRA settings."),
        rounds: int = typer.Option(None, min=1, help="--task tags-self-train: rounds (SelfTrainConfig, default 2)."),
        samples: int = typer.Option(None, min=1, help="--task tags-self-train: answers sampled per cut per round "
                                                      "(default 4)."),
        temperature: float = typer.Option(None, help="--task tags-self-train: sampling temperature (default 1.0)."),
        backend: str = typer.Option(None, help="--task tags-self-train: LLM backend that samples, vllm or "
                                               "transformers (default LLMConfig's, vllm)."),
        max_users: int = typer.Option(None, min=1, help="--task tags-self-train: sample only the cuts of the first N "
                                                        "train users by id (SelfTrainConfig.max_users; default all); "
                                                        "every round retrains on all SFT examples."),
        resume: bool = typer.Option(False, "--resume", help="--task tags-self-train: continue --out's rounds after "
                                                            "its last one (same adapter and options) instead of "
                                                            "replacing them."),
    ) -> None:
        """Build SFT data from the train split, train a LoRA adapter, save it with curves and manifest."""
        from finetune import RANKER_RETRIEVERS, TINY_USERS, finetune_dataset, finetune_ranker, tiny_config
        from llmrec.cli.common import load_config
        from llmrec.config import FinetuneConfig
        from llmrec.data import resolve_dataset

        flags = dict(max_train_tokens=train_tokens, epochs=epochs, r=r, alpha=alpha, max_train_minutes=max_minutes)
        if task == "tags-self-train":
            from llmrec.cli.self_train import run_self_train

            run_self_train(resolve_dataset(dataset), out, adapter, config_file, flags, tiny, model=model,
                           rounds=rounds, samples=samples, temperature=temperature, max_users=max_users,
                           backend=backend, resume=resume)
            return
        if resume:
            raise typer.BadParameter("--resume continues a --task tags-self-train folder; other tasks retrain")
        if tiny and config_file is None:
            config = tiny_config(**{k: v for k, v in flags.items() if v is not None})
        else:
            config = load_config(FinetuneConfig, config_file, **flags)
        if task not in ("interests", "ranker"):
            raise typer.BadParameter(f"--task must be interests, ranker or tags-self-train, got {task!r}")
        if ranker_retriever not in RANKER_RETRIEVERS:
            raise typer.BadParameter(f"--ranker-retriever must be one of {RANKER_RETRIEVERS}, got {ranker_retriever!r}")
        ds = resolve_dataset(dataset)
        common = dict(model=model, max_users=TINY_USERS if tiny else None)
        if task == "ranker":
            result = finetune_ranker(ds, config, out, retriever=ranker_retriever, **common)
        else:
            result = finetune_dataset(ds, config, out, **common)
        valid = [c["loss"] for c in result.curve if c["split"] == "valid"]
        print(json.dumps({"out": str(result.out), "steps": result.steps, "train_tokens": result.train_tokens,
                          "train_examples": result.train_examples, "valid_users": len(result.valid_users),
                          "valid_loss_first": valid[0] if valid else None,
                          "valid_loss_last": valid[-1] if valid else None, "skipped": result.skipped}))
