import json
import logging
import math

import numpy as np
import pandas as pd
import pytest

from llmrec.config import EvaluateConfig, TowerConfig
from llmrec.data import ItemVocab
from llmrec.eval.llm_rows import ColdStartScorer, RerankScorer
from llmrec.eval.protocol import Protocol, SliceView, long_tail_by_mass, sample_users, score_slice
from llmrec.eval.report import leader_verdict, render_markdown, target_lines, write_report
from llmrec.eval.tables import render_table, strongest_baseline
from llmrec.eval.run import run_evaluation


class FixedScorer:
    """Scores chosen by the test: item i gets `scores[i]` for every user."""

    name = "fixed"

    def __init__(self, scores):
        self.scores = np.asarray(scores, dtype=np.float32)

    def score(self, histories, user_ids):
        return np.tile(self.scores, (len(histories), 1))


def _toy_protocol():
    vocab = ItemVocab(ids=tuple("abcdefghijkl"))  # 12 items, indices 1..12
    # Scores 12..1 for items 1..12: item i ranks i-th before exclusions.
    view = SliceView("all", ["u1", "u2", "u3"], np.array([1, 4, 12]),
                     [np.array([], dtype=np.int64), np.array([2], dtype=np.int64), np.array([3], dtype=np.int64)],
                     pd.DataFrame())
    return Protocol(split=None, vocab=vocab, slices={"all": view}, long_tail=np.array([10, 11, 12]), k=10), view


def test_score_slice_turns_known_ranks_into_known_metrics():
    proto, view = _toy_protocol()
    scorer = FixedScorer([0] + list(range(12, 0, -1)))
    m = score_slice(scorer, view, proto, batch_size=2)
    # u1: target 1 -> rank 1; u2: target 4, item 2 excluded -> rank 3; u3: target 12, item 3 excluded -> rank 11.
    ranks = np.array([1, 3, 11])
    assert m["ndcg@10"] == pytest.approx((1 + 1 / math.log2(4)) / 3)
    assert m["hr@10"] == pytest.approx(2 / 3)
    assert m["mrr"] == pytest.approx(np.mean(1 / ranks))
    # Top-10 lists: u1 items 1..10, u2 and u3 items 1..11 minus their seen item -> items 1..11 recommended.
    assert m["coverage@10"] == pytest.approx(11 / 12)
    tail_slots = 1 + 2 + 2  # u1: item 10; u2 and u3: items 10 and 11
    assert m["long_tail_share@10"] == pytest.approx(tail_slots / 30)
    assert m == score_slice(scorer, view, proto, batch_size=256)  # batching changes nothing


def test_long_tail_is_what_lies_outside_the_head_holding_the_mass():
    counts = np.array([0, 50, 30, 10, 5, 5, 0])  # 100 interactions; items 1+2 hold 80%
    assert long_tail_by_mass(counts, 0.8).tolist() == [3, 4, 5, 6]
    assert long_tail_by_mass(counts, 0.81).tolist() == [4, 5, 6]
    assert long_tail_by_mass(counts, 0.5).tolist() == [2, 3, 4, 5, 6]


def test_sample_users_is_seeded_and_keeps_order():
    users = [str(i) for i in range(50)]
    a = sample_users(users, 10, seed=1)
    assert a == sample_users(users, 10, seed=1) and a != sample_users(users, 10, seed=2)
    assert a == sorted(a, key=int) and len(set(a)) == 10
    assert sample_users(users, None, 0) == users and sample_users(users, 99, 0) == users


def test_evaluate_config_validates_and_round_trips(tmp_path):
    with pytest.raises(ValueError, match="models"):
        EvaluateConfig(models=("sasrec",))
    with pytest.raises(ValueError, match="seeds"):
        EvaluateConfig(seeds=(0, 0))
    with pytest.raises(ValueError, match="cold_lengths"):
        EvaluateConfig(cold_lengths=(-1,))
    with pytest.raises(ValueError, match="max_events"):
        EvaluateConfig(cold_lengths=(0, 8))
    with pytest.raises(ValueError, match="short_lengths"):
        EvaluateConfig(short_lengths=(0, 1))
    with pytest.raises(ValueError, match="cold_user_share"):
        EvaluateConfig(cold_user_share=1.0)
    with pytest.raises(ValueError, match="extra"):
        EvaluateConfig(sead=1)
    cfg = EvaluateConfig(seeds=(3,), towers=TowerConfig(epochs=3), llm_tags="x.parquet")
    assert EvaluateConfig.from_json(cfg.to_json(tmp_path / "c.json")) == cfg


