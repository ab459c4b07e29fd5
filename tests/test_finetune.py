"""finetune/: SFT data built from the train split without leakage, in the wire formats; the LoRA loop, and a
real tiny LoRA run whose adapter peft reloads and which changes the model's logits."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from finetune import finetune_dataset, tiny_config
from finetune.build_sft import SFTReport, build_sft_examples, check_configs, cut_histories
from finetune.train_lora import (
    IGNORE,
    lr_at,
    plan_examples,
    sft_loss_sum,
    split_users,
    tokenize_example,
)
from llmrec.config import FinetuneConfig, MiningConfig
from llmrec.interests import interests_wire
from llmrec.narrative import render_item
from llmrec.data.split import split_leave_one_out
from llmrec.tags import item_tags, tag_hits


@pytest.fixture(scope="module")
def tokenizer():
    from llmrec.llm.model import load_tokenizer

    return load_tokenizer()


@pytest.fixture(scope="module")
def sft(tiny, tokenizer):
    """SFT examples of the tiny users' TRAIN events, two cuts each."""
    split = split_leave_one_out(tiny.events)
    config = FinetuneConfig(cut_fractions=(0.5, 0.8), narrative_max_tokens=200, n_tags=8, tag_horizon=6)
    examples, report = build_sft_examples(split.train, tiny.item_index, tiny.items, config, tokenizer)
    return split, config, examples, report


def _line_items(prompt: str, user_items: dict, numbered: bool = False) -> list[str]:
    """Item ids of the prompt's lines ("pairs | Title (year; genres)", "3. pairs | ..." when `numbered`: answer
    format 4), parsed exactly."""
    by_render = {render_item(it.title, it.year, it.genres, 3): iid for iid, it in user_items.items()}
    lines = prompt.split("History:\n", 1)[1].splitlines()
    if numbered:
        assert [line.split(". ", 1)[0] for line in lines] == [str(n) for n in range(1, len(lines) + 1)]
        lines = [line.split(". ", 1)[1] for line in lines]
    return [by_render[line.split(" | ", 1)[1]] for line in lines]


def test_no_event_at_or_after_the_cut_enters_the_input(sft, tiny):
    split, _, examples, report = sft
    assert report.examples["interests"] == len(examples) > 20 and {ex.task for ex in examples} == {"interests"}
    train = split.train
    for ex in examples:
        ev = train[train["user_id"] == ex.user_id]
        cut = pd.Timestamp(ex.cut_time)
        assert (ev["timestamp"] >= cut).any()  # there IS a future, and it must stay out of the input
        user_items = {i: tiny.item_index[i] for i in ev["item_id"]}
        shown = _line_items(ex.messages[-2]["content"], user_items)
        assert shown
        times = ev.set_index("item_id")["timestamp"]
        assert all(times[i] < cut for i in shown), ex.user_id
        # Validation and test targets are never read: their items are not among the user's train items.
        held_out = set(split.valid.loc[split.valid["user_id"] == ex.user_id, "item_id"]) | set(
            split.test.loc[split.test["user_id"] == ex.user_id, "item_id"])
        assert held_out and not held_out & set(shown)


def test_targets_validate_against_the_wire_schema_and_are_grounded(sft, tiny):
    split, config, examples, _ = sft
    mining = MiningConfig()
    for ex in examples:
        answer = ex.messages[-1]["content"]
        assert ex.messages[-1]["role"] == "assistant"
        assert answer == json.dumps(json.loads(answer), separators=(",", ":"), ensure_ascii=False)  # compact
        ev = split.train[split.train["user_id"] == ex.user_id]
        shown = _line_items(ex.messages[-2]["content"], {i: tiny.item_index[i] for i in ev["item_id"]})
        obj = interests_wire(mining).model_validate_json(answer)
        assert len(obj.i) == config.n_interests
        for interest in obj.i:
            assert interest.e == []  # answer format 5 (the default) cites no lines
            # ...but every interest is shown: some narrative line's item carries its tag
            assert any(interest.n in item_tags(tiny.item_index[i]) for i in shown)
            assert len(interest.t) <= mining.tags_per_interest
        tags = [t for interest in obj.i for t in interest.t]
        assert 1 <= len(tags) <= config.n_tags and len(set(tags)) == len(tags)
        horizon = ev[ev["timestamp"] >= pd.Timestamp(ex.cut_time)].head(config.tag_horizon)
        next_items = [tiny.item_index[i] for i in horizon["item_id"]]
        # RecGPT pre-alignment: each target tag describes an item the user really took after t.
        assert all(any(tag_hits(t, it) for it in next_items) for t in tags)


