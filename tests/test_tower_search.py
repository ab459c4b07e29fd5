"""Tower training robustness: early stopping (retrieval.stopping), SASRec+ item-embedding init
(retrieval.item_init) and the validation search (retrieval.tune). Trainings use the hashed-bow encoder on the
`tiny` fixture for one or two epochs."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from llmrec.config import SASRecConfig, TowerConfig
from llmrec.data import ItemVocab
from llmrec.data.split import Split, split_leave_one_out
from llmrec.errors import DataError, ModelError
from retrieval.encoder import TextEncoder, build_item_features
from retrieval.item_init import (ItemEmbeddings, align_item_embeddings, init_id_embeddings, project_embeddings,
                                 sasrec_item_embeddings)
from retrieval.sasrec import SASRec, SASRecScorer
from retrieval.stopping import EarlyStopping, is_eval_epoch
from retrieval.towers import ThreeTowerModel
from retrieval.train import fit_towers, train_towers
from retrieval.tune import DEFAULT_GRID, grid_settings, tune_towers


def tiny_config(tmp, **kw) -> TowerConfig:
    base = {"encoder": "hashed-bow", "cache_dir": str(tmp), "dim": 16, "hidden": 32, "max_len": 20, "layers": 1,
            "heads": 2, "batch_size": 8, "tag_batch_size": 32, "uniform_negatives": 32, "epochs": 2, "eval_every": 1,
            "patience": 2, "min_epochs": 1, "threads": 1, "beta_grid": (0.0, 0.5, 1.0)}
    return TowerConfig(**{**base, **kw})


def run_stopper(values, eval_every=1, **kw) -> int | None:
    """The epoch at which `EarlyStopping` ends a run whose evaluations give `values`; None if it never does."""
    stop = EarlyStopping(**kw)
    for k, v in enumerate(values, start=1):
        stop.update(k * eval_every, v)
        if stop.should_stop(k * eval_every):
            return k * eval_every
    return None


# --- early stopping ---------------------------------------------------------------------------------


def test_eval_epochs_are_every_n_and_the_last():
    assert [e for e in range(1, 11) if is_eval_epoch(e, 4, 10)] == [4, 8, 10]
    assert [e for e in range(1, 4) if is_eval_epoch(e, 1, 3)] == [1, 2, 3]


def test_smoothing_survives_one_lucky_evaluation():
    # A rising trend (+0.01 per evaluation) with one lucky evaluation (+0.04 at the third).
    values = [0.10, 0.11, 0.16, 0.13, 0.14, 0.15, 0.16, 0.17, 0.18]
    assert run_stopper(values, patience=3, min_epochs=1, smooth_evals=1) == 6  # the raw bar 0.16 stops it
    assert run_stopper(values, patience=3, min_epochs=1, smooth_evals=3) is None  # the mean keeps climbing


def test_min_epochs_floor_outlasts_an_early_noisy_peak():
    # The held-out failure: a peak at epoch 2, then a dip and a slow climb that passes it after epoch 12.
    values = [0.010, 0.020, 0.012, 0.013, 0.014, 0.015, 0.016, 0.017, 0.018, 0.019, 0.020, 0.021, 0.022]
    assert run_stopper(values, patience=8, min_epochs=1, smooth_evals=1) == 10  # yesterday's rule: epoch 10
    assert run_stopper(values, patience=8, min_epochs=40, smooth_evals=1) is None
    flat = [0.05] * 30
    assert run_stopper(flat, patience=2, min_epochs=20, smooth_evals=1) == 20  # stops at the floor, not before
    assert run_stopper(flat, eval_every=4, patience=2, min_epochs=1, smooth_evals=1) == 12  # patience in evals


def test_stopper_keeps_the_best_raw_evaluation():
    stop = EarlyStopping(patience=5, min_epochs=1, smooth_evals=3)
    keep = [stop.update(e, v) for e, v in zip((4, 8, 12, 16), (0.2, 0.5, 0.3, 0.4))]
    assert keep == [True, True, False, False] and stop.best == 0.5 and stop.best_epoch == 8
    with pytest.raises(ValueError, match="NaN at epoch 20"):
        stop.update(20, float("nan"))
    with pytest.raises(ValueError, match="patience"):
        EarlyStopping(patience=0, min_epochs=1)


def test_training_evaluates_every_n_epochs_respects_the_floor_and_keeps_best_weights(tiny, tmp_path):
    split = split_leave_one_out(tiny.events)
    res = train_towers(tiny, split, tiny_config(tmp_path, epochs=4, eval_every=3, patience=1, min_epochs=4))
    h = res.report["history"]
    assert len(h) == 4 and res.report["epochs_run"] == 4
    assert [e["epoch"] for e in h if "valid_ndcg@10" in e] == [3, 4]  # every 3 epochs and the last
    best = max(e["valid_ndcg@10"] for e in h if "valid_ndcg@10" in e)
    assert res.report["valid_notag"]["ndcg@10"] == pytest.approx(best, abs=1e-4)  # the best weights were kept
    assert res.report["best_epoch"] in (3, 4)


@pytest.mark.parametrize("values, kw, epochs_run", [
    ([0.10, 0.20, 0.15, 0.16, 0.17], {"patience": 2, "smooth_evals": 1}, 4),  # raw bar 0.20: stops at 4
    ([0.10, 0.20, 0.15, 0.16, 0.17], {"patience": 2, "smooth_evals": 2}, 5),  # the 2-mean stalls later
    ([0.10] * 5, {"patience": 1, "min_epochs": 1}, 2),
    ([0.10] * 5, {"patience": 1, "min_epochs": 3}, 3),  # the floor holds it to epoch 3
    ([0.10] * 5, {"patience": 1, "eval_every": 2}, 4),  # evaluations at 2 and 4: patience counts evaluations
])
def test_training_loop_stops_by_the_config(tiny, tmp_path, monkeypatch, values, kw, epochs_run):
    """The loop's stop follows patience, smooth_evals, min_epochs and eval_every (scripted validation values)."""
    import retrieval.train as train_module

    scripted = iter(values)
    monkeypatch.setattr(train_module, "evaluate", lambda *a, **k: {"ndcg@10": next(scripted), "hr@10": 0.0})
    split = split_leave_one_out(tiny.events)
    cfg = tiny_config(tmp_path, **{"epochs": 5, "batch_size": 32, "min_epochs": 1, **kw})
    fit = fit_towers(tiny, split, cfg)
    assert len(fit.history) == epochs_run