def test_baseline_rows_records_and_absent_rows(tiny):
    config = EvaluateConfig(dataset="tiny", models=("popularity", "item_knn", "three_tower_llm_tags", "coldstart_none"),
                            seeds=(0, 1), cold_lengths=(0, 2), short_lengths=(2,), cold_user_share=0.2, max_users=15,
                            sample_seed=3, k=5, use_llm=False,
                            long_tail_mass=0.5, knn_neighbors=5, knn_shrink=0.0, score_batch_size=4)
    partial = []
    run = run_evaluation(tiny, config, checkpoint=partial.append)
    recs = run.records
    assert {r["model"] for r in recs} == {"popularity", "item_knn"}
    # A checkpoint after each scored row: a killed run still leaves its finished rows.
    assert [{r["model"] for r in p.records} for p in partial] == [{"popularity"}, {"popularity", "item_knn"}]
    assert not partial[0].settings["complete"] and run.settings["complete"]
    assert {r["slice"] for r in recs} == {"all", "valid", "short_2", "cold_user_0", "cold_user_2", "long_tail"}
    assert {r["metric"] for r in recs} == {"ndcg@5", "hr@5", "mrr", "coverage@5", "long_tail_share@5"}
    assert run.settings["split_report"]["holdout_users"] == 4 and run.settings["slices"]["all"] == 15
    for r in recs:
        assert r["benchmark"] == "offline_eval" and r["seeds"] == "0,1" and r["std"] == 0.0 and r["dataset"] == "tiny"
        assert r["n"] == run.settings["slices"][r["slice"]]
    assert "mined-tags" in run.settings["absent"]["three_tower_llm_tags"]
    assert "no-llm" in run.settings["absent"]["coldstart_none"]
    assert run.settings["long_tail"]["head_mass"] == 0.5
    assert run.settings["model_configs"]["item_knn"] == {"neighbors": 5, "shrink": 0.0}
    # A cold_user_0 user has no history: item-kNN falls back to popularity exactly.
    get = {(r["model"], r["slice"], r["metric"]): r["value"] for r in recs}
    assert get[("item_knn", "cold_user_0", "ndcg@5")] == pytest.approx(get[("popularity", "cold_user_0", "ndcg@5")])


def _rec(model, s, metric, value, n=10, **extra):
    return {"benchmark": "offline_eval", "metric": metric, "value": value, "unit": "fraction", "model": model,
            "slice": s, "std": 0.01, "seeds": "0,1,2", "n": n, **extra}


