"""finetune/self_train.py: the reward (tag-to-item retrieval of after-cut TRAIN events), the selection (best sample
kept only where it beats the history-frequency tags), no validation/test event anywhere, and the CLI task."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from finetune import tiny_config
from finetune.self_train import (
    Pool,
    keep_round,
    prepare_cases,
    reward_targets,
    sample_round,
    select_best,
    tag_reward,
)
from llmrec.config import MiningConfig, SelfTrainConfig
from llmrec.data import Dataset, ItemVocab
from llmrec.errors import AdapterError
from llmrec.eval.tag_metrics import TagCatalogue
from llmrec.interests import interests_wire
from llmrec.llm import FakeBackend
from llmrec.schema import Item

MINING = MiningConfig()
JUNK = "zzz qqq"  # names no attribute: its reward is 0


@pytest.fixture(scope="module")
def tokenizer():
    from llmrec.llm.model import load_tokenizer

    return load_tokenizer()


def _config(**kw) -> SelfTrainConfig:
    return SelfTrainConfig(finetune=tiny_config(cut_fractions=(0.5, 0.8)), **kw)


def sft_echo(prep, samples: int, winner: bool = True):
    """A responder whose draws per prompt are: invalid JSON, the cut's SFT target (junk tags too when not
    `winner`), then the target's interests with junk tags (a winner, a failure and a zero-reward answer)."""
    target = {json.dumps(c.prompt): c.built.example.messages[-1]["content"] for c in prep.cases}
    counter = itertools.count()

    def respond(messages, schema):
        draw = next(counter) % samples
        answer = target[json.dumps(messages)]
        if draw == 0:
            return "{"
        if draw == 1 and winner:
            return answer
        obj = json.loads(answer)
        for k, interest in enumerate(obj):  # [name, tags] (answer format 5)
            interest[-1] = [f"{JUNK} {k}"] if interest[-1] else []
        return json.dumps(obj)

    return respond


# --- Selection and reward -----------------------------------------------------------------------------


def test_select_best_keeps_the_best_valid_sample_only_when_it_beats_history():
    assert select_best([0.2, None, 0.5, 0.4], baseline=0.3) == 2
    assert select_best([0.2, None, 0.5, 0.5], baseline=0.3) == 2  # ties: the first draw
    assert select_best([0.2, 0.3], baseline=0.3) is None  # equal to the history list is not better
    assert select_best([None, None], baseline=0.0) is None
    assert select_best([0.0, 0.1], baseline=0.0) == 1


def _items():
    genres = [("Comedy",), ("Comedy", "Romance"), ("Drama",), ("Comedy", "Romance"), ("Horror",), ("Drama",)]
    return [Item(item_id=str(n), title=f"T{n}", genres=g) for n, g in enumerate(genres, start=1)]


def test_tag_reward_ranks_each_target_among_the_items_the_user_did_not_take():
    items = _items()
    cat = TagCatalogue.build(items, lambda it: frozenset(it.genres),
                             lambda tag: frozenset(w.capitalize() for w in tag.split()))
    targets = np.array([2])  # a comedy-romance
    # "comedy romance" matches items 2 and 4; pessimistic ties put 4 ahead of the target: rank 2.
    assert tag_reward(["comedy romance"], targets, np.array([], dtype=np.int64), cat) == pytest.approx(1 / np.log2(3))
    # Item 4 was taken before the cut: excluded, the target ranks first.
    assert tag_reward(["comedy romance"], targets, np.array([4]), cat) == pytest.approx(1.0)
    # Several targets: each is ranked with the others excluded, and the reward is their mean NDCG@10.
    assert tag_reward(["comedy romance"], np.array([2, 4]), np.array([], dtype=np.int64), cat) == pytest.approx(1.0)
    assert tag_reward(["horror"], np.array([2, 4]), np.array([], dtype=np.int64), cat) < 0.5
    assert tag_reward([JUNK], targets, np.array([], dtype=np.int64), cat) < tag_reward(["comedy"], targets,
                                                                                       np.array([4]), cat)


def test_reward_targets_are_the_liked_after_cut_events_within_the_horizon():
    vocab = ItemVocab(ids=tuple(str(n) for n in range(1, 7)))
    after = pd.DataFrame({"item_id": ["3", "1", "5", "3", "6"],
                          "behavior": ["liked", "disliked", "watched", "liked", "liked"]})
    assert reward_targets(after, 4, vocab).tolist() == [3, 5]  # disliked out, repeat once, 6 beyond the horizon


# --- Rounds with a fake backend -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def prep(tiny, tokenizer):
    return prepare_cases(tiny, _config(), tokenizer, MINING)


