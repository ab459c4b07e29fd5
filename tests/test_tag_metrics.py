from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from llmrec.data import DataError, ItemVocab, sort_events
from llmrec.eval.tag_metrics import (
    TagCatalogue,
    legacy_tag_hr,
    match_scores,
    novel_hit_rate,
    profile_shares,
    retrieval_metrics,
    source_shares,
    specificity_hit,
    tag_metrics,
)
from llmrec.schema import Item
from llmrec.tags import (
    history_tags,
    item_attributes,
    popular_tags,
    tag_attributes,
    tag_hit_rate,
)

# Index 1..6; the only romcom is index 1, the only noir index 3.
ITEMS = [
    Item(item_id="1", title="Sleepless in Seattle", genres=("Comedy", "Romance"), year=1993),
    Item(item_id="2", title="Clerks", genres=("Comedy",), year=1994),
    Item(item_id="3", title="The Big Sleep", genres=("Film-Noir", "Mystery"), year=1946),
    Item(item_id="4", title="Heat", genres=("Action", "Crime"), year=1995),
    Item(item_id="5", title="Fargo", genres=("Crime", "Drama"), year=1996),
    Item(item_id="6", title="Casablanca", genres=("Drama", "Romance", "War"), year=1942),
]
NONE = np.zeros(0, dtype=np.int64)


@pytest.fixture(scope="module")
def cat() -> TagCatalogue:
    return TagCatalogue.build(ITEMS, item_attributes, tag_attributes)


def test_catalogue_matches_every_named_attribute_and_measures_specificity(cat):
    assert np.flatnonzero(cat.matches("romantic comedy")).tolist() == [1]
    assert np.flatnonzero(cat.matches("comedies")).tolist() == [1, 2]
    assert np.flatnonzero(cat.matches("1990s")).tolist() == [1, 2, 4, 5]
    assert not cat.matches("dark stuff").any() and not cat.matches("1990s noir").any()
    assert cat.specificity("romantic comedy") == pytest.approx(math.log(6))
    assert cat.specificity("1990s") == pytest.approx(-math.log(4 / 6))
    assert cat.specificity("dark stuff") == 0.0
    assert cat.hits("noir", 3) and not cat.hits("noir", 1) and not cat.matches("noir")[0]  # padding never


def test_match_scores_count_matched_tags_and_ties_stay_pessimistic(cat):
    scores = match_scores([["romantic comedy", "comedy", "comedy"], ["1990s"]], cat)
    assert scores[0].tolist() == [-np.inf, 2, 1, 0, 0, 0, 0]  # a repeated tag counts once
    # User 0's target (the romcom) is alone on top; user 1's (Heat) ties with three other 90s films -> rank 4.
    m = retrieval_metrics(scores, np.array([1, 4]), [NONE, NONE])
    assert m["tag_ndcg@10"] == pytest.approx((1.0 + 1.0 / math.log2(5)) / 2)
    assert m["tag_hr@50"] == 1.0
    # Seen items are excluded: with the romcom seen and Clerks the target, Clerks ranks first.
    assert retrieval_metrics(scores[:1], np.array([2]), [np.array([1])])["tag_ndcg@10"] == 1.0


def test_tag_metrics_scores_a_tower_and_judges_only_the_first_k_tags(cat):
    calls = []

    def tower(lists):
        calls.append(lists)
        s = np.zeros((len(lists), cat.size))
        s[:, 3] = 1.0  # the tower always puts the noir first
        return s

    m = tag_metrics([["dark stuff", "noir"]], [3], [NONE], cat, k=1, tower=tower)
    assert calls == [[["dark stuff"]]]  # truncated to k before anything sees the tags
    assert m["tower_ndcg@10"] == 1.0 and m["tower_hr@50"] == 1.0
    assert m["legacy_tag_hr@1"] == 0.0 and m["specificity_hit@1"] == 0.0  # "noir" is the 2nd tag, cut at k=1
    assert tag_metrics([["dark stuff", "noir"]], [3], [NONE], cat, k=2)["legacy_tag_hr@2"] == 1.0