def test_report_files_and_target_ratios(tmp_path):
    rec = _rec
    records = [rec("sasrec_ce", "all", "ndcg@10", 0.10), rec("sasrec_ce", "cold_user_1", "ndcg@10", 0.02),
               rec("three_tower_heuristic_tags", "all", "ndcg@10", 0.11),
               rec("three_tower_heuristic_tags", "valid", "ndcg@10", 0.12),
               rec("three_tower_heuristic_tags", "cold_user_1", "ndcg@10", 0.03),
               rec("three_tower_llm_rerank", "all", "ndcg@10", 0.2, n=3), rec("sasrec_ce_content", "all", "ndcg@10", 0.1)]
    records += [dict(r, metric="hr@10") for r in records]
    records += [rec("three_tower_heuristic_tags", "cold_user_1", "ndcg@10_diff_vs_sasrec_ce", 0.01, lo=0.002, hi=0.02,
                    significant=True),
                rec("three_tower_heuristic_tags", "all", "ndcg@10_diff_vs_sasrec_ce", 0.01, lo=-0.01, hi=0.03,
                    significant=False),
                rec("three_tower_llm_rerank", "all", "llm_share", 0.7), rec("three_tower_llm_rerank", "all",
                                                                            "fallback_share", 0.3)]
    lines = "\n".join(target_lines(records))
    assert "| all | three_tower_heuristic_tags | 0.1100 | 0.1000 | 1.10x | >= 1.05x | met | not significant |" in lines
    assert "| cold_user_1 | three_tower_heuristic_tags | 0.0300 | 0.0200 | 1.50x | >= 1.3x | met | significant |" in lines
    settings = {"evaluate_config": {"seeds": [0, 1, 2], "k": 10}, "absent": {"three_tower_llm_tags": "no Parquet"}}
    paths = write_report(records, settings, tmp_path / "r.md")
    assert [p.name for p in paths] == ["r.md", "r-ndcg-by-slice.png", "r-ndcg-by-history.png"]
    md = paths[0].read_text()
    assert "0.2000 ± 0.0100 (n=3)" in md and "three_tower_llm_tags: no Parquet" in md
    assert "0.0300 ± 0.0100 ▲" in md and "0.1100 ± 0.0100 |" in md  # only the significant difference is marked
    assert "+0.0100 [+0.0020, +0.0200]*" in md and "+0.0100 [-0.0100, +0.0300] |" in md
    assert "| three_tower_llm_rerank | all | 0.700 | 0.300 | fallback > 20% |" in md
    assert "three_tower_llm_rerank (fallback > 20%)" in md
    assert "- sasrec_ce_content: SASRec+ with the towers' item content" in md and "three_tower_ids_only:" not in md
    assert md == render_markdown(records, settings, paths[1:])
    assert "run time: " in md and "taken over" not in md
    assert "run time of the last invocation: 4.4 s (20 finished (row, seed) pairs were taken over" in render_markdown(
        records, {**settings, "seconds": 4.4, "resumed_pairs": 20})
    for png in paths[1:]:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_verdict_chooses_the_fused_row_on_validation_never_on_test():
    rec = _rec
    # llm_tags is better on test, heuristic_tags on validation: the verdict must judge heuristic_tags.
    records = [rec("sasrec_ce", "all", "ndcg@10", 0.10), rec("sasrec_ce", "valid", "ndcg@10", 0.10),
               rec("three_tower_heuristic_tags", "all", "ndcg@10", 0.09),
               rec("three_tower_heuristic_tags", "valid", "ndcg@10", 0.13),
               rec("three_tower_llm_tags", "all", "ndcg@10", 0.20), rec("three_tower_llm_tags", "valid", "ndcg@10", 0.11)]
    lines = target_lines(records)
    assert "three_tower_heuristic_tags, chosen on validation NDCG@10 (0.1300)" in lines[0]
    assert any(line.startswith("| all | three_tower_heuristic_tags | 0.0900 | 0.1000 | 0.90x") for line in lines)
    assert not any("three_tower_llm_tags" in line for line in lines)
    # Swap the validation scores and the choice follows them, whatever test says.
    swapped = [dict(r, value={0.13: 0.11, 0.11: 0.13}.get(r["value"], r["value"])) if r["slice"] == "valid" else r
               for r in records]
    assert "three_tower_llm_tags, chosen" in target_lines(swapped)[0]
    # A row whose validation is optimistic (tags mined as of the test time) is never chosen, however high.
    leaky = records + [rec("three_tower_llm_lora_tags", "valid", "ndcg@10", 0.50, optimistic=True),
                       rec("three_tower_llm_lora_tags", "all", "ndcg@10", 0.50)]
    assert "three_tower_heuristic_tags, chosen" in target_lines(leaky)[0]
    assert "0.5000 ± 0.0100 (optimistic)" in render_table(leaky, "ndcg@10")
    # Slices the judged row lacks are judged on the best row on validation that has them.
    partial = records + [rec("sasrec_ce", "short_1", "ndcg@10", 0.05),
                         rec("three_tower_heuristic_tags", "short_1", "ndcg@10", 0.04)]
    lines = target_lines([dict(r, value={0.13: 0.11, 0.11: 0.13}.get(r["value"], r["value"]))
                          if r["slice"] == "valid" else r for r in partial])
    assert "three_tower_llm_tags, chosen" in lines[0] and "On short_1, which three_tower_llm_tags has no scores" in lines[0]
    assert any(line.startswith("| short_1 | three_tower_heuristic_tags | 0.0400 | 0.0500 | 0.80x") for line in lines)
    # Without validation records there is no verdict (never a fallback to test).
    assert "Targets not computed" in target_lines([r for r in records if r["slice"] != "valid"])[0]