def test_cut_fractions_and_min_events_shape_the_cuts(tiny):
    split = split_leave_one_out(tiny.events)
    one = cut_histories(split.train, FinetuneConfig(cut_fractions=(0.7,)), SFTReport())
    two = cut_histories(split.train, FinetuneConfig(cut_fractions=(0.5, 0.8)), SFTReport())
    assert len(two) > len(one) > 0
    for c in two:
        assert (c.before["timestamp"] < c.t).all() and (c.after["timestamp"] >= c.t).all()
        assert len(c.before) + len(c.after) == (split.train["user_id"] == c.user_id).sum()
    report = SFTReport()
    strict = cut_histories(split.train, FinetuneConfig(min_events_before_cut=150), report)
    assert len(strict) < len(one) and report.skipped["too_few_events_before_cut"] == 20 - len(strict)


def test_narrative_budget_and_target_sizes_follow_the_config(tiny, tokenizer):
    split = split_leave_one_out(tiny.events)
    small = FinetuneConfig(narrative_max_tokens=64, n_tags=3, n_evidence=1)
    format_4 = MiningConfig(max_evidence=2)  # answers that cite line numbers
    examples, _ = build_sft_examples(split.train, tiny.item_index, tiny.items, small, tokenizer, format_4)
    assert examples
    for ex in examples:
        lines = ex.messages[-2]["content"].split("History:\n", 1)[1].splitlines()
        narrative = "\n".join(line.split(". ", 1)[1] for line in lines)  # format 4 numbers its lines
        assert len(tokenizer(narrative, add_special_tokens=False)["input_ids"]) <= 64
        answer = json.loads(ex.messages[-1]["content"])
        assert sum(len(tags) for _, _, tags in answer) <= 3 and all(len(lines) == 1 for _, lines, _ in answer)
        assert "history lines" in ex.messages[0]["content"]
    with pytest.raises(ValueError, match="n_evidence"):  # the default format cites none
        build_sft_examples(split.train, tiny.item_index, tiny.items, small, tokenizer)


def test_config_errors_name_the_field():
    with pytest.raises(ValidationError, match="cut_fractions"):
        FinetuneConfig(cut_fractions=(0.0,))
    with pytest.raises(ValidationError, match="target_modules"):
        FinetuneConfig(target_modules=("q_proj", "attn"))
    with pytest.raises(ValidationError, match="narrative_max_tokens"):
        FinetuneConfig(narrative_max_tokens=2048, max_seq_len=1024)
    with pytest.raises(ValidationError, match="extra"):
        FinetuneConfig(rank=8)
    with pytest.raises(ValueError, match="n_interests"):
        check_configs(FinetuneConfig(n_interests=3), MiningConfig())
    with pytest.raises(ValueError, match="n_tags"):
        check_configs(FinetuneConfig(n_tags=40), MiningConfig(tags_per_interest=4))
    with pytest.raises(ValueError, match="n_evidence"):
        check_configs(FinetuneConfig(n_evidence=5), MiningConfig(max_evidence=3))
    path_cfg = FinetuneConfig(r=4, target_modules=("q_proj", "v_proj"))
    assert FinetuneConfig.model_validate_json(path_cfg.model_dump_json()) == path_cfg


def test_tokenize_example_masks_everything_but_the_answer(tokenizer):
    messages = ({"role": "system", "content": "Answer with JSON only."}, {"role": "user", "content": "Tags?"},
                {"role": "assistant", "content": '{"t":[{"t":"1990s comedy","i":0}]}'})
    ids, labels = tokenize_example(tokenizer, messages)
    first = next(i for i, t in enumerate(labels) if t != IGNORE)
    prompt = tokenizer.apply_chat_template(list(messages[:2]), tokenize=False, add_generation_prompt=True)
    assert tokenizer.decode(ids[:first]) == prompt
    assert tokenizer.decode(labels[first:], skip_special_tokens=True).strip() == messages[-1]["content"]
    assert all(t == IGNORE for t in labels[:first]) and labels[first:] == ids[first:]
    with pytest.raises(ValueError, match="assistant"):
        tokenize_example(tokenizer, messages[:2])


def test_sft_loss_matches_cross_entropy_on_the_suffix():
    torch.manual_seed(0)
    logits = torch.randn(10, 7)  # (T, V)
    labels = torch.tensor([IGNORE] * 6 + [1, 2, 3, 4])
    total, n = sft_loss_sum(logits, labels)
    assert n == 4
    assert torch.isclose(total, F.cross_entropy(logits[5:9], labels[6:], reduction="sum"))
    tail, n_tail = sft_loss_sum(logits[5:], labels)  # only the last K positions computed (answer_logits)
    assert n_tail == 4 and torch.isclose(tail, total)