def test_a_round_keeps_the_best_sample_where_it_beats_history_and_counts_failures(prep, tmp_path):
    config = _config(samples=3)
    backend = FakeBackend(sft_echo(prep, 3))
    samples, stats = sample_round(prep.cases, backend, tmp_path / "sft", config, prep.catalogue, MINING, prep.attrs)
    assert backend.calls == [{"n": 3 * len(prep.cases), "json_schema": True, "adapter": str(tmp_path / "sft"),
                              "frequency_penalty": MINING.frequency_penalty}]  # one batched call
    pool = Pool()
    record = keep_round(1, prep.cases, samples, stats, prep.catalogue, pool)
    n = len(prep.cases)
    assert (record["sampled"], record["valid"], record["parse_failures"]) == (3 * n, 2 * n, n)
    wire = interests_wire(MINING)
    beats = []
    for case, draws in zip(prep.cases, samples):
        assert draws[0] is None and draws[2].reward == 0.0
        hist = tag_reward(case.history_tags, case.targets, case.seen, prep.catalogue)
        assert draws[1].tags == case.sft_tags  # the SFT target, re-read the way mining reads an answer
        assert draws[1].reward == pytest.approx(tag_reward(case.sft_tags, case.targets, case.seen, prep.catalogue))
        if draws[1].reward > hist:
            beats.append(case.key)
            sample, example = pool.kept[case.key]
            assert sample is draws[1] and example.task == "tags-self-train"
            assert list(example.messages[:-1]) == case.prompt
            assert wire.model_validate_json(example.messages[-1]["content"])
        else:
            assert case.key not in pool.kept
    assert 0 < len(beats) < n  # the tiny data has both kinds of cut
    assert record["kept"] == record["pool"] == len(beats)
    assert record["reward_kept"] > record["reward_history_on_kept"]
    assert record["reward_kept"] == pytest.approx(record["reward_sft_on_kept"])
    # A later round offering a worse answer for a kept cut does not replace it.
    first = next(iter(pool.kept))
    case = next(c for c in prep.cases if c.key == first)
    worse = type(pool.kept[first][0])(answer="{}", tags=(), reward=-1.0)
    assert not pool.offer(case, worse) and pool.kept[first][0].reward > -1.0


def test_self_training_never_reads_validation_or_test_events(tiny, tokenizer):
    # Poison: every user's validation and test events now name sentinel items that exist in the catalogue.
    ev = tiny.events.copy()
    from_end = ev.groupby("user_id", sort=False).cumcount(ascending=False)
    ev.loc[from_end == 0, "item_id"], ev.loc[from_end == 1, "item_id"] = "sentinel-test", "sentinel-valid"
    row = tiny.items.iloc[[0, 0]].copy()
    row["item_id"], row["title"] = ["sentinel-test", "sentinel-valid"], ["Leaky Test (1997)", "Leaky Valid (1997)"]
    items = pd.concat([tiny.items, row], ignore_index=True)
    poisoned = Dataset(name="poisoned", events=ev, items=items, users=tiny.users, domain=tiny.domain)
    config = _config(samples=2)
    from finetune import sft_split

    split = sft_split(poisoned, config.finetune)
    assert set(split.test["item_id"]) == {"sentinel-test"} and set(split.valid["item_id"]) == {"sentinel-valid"}

    prep = prepare_cases(poisoned, config, tokenizer, MINING)
    vocab = ItemVocab.from_items(items)
    sentinels = set(vocab.encode(["sentinel-test", "sentinel-valid"]).tolist())
    samples, stats = sample_round(prep.cases, FakeBackend(sft_echo(prep, 2)), None, config, prep.catalogue, MINING,
                                  prep.attrs)
    pool = Pool()
    keep_round(1, prep.cases, samples, stats, prep.catalogue, pool)
    assert prep.cases and pool.kept
    for case in prep.cases:  # reward inputs: targets and excluded history
        assert not sentinels & set(case.targets.tolist()) and not sentinels & set(case.seen.tolist())
        assert not {"sentinel-test", "sentinel-valid"} & set(case.built.narrative.item_ids)
        assert not {"sentinel-test", "sentinel-valid"} & set(case.built.cut.after["item_id"])
    texts = [m["content"] for ex in [*prep.sft_examples, *pool.examples()] for m in ex.messages]
    assert texts and not any("Leaky" in t for t in texts)  # prompts, SFT targets and kept answers


def _round0(tmp_path):
    """A round-0 adapter folder for a fake backend, which never loads weights: only its files matter."""
    sft = tmp_path / "sft"
    sft.mkdir()
    (sft / "adapter_config.json").write_text(json.dumps({"r": 4}))
    (sft / "manifest.json").write_text(json.dumps({"mining_config": MINING.model_dump(mode="json")}))
    return sft