def test_second_verdict_against_the_baseline_that_leads_on_validation():
    rec = _rec
    # item_knn leads on validation (though SASRec+ content is better on test): the second verdict judges against it.
    records = [rec("sasrec_ce", "all", "ndcg@10", 0.10), rec("sasrec_ce", "valid", "ndcg@10", 0.10),
               rec("item_knn", "all", "ndcg@10", 0.20), rec("item_knn", "valid", "ndcg@10", 0.15),
               rec("sasrec_ce_content", "all", "ndcg@10", 0.30), rec("sasrec_ce_content", "valid", "ndcg@10", 0.12),
               rec("three_tower_notag", "valid", "ndcg@10", 0.50),  # not a baseline, never the leader
               rec("three_tower_heuristic_tags", "all", "ndcg@10", 0.11),
               rec("three_tower_heuristic_tags", "valid", "ndcg@10", 0.13),
               rec("three_tower_heuristic_tags", "all", "ndcg@10_diff_vs_item_knn", -0.09, lo=-0.12, hi=-0.05,
                   significant=True)]
    assert strongest_baseline(records) == "item_knn"
    lines = leader_verdict(records)
    assert lines[0] == "## Verdict against the strongest baseline: item_knn (best validation NDCG@10 of the baselines)"
    assert "| all | three_tower_heuristic_tags | 0.1100 | 0.2000 | 0.55x | >= 1.05x | not met | significant |" in lines
    assert "item_knn NDCG@10" in "\n".join(lines)
    # When SASRec+ leads on validation there is one verdict only.
    assert leader_verdict([r for r in records if r["model"] not in ("item_knn", "sasrec_ce_content")]) == []


class _Model:
    """The three-tower surface ColdStartScorer uses: item vectors, user encoding (mean of item vectors)."""

    profiles = {}

    def __init__(self, n):
        rng = np.random.default_rng(0)
        self.items = rng.normal(size=(n, 4)).astype(np.float32)

    def item_vectors(self):
        return self.items

    def encode_users(self, seqs, profiles):  # [S, d], L2-normalised like the real user tower
        v = np.stack([self.items[s].mean(axis=0) if len(s) else np.ones(4, np.float32) for s in seqs])
        return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_coldstart_scorer_averages_sequences_and_refuses_foreign_histories():
    model = _Model(8)
    fused = {"u": [np.array([5, 1]), np.array([6, 1])]}
    got = ColdStartScorer("late", model, fused).score([np.array([1])], ["u"])
    want = model.items[[5, 1]].mean(0) / np.linalg.norm(model.items[[5, 1]].mean(0)) + \
        model.items[[6, 1]].mean(0) / np.linalg.norm(model.items[[6, 1]].mean(0))
    want = want / np.linalg.norm(want)
    assert np.allclose(got[0, 1:], (want @ model.items.T)[1:], atol=1e-5) and got[0, 0] == -np.inf
    none = ColdStartScorer("none", model, {}).score([np.array([1])], ["u"])
    assert np.argmax(none[0, 1:]) == np.argmax((model.items[1] @ model.items.T)[1:])
    with pytest.raises(ValueError, match="does not end with"):
        ColdStartScorer("x", model, {"u": [np.array([5, 2])]}).score([np.array([1])], ["u"])


