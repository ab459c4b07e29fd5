import logging

import numpy as np
import pytest

from llmrec.errors import DataError
from llmrec.eval.stats import bootstrap_mean_interval, paired_difference, seed_mean_by_user


def test_bootstrap_interval_brackets_the_mean_and_matches_the_normal_width():
    rng = np.random.default_rng(0)
    diffs = rng.normal(0.05, 0.2, size=2000)
    d = bootstrap_mean_interval(diffs, n_boot=2000, seed=1)
    assert d.mean == pytest.approx(diffs.mean()) and d.n == 2000
    assert d.lo < d.mean < d.hi
    half = 1.96 * diffs.std(ddof=1) / np.sqrt(diffs.size)  # the normal approximation is close at this size
    assert (d.hi - d.lo) / 2 == pytest.approx(half, rel=0.1)
    assert d.significant  # 0.05 with a standard error of ~0.0045
    assert bootstrap_mean_interval(diffs, seed=1) == bootstrap_mean_interval(diffs, seed=1)  # seeded


def test_noise_around_zero_is_not_significant_and_constant_shift_is():
    rng = np.random.default_rng(3)
    noise = rng.choice([-1.0, 1.0], size=400)
    noise -= noise.mean()  # mean exactly 0
    assert not bootstrap_mean_interval(noise, seed=0).significant
    shifted = bootstrap_mean_interval(np.full(10, -0.1))
    assert shifted.lo == shifted.hi == pytest.approx(-0.1) and shifted.significant


def test_paired_difference_pools_seeds_per_user_and_uses_shared_users_only():
    row = [{"a": 0.5, "b": 0.0, "c": 1.0}, {"a": 0.3, "b": 0.2}]  # seed 1 scored only a and b
    ref = [{"a": 0.1, "b": 0.1, "z": 0.9}]
    assert seed_mean_by_user(row) == pytest.approx({"a": 0.4, "b": 0.1, "c": 1.0})
    d = paired_difference(row, ref, n_boot=50)
    assert d.n == 2 and d.mean == pytest.approx(((0.4 - 0.1) + (0.1 - 0.1)) / 2)
    assert paired_difference([{"x": 1.0}], ref) is None


def test_bootstrap_rejects_bad_input():
    with pytest.raises(DataError, match="non-empty"):
        bootstrap_mean_interval(np.array([]))
    with pytest.raises(DataError, match="level"):
        bootstrap_mean_interval(np.ones(3), level=1.5)


def test_aggregate_adds_paired_difference_records_against_sasrec_ce():
    from llmrec.config import EvaluateConfig
    from llmrec.eval.run import Scores, aggregate

    scores = Scores()
    users = [str(u) for u in range(40)]
    for seed in (0, 1):  # SASRec+: 0.1 for everyone; the row: +0.05 for everyone, on two seeds
        scores.add("sasrec_ce", "all", 40, {"ndcg@10": 0.1}, {u: 0.1 for u in users})
        scores.add("three_tower_notag", "all", 40, {"ndcg@10": 0.15}, {u: 0.15 + 0.01 * (seed - 0.5) for u in users})
    scores.add("popularity", "all", 40, {"ndcg@10": 0.1}, {u: (0.0 if int(u) % 2 else 0.2) for u in users})
    scores.seeds_of = {"sasrec_ce": [0, 1], "three_tower_notag": [0, 1], "popularity": [0, 1]}
    recs = aggregate(scores, EvaluateConfig(dataset="toy", bootstrap_samples=200))
    diff = {r["model"]: r for r in recs if r["metric"] == "ndcg@10_diff_vs_sasrec_ce"}
    assert set(diff) == {"three_tower_notag", "popularity"}  # never the reference against itself
    tt = diff["three_tower_notag"]
    assert tt["value"] == pytest.approx(0.05) and tt["lo"] == pytest.approx(0.05) and tt["significant"] is True
    assert tt["n"] == 40 and tt["slice"] == "all" and tt["seeds"] == "0,1"
    pop = diff["popularity"]
    assert pop["value"] == pytest.approx(0.0) and pop["lo"] < 0 < pop["hi"] and pop["significant"] is False
    plain = [r for r in recs if r["model"] == "three_tower_notag" and r["metric"] == "ndcg@10"]
    assert plain[0]["value"] == pytest.approx(0.15) and plain[0]["std"] == 0.0



