"""The listwise LLM ranker rows of `llmrec evaluate`: lambda is chosen on validation targets, and a ranker
that cannot tell candidates apart leaves the retriever's ranking exactly as it was (lambda = 0)."""

from __future__ import annotations

from pathlib import Path

from llmrec.config import EvaluateConfig, ListwiseConfig, SASRecConfig, TowerConfig
from llmrec.eval.report import render_markdown
from llmrec.eval.run import run_evaluation
from llmrec.llm import FakeBackend


class FlatRanker(FakeBackend):
    """Every letter equally likely: the ranker carries no information."""

    def score_choices(self, prompts, choices, *, adapter=None):
        self.calls.append({"n": len(prompts), "choices": list(choices), "adapter": adapter})
        return [[-3.0] * len(choices) for _ in prompts]


def test_ranker_rows_choose_lambda_on_validation_and_flat_scores_keep_the_retriever(tiny):
    config = EvaluateConfig(
        models=("sasrec_ce", "three_tower_heuristic_tags", "sasrec_ce_llm_ranker", "three_tower_llm_ranker"),
        seeds=(0,), cold_user_share=0.0, ranker_users=6, listwise=ListwiseConfig(candidates=5),
        sasrec=SASRecConfig(maxlen=20, epochs=1, eval_every=1, patience=1),
        towers=TowerConfig(encoder="hashed-bow", epochs=1, patience=1, min_epochs=1, max_len=10, beta_grid=(1.0,)))
    backend = FlatRanker()
    run = run_evaluation(tiny, config, backend=backend)
    for row in ("sasrec_ce_llm_ranker", "three_tower_llm_ranker"):
        note = run.settings["notes"][row]
        assert note["n_users"] == 6 and note["lambda"] == 0.0  # no information: the smallest lambda wins the tie
        assert set(map(float, note["valid_ndcg_by_lambda"])) == set(config.listwise.lambdas)
        got = next(r["value"] for r in run.records if r["model"] == row and r["metric"] == "ndcg@10")
        assert abs(got - note["base_on_same_users"]["ndcg@10"]) < 1e-12
        # Cost per prompt: one prompt per validation user (lambda 0: the test pass calls no LLM).
        assert note["prompts"] == 6 and note["prefill_tokens_per_prompt"] > 50 and note["seconds_per_prompt"] >= 0
        assert note["served"] is None  # no ranker adapter: the base model ranks
    # Validation is scored with the LLM (one untimed warm-up prompt, then one batch per row); the test pass at
    # lambda = 0 needs no LLM call.
    assert [c["choices"] for c in backend.calls] == [list("ABCDE")] * 4
    assert [c["n"] for c in backend.calls] == [1, 6, 1, 6]
    md = render_markdown(run.records, run.settings)
    assert "- sasrec_ce_llm_ranker: listwise ranker over sasrec_ce's top 5 (adapter none, " in md
    assert "lambda 0 chosen on their validation targets (valid NDCG@10 by lambda: 0: " in md


def test_tower_search_runs_on_validation_and_its_winner_trains_the_rows(tiny):
    config = EvaluateConfig(
        models=("three_tower_notag",), seeds=(0,), cold_user_share=0.0, tune_towers=True,
        tower_grid={"lr": (1e-4, 3e-3)},
        towers=TowerConfig(encoder="hashed-bow", epochs=2, patience=1, min_epochs=1, max_len=10, beta_grid=(1.0,)))
    run = run_evaluation(tiny, config)
    search = run.settings["notes"]["tower_search"]
    assert len(search["trials"]) == 2 and {"lr"} <= set(search["best"])
    best = search["trials"][search["best_trial"]]
    assert best["valid_ndcg@10"] == max(t["valid_ndcg@10"] for t in search["trials"])
    assert run.settings["model_configs"]["three_tower_notag"]["towers"]["lr"] == search["best"]["lr"]
    md = render_markdown(run.records, run.settings)
    assert f"every tower row uses the winner lr {search['best']['lr']}. Valid NDCG@10: lr 0.0001: " in md


