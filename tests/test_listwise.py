"""Listwise LLM ranker: lambda = 0 is the retriever exactly, fusion reorders only the top-K, lambda is chosen
on validation, and the SFT examples come from the train split with the target at a uniform position."""

from __future__ import annotations

import numpy as np
import pytest

from llmrec.config import ListwiseConfig
from llmrec.data import ItemVocab
from llmrec.data.split import split_leave_one_out
from llmrec.listwise import (
    LETTERS,
    ListwiseCandidates,
    ListwiseScorer,
    choose_lambda,
    fuse_topk,
    listwise_messages,
    score_listwise,
)
from llmrec.llm import FakeBackend
from llmrec.llm.tokens import load_narrative_tokenizer
from llmrec.metrics import topk
from llmrec.schema import Domain, Item
from retrieval.baselines import PopularityScorer


class FixedScorer:
    name = "fixed"

    def __init__(self, scores: np.ndarray):
        self.scores = scores

    def score(self, histories, user_ids):
        return self.scores[: len(user_ids)].copy()


def _items(n: int) -> list[Item]:
    return [Item(item_id=str(i), title=f"Item {i}", genres=("drama",), year=1990 + i % 10) for i in range(1, n + 1)]


def test_lambda_zero_reproduces_the_retriever_ranking():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(4, 31))  # [B, V]: 30 items + padding
    hist = [np.array([1, 2]), np.array([], dtype=np.int64), np.array([5]), np.array([7, 8, 9])]
    top = topk(base, hist, 10)
    ranker = rng.normal(size=top.shape)  # the LLM disagrees with the retriever
    fused = fuse_topk(base, top, ranker, 0.0)
    assert (topk(fused, hist, 30) == topk(base, hist, 30)).all()
    assert not (topk(fuse_topk(base, top, ranker, 5.0), hist, 10) == top).all()


def test_fusion_reorders_the_top_k_only_and_keeps_them_above_the_rest():
    base = np.array([[0.0, 5.0, 4.0, 3.0, 2.0, 1.0]])  # items 1..5, best first
    top = np.array([[1, 2, 3]])
    ranker = np.array([[-9.0, -5.0, -0.1]])  # the LLM prefers item 3, then 2, then 1
    order = topk(fuse_topk(base, top, ranker, 100.0), [np.array([], dtype=np.int64)], 5)[0]
    assert order.tolist() == [3, 2, 1, 4, 5]


def test_padded_candidates_are_left_alone():
    base = np.array([[0.0, 3.0, 2.0, 1.0]])
    top = np.array([[1, 2, 0]])  # only two candidates (third slot is padding)
    fused = fuse_topk(base, top, np.array([[-5.0, -0.5, 0.0]]), 10.0)
    assert topk(fused, [np.array([], dtype=np.int64)], 3)[0].tolist() == [2, 1, 3]


def test_choose_lambda_uses_the_given_targets_and_prefers_the_smaller_on_ties():
    base = np.array([[0.0, 3.0, 2.0, 1.0], [0.0, 3.0, 2.0, 1.0]])
    top = np.array([[1, 2, 3], [1, 2, 3]])
    ranker = np.array([[-5.0, -5.0, 0.0], [-5.0, -5.0, 0.0]])  # the LLM puts item 3 first
    cands = ListwiseCandidates(base, top, ranker)
    empty = [np.array([], dtype=np.int64)] * 2
    lam, table = choose_lambda(cands, np.array([3, 3]), empty, [0.0, 1.0, 10.0])
    assert lam == 1.0 and table[1.0] == table[10.0] > table[0.0]
    lam, _ = choose_lambda(cands, np.array([1, 1]), empty, [0.0, 1.0, 10.0])  # the retriever was right
    assert lam == 0.0


def test_prompt_letters_candidates_and_names_the_domain():
    config = ListwiseConfig(candidates=3)
    msgs = listwise_messages("1. liked Item 9", _items(3), config, Domain(item="magazine", user="reader"))
    assert msgs[0]["role"] == "system" and "reader" in msgs[0]["content"] and "movie" not in msgs[0]["content"]
    user = msgs[-1]["content"]
    assert "A. Item 1" in user and "C. Item 3" in user and "D." not in user
    with pytest.raises(ValueError, match="candidates"):
        listwise_messages("x", _items(21), ListwiseConfig())


def test_score_listwise_batches_and_trims_to_each_users_candidates():
    backend = FakeBackend()
    lists = [_items(5), _items(3), _items(5)]
    scores = score_listwise(["a", "b", "c"], lists, backend, ListwiseConfig(batch_size=2))
    assert [len(s) for s in scores] == [5, 3, 5] and all(np.isfinite(s).all() for s in scores)