def test_each_round_retrains_on_sft_plus_kept_and_samples_from_the_last_adapter(tiny, prep, tmp_path, monkeypatch):
    import finetune.self_train as st

    trained = []

    def record_training(examples, config, out, *, model=None, manifest_extra=None):
        trained.append((list(examples), config, manifest_extra))
        out.mkdir(parents=True)
        (out / "adapter_config.json").write_text(json.dumps({"r": config.r}))
        return type("R", (), {"train_examples": len(examples), "steps": 1})()

    monkeypatch.setattr(st, "train_lora", record_training)
    sft, out = _round0(tmp_path), tmp_path / "self"
    (out / "round-7").mkdir(parents=True)  # an earlier run's round: the folder is replaced
    config = _config(samples=3, rounds=2)
    backend = FakeBackend(sft_echo(prep, 3))
    result = st.self_train(tiny, config, sft, out, backend=backend, mining=MINING)
    assert [c["adapter"] for c in backend.calls] == [str(sft), str(out / "round-1")]
    assert result.final_adapter == out / "round-2" and not (out / "round-7").exists()
    rounds = json.loads((out / "rounds.json").read_text())["rounds"]
    assert [r["adapter"] for r in rounds] == ["round-1", "round-2"] and rounds == result.rounds
    assert rounds[0]["pooled_new"] == rounds[0]["kept"] > 0 and rounds[1]["pooled_new"] == 0  # same answers again
    for examples, ft, extra in trained:
        assert ft == config.finetune and extra["round"] in (1, 2) and extra["task"] == "tags-self-train"
        tasks = [e.task for e in examples]
        assert tasks.count("interests") == len(prep.sft_examples)
        assert tasks.count("tags-self-train") == rounds[0]["kept"]


def test_resume_continues_after_the_last_round_with_its_adapter_and_pool(tiny, prep, tmp_path, monkeypatch):
    import finetune.self_train as st

    trained = []

    def record_training(examples, config, out, *, model=None, manifest_extra=None):
        trained.append(list(examples))
        out.mkdir(parents=True)
        (out / "adapter_config.json").write_text(json.dumps({"r": config.r}))
        return type("R", (), {"train_examples": len(examples), "steps": 1})()

    monkeypatch.setattr(st, "train_lora", record_training)
    sft, out = _round0(tmp_path), tmp_path / "self"
    first = FakeBackend(sft_echo(prep, 3))
    st.self_train(tiny, _config(samples=3, rounds=1), sft, out, backend=first, mining=MINING)
    pool_lines = (out / "pool.jsonl").read_text().splitlines()
    kept = json.loads((out / "rounds.json").read_text())["rounds"][0]["kept"]
    assert len(pool_lines) == kept > 0 and {json.loads(x)["round"] for x in pool_lines} == {1}

    backend = FakeBackend(sft_echo(prep, 3))
    result = st.self_train(tiny, _config(samples=3, rounds=2), sft, out, backend=backend, mining=MINING, resume=True)
    assert [c["adapter"] for c in backend.calls] == [str(out / "round-1")]  # round 1 is not sampled again
    assert [r["round"] for r in result.rounds] == [1, 2] and result.final_adapter == out / "round-2"
    assert result.rounds[1]["pool"] == kept and result.rounds[1]["pooled_new"] == 0 and "pool_lost" not in result.rounds[1]
    assert sum(e.task == "tags-self-train" for e in trained[-1]) == kept  # round 1's answers still train round 2
    # Nothing left to do: the same rounds come back, nothing is sampled or trained
    idle = FakeBackend(lambda m, s: pytest.fail("no round is due"))
    assert st.self_train(tiny, _config(samples=3, rounds=2), sft, out, backend=idle, mining=MINING,
                         resume=True).rounds == result.rounds

    # A folder written before the pool was saved resumes with an empty pool, and says how many answers it lost
    (out / "pool.jsonl").unlink()
    records = json.loads((out / "rounds.json").read_text())
    records["rounds"] = records["rounds"][:1]
    (out / "rounds.json").write_text(json.dumps(records))
    redo = st.self_train(tiny, _config(samples=3, rounds=2), sft, out, backend=FakeBackend(sft_echo(prep, 3)),
                         mining=MINING, resume=True)
    assert redo.rounds[1]["pool_lost"] == kept and redo.rounds[1]["pool"] == redo.rounds[1]["kept"]

    # Other options, another round-0 adapter or no earlier run: refused, naming what differs
    with pytest.raises(AdapterError, match="self_train_config"):
        st.self_train(tiny, _config(samples=2, rounds=3), sft, out, backend=FakeBackend(), mining=MINING, resume=True)
    other = tmp_path / "other"
    other.mkdir()
    (other / "adapter_config.json").write_text(json.dumps({"r": 4}))
    with pytest.raises(AdapterError, match="continues round-0 adapter"):
        st.self_train(tiny, _config(samples=3, rounds=3), other, out, backend=FakeBackend(), mining=MINING,
                      resume=True)
    with pytest.raises(AdapterError, match="no rounds.json"):
        st.self_train(tiny, _config(samples=3), sft, tmp_path / "new", backend=FakeBackend(), mining=MINING,
                      resume=True)
    bad = out / "pool.jsonl"
    bad.write_text(json.dumps({"key": "no-such-cut", "round": 1, "reward": 0.5, "tags": [], "answer": "[]"}) + "\n")
    with pytest.raises(AdapterError, match="pool.jsonl, line 1"):
        st.self_train(tiny, _config(samples=3, rounds=3), sft, out, backend=FakeBackend(), mining=MINING,
                      resume=True)