def test_rerank_scorer_reorders_only_the_top_candidates(tiny):
    from llmrec.llm import FakeBackend
    from llmrec.schema import Narrative

    items = [tiny.item_index[i] for i in ItemVocab.from_items(tiny.items).ids]
    base = FixedScorer([0] + list(range(len(items), 0, -1)))
    narr = {"1": Narrative(user_id="1", text="1d ago liked | Toy Story (1995; Animation)", as_of="1998-01-01T00:00:00Z",
                           n_events_in=1, n_items_out=1, n_tokens=10, max_tokens=100)}
    scorer = RerankScorer(base, narr, items, FakeBackend(), top_n=5, config=None)
    hist = [np.array([2])]
    s = scorer.score(hist, ["1"])
    order = np.argsort(-s[0, 1:], kind="stable") + 1
    top = order[order != 2][:5]
    assert sorted(top.tolist()) == [1, 3, 4, 5, 6]  # same candidates, the LLM's order
    assert order[order != 2][5:12].tolist() == list(range(7, 14))  # the rest keeps the base order


@pytest.mark.slow
def test_llm_rows_run_end_to_end_and_a_failing_row_is_reported(tiny, tmp_path):
    from llmrec.config import ColdStartConfig
    from llmrec.llm import FakeBackend

    class Backend(FakeBackend):
        """Generates (cold start works); ranking breaks (re-ranking must be left out, not crash the run)."""

        def score_choices(self, prompts, choices, *, adapter=None):
            raise RuntimeError("engine died")

    config = EvaluateConfig(models=("popularity", "three_tower_llm_rerank", "coldstart_none", "coldstart_early_fusion",
                                    "coldstart_late_fusion"), seeds=(0, 1), cold_lengths=(0, 1), rerank_users=3,
                            rerank_top=4, coldstart_users=2, coldstart=ColdStartConfig(max_events=1),
                            coldstart_cache=str(tmp_path / "cold.json"),
                            towers=TowerConfig(encoder="hashed-bow", epochs=1, max_len=10, beta_grid=(0.5, 1.0)))
    backend = Backend()
    run = run_evaluation(tiny, config, backend=backend)
    got = {(r["model"], r["slice"]): (r["n"], r["seeds"]) for r in run.records if r["metric"] == "ndcg@10"}
    assert {k: v for k, v in got.items() if k[0] != "popularity"} == {
        (m, s): (2, "0,1") for m in ("coldstart_none", "coldstart_early_fusion", "coldstart_late_fusion")
        for s in ("cold_user_0", "cold_user_1")}
    assert "engine died" in run.settings["absent"]["three_tower_llm_rerank"]
    assert run.settings["notes"]["coldstart"]["cold_user_0"]["generated"] == 2
    # Each fusion row reports how many of its users an LLM answer served, and its gain over coldstart_none.
    shares = {(r["model"], r["slice"], r["metric"]): r["value"] for r in run.records
              if r["metric"] in ("llm_share", "fallback_share")}
    for m in ("coldstart_early_fusion", "coldstart_late_fusion"):
        for s in ("cold_user_0", "cold_user_1"):
            fallback = run.settings["notes"]["coldstart"][s]["fallback"] / 2
            assert shares[(m, s, "fallback_share")] == pytest.approx(fallback)
            assert shares[(m, s, "llm_share")] == pytest.approx(1.0 - fallback)
    assert not [k for k in shares if k[0] == "coldstart_none"]
    assert {(r["model"], r["reference"], r["slice"]) for r in run.records if r.get("comparison") == "llm_gain"} == {
        (m, "coldstart_none", s) for m in ("coldstart_early_fusion", "coldstart_late_fusion")
        for s in ("cold_user_0", "cold_user_1")}
    assert len(backend.calls) == 2  # one generation batch per cold slice, reused by the second seed
    # One cache file per slice (a user shows each slice another history): a rerun generates nothing.
    assert {p.name for p in tmp_path.glob("cold*.json")} == {"cold.cold_user_0.json", "cold.cold_user_1.json"}
    again = Backend()
    rerun = run_evaluation(tiny, config.model_copy(update={"models": ("coldstart_early_fusion",)}), backend=again)
    assert again.calls == [] and rerun.settings["notes"]["coldstart"]["cold_user_1"]["cached"] == 2