def test_specificity_hit_credits_narrow_hits_more_than_broad_ones(cat):
    broad = specificity_hit([["1990s", "comedy"]], [1], cat, k=10)
    narrow = specificity_hit([["1990s", "romantic comedy"]], [1], cat, k=10)
    assert broad == pytest.approx(math.log(3))  # the best hit: "comedy" matches 2 of 6 items
    assert narrow == pytest.approx(math.log(6)) and narrow > broad
    assert specificity_hit([["noir"]], [1], cat, k=10) == 0.0  # no hit, no credit


def test_novel_hit_needs_a_combination_absent_from_the_visible_history(cat):
    seen_comedy = [np.array([2])]  # the user has seen Clerks (90s comedy)
    assert novel_hit_rate([["comedy"]], [1], seen_comedy, cat, k=10) == 0.0  # the history already had it
    assert novel_hit_rate([["romantic comedy"]], [1], seen_comedy, cat, k=10) == 1.0
    assert novel_hit_rate([["romantic comedy"]], [4], seen_comedy, cat, k=10) == 0.0  # no hit at all


def test_legacy_tag_hr_equals_the_recgpt_measure_in_llmrec_tags(cat):
    lists = [["romantic comedy"], ["1990s", "noir"], ["dark"], ["crime"]]
    targets = [1, 3, 2, 5]
    expected = tag_hit_rate(lists, [ITEMS[t - 1] for t in targets], k=2)
    assert legacy_tag_hr(lists, targets, cat, k=2) == expected == 0.75


def test_bad_inputs_raise(cat):
    with pytest.raises(ValueError, match="2 users but targets has 1"):
        specificity_hit([["a"], ["b"]], [1], cat, k=10)
    with pytest.raises(ValueError, match="k must be"):
        legacy_tag_hr([["a"]], [1], cat, k=0)
    with pytest.raises(ValueError, match="seen has 0"):
        novel_hit_rate([["a"]], [1], [], cat, k=3)
    with pytest.raises(DataError, match="at least one item"):
        TagCatalogue.build([], item_attributes, tag_attributes)


def test_a_fallback_only_tags_table_has_llm_share_zero():
    table = pa.table({"user_id": ["1", "2"], "tags": [["drama"], ["comedy"]], "source": ["fallback", "fallback"]})
    assert profile_shares(table) == {"llm_share": 0.0, "fallback_share": 1.0, "heuristic_share": 0.0}
    mixed = pd.DataFrame({"user_id": list("abcd"), "source": ["llm", "llm", "fallback", "heuristic"]})
    assert profile_shares(mixed) == {"llm_share": 0.5, "fallback_share": 0.25, "heuristic_share": 0.25}


def test_shares_refuse_tables_that_cannot_say_where_tags_came_from():
    with pytest.raises(DataError, match="no 'source' column"):
        profile_shares(pa.table({"user_id": ["1"], "tags": [["drama"]]}))
    with pytest.raises(DataError, match="row 1: profile source 'gpt'"):
        source_shares(["llm", "gpt"])
    with pytest.raises(DataError, match="no profile"):
        source_shares([])


# --- Sanity rows on ML-100K-shaped data -------------------------------------------------------------------

ISSUE_CONSTANT = ["90s movies", "dramas", "comedies", "action films", "thrillers", "romantic films", "sci-fi"]
TARGETS_PER_USER = 10  # 20 users x their last 10 events: enough next items for a stable ordering


def _next_item_cases(ds, vocab):
    """(targets, seen index arrays, seen Items): each of a user's last events as of its own timestamp, the
    visible history being the events strictly before it (as a narrative sees them)."""
    targets, seen, seen_items = [], [], []
    for _, g in sort_events(ds.events).groupby("user_id", sort=True):
        codes, ts = vocab.encode(g["item_id"]), g["timestamp"].to_numpy()
        for p in range(len(g) - TARGETS_PER_USER, len(g)):
            visible = codes[ts < ts[p]]
            targets.append(int(codes[p]))
            seen.append(visible)
            seen_items.append([ds.item_index[vocab.ids[c - 1]] for c in visible])
    return targets, seen, seen_items