def test_a_ranker_row_added_with_resume_retrains_its_retriever_and_is_paired_with_that_model(tiny, caplog):
    """Retraining with the same seed need not reproduce a model on CPU, so a ranker row added later (`--resume`)
    trains its retriever's first seed again and scores it anew; at lambda = 0 the ranker's gain over it is exactly
    zero on every user, and the pairing uses the retriever's first seed only, not its mean over seeds."""
    import logging

    caplog.set_level(logging.INFO, logger="llmrec.eval.run")
    base = dict(seeds=(0, 1), cold_user_share=0.0, ranker_users=6, listwise=ListwiseConfig(candidates=5),
                bootstrap_samples=50, sasrec=SASRecConfig(maxlen=20, epochs=1, eval_every=1, patience=1))
    first = run_evaluation(tiny, EvaluateConfig(models=("sasrec_ce",), **base))
    caplog.clear()
    second = run_evaluation(tiny, EvaluateConfig(models=("sasrec_ce", "sasrec_ce_llm_ranker"), **base),
                            backend=FlatRanker(), resume=first.settings)
    trained = [r.getMessage() for r in caplog.records if "training" in r.getMessage()]
    assert trained == ["[evaluate] sasrec_ce seed=0 training"]  # seed 1 is taken over
    assert sorted(map(tuple, second.settings["finished"])) == [("sasrec_ce", 0), ("sasrec_ce", 1),
                                                               ("sasrec_ce_llm_ranker", 0)]
    assert [r["seed"] for r in second.settings["model_reports"]["sasrec_ce"]] == [1, 0]
    gain = next(r for r in second.records if r["model"] == "sasrec_ce_llm_ranker"
                and r["metric"] == "ndcg@10_diff_vs_sasrec_ce")
    assert gain["comparison"] == "llm_gain" and gain["n"] == 6
    assert gain["value"] == 0.0 and gain["lo"] == gain["hi"] == 0.0
    note = second.settings["notes"]["sasrec_ce_llm_ranker"]
    seed0 = next(r["ndcg_by_user"] for r in second.settings["raw"]
                 if r["model"] == "sasrec_ce" and r["slice"] == "all" and r["seed"] == 0)
    users = next(r["ndcg_by_user"] for r in second.settings["raw"] if r["model"] == "sasrec_ce_llm_ranker")
    assert abs(note["base_on_same_users"]["ndcg@10"] - sum(seed0[u] for u in users) / len(users)) < 1e-6


def test_our_backend_serves_the_ranker_adapter_merged(tiny, tmp_path, monkeypatch):
    """With no backend passed in, the ranker rows start one on the adapter merged into the weights and send no
    adapter per call (vLLM's CPU LoRA path is several times slower)."""
    import llmrec.llm
    import llmrec.llm.model

    started = []
    monkeypatch.setattr(llmrec.llm.model, "merged_model", lambda model, adapter: Path(adapter) / "merged")
    monkeypatch.setattr(llmrec.llm, "make_backend", lambda llm: started.append((llm.model, FlatRanker())) or
                        started[-1][1])
    config = EvaluateConfig(models=("sasrec_ce", "sasrec_ce_llm_ranker"), seeds=(0,), cold_user_share=0.0,
                            ranker_users=6, listwise=ListwiseConfig(candidates=5),
                            ranker_adapter=str(tmp_path / "ranker"),
                            sasrec=SASRecConfig(maxlen=20, epochs=1, eval_every=1, patience=1))
    run = run_evaluation(tiny, config)
    assert [model for model, _ in started] == [str(tmp_path / "ranker" / "merged")]
    assert [c["adapter"] for c in started[0][1].calls] == [None, None]  # warm-up, validation
    assert run.settings["notes"]["sasrec_ce_llm_ranker"]["served"] == "merged"