@pytest.mark.slow
def test_quick_cli_end_to_end(tiny, tmp_path):
    from typer.testing import CliRunner

    from llmrec.bench import read_records
    from llmrec.cli import app

    folder = tiny.save(tmp_path / "tiny")
    out = tmp_path / "reports" / "tiny.json"
    res = CliRunner().invoke(app, ["evaluate", "--dataset", str(folder), "--out", str(out), "--quick", "--no-llm",
                                   "--models", "popularity,sasrec_ce,three_tower_notag,three_tower_heuristic_tags"])
    assert res.exit_code == 0, res.output
    recs = read_records(out)
    assert {r["model"] for r in recs} == {"popularity", "sasrec_ce", "three_tower_notag", "three_tower_heuristic_tags"}
    settings = json.loads(out.with_suffix(".settings.json").read_text())
    assert settings["evaluate_config"]["seeds"] == [0] and settings["split_hash"] and settings["complete"]
    assert settings["model_configs"]["sasrec_ce"]["loss"] == "ce" and "commit" in settings["git_commit"]
    assert out.with_suffix(".md").is_file() and (out.parent / "tiny-ndcg-by-history.png").is_file()


def test_cli_config_file_with_option_overrides(tiny, tmp_path):
    from typer.testing import CliRunner

    from llmrec.bench import read_records
    from llmrec.cli import app

    folder = tiny.save(tmp_path / "tiny")
    cfg = EvaluateConfig(models=("popularity", "three_tower_llm_rerank"), seeds=(4,), max_users=12, k=3)
    path = cfg.to_json(tmp_path / "cfg.json")
    out = tmp_path / "r.json"
    res = CliRunner().invoke(app, ["evaluate", "--dataset", str(folder), "--out", str(out), "--config", str(path),
                                   "--seeds", "5,6", "--no-llm"])
    assert res.exit_code == 0, res.output
    recs = read_records(out)
    assert {r["seeds"] for r in recs} == {"5,6"} and {r["n"] for r in recs if r["slice"] == "all"} == {12}
    assert "ndcg@3" in {r["metric"] for r in recs}
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert "three_tower_llm_rerank" in summary["absent"]
    bad = CliRunner().invoke(app, ["evaluate", "--dataset", str(folder), "--out", str(out), "--models", "nope"])
    assert bad.exit_code != 0 and "models" in bad.output
    # --results-dir: stable names from the dataset's name; the holdout share is a flag and is frozen.
    res = CliRunner().invoke(app, ["evaluate", "--dataset", str(folder), "--results-dir", str(tmp_path / "results"),
                                   "--config", str(path), "--no-llm", "--cold-user-share", "0.1"])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in (tmp_path / "results").iterdir()) == [
        "tiny-ndcg-by-history.png", "tiny-ndcg-by-slice.png", "tiny.json", "tiny.md", "tiny.settings.json"]
    settings = json.loads((tmp_path / "results" / "tiny.settings.json").read_text())
    assert settings["evaluate_config"]["cold_user_share"] == 0.1 and settings["split_report"]["holdout_users"] == 2
    both = CliRunner().invoke(app, ["evaluate", "--dataset", str(folder), "--out", str(out), "--results-dir",
                                    str(tmp_path), "--no-llm"])
    assert both.exit_code != 0 and "exclude" in both.output


def test_planned_pairs_count_each_rows_seeds():
    from llmrec.eval.rows import planned_pairs

    config = EvaluateConfig(seeds=(0, 1, 2), ablation_seeds=(1,), use_llm=False)
    # Baselines once for every seed, LLM re-ranking/ranker rows on the first seed, ablations on theirs.
    assert planned_pairs(("popularity", "three_tower_llm_rerank", "sasrec_ce_llm_ranker", "three_tower_no_logq"),
                         config) == 4
    assert planned_pairs(("sasrec_ce", "coldstart_none", "three_tower_llm_tags"), config) == 9


def _scored_rows(caplog) -> set[str]:
    """Rows the evaluation's INFO log says were scored ("[evaluate] ROW seed=S SLICE: ndcg@K=...")."""
    return {r.getMessage().split()[1] for r in caplog.records
            if r.name == "llmrec.eval.run" and ": ndcg@" in r.getMessage()}