def test_constant_and_single_tag_rows_score_below_history_tags_on_real_movielens(real_ml100k):
    """On real tastes (the synthetic fixture's users have no genre preference, so no tag can predict them):
    the first 20 users of ML-100K, their last 10 events each."""
    from llmrec.data import Dataset

    first = sorted(real_ml100k.events["user_id"].unique(), key=lambda u: (len(u), u))[:20]
    tiny = Dataset(name="ml-100k-20", events=real_ml100k.events[real_ml100k.events["user_id"].isin(first)],
                   items=real_ml100k.items, users=real_ml100k.users, domain=real_ml100k.domain)
    vocab = ItemVocab.from_items(tiny.items)
    cat = TagCatalogue.build([tiny.item_index[i] for i in vocab.ids], item_attributes, tag_attributes)
    targets, seen, seen_items = _next_item_cases(tiny, vocab)
    n = len(targets)
    everyone = {u: [tiny.item_index[i] for i in g["item_id"]] for u, g in tiny.events.groupby("user_id")}
    single = popular_tags(everyone.values(), 1)
    rows = {name: tag_metrics(lists, targets, seen, cat, k=10) for name, lists in (
        ("history_tags", [history_tags(h, 10) for h in seen_items]),
        ("constant", [ISSUE_CONSTANT] * n),
        ("single_tag", [single] * n),
    )}
    history = rows["history_tags"]
    assert history["novel_hit@10"] == 0.0  # by construction: its tags come from the history
    for name in ("constant", "single_tag"):
        for metric in ("tag_ndcg@10", "tag_hr@50", "specificity_hit@10"):
            assert rows[name][metric] < history[metric], (name, metric, rows[name][metric], history[metric])
    # The legacy measure is fooled: the constant list "hits" more often than the user's own tags.
    assert rows["constant"]["legacy_tag_hr@10"] > history["legacy_tag_hr@10"]


# --- Fallback accounting through the retriever's tags input ----------------------------------------------


def test_read_tags_table_records_the_source_shares_of_a_profiles_table(tmp_path):
    import pyarrow.parquet as pq

    from llmrec.interests import profiles_to_table
    from llmrec.schema import InterestProfile, Tag
    from retrieval.train import read_tags_table, tag_shares

    fallback_only = [InterestProfile(user_id=u, tags=(Tag(text="1990s drama"),), source="fallback") for u in "12"]
    pq.write_table(profiles_to_table(fallback_only), tmp_path / "fallback.parquet")
    tags, info = read_tags_table(tmp_path / "fallback.parquet")
    assert tags == {"1": ["1990s drama"], "2": ["1990s drama"]}  # the tags are still served...
    assert info["llm_share"] == 0.0 and info["fallback_share"] == 1.0  # ...but never counted as the LLM's
    assert tag_shares(tags, info) == {"llm_share": 0.0, "fallback_share": 1.0, "heuristic_share": 0.0}

    pq.write_table(pa.table({"user_id": ["1"], "tags": [["drama"]]}), tmp_path / "bare.parquet")
    _, bare = read_tags_table(tmp_path / "bare.parquet")
    assert "llm_share" not in bare and bare["shares"].startswith("unknown")
    assert tag_shares({"1": ["drama"]}, bare) == {}  # unknown stays unknown
    assert tag_shares(None, None) == {"llm_share": 0.0, "fallback_share": 0.0, "heuristic_share": 1.0}