def test_each_llm_row_is_compared_with_the_same_model_without_its_llm_stage():
    """What the LLM adds is paired against its own counterpart (not SASRec+), on the users both rows scored."""
    from llmrec.config import EvaluateConfig
    from llmrec.eval.report import render_markdown
    from llmrec.eval.run import Scores, aggregate

    scores = Scores()
    users = [str(u) for u in range(30)]
    rows = {"sasrec_ce": 0.10, "three_tower_heuristic_tags": 0.12, "three_tower_llm_lora_tags": 0.15,
            "sasrec_ce_llm_ranker": 0.09, "three_tower_llm_self_tags": 0.14, "three_tower_llm_self2_tags": 0.17}
    for model, v in rows.items():
        scores.add(model, "all", 30, {"ndcg@10": v}, {u: v for u in users})
    scores.add("coldstart_none", "cold_user_1", 20, {"ndcg@10": 0.2}, {u: 0.2 for u in users[:20]})
    scores.add("coldstart_early_fusion", "cold_user_1", 10, {"ndcg@10": 0.1}, {u: 0.1 for u in users[10:20]})
    scores.seeds_of = {m: [0] for m in (*rows, "coldstart_none", "coldstart_early_fusion")}
    recs = aggregate(scores, EvaluateConfig(dataset="toy", bootstrap_samples=100))
    gains = {(r["model"], r["reference"]): r for r in recs if r.get("comparison") == "llm_gain"}
    assert set(gains) == {("three_tower_llm_lora_tags", "three_tower_heuristic_tags"),
                          ("three_tower_llm_self_tags", "three_tower_heuristic_tags"),
                          ("three_tower_llm_self2_tags", "three_tower_heuristic_tags"),
                          ("sasrec_ce_llm_ranker", "sasrec_ce"), ("coldstart_early_fusion", "coldstart_none")}
    # Self-trained tags are also paired against the round-0 (SFT) tags they started from, round 2 against round 1 too.
    rounds = {(r["model"], r["reference"]): r["value"] for r in recs if r.get("comparison") == "self_training_gain"}
    assert rounds == {("three_tower_llm_self_tags", "three_tower_llm_lora_tags"): pytest.approx(-0.01),
                      ("three_tower_llm_self2_tags", "three_tower_llm_self_tags"): pytest.approx(0.03),
                      ("three_tower_llm_self2_tags", "three_tower_llm_lora_tags"): pytest.approx(0.02)}
    lora = gains[("three_tower_llm_lora_tags", "three_tower_heuristic_tags")]
    assert lora["metric"] == "ndcg@10_diff_vs_three_tower_heuristic_tags"
    assert lora["value"] == pytest.approx(0.03) and lora["significant"] is True
    assert gains[("coldstart_early_fusion", "coldstart_none")]["n"] == 10  # the shared users only
    assert gains[("coldstart_early_fusion", "coldstart_none")]["value"] == pytest.approx(-0.1)
    # A ranker over SASRec+ has one difference record against it, marked as the LLM gain (no duplicate).
    vs_sasrec = [r for r in recs if r["model"] == "sasrec_ce_llm_ranker" and r["metric"] == "ndcg@10_diff_vs_sasrec_ce"]
    assert len(vs_sasrec) == 1 and vs_sasrec[0]["value"] == pytest.approx(-0.01)
    assert not [r for r in recs if r["model"] == "three_tower_heuristic_tags" and r.get("comparison")]
    md = render_markdown(recs, {"evaluate_config": {"seeds": [0], "k": 10}})
    assert "## What the LLM stage adds: NDCG@10 difference against the same model without it" in md
    assert "| three_tower_llm_lora_tags | three_tower_heuristic_tags | +0.0300 [+0.0300, +0.0300]* | – |" in md
    assert "| coldstart_early_fusion | coldstart_none | – | -0.1000 [-0.1000, -0.1000]* |" in md
    assert ("| three_tower_llm_self_tags | three_tower_llm_lora_tags (round 0: the SFT adapter's tags) | "
            "-0.0100 [-0.0100, -0.0100]* | – |") in md
    assert "| three_tower_llm_self2_tags | three_tower_llm_self_tags (round 1) | +0.0300 [+0.0300, +0.0300]* | – |" in md
    without_llm = [r for r in recs
                   if not r.get("comparison") and r["model"] in ("sasrec_ce", "three_tower_heuristic_tags")]
    assert "What the LLM stage adds" not in render_markdown(without_llm, {"evaluate_config": {"k": 10}})