def test_resume_takes_over_finished_rows_and_retrains_changed_ones(tiny, caplog):
    from llmrec.eval.rows import planned_pairs

    caplog.set_level(logging.INFO, logger="llmrec.eval.run")
    towers = TowerConfig(encoder="hashed-bow", epochs=1, max_len=10, beta_grid=(0.5, 1.0))
    base = dict(dataset="tiny", seeds=(0, 1), cold_lengths=(0,), max_users=12, k=5, use_llm=False, towers=towers)
    first_config = EvaluateConfig(models=("popularity", "three_tower_notag"), **base)
    first = run_evaluation(tiny, first_config)
    assert sorted(map(tuple, first.settings["finished"])) == [
        ("popularity", 0), ("three_tower_notag", 0), ("three_tower_notag", 1)]
    assert planned_pairs(first_config.models, first_config) == 3  # the progress bar's total

    # Same rows plus a new one: the old rows are copied, not retrained (the log says what ran).
    caplog.clear()
    second = run_evaluation(tiny, EvaluateConfig(models=("popularity", "three_tower_notag", "item_knn"), **base),
                            resume=json.loads(json.dumps(first.settings)))
    ran = _scored_rows(caplog)
    assert ran == {"item_knn"}
    old = {(r["model"], r["slice"], r["metric"]): (r["value"], r["std"], r["seeds"]) for r in first.records}
    new = {(r["model"], r["slice"], r["metric"]): (r["value"], r["std"], r["seeds"]) for r in second.records}
    assert {k: v for k, v in new.items() if k[0] != "item_knn"} == old
    assert second.settings["betas"]["three_tower_notag"] == [1.0, 1.0]

    # A row whose config changed is retrained; a different split takes over nothing.
    changed = EvaluateConfig(models=("popularity", "three_tower_notag"),
                             **{**base, "towers": towers.model_copy(update={"dim": 8})})
    caplog.clear()
    run_evaluation(tiny, changed, resume=first.settings)
    assert _scored_rows(caplog) == {"three_tower_notag"}
    moved = {**first.settings, "split_hash": "other"}
    # Ablations may run on fewer seeds than the main rows (their records say which).
    few_config = EvaluateConfig(models=("three_tower_no_logq",), ablation_seeds=(1,), **base)
    few = run_evaluation(tiny, few_config)
    assert {r["seeds"] for r in few.records} == {"1"}
    assert planned_pairs(few_config.models, few_config) == len(few.settings["finished"]) == 1
    with pytest.raises(ValueError, match="ablation_seeds"):
        EvaluateConfig(ablation_seeds=(7,))
    caplog.clear()
    run_evaluation(tiny, EvaluateConfig(models=("popularity",), **base), resume=moved)
    assert _scored_rows(caplog) == {"popularity"}


def test_llm_tag_rows_record_llm_share_over_each_slices_users(tiny, tmp_path):
    import pyarrow.parquet as pq

    from llmrec.eval.run import Evaluation
    from llmrec.interests import profiles_to_table
    from llmrec.schema import InterestProfile, Tag

    path = tmp_path / "profiles.parquet"
    config = EvaluateConfig(dataset="tiny", models=("three_tower_llm_lora_tags",), seeds=(0,), max_users=12,
                            cold_lengths=(0,), short_lengths=(1,), use_llm=False, llm_lora_tags=str(path))
    ev = Evaluation(tiny, config)
    users = ev.proto.slices["all"].users

    def shares(sources):
        pq.write_table(profiles_to_table([InterestProfile(user_id=u, tags=(Tag(text="1990s drama"),), source=src)
                                          for u, src in sources.items()]), path)
        ev.sources.clear()
        return {r["metric"]: r["value"] for r in ev.llm_share_records() if r["slice"] == "all"}

    ev.scores.add("three_tower_llm_lora_tags", "all", len(users), {"ndcg@10": 0.1}, {})
    ev.scores.seeds_of["three_tower_llm_lora_tags"] = [0]
    # A fallback-only table: the row is served entirely by stand-ins, llm_share 0.
    assert shares(dict.fromkeys(users, "fallback")) == {"llm_share": 0.0, "fallback_share": 1.0}
    # Half the slice's users valid LLM answers; users missing from the table count as not served by the LLM.
    half = {u: ("llm" if n % 2 == 0 else "heuristic") for n, u in enumerate(users[:-2])}
    expect = sum(v == "llm" for v in half.values()) / len(users)
    assert shares(half) == {"llm_share": pytest.approx(expect), "fallback_share": pytest.approx(1 - expect)}


