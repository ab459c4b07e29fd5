"""The three-tower retriever: encoder cache, towers, fused scoring, FAISS retrieval, save/load, training, CLI.

Tower tests use the hashed bag-of-words encoder on the 20-user `tiny` fixture so they run in seconds; one test
loads the real packaged MiniLM.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from typer.testing import CliRunner

from llmrec.config import TowerConfig
from llmrec.data import DataError, ItemVocab
from llmrec.data.split import split_leave_one_out
from retrieval.base import SequenceScorer, check_scores
from retrieval.encoder import TextEncoder, build_item_features, item_text
from retrieval.index import BruteForceIndex
from retrieval.towers import ThreeTowerModel, profile_ids, profile_tokens
from retrieval.train import read_tags_table, tag_item_pairs, train_towers


def tiny_config(tmp, **kw) -> TowerConfig:
    base = dict(encoder="hashed-bow", cache_dir=str(tmp), dim=16, hidden=32, max_len=20, layers=1, heads=2,
                batch_size=8, tag_batch_size=32, uniform_negatives=32, epochs=6, patience=6, threads=1,
                beta_grid=(0.0, 0.5, 1.0))
    return TowerConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def trained(tiny, tmp_path_factory):
    cache = tmp_path_factory.mktemp("features")
    split = split_leave_one_out(tiny.events)
    return train_towers(tiny, split, tiny_config(cache)), split, cache


def fresh_model(tiny, tmp, **kw) -> ThreeTowerModel:
    torch.manual_seed(0)
    vocab = ItemVocab.from_items(tiny.items)
    cfg = tiny_config(tmp, **kw)
    feats = build_item_features([tiny.item_index[i] for i in vocab.ids], TextEncoder("hashed-bow", tmp), 5)
    return ThreeTowerModel(cfg, vocab, feats, {u: tiny.profile(u) for u in tiny.users["user_id"]})


def histories_of(model, split, stage="test"):
    from llmrec.data import user_sequences
    seqs = user_sequences(split.history(stage), model.vocab)
    users = sorted(seqs)[:6]
    return [seqs[u] for u in users], users


def test_text_encoder_caches_on_disk_and_in_memory(tmp_path):
    texts = ["Toy Story (1995; Animation, Comedy)", "Heat (1995; Action, Crime)", "Toy Story (1995; Animation, Comedy)"]
    enc = TextEncoder("hashed-bow", tmp_path)
    vecs = enc.encode(texts, cache=True)
    assert vecs.shape == (3, 384) and enc.n_encoded == 2  # duplicates encoded once
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, rtol=1e-5)
    again = TextEncoder("hashed-bow", tmp_path)
    np.testing.assert_array_equal(again.encode(texts, cache=True), vecs)
    assert again.n_encoded == 0  # read from the .npy cache, nothing re-encoded
    assert len(list(tmp_path.glob("hashed-bow-*.npy"))) == 1


@pytest.mark.slow  # imports sentence-transformers and loads MiniLM (~20-50 s on a busy 2-core machine)
def test_packaged_minilm_encodes_meaningfully(tmp_path):
    enc = TextEncoder("minilm", tmp_path)
    v = enc.encode(["romantic comedy", "a funny love story", "war documentary"])
    assert v.shape == (3, 384)
    assert v[0] @ v[1] > v[0] @ v[2]


def test_item_text_and_features(tiny, tmp_path):
    item = tiny.item_index["1"]
    assert item_text(item) == "Toy Story (1995; Animation, Children's, Comedy)"
    vocab = ItemVocab.from_items(tiny.items)
    feats = build_item_features([tiny.item_index[i] for i in vocab.ids], TextEncoder("hashed-bow", tmp_path), 10)
    assert feats.text.shape == (vocab.size, 384) and not feats.text[0].any()
    assert feats.genres.shape == (vocab.size, len(feats.genre_names))
    row = vocab.index["1"]
    assert {feats.genre_names[j] for j in np.flatnonzero(feats.genres[row])} == set(item.genres)
    assert feats.year[0] == 0 and 1 <= feats.year[row] <= feats.n_year_buckets
    same = [vocab.index[i] for i in vocab.ids if set(tiny.item_index[i].genres) == set(item.genres)]
    assert len(set(feats.category[same])) == 1 and feats.category[0] == -1


def test_profile_features_are_bucketed_and_hashed_with_hashlib():
    tokens = profile_tokens({"age": "24", "gender": "M", "occupation": "writer"})
    assert tokens == ["age=18-24", "gender=M", "occupation=writer"]
    assert profile_tokens({"age": "60"}) == ["age=56+"] and profile_tokens({"age": "7"}) == ["age=0-17"]
    assert profile_tokens({"age": "", "zip": "x"}) == ["zip=x"]  # empty values carry nothing
    ids = profile_ids({"age": "24", "gender": "M"}, 64)
    # sha1-derived, so identical in every process (builtin hash() is salted per process).
    expected = [1 + int.from_bytes(hashlib.sha1(t.encode()).digest()[:8], "little") % 64
                for t in ("age=18-24", "gender=M")]
    assert ids == expected and all(1 <= i <= 64 for i in ids)


def test_training_losses_decrease_and_report(trained):
    result, _, _ = trained
    h = result.report["history"]
    for key in ("l_col", "l_tag", "l_cate", "loss"):
        assert h[-1][key] < h[0][key], key
    r = result.report
    assert r["beta"] in (0.0, 0.5, 1.0) and set(r["beta_grid_valid_ndcg@10"]) == {"0.0", "0.5", "1.0"}
    assert r["valid"]["ndcg@10"] == pytest.approx(r["beta_grid_valid_ndcg@10"][str(r["beta"])], abs=1e-4)
    assert 0.0 <= r["test"]["ndcg@10"] <= r["test"]["hr@10"] <= 1.0
    assert r["tags_source"] == "heuristic"


def test_model_is_a_sequence_scorer_and_handles_cold_users(trained):
    model, split = trained[0].model, trained[1]
    assert isinstance(model, SequenceScorer)
    hist, users = histories_of(model, split)
    hist = [*hist, np.zeros(0, dtype=np.int64)]  # a user with no history
    scores = model.score(hist, [*users, "unknown-user"])
    check_scores(scores, len(hist), model.vocab.size, model.name)


def test_beta_one_is_the_pure_user_tower_and_fusion_is_linear(trained):
    model, split = trained[0].model, trained[1]
    hist, users = histories_of(model, split)
    items = model.item_vectors()
    user = model.encode_users(hist, [model.profiles[u] for u in users]) @ items.T  # [B, V]
    np.testing.assert_allclose(model.score(hist, users, beta=1.0)[:, 1:], user[:, 1:], rtol=1e-5, atol=1e-6)
    tags = {u: ["1990s comedy", "romantic drama"] for u in users}
    tag = model.tag_scores([tags[u] for u in users], items)
    fused = model.score(hist, users, user_tags=tags, beta=0.3)
    np.testing.assert_allclose(fused[:, 1:], 0.3 * user[:, 1:] + 0.7 * tag[:, 1:], rtol=1e-5, atol=1e-6)
    # With mean pooling the fused score is one inner product: query_vectors reproduce it.
    model.set_user_tags(tags)
    q = model.query_vectors(hist, users, beta=0.3)
    np.testing.assert_allclose(q @ items[1:].T, fused[:, 1:], rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="beta"):
        model.score(hist, users, beta=1.5)


def test_tag_pooling_max_versus_mean(tiny, tmp_path):
    tags = [["1990s comedy", "dark thriller", "animated children's"], []]
    mean = fresh_model(tiny, tmp_path, tag_pooling="mean")
    mx = fresh_model(tiny, tmp_path, tag_pooling="max")
    items = mean.item_vectors()
    s_mean, s_max = mean.tag_scores(tags, items), mx.tag_scores(tags, items)
    assert (s_max[0] >= s_mean[0] - 1e-6).all() and not np.allclose(s_max[0], s_mean[0])
    assert not s_mean[1].any()  # no tags -> s_tag = 0


def test_faiss_retrieve_matches_brute_force_top_k(trained):
    model, split = trained[0].model, trained[1]
    hist, users = histories_of(model, split)
    q = model.encode_users(hist, [model.profiles[u] for u in users])
    scores, ids = model.retrieve(q, 20)
    ref_scores, ref_ids = BruteForceIndex(model.item_vectors()[1:]).search(q, 20)
    np.testing.assert_array_equal(ids, ref_ids + 1)
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-5, atol=1e-6)


def test_save_load_round_trip_gives_identical_scores(trained, tmp_path):
    result, split, _ = trained
    model = result.model
    hist, users = histories_of(model, split)
    out = model.save_pretrained(tmp_path / "towers", manifest={"split_hash": split.hash})
    for name in ("weights.safetensors", "features.safetensors", "config.json", "model.json", "manifest.json",
                 "index/index.faiss", "index/config.json"):
        assert (out / name).is_file(), name
    loaded = ThreeTowerModel.from_pretrained(out)
    assert loaded.config == model.config and loaded.beta == model.beta and loaded.user_tags == model.user_tags
    np.testing.assert_array_equal(loaded.score(hist, users), model.score(hist, users))
    q = model.query_vectors(hist, users)
    assert np.array_equal(loaded.retrieve(q, 10)[1], model.retrieve(q, 10)[1])
    assert loaded.text_encoder.n_encoded == 0 or loaded.text_encoder.known()  # tags were stored, not re-encoded
    assert json.loads((out / "manifest.json").read_text())["split_hash"] == split.hash
    with pytest.raises(FileNotFoundError, match="weights.safetensors"):
        ThreeTowerModel.from_pretrained(tmp_path)


def test_id_embedding_switch(tiny, tmp_path):
    with_ids = fresh_model(tiny, tmp_path, id_embedding=True)
    assert with_ids.item_tower.ids is not None and not with_ids.item_tower.ids.weight.any()  # unseen items: content
    without = fresh_model(tiny, tmp_path, id_embedding=False)
    assert without.item_tower.ids is None
    assert sum(p.numel() for p in with_ids.parameters()) - sum(p.numel() for p in without.parameters()) \
        == with_ids.vocab.size * 16


def test_profile_switch(tiny, tmp_path):
    hist = [np.array([1, 2, 3])] * 2
    profs = [{"age": "24", "gender": "M"}, {"age": "60", "gender": "F"}]
    on = fresh_model(tiny, tmp_path, profile_features=True)
    v = on.encode_users(hist, profs)
    assert not np.allclose(v[0], v[1])
    off = fresh_model(tiny, tmp_path, profile_features=False)
    v = off.encode_users(hist, profs)
    np.testing.assert_allclose(v[0], v[1], rtol=1e-5)


@pytest.mark.slow  # five short trainings
def test_ablation_switches_change_training(tiny, tmp_path):
    """logq, mixed negatives and learnable temperature each change what is learned (sampled softmax)."""
    split = split_leave_one_out(tiny.events)
    kw = dict(epochs=1, patience=1, softmax="sampled")  # under the full softmax logq and negatives do nothing
    base = train_towers(tiny, split, tiny_config(tmp_path, **kw)).model
    vecs = base.item_vectors()
    for switch in ({"logq": False}, {"mixed_negatives": False}, {"learnable_temperature": False}):
        other = train_towers(tiny, split, tiny_config(tmp_path, **kw, **switch)).model
        assert not np.allclose(other.item_vectors(), vecs), switch
    fixed = train_towers(tiny, split, tiny_config(tmp_path, **kw, learnable_temperature=False,
                                                  temperature=0.2)).model
    assert "log_temperature" not in dict(fixed.named_parameters())
    assert fixed.temperature().item() == pytest.approx(0.2)


def test_llm_tags_add_tag_item_pairs(tiny):
    vocab = ItemVocab.from_items(tiny.items)
    from llmrec.data import user_sequences
    seqs = user_sequences(tiny.events, vocab)
    texts, tag_ids, item_ids = tag_item_pairs(tiny, vocab, seqs, None)
    texts2, tag_ids2, item_ids2 = tag_item_pairs(tiny, vocab, seqs, {"1": ["funny animated movies", "xyz"]})
    assert "funny animated movies" in texts2 and "xyz" not in texts2  # a tag that hits nothing adds nothing
    new = [tiny.item_index[vocab.ids[i - 1]] for t, i in zip(tag_ids2, item_ids2) if texts2[t] == "funny animated movies"]
    assert new and all({"Comedy", "Animation"} <= set(it.genres) for it in new)
    assert len(item_ids2) > len(item_ids)


def test_read_tags_table_counts_bad_rows(tmp_path):
    path = tmp_path / "profiles.parquet"
    pq.write_table(pa.table({"user_id": ["1", None, "3"], "tags": [["dark sci-fi", " "], ["x"], ["1990s comedy"]]}),
                   path)
    tags, info = read_tags_table(path)
    assert tags == {"1": ["dark sci-fi"], "3": ["1990s comedy"]}
    assert info["skipped"] == {"missing user_id": 1} and info["rows"] == 3
    pq.write_table(pa.table({"user": ["1"]}), tmp_path / "bad.parquet")
    with pytest.raises(DataError, match="bad.parquet.*user_id"):
        read_tags_table(tmp_path / "bad.parquet")


def test_cli_train_retriever_writes_a_loadable_model(tiny, tmp_path):
    from llmrec.cli import app

    data = tiny.save(tmp_path / "data")
    cfg = tiny_config(tmp_path / "cache", epochs=1).to_json(tmp_path / "towers.json")
    out = tmp_path / "towers"
    res = CliRunner().invoke(app, ["train-retriever", "--dataset", str(data), "--out", str(out), "--config", str(cfg),
                                   "--no-logq", "--seed", "3"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output.strip().splitlines()[-1])
    assert {"beta", "valid", "test", "valid_notag", "test_notag"} <= set(summary)
    model = ThreeTowerModel.from_pretrained(out)
    assert model.config.logq is False and model.config.seed == 3
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["split_hash"] == split_leave_one_out(tiny.events).hash
    assert manifest["encoder"]["name"] == "hashed-bow" and manifest["tags"] == {"source": "heuristic"}


def test_training_with_llm_tags_uses_them_for_beta_and_serving(tiny, tmp_path):
    split = split_leave_one_out(tiny.events)
    llm = {"1": ["funny animated movies", "dark 90s thrillers"], "2": ["romantic dramas"]}
    res = train_towers(tiny, split, tiny_config(tmp_path, epochs=1, patience=1), llm_tags=llm,
                       tags_info={"source": "llm"})
    assert res.report["tags_source"] == "llm"
    assert res.model.user_tags == llm  # the model serves the LLM tags, not heuristic ones



def test_user_tower_reads_items_more_than_positions_at_init(tiny, tmp_path):
    """Position embeddings start small, so an untrained user tower already tells histories apart by their items.

    At torch's N(0, 1) (std 1.0) positions had norm ~sqrt(dim) against item inputs of norm < 1: users with
    different items at the same positions looked alike, and on short histories (Amazon Magazine) the trained
    tower stayed near popularity.
    """
    def spread(std: float) -> tuple[float, float]:
        model = fresh_model(tiny, tmp_path, position_init_std=std)
        item_norm = model.item_table()[1:].norm(dim=-1).mean().item()
        pos_norm = model.user_tower.pos.weight.norm(dim=-1).mean().item()
        users = model.encode_users([np.array([i, i + 1]) for i in range(1, 40, 2)])  # same positions
        cosines = users @ users.T
        return pos_norm / item_norm, float(1.0 - cosines[np.triu_indices(len(users), 1)].mean())

    assert TowerConfig().position_init_std == 0.02
    small_ratio, small_spread = spread(0.02)
    big_ratio, big_spread = spread(1.0)
    assert small_ratio < 1.0 < 5.0 < big_ratio
    assert small_spread > 3 * big_spread