def test_aggregate_adds_differences_against_the_baseline_that_leads_on_validation():
    from llmrec.config import EvaluateConfig
    from llmrec.eval.run import Scores, aggregate

    scores = Scores()
    users = [str(u) for u in range(30)]
    for s, knn in (("valid", 0.3), ("all", 0.2)):  # item-kNN leads SASRec+ on validation
        scores.add("sasrec_ce", s, 30, {"ndcg@10": 0.1}, {u: 0.1 for u in users})
        scores.add("item_knn", s, 30, {"ndcg@10": knn}, {u: knn for u in users})
        scores.add("three_tower_heuristic_tags", s, 30, {"ndcg@10": 0.15}, {u: 0.15 for u in users})
        scores.add("three_tower_notag", s, 30, {"ndcg@10": 0.9}, {u: 0.9 for u in users})  # not a baseline
    scores.seeds_of = {m: [0] for m in ("sasrec_ce", "item_knn", "three_tower_heuristic_tags", "three_tower_notag")}
    recs = aggregate(scores, EvaluateConfig(dataset="toy", bootstrap_samples=100))
    lead = {(r["model"], r["slice"]): r for r in recs if r["metric"] == "ndcg@10_diff_vs_item_knn"}
    assert set(lead) == {("three_tower_heuristic_tags", "valid"), ("three_tower_heuristic_tags", "all")}
    assert lead[("three_tower_heuristic_tags", "all")]["value"] == pytest.approx(-0.05)
    # LLM-tag rows' validation is marked optimistic (their tags were mined as of the test time); others are not.
    scores.add("three_tower_llm_lora_tags", "valid", 30, {"ndcg@10": 0.2}, {u: 0.2 for u in users})
    scores.seeds_of["three_tower_llm_lora_tags"] = [0]
    marked = {(r["model"], r["slice"]): r.get("optimistic", False)
              for r in aggregate(scores, EvaluateConfig(dataset="toy", bootstrap_samples=100)) if r["metric"] == "ndcg@10"}
    assert marked[("three_tower_llm_lora_tags", "valid")] is True
    assert marked[("three_tower_heuristic_tags", "valid")] is False and marked[("item_knn", "valid")] is False
    # ...unless the row was trained and validated on tags mined as of the validation time.
    honest = aggregate(scores, EvaluateConfig(dataset="toy", bootstrap_samples=100, llm_lora_tags_valid="v.parquet"))
    assert not [r for r in honest if r.get("optimistic")]
    # SASRec+ leading on validation: no second set of differences.
    scores.drop("item_knn")
    assert not [r for r in aggregate(scores, EvaluateConfig(dataset="toy", bootstrap_samples=100))
                if "_diff_vs_item_knn" in r["metric"]]

def test_resumed_rows_keep_their_per_user_scores_for_the_paired_test(tiny, caplog):
    from llmrec.config import EvaluateConfig
    from llmrec.eval.protocol import user_key
    from llmrec.eval.rows import row_config
    from llmrec.eval.run import Evaluation, run_evaluation

    config = EvaluateConfig(dataset="tiny", models=("popularity", "sasrec_ce"), seeds=(0,), max_users=12,
                            cold_lengths=(0,), short_lengths=(1,), use_llm=False)
    proto = Evaluation(tiny, config).proto
    users, split_hash = proto.slices["all"].users, proto.split.hash
    earlier = {"split_hash": split_hash, "model_configs": {"sasrec_ce": row_config("sasrec_ce", config)},
               "finished": [["sasrec_ce", 0]], "model_reports": {"sasrec_ce": [{"seed": 0, "best_epoch": 1}]},
               "raw": [{"model": "sasrec_ce", "seed": 0, "slice": "all", "n": len(users), "metrics": {"ndcg@10": 0.0},
                        "ndcg_by_user": {user_key(u): 0.0 for u in users}}]}
    caplog.set_level(logging.INFO, logger="llmrec.eval.run")
    run = run_evaluation(tiny, config, resume=earlier)
    lines = [r.getMessage() for r in caplog.records if r.name == "llmrec.eval.run"]
    assert any("resumed 1 finished" in line for line in lines) and run.settings["resumed_pairs"] == 1
    assert not [line for line in lines if "sasrec_ce" in line and "ndcg@" in line]  # taken over, not retrained
    get = {(r["model"], r["slice"], r["metric"]): r for r in run.records}
    diff = get[("popularity", "all", "ndcg@10_diff_vs_sasrec_ce")]
    assert diff["value"] == pytest.approx(get[("popularity", "all", "ndcg@10")]["value"]) and diff["n"] == len(users)
    assert ("popularity", "valid", "ndcg@10_diff_vs_sasrec_ce") not in get  # the resumed row scored "all" only


def test_a_row_on_fewer_seeds_is_paired_with_the_same_seeds_of_its_reference():
    """An LLM row run on the first seed only is paired with its reference's first-seed scores, not with their
    mean over seeds; a deterministic baseline (scored once, seed None) is paired with every seed."""
    from llmrec.eval.run import Scores, run_seed

    scores = Scores()
    for seed, v in ((0, 0.1), (1, 0.3)):
        scores.add("sasrec_ce", "all", 2, {"ndcg@10": v}, {"a": v, "b": v}, run_seed("sasrec_ce", seed))
    scores.add("sasrec_ce_llm_ranker", "all", 2, {"ndcg@10": 0.1}, {"a": 0.1, "b": 0.1}, 0)
    scores.add("popularity", "all", 2, {"ndcg@10": 0.05}, {"a": 0.05, "b": 0.05}, run_seed("popularity", 0))
    assert scores.paired_runs("sasrec_ce_llm_ranker", "sasrec_ce", "all") == [{"a": 0.1, "b": 0.1}]
    assert len(scores.paired_runs("popularity", "sasrec_ce", "all")) == 2
    assert len(scores.paired_runs("sasrec_ce", "popularity", "all")) == 1
    assert scores.paired_runs("sasrec_ce", "item_knn", "all") is None