@pytest.mark.parametrize("row,key", [("three_tower_llm_lora_tags", "llm_lora_tags"),
                                     ("three_tower_llm_self_tags", "llm_self_tags"),
                                     ("three_tower_llm_self2_tags", "llm_self2_tags")])
def test_llm_tag_row_trains_and_validates_on_the_validation_time_table(tiny, tmp_path, monkeypatch, row, key):
    import pyarrow.parquet as pq

    import retrieval.train
    from llmrec.errors import DataError
    from llmrec.interests import profiles_to_table
    from llmrec.schema import InterestProfile, Tag

    users = sorted(tiny.events["user_id"].unique())
    for stage, tag in (("test", "1990s drama"), ("valid", "1980s comedy")):
        (tmp_path / stage).mkdir()
        pq.write_table(profiles_to_table([InterestProfile(user_id=u, tags=(Tag(text=tag),), source="llm")
                                          for u in users]), tmp_path / stage / "profiles.parquet")
        (tmp_path / stage / "manifest.json").write_text(json.dumps({"as_of": stage}))
    seen = []
    real = retrieval.train.train_towers
    monkeypatch.setattr(retrieval.train, "train_towers",
                        lambda *a, llm_tags=None, **kw: seen.append(llm_tags) or real(*a, llm_tags=llm_tags, **kw))
    towers = TowerConfig(encoder="hashed-bow", cache_dir=str(tmp_path / "cache"), dim=16, hidden=32, max_len=20,
                         layers=1, heads=2, batch_size=8, tag_batch_size=32, uniform_negatives=32, epochs=1,
                         patience=1, threads=1, beta_grid=(1.0,))
    config = EvaluateConfig(dataset="tiny", models=(row,), seeds=(0,), max_users=12, cold_lengths=(0,),
                            short_lengths=(1,), use_llm=False, towers=towers,
                            **{key: str(tmp_path / "test"), f"{key}_valid": str(tmp_path / "valid")})
    run = run_evaluation(tiny, config)
    assert {t for tags in seen[0].values() for t in tags} == {"1980s comedy"}  # never the test-time table
    assert "tags_valid" in run.settings["notes"][row]
    valid = [r for r in run.records if r["model"] == row and r["slice"] == "valid"]
    assert valid and not [r for r in valid if r.get("optimistic")]
    # A table mined as of the test time is refused as the validation-time one.
    with pytest.raises(DataError, match="mined as of 'test'"):
        run_evaluation(tiny, config.model_copy(update={f"{key}_valid": str(tmp_path / "test")}))


def test_resume_ignores_llm_batch_sizes_but_not_what_a_row_scores():
    from llmrec.config import ColdStartConfig
    from llmrec.eval.rows import resumable_rows, row_config

    rows = ("coldstart_late_fusion", "sasrec_ce_llm_ranker")
    before = EvaluateConfig(coldstart=ColdStartConfig(batch_size=8))
    settings = {"split_hash": "h", "finished": [[m, 0] for m in rows],
                "model_configs": {m: row_config(m, before) for m in rows}}

    def taken(config: EvaluateConfig) -> list:
        return resumable_rows(settings, "h", {m: row_config(m, config) for m in rows})

    faster = EvaluateConfig(coldstart=ColdStartConfig(batch_size=None),
                            listwise=before.listwise.model_copy(update={"batch_size": 64}))
    assert taken(faster) == [[m, 0] for m in rows]
    other = EvaluateConfig(coldstart=ColdStartConfig(batch_size=8, max_events=10),
                           listwise=before.listwise.model_copy(update={"lambdas": (0.0, 1.0)}))
    assert taken(other) == []