# --- softmax choice ---------------------------------------------------------------------------------


def test_softmax_setting_decides_the_training_loss(tiny, tmp_path, caplog):
    split = split_leave_one_out(tiny.events)
    kw = {"epochs": 1}
    auto = fit_towers(tiny, split, tiny_config(tmp_path, **kw))
    assert auto.softmax == "full"  # 1,682 items <= 50,000
    small_cap = fit_towers(tiny, split, tiny_config(tmp_path, full_softmax_max_items=100, **kw))
    assert small_cap.softmax == "sampled"
    sampled = fit_towers(tiny, split, tiny_config(tmp_path, softmax="sampled", **kw))
    with caplog.at_level("WARNING", logger="retrieval.train"):
        full = fit_towers(tiny, split, tiny_config(tmp_path, softmax="full", full_softmax_max_items=100, logq=False,
                                                   mixed_negatives=False, **kw))
    assert "do nothing under the full softmax" in caplog.text
    assert full.softmax == "full" and sampled.softmax == "sampled"
    # Same seed, same loss: the sampled-softmax switches changed nothing.
    np.testing.assert_array_equal(full.model.item_vectors(), auto.model.item_vectors())
    np.testing.assert_array_equal(sampled.model.item_vectors(), small_cap.model.item_vectors())
    assert not np.allclose(full.model.item_vectors(), sampled.model.item_vectors())
    assert full.history[0]["l_col"] != sampled.history[0]["l_col"]


# --- SASRec+ item-embedding init --------------------------------------------------------------------


def test_project_embeddings_keeps_inner_products_up_to_the_target_width():
    rng = np.random.default_rng(0)
    low_rank = rng.normal(size=(12, 3)) @ rng.normal(size=(3, 10))  # [12, 10] of rank 3
    low_rank[0] = 0.0
    out = project_embeddings(low_rank, 4)
    assert out.shape == (12, 4) and not out[0].any()
    np.testing.assert_allclose(out @ out.T, low_rank @ low_rank.T, atol=1e-5)
    padded = project_embeddings(low_rank, 16)
    assert padded.shape == (12, 16) and not padded[:, 10:].any()
    np.testing.assert_array_equal(project_embeddings(low_rank, 10), low_rank.astype(np.float32))


def test_align_item_embeddings_follows_the_vocabulary():
    vocab = ItemVocab(ids=("a", "b", "c"))
    emb = ItemEmbeddings(ids=("c", "a", "zzz"), vectors=np.array([[3.0, 3.0], [1.0, 1.0], [9.0, 9.0]]))
    table, found = align_item_embeddings(emb, vocab)
    assert found == 2
    np.testing.assert_array_equal(table, [[0, 0], [1, 1], [0, 0], [3, 3]])  # row 0 padding, "b" unknown
    with pytest.raises(DataError, match="no item id"):
        align_item_embeddings(ItemEmbeddings(ids=("x",), vectors=np.ones((1, 2))), vocab)
    with pytest.raises(DataError, match="shape"):
        ItemEmbeddings(ids=("a", "b"), vectors=np.ones((3, 2)))
    with pytest.raises(DataError, match="duplicate"):
        ItemEmbeddings(ids=("a", "a"), vectors=np.ones((2, 2)))