# --- The benchmark's rows ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bench():
    """benchmarks/llm_stages.py as a module (benchmarks/ is not an installed package)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "llm_stages.py"
    spec = importlib.util.spec_from_file_location("llm_stages_bench", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _WordTokenizer:
    """One token per whitespace word: enough for a narrative budget in a wiring test."""

    def __call__(self, texts, add_special_tokens=False):
        return {"input_ids": [[0] * len(t.split()) for t in texts]}


def test_heuristics_and_narratives_see_the_same_events_strictly_before_the_target(tiny, bench):
    from llmrec.config import NarrativeConfig
    from llmrec.data.split import split_leave_one_out
    from llmrec.narrative import render_narratives

    split = split_leave_one_out(tiny.events)
    as_of = split.as_of("test")
    visible = bench.visible_events(split)
    assert (visible["timestamp"].to_numpy() < visible["user_id"].map(as_of).to_numpy()).all()
    narratives = render_narratives(visible, tiny.items, as_of, NarrativeConfig(max_tokens=100_000), _WordTokenizer())
    seen = {u: set(g["item_id"]) for u, g in visible.groupby("user_id")}
    target = dict(zip(split.test["user_id"], split.test["item_id"]))
    for n in narratives:
        assert n.item_ids and set(n.item_ids) <= seen[n.user_id]  # the narrative shows nothing the heuristics lack
        assert target[n.user_id] not in seen[n.user_id]


def test_sanity_rows_are_constant_single_and_seeded_random(tiny, bench):
    seen = {u: [tiny.item_index[i] for i in g["item_id"]] for u, g in tiny.events.groupby("user_id")}
    catalogue = list(tiny.item_index.values())
    rows = bench.heuristic_rows(seen, ["1", "2", "3"], catalogue, 10, seed=0)
    assert set(rows) == {"history_tags", "popular_tags", "single_tag", "random_tags"}
    assert rows["popular_tags"][0] == rows["popular_tags"][2] == popular_tags(seen.values(), 10)
    assert rows["single_tag"] == [rows["popular_tags"][0][:1]] * 3
    assert rows["history_tags"][1] == history_tags(seen["2"], 10)
    assert all(len(t) == 10 for t in rows["random_tags"]) and rows["random_tags"][0] != rows["random_tags"][1]
    assert bench.heuristic_rows(seen, ["1", "2", "3"], catalogue, 10, seed=0)["random_tags"] == rows["random_tags"]
    assert bench.heuristic_rows(seen, ["1", "2", "3"], catalogue, 10, seed=1)["random_tags"] != rows["random_tags"]


def test_speed_ratios_compare_best_with_best_and_each_shared_batch_size(bench):
    rates = {("vllm", 16): 100.0, ("vllm", 64): 400.0, ("vllm", 256): 900.0,
             ("transformers", 16): 50.0, ("transformers", 64): 300.0, ("transformers", 256): 200.0}
    recs = {(r["compare"], r.get("batch_size")): r["value"] for r in bench.speed_ratios(rates)}
    assert recs == {("best_vs_best", None): 3.0, ("same_batch", 16): 2.0, ("same_batch", 64): pytest.approx(4 / 3),
                    ("same_batch", 256): 4.5}


def test_llm_rows_record_llm_and_fallback_shares(tiny, bench):
    """The fake's minimal answer repeats one interest, so every user falls back: llm_share 0, no llm_only rows."""
    from datetime import datetime, timezone

    from llmrec.config import MiningConfig
    from llmrec.interests import mine_interests
    from llmrec.llm import FakeBackend
    from llmrec.schema import Narrative

    vocab = ItemVocab.from_items(tiny.items)
    cat = TagCatalogue.build([tiny.item_index[i] for i in vocab.ids], item_attributes, tag_attributes)
    ids = ("1", "2", "3")
    narratives = [Narrative(user_id=u, text="liked | a\nliked | b\nliked | c", n_events_in=3, n_items_out=3,
                            as_of=datetime(1998, 1, 1, tzinfo=timezone.utc), n_tokens=9, max_tokens=64, item_ids=ids)
                  for u in ("1", "2")]
    profiles, stats = mine_interests(narratives, FakeBackend(), MiningConfig(), items=tiny.item_index)
    assert stats.to_dict()["llm_share"] == 0.0 and stats.to_dict()["fallback_share"] == 1.0
    stats.seconds = max(stats.seconds, 1e-3)
    recs = bench.score_llm("fake", profiles, stats, [4, 5], [vocab.encode(ids)] * 2, cat, "fake")
    by = {r["metric"]: r for r in recs if "subset" not in r}
    assert by["llm_share"]["value"] == 0.0 and by["fallback_share"]["value"] == 1.0
    assert {"tag_ndcg", "tag_hr", "specificity_hit", "novel_hit", "legacy_tag_hr"} <= set(by)
    assert "evidence_attributed_per_interest" in by and "grounded" not in by  # format 5: no citations
    assert by["tag_hr"]["k"] == 50 and by["specificity_hit"]["unit"] == "nats"
    assert not [r for r in recs if r.get("subset") == "llm_only"]