def test_scorer_with_lambda_zero_calls_no_llm():
    class Boom(FakeBackend):
        def score_choices(self, *a, **k):
            raise AssertionError("lambda = 0 must not call the LLM")

    base = FixedScorer(np.arange(12, dtype=np.float64)[None, :].repeat(2, 0))
    s = ListwiseScorer("r", base, {"u": "x", "v": "y"}, _items(11), Boom(), ListwiseConfig(), 0.0)
    out = s.score([np.array([1]), np.array([2])], ["u", "v"])
    assert (out == base.scores[:2]).all()


def test_scorer_times_its_llm_calls_not_the_retrievers_scoring():
    import time

    class SlowBase(FixedScorer):
        def score(self, histories, user_ids):
            time.sleep(0.3)
            return super().score(histories, user_ids)

    class SlowLLM(FakeBackend):
        def score_choices(self, *a, **k):
            time.sleep(0.1)
            return super().score_choices(*a, **k)

    base = SlowBase(np.arange(12, dtype=np.float64)[None, :].repeat(2, 0))
    s = ListwiseScorer("r", base, {"u": "x", "v": "y"}, _items(11), SlowLLM(), ListwiseConfig(), 0.5)
    s.score([np.array([1]), np.array([2])], ["u", "v"])
    assert 0.1 <= s.llm_seconds < 0.3  # the LLM's 0.1 s, without the retriever's 0.3 s


def test_ranker_sft_uses_train_events_only_with_uniform_target_positions(tiny):
    split = split_leave_one_out(tiny.events)
    vocab = ItemVocab.from_items(tiny.items)
    retriever = PopularityScorer.fit(split.train, vocab)
    config = ListwiseConfig(candidates=5, seed=3)
    from finetune.build_ranker import build_ranker_examples, last_train_cuts, target_letters

    examples, report = build_ranker_examples(split.train, tiny.item_index, tiny.items, vocab, retriever, config,
                                             load_narrative_tokenizer())
    assert examples and report.examples == len(examples)
    cuts = last_train_cuts(split.train, 3).set_index("user_id")
    held_out = set(zip(split.valid["user_id"], split.valid["item_id"])) | set(zip(split.test["user_id"],
                                                                                 split.test["item_id"]))
    for ex in examples:
        user_text = ex.messages[-2]["content"]
        letter = ex.messages[-1]["content"]
        target = tiny.item_index[cuts.loc[ex.user_id, "item_id"]]
        assert f"{letter}. {target.title.rsplit(' (', 1)[0]}" in user_text  # the answer names the train target
        assert (ex.user_id, cuts.loc[ex.user_id, "item_id"]) not in held_out
    assert set(target_letters(examples)) <= set(LETTERS[:5]) and len(set(target_letters(examples))) >= 3


@pytest.mark.slow
def test_real_model_scores_letters_with_transformers(model_dir):
    from llmrec.config import LLMConfig
    from llmrec.llm import TransformersBackend

    backend = TransformersBackend(LLMConfig(model=str(model_dir), backend="transformers"))
    scores = score_listwise(["1. liked Star Wars (1977; Action, Sci-Fi)"], [_items(4)], backend, ListwiseConfig())
    assert scores[0].shape == (4,) and np.isfinite(scores[0]).all() and (scores[0] < 0).all()


@pytest.mark.slow
def test_finetune_ranker_trains_a_lora_adapter_on_tiny_data(tiny, tmp_path, model_dir):
    import json

    from finetune import finetune_ranker, tiny_config

    result = finetune_ranker(tiny, tiny_config(max_train_tokens=1500, max_seq_len=1024), tmp_path / "ranker",
                             listwise=ListwiseConfig(candidates=4), retriever="popularity", model=model_dir,
                             max_users=8)
    manifest = json.loads((result.out / "manifest.json").read_text())
    assert (result.out / "adapter_config.json").is_file() and result.steps >= 1
    assert manifest["task"] == "ranker" and manifest["retriever"] == "popularity"


def test_finetune_cli_rejects_an_unknown_task_or_retriever(tmp_path):
    from typer.testing import CliRunner

    from llmrec.cli import app

    for flags, word in ((["--task", "tags"], "--task"), (["--task", "ranker", "--ranker-retriever", "bm25"],
                                                         "--ranker-retriever")):
        res = CliRunner().invoke(app, ["finetune", "--out", str(tmp_path / "a"), *flags])
        assert res.exit_code == 2 and word in res.output