def test_sasrec_item_embeddings_initialise_the_id_embedding(tiny, tmp_path):
    vocab = ItemVocab.from_items(tiny.items)
    torch.manual_seed(0)
    scorer = SASRecScorer(SASRec(vocab.size - 1, SASRecConfig(maxlen=8, hidden=24, blocks=1)), vocab)
    emb = sasrec_item_embeddings(scorer)
    assert emb.ids == tuple(vocab.ids) and emb.vectors.shape == (vocab.size - 1, 24)
    feats = build_item_features([tiny.item_index[i] for i in vocab.ids], TextEncoder("hashed-bow", tmp_path), 5)
    cfg = tiny_config(tmp_path, init_item_embeddings="sasrec")
    model = ThreeTowerModel(cfg, vocab, feats)
    assert init_id_embeddings(model, cfg, emb) == vocab.size - 1
    expected = project_embeddings(np.r_[np.zeros((1, 24), np.float32), emb.vectors], cfg.dim)  # 24 -> 16
    np.testing.assert_allclose(model.item_tower.ids.weight.detach().numpy(), expected, rtol=1e-6)
    with pytest.raises(ModelError, match="needs item embeddings"):
        init_id_embeddings(model, cfg, None)
    with pytest.raises(ModelError, match="init_item_embeddings is 'none'"):
        init_id_embeddings(model, tiny_config(tmp_path), emb)


def test_training_from_sasrec_embeddings(tiny, tmp_path):
    split = split_leave_one_out(tiny.events)
    vocab = ItemVocab.from_items(tiny.items)
    torch.manual_seed(1)
    emb = sasrec_item_embeddings(SASRecScorer(SASRec(vocab.size - 1, SASRecConfig(hidden=16, blocks=1)), vocab))
    kw = {"epochs": 1}
    warm = train_towers(tiny, split, tiny_config(tmp_path, init_item_embeddings="sasrec", **kw), item_embeddings=emb)
    cold = train_towers(tiny, split, tiny_config(tmp_path, **kw))
    assert warm.report["init_item_embeddings"] == "sasrec" and cold.report["init_item_embeddings"] == "none"
    assert not np.allclose(warm.model.item_vectors(), cold.model.item_vectors())
    with pytest.raises(ModelError, match="train SASRec"):
        train_towers(tiny, split, tiny_config(tmp_path, init_item_embeddings="sasrec", **kw))


# --- validation search ------------------------------------------------------------------------------


def test_grid_settings_validates_keys_and_values(tmp_path):
    base = tiny_config(tmp_path)
    combos = grid_settings(base, DEFAULT_GRID)
    assert combos == [{"dropout": 0.2, "lr": 1e-3}, {"dropout": 0.2, "lr": 3e-3},
                      {"dropout": 0.5, "lr": 1e-3}, {"dropout": 0.5, "lr": 3e-3}]
    with pytest.raises(DataError, match="'learning_rate' is not a TowerConfig field"):
        grid_settings(base, {"learning_rate": [1e-3]})
    with pytest.raises(DataError, match="'lr' needs a non-empty list"):
        grid_settings(base, {"lr": []})
    with pytest.raises(DataError, match="dropout"):
        grid_settings(base, {"dropout": [0.2, 1.5]})
    with pytest.raises(DataError, match="empty"):
        grid_settings(base, {})


def test_tune_towers_picks_the_best_validation_trial_without_test_targets(tiny, tmp_path, monkeypatch):
    split = split_leave_one_out(tiny.events)
    real_targets = Split.targets

    def valid_only(self, stage):
        if stage == "test":
            raise AssertionError("tune_towers read the test targets")
        return real_targets(self, stage)

    monkeypatch.setattr(Split, "targets", valid_only)
    blind = dataclasses.replace(split, test=None)  # any direct use of the test frame fails too
    seen = []
    base = tiny_config(tmp_path, epochs=2)
    result = tune_towers(blind, tiny, base, {"lr": (1e-4, 1e-2)}, progress=seen.append)
    assert len(result.trials) == 2 and seen == result.trials
    scores = [t["valid_ndcg@10"] for t in result.trials]
    assert result.best_trial == int(np.argmax(scores))
    assert result.config == base.model_copy(update=result.trials[result.best_trial]["settings"])
    assert all(1 <= t["best_epoch"] <= t["epochs_run"] <= 2 and t["softmax"] == "full" for t in result.trials)
    record = json.loads(json.dumps(result.to_dict()))
    assert record["best"] == result.trials[result.best_trial]["settings"] and len(record["trials"]) == 2
    # Retraining the winner with the same seed reproduces its trial.
    again = fit_towers(tiny, blind, result.config)
    assert round(again.best_valid_ndcg, 6) == scores[result.best_trial]
