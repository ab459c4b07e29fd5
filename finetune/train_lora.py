"""LoRA supervised fine-tuning on CPU with peft: chat examples in, a peft adapter folder out.

The loop is nanoGPT-shaped and deliberately plain: fp32, `torch.set_num_threads(config.num_threads)`,
one example per forward pass (no padding: on this CPU throughput is ~120 tokens/s whatever the batch shape,
so padding would only waste tokens), gradients accumulated over `batch_size` examples per AdamW step.
The loss is the mean cross-entropy over the *assistant* tokens only; the prompt (system + user turns,
rendered by the model's own chat template) is masked with -100, so the model learns to answer, not to
repeat narratives.

Examples are split into train/validation BY USER (a stable sha256 of the user id, so no user has examples
on both sides) and training stops after `max_train_tokens` tokens, which sizes the run in wall time.

The output folder holds what peft's `PeftModel.from_pretrained` and vLLM's `LoRARequest(name, id, path)`
both load unchanged (`adapter_config.json` + `adapter_model.safetensors`), plus `config.json` (the frozen
FinetuneConfig), `manifest.json` (base model, split hash, prompt hashes, token counts, validation users),
`loss_curve.json` (records) and `loss_curve.png`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from llmrec.io import atomic_dir, package_version
from llmrec.config import FinetuneConfig
from llmrec.llm.model import load_tokenizer, resolve_model
from llmrec.progress import progress_bar

log = logging.getLogger(__name__)
IGNORE = -100  # label of tokens that carry no loss (prompt tokens)


@dataclass(frozen=True)
class SFTExample:
    """One chat example: `messages` ends with the assistant answer the model must learn."""

    user_id: str
    task: str  # "interests" | "tags"
    messages: tuple[dict[str, str], ...]
    cut_time: datetime | None = None  # the history was cut here (build_sft); None for other sources


@dataclass
class TrainResult:
    out: Path
    steps: int
    train_tokens: int
    train_examples: int
    valid_users: list[str]
    curve: list[dict[str, Any]] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)


# --- Data -----------------------------------------------------------------------------------------


def tokenize_example(tokenizer: Any, messages: Sequence[dict[str, str]]) -> tuple[list[int], list[int]]:
    """Token ids of the whole chat and labels that keep only the final assistant turn.

    The prompt is rendered with `add_generation_prompt=True`, exactly as at inference, and must be a prefix
    of the full rendering; otherwise masking would be wrong and we refuse the chat template.
    """
    if not messages or messages[-1]["role"] != "assistant":
        raise ValueError("an SFT example must end with an assistant message")
    prompt = tokenizer.apply_chat_template(list(messages[:-1]), tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(list(messages), tokenize=False)
    if not full.startswith(prompt):
        raise ValueError("the chat template does not render the prompt as a prefix of the full chat; "
                         "cannot mask the prompt tokens")
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(full[len(prompt):], add_special_tokens=False)["input_ids"]
    ids = list(prompt_ids) + list(answer_ids)
    labels = [IGNORE] * len(prompt_ids) + list(answer_ids)
    return ids, labels


def split_users(user_ids: Sequence[str], valid_fraction: float, seed: int = 0) -> tuple[set[str], set[str]]:
    """Stable user-level split: a user goes to validation when sha256(seed, user) falls below the fraction."""
    train, valid = set(), set()
    for u in sorted(set(user_ids)):
        h = int(hashlib.sha256(f"{seed}:{u}".encode()).hexdigest()[:8], 16) / 16**8
        (valid if h < valid_fraction else train).add(u)
    if not valid and len(train) > 1:  # tiny inputs: still hold out one user
        u = min(train)
        train.discard(u)
        valid.add(u)
    return train, valid


def hash_examples(examples: Sequence[SFTExample]) -> str:
    """Fingerprint of the SFT data (users, tasks, messages), written into the manifest."""
    h = hashlib.sha256()
    for ex in examples:
        h.update(json.dumps([ex.user_id, ex.task, list(ex.messages)], sort_keys=True).encode())
    return h.hexdigest()[:16]


def plan_examples(lengths: Sequence[int], config: FinetuneConfig) -> list[int]:
    """Indices of the examples to train on, in order: `epochs` shuffled passes, cut where the token budget
    runs out (the example that crosses it is kept). Known up front, so the LR schedule knows its length."""
    rng = random.Random(config.seed)
    plan: list[int] = []
    budget = config.max_train_tokens
    for _ in range(config.epochs):
        order = list(range(len(lengths)))
        rng.shuffle(order)
        for i in order:
            if budget <= 0:
                return plan
            plan.append(i)
            budget -= lengths[i]
    return plan


# --- Loss -----------------------------------------------------------------------------------------


def sft_loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Summed next-token cross-entropy over labelled positions, and how many there are.

    logits: (K, V) for the LAST K positions of one sequence (K = T for all of them); labels: (T,) with IGNORE
    on prompt tokens. Position i predicts token i+1. Returning the sum (not the mean) lets the caller average
    over all answer tokens of an accumulated batch.
    """
    k = logits.shape[0]
    shift_logits = logits[:-1]  # (K-1, V)
    shift_labels = labels[labels.shape[0] - k + 1 :]  # (K-1,)
    n = int((shift_labels != IGNORE).sum())
    loss = F.cross_entropy(shift_logits, shift_labels, ignore_index=IGNORE, reduction="sum")
    return loss, n