def test_split_users_is_disjoint_stable_and_sized():
    users = [str(u) for u in range(1000)]
    train, valid = split_users(users, 0.1, seed=0)
    assert not train & valid and train | valid == set(users)
    assert 60 < len(valid) < 140
    assert split_users(list(reversed(users)), 0.1, seed=0) == (train, valid)
    assert split_users(users, 0.1, seed=1)[1] != valid
    assert len(split_users(["a", "b"], 0.01)[1]) == 1  # tiny inputs still hold out a user


def test_plan_respects_token_budget_and_epochs():
    lengths = [100] * 10
    assert len(plan_examples(lengths, FinetuneConfig(max_train_tokens=450))) == 5  # crossing example kept
    two = plan_examples(lengths, FinetuneConfig(max_train_tokens=10**6, epochs=2))
    assert len(two) == 20 and sorted(two) == sorted(list(range(10)) * 2)
    assert plan_examples(lengths, FinetuneConfig(seed=1)) != plan_examples(lengths, FinetuneConfig(seed=2))


def test_lr_warms_up_then_decays():
    config = FinetuneConfig(learning_rate=1e-3, warmup_steps=3)
    lrs = [lr_at(s, 20, config) for s in range(20)]
    assert lrs[0] < lrs[1] < lrs[2] < lrs[3] == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(lrs[3:], lrs[4:])) and lrs[-1] >= 1e-4


@pytest.fixture(scope="module")
def tiny_adapter(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("adapter") / "tiny-lora"
    # The token budget plans several steps; the wall-clock guard (a few ms) stops after the first one.
    config = tiny_config(r=4, alpha=8.0, dropout=0.0, target_modules=("q_proj", "v_proj"), max_train_tokens=1200,
                         eval_every_steps=1, num_threads=1, max_train_minutes=1e-5)
    threads = torch.get_num_threads()
    try:
        result = finetune_dataset(tiny, config, out, max_users=8)
        threads_during = torch.get_num_threads()
    finally:
        torch.set_num_threads(threads)
    return config, result, threads_during


@pytest.mark.slow
def test_tiny_lora_run_saves_a_reloadable_adapter_that_changes_logits(tiny_adapter):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from llmrec.llm.model import resolve_model

    config, result, threads_during = tiny_adapter
    out = result.out
    for name in ("adapter_config.json", "adapter_model.safetensors", "config.json", "manifest.json",
                 "loss_curve.json", "loss_curve.png"):
        assert (out / name).is_file(), name
    assert FinetuneConfig.from_json(out / "config.json") == config
    adapter_cfg = json.loads((out / "adapter_config.json").read_text())
    assert adapter_cfg["r"] == 4 and adapter_cfg["lora_alpha"] == 8.0 and adapter_cfg["lora_dropout"] == 0.0
    assert set(adapter_cfg["target_modules"]) == {"q_proj", "v_proj"}
    manifest = json.loads((out / "manifest.json").read_text())
    for key in ("split_hash", "prompt_hashes", "base_model", "train_tokens", "valid_users", "sft_hash"):
        assert manifest[key], key
    assert manifest["valid_users"] == result.valid_users and manifest["train_tokens"] == result.train_tokens
    assert result.steps == 1 and manifest["planned_steps"] >= 2 and manifest["stopped_by"] == "max_train_minutes"
    assert result.train_examples == config.batch_size

    curve = json.loads((out / "loss_curve.json").read_text())
    train_pts = [c for c in curve if c["split"] == "train"]
    valid_pts = [c for c in curve if c["split"] == "valid"]
    assert len(train_pts) == result.steps and len(valid_pts) == result.steps + 1  # step 0 + every step
    assert all(c["loss"] > 0 for c in curve)

    base = AutoModelForCausalLM.from_pretrained(resolve_model(), dtype=torch.float32, local_files_only=True)
    ids = torch.tensor([[1, 9690, 198, 21350, 351, 20110, 30, 2]])
    with torch.no_grad():
        before = base(input_ids=ids).logits
        tuned = PeftModel.from_pretrained(base, out)
        after = tuned(input_ids=ids).logits
    assert (after - before).abs().max() > 1e-4
    assert threads_during == 1  # num_threads was applied


def test_sft_split_keeps_the_evaluations_cold_users_out(tiny):
    from finetune import sft_split
    from llmrec.config import EvaluateConfig, FinetuneConfig
    from llmrec.eval.protocol import split_for

    config = FinetuneConfig(holdout_share=0.3, holdout_seed=4)
    split = sft_split(tiny, config)
    held = split.holdout_users
    seen = set(split.train["user_id"]) | set(split.valid["user_id"]) | set(split.test["user_id"])
    assert held and not held & seen
    # With matching settings the evaluation holds out exactly these users (so a tuned LLM never saw them).
    assert split_for(tiny, EvaluateConfig(cold_user_share=0.3, cold_user_seed=4)).holdout_users == held
    assert FinetuneConfig().holdout_share == EvaluateConfig().cold_user_share