def test_benchmark_main_runs_end_to_end_on_a_fake_backend(tiny, bench, tmp_path, monkeypatch):
    """Wiring only (no LLM): every row, the speed sweep and the ratios land in the records file."""
    import json
    import sys

    import llmrec.llm
    import llmrec.llm.model
    from llmrec.config import MiningConfig, NarrativeConfig
    from llmrec.llm import FakeBackend

    def answer(messages, schema):
        names = ["90s comedies", "romantic films", "dark thrillers", "sci-fi adventures", "war dramas"]
        return json.dumps({"i": [{"n": n, "e": [1, 2], "t": [n]} for n in names]})

    made = []

    def fake_backend(config):
        made.append((config.backend, config.batch_size))
        backend = FakeBackend(answer)
        backend.name = config.backend
        return backend

    monkeypatch.setattr(llmrec.llm, "make_backend", fake_backend)
    monkeypatch.setattr(llmrec.llm.model, "merged_model", lambda model, adapter: tmp_path / "merged")
    monkeypatch.setattr(bench, "load_tokenizer", lambda model: _WordTokenizer())
    towers = []

    def fake_tower(path, vocab):
        towers.append(path)
        return lambda lists: np.tile(np.arange(vocab.size, dtype=np.float64), (len(lists), 1))  # [B, V]

    monkeypatch.setattr(bench, "load_tag_tower", fake_tower)
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "manifest.json").write_text(json.dumps({
        "valid_users": [str(u) for u in range(1, 21)], "mining_config": MiningConfig().model_dump(mode="json"),
        "narrative_config": NarrativeConfig(max_tokens=200).model_dump(mode="json")}))
    out = tmp_path / "llm_stages.json"
    data = tiny.save(tmp_path / "d")
    monkeypatch.setattr(sys, "argv", ["llm_stages", "--adapter", str(adapter), "--dataset", str(data), "--users", "6",
                                      "--throughput-users", "4", "--towers", "my-towers", "--out", str(out)])
    bench.main()
    recs = json.loads(out.read_text())
    models = {r["model"] for r in recs if r["metric"] == "tag_ndcg"}
    assert models == {"history_tags", "popular_tags", "single_tag", "random_tags", "lora", "base"}
    assert towers == ["my-towers"] and {r["model"] for r in recs if r["metric"] == "tower_hr"} == models
    llm = {r["metric"]: r["value"] for r in recs if r["model"] == "lora" and r.get("slice") is None
           and "subset" not in r}
    assert llm["llm_share"] == 1.0 and llm["fallback_share"] == 0.0
    # Answer format 5 (the default) cites no lines: evidence is attributed, and no citation rate is reported.
    assert "grounding_exists" not in llm and 0.0 <= llm["evidence_attributed_per_interest"] <= 2.0
    sweep = {(r["path"], r["batch_size"]) for r in recs if r.get("slice") == "speed" and "path" in r}
    assert sweep == {(p, b) for p in ("vllm", "transformers") for b in (16, 64, 256)}
    assert [r["compare"] for r in recs if r["metric"] == "vllm_speedup"].count("same_batch") == 3
    # vLLM: lora, base, one sweep engine; transformers: one per batch size (it batches per forward).
    assert [b for p, b in made if p == "transformers"] == [16, 64, 256] and len(made) == 6
