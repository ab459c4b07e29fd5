"""The attribution rows: SASRec+ with the towers' item content, and towers without text or profile."""

import numpy as np
import pytest
import torch

from llmrec.config import EvaluateConfig, SASRecConfig, TowerConfig
from llmrec.data import ItemVocab
from llmrec.data.split import split_leave_one_out
from llmrec.errors import ModelError
from llmrec.eval.run import run_evaluation
from retrieval.encoder import TextEncoder, build_item_features
from retrieval.sasrec import SASRec, SASRecScorer, item_content_matrix, train_sasrec


def test_item_content_matrix_concatenates_text_genres_and_year_with_a_zero_padding_row():
    text = np.array([[0, 0], [1, 2], [3, 4]], dtype=np.float32)
    genres = np.array([[0, 0, 0], [1, 0, 1], [0, 1, 0]])
    year = np.array([0, 2, 0])  # item 2: unknown year
    m = item_content_matrix(text, genres, year, n_year_buckets=3)
    assert m.shape == (3, 2 + 3 + 3) and m.dtype == np.float32
    assert not m[0].any()
    assert m[1].tolist() == [1, 2, 1, 0, 1, 0, 1, 0] and m[2].tolist() == [3, 4, 0, 1, 0, 0, 0, 0]


def test_sasrec_content_features_are_added_to_the_id_embedding_in_and_out():
    cfg = SASRecConfig(hidden=8, maxlen=5, content_features=True)
    with pytest.raises(ModelError, match="content"):
        SASRec(4, cfg)
    model = SASRec(4, cfg, n_features=3).eval()
    feats = torch.rand(5, 3)
    feats[0] = 0
    model.item_features.copy_(feats)
    table = model.item_table()
    assert torch.allclose(table, model.item_emb.weight + feats @ model.content.weight.T)
    assert not table[0].any()  # padding stays zero
    seqs = torch.tensor([[0, 1, 2]])
    before = model.item_scores(model.encode(seqs)[:, -1])
    model.item_features[3] += 1.0  # item 3 is not in the input: only the output layer changes for it
    after = model.item_scores(model.encode(seqs)[:, -1])
    assert torch.allclose(before[:, :3], after[:, :3]) and not torch.allclose(before[:, 3], after[:, 3])
    plain = SASRec(4, SASRecConfig(hidden=8, maxlen=5))
    assert plain.content is None and plain.item_table() is plain.item_emb.weight


def test_train_sasrec_with_content_round_trips(tiny, tmp_path):
    split = split_leave_one_out(tiny.events)
    vocab = ItemVocab.from_items(tiny.items)
    cfg = SASRecConfig(hidden=8, maxlen=10, epochs=1, content_features=True)
    feats = np.random.default_rng(0).random((vocab.size, 6)).astype(np.float32)
    feats[0] = 0
    with pytest.raises(ModelError, match="rows"):
        train_sasrec(split, vocab, cfg, item_features=feats[:-1])
    scorer, _ = train_sasrec(split, vocab, cfg, item_features=feats)
    assert np.allclose(scorer.model.item_features.numpy(), feats)
    hist = [np.array([1, 2, 3])]
    again = SASRecScorer.from_pretrained(scorer.save_pretrained(tmp_path / "m"))
    assert np.allclose(again.score(hist, ["1"]), scorer.score(hist, ["1"]), atol=1e-6)


def test_towers_without_text_features_ignore_the_text_vectors(tiny):
    from retrieval.towers import ThreeTowerModel

    vocab = ItemVocab.from_items(tiny.items)
    items = [tiny.item_index[i] for i in vocab.ids]
    features = build_item_features(items, TextEncoder("hashed-bow"), 5)
    tables = {}
    for on in (True, False):
        torch.manual_seed(0)
        model = ThreeTowerModel(TowerConfig(encoder="hashed-bow", text_features=on), vocab, features).eval()
        with torch.no_grad():
            t0 = model.item_table().clone()
            model.feat_text.mul_(-3.0)  # other text vectors: only a text-reading tower changes
            tables[on] = torch.allclose(t0, model.item_table())
    assert tables == {True: False, False: True}


def test_attribution_rows_run_with_their_switches(tiny):
    config = EvaluateConfig(dataset="tiny", models=("sasrec_ce_content", "three_tower_ids_only"), seeds=(0,),
                            cold_lengths=(0,), short_lengths=(1,), max_users=10, use_llm=False,
                            sasrec=SASRecConfig(maxlen=10, epochs=1, hidden=8),
                            towers=TowerConfig(encoder="hashed-bow", epochs=1, max_len=10, beta_grid=(0.5, 1.0)))
    run = run_evaluation(tiny, config)
    assert {r["model"] for r in run.records} == {"sasrec_ce_content", "three_tower_ids_only"}
    mc = run.settings["model_configs"]
    assert mc["sasrec_ce_content"]["content_features"] and mc["sasrec_ce_content"]["features"]["encoder"] == "hashed-bow"
    ids = mc["three_tower_ids_only"]
    assert ids["towers"]["text_features"] is False and ids["towers"]["profile_features"] is False
    assert ids["beta"] == 1.0 and run.settings["betas"]["three_tower_ids_only"] == [1.0]