def test_a_round_that_keeps_nothing_does_not_retrain(tiny, prep, tmp_path, monkeypatch):
    import finetune.self_train as st

    monkeypatch.setattr(st, "train_lora", lambda *a, **k: pytest.fail("nothing was kept: no training"))
    sft = _round0(tmp_path)
    result = st.self_train(tiny, _config(samples=3, rounds=1), sft, tmp_path / "self",
                           backend=FakeBackend(sft_echo(prep, 3, winner=False)), mining=MINING)
    assert result.final_adapter == sft and result.rounds[0]["kept"] == 0 and result.rounds[0]["adapter"] is None
    with pytest.raises(ValueError, match="exactly one of backend"):
        st.self_train(tiny, _config(), sft, tmp_path / "x", mining=MINING)
    with pytest.raises(AdapterError, match="round-0 adapter itself"):
        st.self_train(tiny, _config(), sft, sft, backend=FakeBackend(), mining=MINING)
    with pytest.raises(AdapterError, match="adapter_config.json"):
        st.self_train(tiny, _config(), tmp_path, tmp_path / "x", backend=FakeBackend(), mining=MINING)


# --- The CLI task -------------------------------------------------------------------------------------


@pytest.mark.slow  # two real (one-step) LoRA trainings of SmolLM2: minutes on a shared 2-core machine
def test_finetune_cli_self_trains_two_rounds(ml100k, tokenizer, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import llmrec.llm
    import llmrec.llm.model
    from llmrec.cli import app

    sft = _round0(tmp_path)
    prep = prepare_cases(ml100k, SelfTrainConfig(finetune=tiny_config(), max_users=20), tokenizer, MINING)
    fakes: list[FakeBackend] = []
    served: list[str] = []

    def fake_backend(config):
        served.append(config.model)
        fakes.append(FakeBackend(sft_echo(prep, 2)))
        return fakes[-1]

    monkeypatch.setattr(llmrec.llm, "make_backend", fake_backend)
    monkeypatch.setattr(llmrec.llm.model, "merged_model", lambda model, adapter: Path(adapter) / "merged")
    out = tmp_path / "self"
    res = CliRunner().invoke(app, ["finetune", "--dataset", "ml-100k", "--task", "tags-self-train", "--tiny",
                                   "--adapter", str(sft), "--out", str(out), "--rounds", "2", "--samples", "2",
                                   "--train-tokens", "600", "--max-minutes", "0.00001", "--r", "4"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert [r["round"] for r in summary["rounds"]] == [1, 2] and summary["final_adapter"] == str(out / "round-2")
    # Each round sampled from its adapter merged into the weights (round 2 from round 1's), in one call.
    assert served == [str(sft / "merged"), str(out / "round-1" / "merged")]
    assert [[c["adapter"] for c in f.calls] for f in fakes] == [[None], [None]]
    rounds = json.loads((out / "rounds.json").read_text())["rounds"]
    for r, rec in enumerate(rounds, start=1):
        assert rec["sampled"] == 2 * rec["cuts"] and rec["valid"] == rec["cuts"] and rec["kept"] > 0
        assert rec["adapter"] == f"round-{r}" and rec["steps"] == 1
        manifest = json.loads((out / rec["adapter"] / "manifest.json").read_text())
        assert manifest["task"] == "tags-self-train" and manifest["round"] == r and manifest["rounds"][-1]["kept"]
        assert json.loads((out / rec["adapter"] / "adapter_config.json").read_text())["r"] == 4
        cfg = SelfTrainConfig.model_validate(manifest["self_train_config"])
        assert (cfg.rounds, cfg.samples, cfg.max_users, cfg.finetune.r) == (2, 2, 20, 4)


def test_config_knobs_reach_the_sampler_and_the_cuts(tiny, tokenizer, prep, tmp_path):
    from pydantic import ValidationError

    class Recording(FakeBackend):
        def generate(self, prompts, *, temperature=0.0, **kw):
            self.temperatures = [*getattr(self, "temperatures", []), temperature]
            return super().generate(prompts, temperature=temperature, **kw)

    backend = Recording(sft_echo(prep, 2))
    sample_round(prep.cases, backend, None, _config(samples=2, temperature=0.7), prep.catalogue, MINING, prep.attrs)
    assert backend.temperatures == [0.7] and backend.calls[0]["n"] == 2 * len(prep.cases)
    from finetune import first_users, sft_split

    first3 = set(first_users(sft_split(tiny, _config().finetune).train, 3)["user_id"])
    few = prepare_cases(tiny, _config(max_users=3), tokenizer, MINING)
    assert len(first3) == 3 and {c.built.cut.user_id for c in few.cases} <= first3
    assert few.sft_examples == prep.sft_examples  # every round retrains on all train users' SFT examples
    assert len({c.built.cut.user_id for c in prep.cases}) > 3
    for bad in ({"temperature": 0.0}, {"rounds": 0}, {"samples": 0}, {"max_users": 0}, {"round": 2}):
        with pytest.raises(ValidationError, match=next(iter(bad))):
            SelfTrainConfig(**bad)


def test_cli_config_comes_from_the_round0_adapter_then_the_flags(tmp_path):
    from typer.testing import CliRunner

    from llmrec.cli import app
    from llmrec.cli.self_train import adapter_mining, self_train_config
    from llmrec.config import FinetuneConfig

    sft = _round0(tmp_path)
    FinetuneConfig(cut_fractions=(0.6,), r=4).to_json(sft / "config.json")
    cfg = self_train_config(sft, None, {"max_train_tokens": 900, "r": None}, False, rounds=3, samples=None,
                            max_users=50)
    assert (cfg.rounds, cfg.samples, cfg.max_users, cfg.finetune.cut_fractions, cfg.finetune.r,
            cfg.finetune.max_train_tokens) == (3, 4, 50, (0.6,), 4, 900)
    file = SelfTrainConfig(samples=6, finetune=FinetuneConfig(r=2)).to_json(tmp_path / "st.json")
    assert self_train_config(sft, file, {}, False).samples == 6
    assert adapter_mining(sft) == MINING and adapter_mining(tmp_path) == MiningConfig()
    older = tmp_path / "older"  # an adapter whose manifest names a MiningConfig field since dropped
    older.mkdir()
    (older / "manifest.json").write_text(json.dumps({"mining_config": {**MINING.model_dump(mode="json"),
                                                                       "decode_string_limits": False}}))
    assert adapter_mining(older) == MINING
    for flags, word in ((["--task", "tags-self-train"], "--adapter"),
                        (["--task", "tags-self-train", "--adapter", str(sft), "--backend", "llama"], "--backend"),
                        (["--task", "interests", "--resume"], "--resume")):
        res = CliRunner().invoke(app, ["finetune", "--out", str(tmp_path / "o"), *flags])
        assert res.exit_code == 2 and word in res.output


@pytest.mark.slow  # the real model samples with an adapter (transformers; CPU decoding)
def test_real_model_samples_a_round_through_an_adapter(prep, model_dir, tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from llmrec.config import LLMConfig
    from llmrec.llm import make_backend

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])).save_pretrained(
        tmp_path / "lora")
    backend = make_backend(LLMConfig(backend="transformers", batch_size=4))
    mining = MiningConfig(max_tokens=48)  # answers are cut short: the counts must still add up
    cases = prep.cases[:2]
    samples, stats = sample_round(cases, backend, tmp_path / "lora", _config(samples=2), prep.catalogue, mining,
                                  prep.attrs)
    assert stats.calls == 1 and stats.answers == 4 and stats.output_tokens > 0
    valid = [s for draws in samples for s in draws if s is not None]
    assert len(valid) == stats.valid_final and stats.valid_final + stats.parse_failures + stats.semantic_failures == 4
    assert all(0.0 <= s.reward <= 1.0 for s in valid)
    record = keep_round(1, cases, samples, stats, prep.catalogue, Pool())
    assert record["sampled"] == 4 and record["reward_history"] is not None