def answer_logits(model: Any, ids: list[int], labels: list[int]) -> torch.Tensor:
    """Logits (K, V) of the last K positions only, K = answer length + 1: the answer is a suffix, so the
    (T, 49k) vocabulary projection of the prompt positions, which carry no loss, is never computed."""
    first = next((i for i, t in enumerate(labels) if t != IGNORE), len(labels))
    keep = max(len(ids) - first + 1, 2)
    return model(input_ids=torch.tensor([ids]), logits_to_keep=keep).logits[0]  # (K, V)


def lr_at(step: int, total_steps: int, config: FinetuneConfig) -> float:
    """Linear warm-up, then cosine decay to 10% of the peak learning rate."""
    peak = config.learning_rate
    if step < config.warmup_steps:
        return peak * (step + 1) / (config.warmup_steps + 1)
    span = max(1, total_steps - config.warmup_steps)
    progress = min(1.0, (step - config.warmup_steps) / span)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


# --- Model ----------------------------------------------------------------------------------------


def build_lora_model(base_dir: Path, config: FinetuneConfig) -> Any:
    """The base model in fp32 with LoRA adapters on `config.target_modules`; only those are trainable."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32, local_files_only=True)
    lora = LoraConfig(r=config.r, lora_alpha=config.alpha, lora_dropout=config.dropout,
                      target_modules=list(config.target_modules), bias="none", task_type="CAUSAL_LM")
    return get_peft_model(base, lora)


@torch.no_grad()
def evaluate_loss(model: Any, batch: Sequence[tuple[list[int], list[int]]]) -> float:
    """Mean assistant-token loss over tokenized examples, dropout off."""
    was_training = model.training
    model.eval()
    total, n = 0.0, 0
    for ids, labels in batch:
        loss, k = sft_loss_sum(answer_logits(model, ids, labels), torch.tensor(labels))
        total, n = total + float(loss), n + k
    model.train(was_training)
    return total / max(n, 1)


# --- Training -------------------------------------------------------------------------------------


def train_lora(
    examples: Sequence[SFTExample],
    config: FinetuneConfig,
    out: str | Path,
    *,
    model: str | Path | None = None,
    manifest_extra: dict[str, Any] | None = None,
) -> TrainResult:
    """Fine-tune LoRA adapters on `examples` and save them (with curves, config and manifest) to `out`.

    `manifest_extra` (split hash, prompt hashes, SFT report, ...) is merged into manifest.json.
    """
    torch.manual_seed(config.seed)
    torch.set_num_threads(config.num_threads)
    base_dir = resolve_model(model)
    tokenizer = load_tokenizer(base_dir)
    out = Path(out)

    train_users, valid_users = split_users([e.user_id for e in examples], config.valid_fraction, config.seed)
    skipped: dict[str, int] = {}
    train_tok, valid_tok = [], []
    for ex in examples:
        ids, labels = tokenize_example(tokenizer, ex.messages)
        if len(ids) > config.max_seq_len:
            skipped["longer_than_max_seq_len"] = skipped.get("longer_than_max_seq_len", 0) + 1
            continue
        (valid_tok if ex.user_id in valid_users else train_tok).append((ids, labels))
    if not train_tok:
        raise ValueError(f"no training examples left ({len(examples)} given, skipped {skipped})")
    valid_batch = valid_tok[: config.max_valid_examples]

    plan = plan_examples([len(ids) for ids, _ in train_tok], config)
    plan = [train_tok[i] for i in plan]
    total_steps = math.ceil(len(plan) / config.batch_size)
    log.info("train: %d examples (%d users), valid: %d examples (%d users); plan %d examples, %d tokens, %d steps",
             len(train_tok), len(train_users), len(valid_tok), len(valid_users), len(plan),
             sum(len(p[0]) for p in plan), total_steps)

    peft_model = build_lora_model(base_dir, config)
    peft_model.train()
    params = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=0.0)

    curve: list[dict[str, Any]] = []
    t0, seen = time.monotonic(), 0

    def note(split: str, step: int, loss: float, lr: float | None = None) -> None:
        rec = {"split": split, "step": step, "tokens": seen, "loss": round(loss, 5),
               "elapsed_s": round(time.monotonic() - t0, 2)}
        if lr is not None:
            rec["lr"] = lr
        curve.append(rec)
        log.info("step %d/%d %s loss %.4f tokens %d (%.0f tok/s)", step, total_steps, split, loss, seen,
                 seen / max(rec["elapsed_s"], 1e-9))

    stopped_by, steps_done = "max_train_tokens", 0
    if valid_batch:
        note("valid", 0, evaluate_loss(peft_model, valid_batch))
    bar = progress_bar(range(total_steps), "LoRA steps", total_steps, unit="step")
    for step in bar:
        lr = lr_at(step, total_steps, config)
        for g in optimizer.param_groups:
            g["lr"] = lr
        micro = plan[step * config.batch_size : (step + 1) * config.batch_size]
        n_answer = sum(sum(1 for t in lab[1:] if t != IGNORE) for _, lab in micro)
        total_loss = 0.0
        for ids, labels in micro:
            loss_sum, _ = sft_loss_sum(answer_logits(peft_model, ids, labels), torch.tensor(labels))
            (loss_sum / max(n_answer, 1)).backward()  # mean over the batch's answer tokens
            total_loss += float(loss_sum.detach())
            seen += len(ids)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        note("train", step + 1, total_loss / max(n_answer, 1), lr)
        bar.set_postfix(loss=f"{curve[-1]['loss']:.4f}", tok_s=f"{seen / max(curve[-1]['elapsed_s'], 1e-9):.0f}")
        out_of_time = (config.max_train_minutes is not None
                       and time.monotonic() - t0 > 60 * config.max_train_minutes)
        last = step + 1 == total_steps or out_of_time
        if valid_batch and ((step + 1) % config.eval_every_steps == 0 or last):
            note("valid", step + 1, evaluate_loss(peft_model, valid_batch))
        steps_done = step + 1
        if out_of_time:
            stopped_by = "max_train_minutes"
            log.info("stopping after %d/%d steps: max_train_minutes=%s", steps_done, total_steps,
                     config.max_train_minutes)
            break
    bar.close()

    manifest = {
        "base_model": str(base_dir),
        "base_model_manifest": _read_json(base_dir / "manifest.json"),
        "train_users": len(train_users),
        "valid_users": sorted(valid_users),
        "train_examples": len(train_tok),
        "valid_examples": len(valid_tok),
        "planned_examples": len(plan),
        "train_tokens": seen,
        "steps": steps_done,
        "planned_steps": total_steps,
        "stopped_by": stopped_by,
        "train_seconds": round(time.monotonic() - t0, 1),
        "sft_hash": hash_examples(examples),
        "skipped": skipped,
        "peft_version": package_version("peft"),
        "torch_version": torch.__version__,
        "llmrec_version": package_version("llmrec", "0+unknown"),
        **(manifest_extra or {}),
    }
    save_adapter(peft_model, config, manifest, curve, out)
    return TrainResult(out=out, steps=steps_done, train_tokens=seen,
                       train_examples=min(len(plan), steps_done * config.batch_size),
                       valid_users=sorted(valid_users), curve=curve, skipped=skipped)


# --- Artifacts ------------------------------------------------------------------------------------


def save_adapter(peft_model: Any, config: FinetuneConfig, manifest: dict[str, Any],
                 curve: list[dict[str, Any]], out: Path) -> Path:
    """Write the adapter folder atomically (temporary sibling, then rename)."""
    with atomic_dir(out) as tmp:
        peft_model.save_pretrained(tmp, safe_serialization=True)
        config.to_json(tmp / "config.json")
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str) + "\n")
        (tmp / "loss_curve.json").write_text(json.dumps(curve, indent=1) + "\n")
        plot_loss_curve(curve, tmp / "loss_curve.png")
    return out


def plot_loss_curve(curve: Sequence[dict[str, Any]], path: Path) -> Path:
    """Train and validation loss against tokens seen."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for split, style in (("train", "-"), ("valid", "o-")):
        pts = [(r["tokens"], r["loss"]) for r in curve if r["split"] == split]
        if pts:
            ax.plot(*zip(*pts), style, label=split, markersize=4)
    ax.set_xlabel("training tokens seen")
    ax.set_ylabel("assistant-token cross-entropy")
    ax.set_title("LoRA SFT loss")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def load_adapter_config(adapter_dir: str | Path) -> FinetuneConfig:
    """The FinetuneConfig an adapter was trained with (its narrative budget is reused at inference)."""
    path = Path(adapter_dir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{adapter_dir} has no config.json; train it with `llmrec finetune`")
    return FinetuneConfig.from_json(path)


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None

