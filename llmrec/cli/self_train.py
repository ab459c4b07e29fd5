"""`llmrec finetune --task tags-self-train`: the options -> SelfTrainConfig, the sampling backend, the rounds.

Not a command group of its own: `llmrec.cli.finetune` hands the task here, so the finetune command keeps one
set of LoRA flags for every task.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from llmrec.config import LLMConfig, MiningConfig, SelfTrainConfig

BACKENDS = ("vllm", "transformers")


def self_train_config(adapter: Path, config_file: Path | None, flags: dict[str, Any], tiny: bool,
                      **knobs: Any) -> SelfTrainConfig:
    """--config's SelfTrainConfig, else one whose `finetune` part is the round-0 adapter's own config (same
    cuts, narrative budget and LoRA as its SFT run; `--tiny`: `finetune.tiny_config` on 20 users); then the
    given flags (LoRA knobs into `finetune`; `rounds`, `samples`, `temperature`, `max_users` at the top)."""
    from finetune import TINY_USERS, tiny_config
    from finetune.train_lora import load_adapter_config
    from llmrec.cli.common import merge_given

    if config_file is not None:
        base = SelfTrainConfig.from_json(config_file)
    elif tiny:
        base = SelfTrainConfig(finetune=tiny_config(), max_users=TINY_USERS)
    else:
        base = SelfTrainConfig(finetune=load_adapter_config(adapter))
    return SelfTrainConfig.model_validate(merge_given(base.model_dump(), {**knobs, "finetune": flags}))


def adapter_mining(adapter: Path) -> MiningConfig:
    """The MiningConfig the adapter was trained with (its prompt and wire schema); the default without one."""
    manifest = adapter / "manifest.json"
    recorded = json.loads(manifest.read_text()).get("mining_config") if manifest.is_file() else None
    if not recorded:
        return MiningConfig()
    # Fields an older llmrec recorded and MiningConfig has since dropped (decode_string_limits: string lengths
    # are now always checked after decoding) change neither the prompt nor the wire schema: named and ignored.
    gone = sorted(set(recorded) - set(MiningConfig.model_fields))
    if gone:
        typer.echo(f"{manifest}: mining_config fields no longer used, ignored: {', '.join(gone)}", err=True)
    return MiningConfig.model_validate({k: v for k, v in recorded.items() if k not in gone})


def run_self_train(dataset: Any, out: Path, adapter: Path | None, config_file: Path | None, flags: dict[str, Any],
                   tiny: bool, *, model: str | None, rounds: int | None, samples: int | None,
                   temperature: float | None, max_users: int | None, backend: str | None,
                   resume: bool = False) -> None:
    """Run the rounds and print a one-line JSON summary (per round: counts, mean rewards, adapter folder)."""
    from finetune.self_train import self_train
    from llmrec import llm
    from llmrec.llm.model import merged_model

    if adapter is None:
        raise typer.BadParameter("--task tags-self-train needs --adapter: the SFT adapter of round 0 "
                                 "(train it with `llmrec finetune --task interests`)")
    if backend not in (None, *BACKENDS):
        raise typer.BadParameter(f"--backend must be one of {BACKENDS}, got {backend!r}")
    config = self_train_config(adapter, config_file, flags, tiny, rounds=rounds, samples=samples,
                               temperature=temperature, max_users=max_users)
    llm_config = LLMConfig.model_validate({k: v for k, v in {"model": model, "backend": backend}.items()
                                           if v is not None})
    # Each round samples from its adapter merged into the weights (cached per adapter): vLLM's CPU LoRA path
    # took 7.27 s per ML-100K listwise-ranker prompt (801 tokens), the merged model 1.24 s (2 cores).
    result = self_train(dataset, config, adapter, out, model=model, mining=adapter_mining(adapter),
                        serve=lambda a: llm.make_backend(llm_config.model_copy(
                            update={"model": str(merged_model(model, a))})), resume=resume)
    keys = ("round", "sampled", "valid", "kept", "pool", "reward_kept", "reward_history_on_kept",
            "reward_sft_on_kept", "reward_history", "reward_sft_target", "adapter", "steps")
    print(json.dumps({"out": str(result.out), "final_adapter": str(result.final_adapter),
                      "rounds": [{k: r.get(k) for k in keys} for r in result.rounds]}))
