"""The user/item/tag three-tower retriever (RecGPT §2.3) and its self-describing model folder.

Item tower: frozen sentence vectors of "Title (year; genres)" + genre multi-hot + year-bucket embedding ->
MLP, plus an optional zero-initialised ID embedding, so an item never seen in training still gets a content
vector. User tower: a SASRec-like causal transformer over the history's item-tower vectors, preceded by a
learned start token (so an empty history is a valid input: the start position predicts the first item from
the profile alone), read at the last position, plus hashed profile features. Tag tower: the tag text's
sentence vector -> MLP. All similarities are cosines.

Inference fuses the towers: score(u, i) = beta * s_user(u, i) + (1 - beta) * s_tag(T_u, i), where s_tag pools
(mean or max, TowerConfig.tag_pooling) the cosines of the user's tag vectors with the item. With mean pooling
the fused score is linear in the item vector, so `query_vectors` gives one FAISS query per user.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from llmrec.config import TowerConfig
from llmrec.data import ItemVocab
from retrieval.encoder import TEXT_DIM, ItemFeatures, TextEncoder
from retrieval.index import build_index, load_index, save_index, search
from retrieval.losses import clip_temperature

START = -1  # token id of the start position in user-tower inputs (0 = padding, 1..N = items)
AGE_EDGES = (18, 25, 35, 45, 50, 56)  # ML-1M style age buckets: <18, 18-24, ..., 56+
MAX_PROFILE_FEATURES = 8


def profile_tokens(profile: Mapping[str, str]) -> list[str]:
    """A profile as "key=value" feature strings; a numeric age becomes its bucket ("age=25-34")."""
    out = []
    for key in sorted(profile):
        value = str(profile[key]).strip()
        if not value:
            continue
        if key == "age" and value.isdigit():
            age = int(value)
            lo = max([0, *[e for e in AGE_EDGES if e <= age]])
            hi = min([e for e in AGE_EDGES if e > age], default=None)
            value = f"{lo}-{hi - 1}" if hi is not None else f"{lo}+"
        out.append(f"{key}={value}")
    return out[:MAX_PROFILE_FEATURES]


def profile_ids(profile: Mapping[str, str], buckets: int) -> list[int]:
    """Hashed bucket ids 1..buckets of the profile's features (hashlib: stable across processes)."""
    return [1 + int.from_bytes(hashlib.sha1(t.encode()).digest()[:8], "little") % buckets
            for t in profile_tokens(profile)]


def mlp(d_in: int, hidden: int, d_out: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, d_out))


class ItemTower(nn.Module):
    def __init__(self, config: TowerConfig, n_rows: int, n_genres: int, n_year_buckets: int):
        super().__init__()
        self.year = nn.Embedding(n_year_buckets + 1, 16)
        self.mlp = mlp(TEXT_DIM + n_genres + 16, config.hidden, config.dim, config.dropout)
        self.ids = nn.Embedding(n_rows, config.dim) if config.id_embedding else None
        if self.ids is not None:
            nn.init.zeros_(self.ids.weight)  # an untrained id adds nothing: unseen items are pure content

    def forward(self, text: torch.Tensor, genres: torch.Tensor, year: torch.Tensor) -> torch.Tensor:
        """[N+1, d] item vectors from text [N+1, 384], genres [N+1, G], year [N+1]."""
        h = self.mlp(torch.cat([text, genres, self.year(year)], dim=-1))  # [N+1, d]
        return h if self.ids is None else h + self.ids.weight


class UserTower(nn.Module):
    def __init__(self, config: TowerConfig):
        super().__init__()
        d = config.dim
        self.heads = config.heads
        self.start = nn.Parameter(torch.randn(d) * 0.02)
        self.pos = nn.Embedding(config.max_len, d)
        nn.init.normal_(self.pos.weight, std=config.position_init_std)  # small: items, not positions, lead
        self.drop = nn.Dropout(config.dropout)
        layer = nn.TransformerEncoderLayer(d, config.heads, 4 * d, config.dropout, batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, config.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        self.profile = nn.Embedding(config.profile_buckets + 1, d, padding_idx=0) if config.profile_features else None

    def forward(self, seq: torch.Tensor, item_vecs: torch.Tensor, profile: torch.Tensor) -> torch.Tensor:
        """[B, L, d] user states; seq [B, L] left-padded ids (START, 0 = pad, items), profile [B, F] bucket ids."""
        b, length = seq.shape
        tokens = item_vecs[seq.clamp_min(0)]  # [B, L, d]
        tokens = torch.where((seq == START)[..., None], self.start.expand_as(tokens), tokens)
        h = self.drop(tokens + self.pos.weight[-length:][None])  # right-aligned positions: last = max_len - 1
        pad = seq == 0  # [B, L]
        causal = torch.ones(length, length, dtype=torch.bool).triu(1)  # [L, L] True = may not attend
        blocked = causal[None] | pad[:, None, :]  # [B, L, L]
        blocked &= ~torch.eye(length, dtype=torch.bool)[None]  # a padding row attends to itself: no NaN
        h = self.blocks(h, mask=blocked.repeat_interleave(self.heads, dim=0))  # [B, L, d]
        h = self.norm(h)
        if self.profile is not None:
            h = h + self.profile(profile).sum(dim=1)[:, None, :]  # [B, 1, d] broadcast over positions
        return h


class ThreeTowerModel(nn.Module):
    """User, item and tag towers over one item vocabulary; a `SequenceScorer` (retrieval.base)."""

    name = "three_tower"

    def __init__(self, config: TowerConfig, vocab: ItemVocab, features: ItemFeatures,
                 profiles: Mapping[str, Mapping[str, str]] | None = None, beta: float = 1.0):
        super().__init__()
        if features.n_rows != vocab.size:
            raise ValueError(f"features have {features.n_rows} rows, the vocabulary needs {vocab.size}")
        self.config, self.vocab, self.features = config, vocab, features
        self.profiles = {str(u): dict(p) for u, p in (profiles or {}).items()}
        self.beta = beta
        self.user_tags: dict[str, list[str]] = {}
        for key, arr in features.arrays().items():
            self.register_buffer(f"feat_{key}", torch.from_numpy(np.ascontiguousarray(arr)), persistent=False)
        self.item_tower = ItemTower(config, vocab.size, len(features.genre_names), features.n_year_buckets)
        self.user_tower = UserTower(config)
        self.tag_tower = mlp(TEXT_DIM, config.hidden, config.dim, config.dropout)
        log_tau = torch.tensor(float(np.log(config.temperature)))
        if config.learnable_temperature:
            self.log_temperature = nn.Parameter(log_tau)
        else:
            self.register_buffer("log_temperature", log_tau)
        self.text_encoder = TextEncoder(config.encoder, config.cache_dir, config.encoder_batch_size)
        self._index = None

    # --- towers (torch, used by training) -------------------------------------------------------

    def temperature(self) -> torch.Tensor:
        return clip_temperature(self.log_temperature)

    def item_table(self) -> torch.Tensor:
        """[N+1, d] raw item-tower outputs for the whole vocabulary (row 0 = padding)."""
        text = self.feat_text if self.config.text_features else torch.zeros_like(self.feat_text)  # [N+1, 384]
        return self.item_tower(text, self.feat_genres, self.feat_year)

    def sequence_batch(self, histories: Sequence[np.ndarray], profiles: Sequence[Mapping[str, str]]):
        """(seq [B, L] = START + last items, left-padded; profile [B, F]) tensors for the user tower."""
        length = min(self.config.max_len, max(len(h) for h in histories) + 1)
        seq = np.zeros((len(histories), length), dtype=np.int64)
        for b, h in enumerate(histories):
            row = np.r_[START, np.asarray(h, dtype=np.int64)][-length:]
            seq[b, length - row.size:] = row
        return torch.from_numpy(seq), self.profile_batch(profiles)

    def profile_batch(self, profiles: Sequence[Mapping[str, str]]) -> torch.Tensor:
        """[B, F] hashed profile feature ids, 0-padded."""
        prof = np.zeros((len(profiles), MAX_PROFILE_FEATURES), dtype=np.int64)
        for b, p in enumerate(profiles):
            ids = profile_ids(p, self.config.profile_buckets)
            prof[b, : len(ids)] = ids
        return torch.from_numpy(prof)

    def tag_table(self, text_features: torch.Tensor) -> torch.Tensor:
        """[T, d] tag vectors from tag text features [T, 384]."""
        return self.tag_tower(text_features)

    # --- inference (numpy, eval mode) -----------------------------------------------------------

    @torch.no_grad()
    def item_vectors(self) -> np.ndarray:
        """[N+1, d] L2-normalised item vectors (row 0 = padding, zeros)."""
        self.eval()
        vecs = F.normalize(self.item_table(), dim=-1)
        vecs[0] = 0.0
        return vecs.numpy()

    @torch.no_grad()
    def encode_users(self, histories: Sequence[np.ndarray], profiles: Sequence[Mapping[str, str]] | None = None
                     ) -> np.ndarray:
        """[B, d] L2-normalised user vectors from item-index histories (empty allowed) and profiles."""
        self.eval()
        if not len(histories):
            return np.zeros((0, self.config.dim), dtype=np.float32)
        profiles = profiles if profiles is not None else [{}] * len(histories)
        seq, prof = self.sequence_batch(histories, profiles)
        states = self.user_tower(seq, self.item_table(), prof)  # [B, L, d]
        return F.normalize(states[:, -1], dim=-1).numpy()

    @torch.no_grad()
    def encode_tags(self, tags: Sequence[str]) -> np.ndarray:
        """[T, d] L2-normalised tag vectors (text features memoised per tag text; unknown tags encoded once)."""
        self.eval()
        feats = torch.from_numpy(self.text_encoder.encode(list(tags)))  # [T, 384]
        if feats.shape[0] == 0:
            return np.zeros((0, self.config.dim), dtype=np.float32)
        return F.normalize(self.tag_table(feats), dim=-1).numpy()

    def tag_scores(self, user_tags: Sequence[Sequence[str]], item_vecs: np.ndarray) -> np.ndarray:
        """[B, N+1] s_tag: pooled cosine of each user's tag vectors with every item; 0 for a user without tags."""
        out = np.zeros((len(user_tags), item_vecs.shape[0]), dtype=np.float32)
        flat = list(dict.fromkeys(t for tags in user_tags for t in tags))
        if not flat:
            return out
        vecs = self.encode_tags(flat) @ item_vecs.T  # [T, N+1]
        row = {t: i for i, t in enumerate(flat)}
        for b, tags in enumerate(user_tags):
            if tags:
                sims = vecs[[row[t] for t in dict.fromkeys(tags)]]  # [t_b, N+1]
                out[b] = sims.mean(axis=0) if self.config.tag_pooling == "mean" else sims.max(axis=0)
        return out

    def set_user_tags(self, user_tags: Mapping[str, Sequence[str]]) -> None:
        """The tags T_u that `score` fuses in (heuristic history_tags or the LLM's mined tags)."""
        self.user_tags = {str(u): [str(t) for t in tags] for u, tags in user_tags.items()}

    def score(self, histories: Sequence[np.ndarray], user_ids: Sequence[str],
              user_tags: Mapping[str, Sequence[str]] | None = None, beta: float | None = None) -> np.ndarray:
        """[B, vocab.size] fused scores beta * s_user + (1 - beta) * s_tag; column 0 = -inf (padding).

        Tags come from `user_tags` if given, else from `set_user_tags`; beta defaults to the one chosen on
        validation. beta = 1 is the pure user tower.
        """
        beta = self.beta if beta is None else beta
        if not 0.0 <= beta <= 1.0:
            raise ValueError(f"beta must be in [0, 1], got {beta}")
        items = self.item_vectors()  # [N+1, d]
        users = self.encode_users(histories, [self.profiles.get(str(u), {}) for u in user_ids])  # [B, d]
        scores = beta * (users @ items.T)  # [B, N+1]
        if beta < 1.0:
            tags = user_tags if user_tags is not None else self.user_tags
            scores += (1.0 - beta) * self.tag_scores([tags.get(str(u), []) for u in user_ids], items)
        scores[:, 0] = -np.inf
        return scores.astype(np.float32)

    def query_vectors(self, histories: Sequence[np.ndarray], user_ids: Sequence[str],
                      beta: float | None = None) -> np.ndarray:
        """[B, d] FAISS queries: beta * user + (1 - beta) * mean tag vector (exact for mean pooling)."""
        beta = self.beta if beta is None else beta
        users = self.encode_users(histories, [self.profiles.get(str(u), {}) for u in user_ids])  # [B, d]
        for b, u in enumerate(user_ids):
            tags = self.user_tags.get(str(u), [])
            users[b] *= beta
            if tags and beta < 1.0:
                users[b] += (1.0 - beta) * self.encode_tags(tags).mean(axis=0)
        return users

    def build_index(self):
        """A FAISS inner-product index over item rows 1..N (TowerConfig.index; FAISS id i -> item index i + 1)."""
        self._index = build_index(self.item_vectors()[1:], self.config.index)
        return self._index

    def retrieve(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """([Q, k] scores, [Q, k] item indices 1..N, 0 where none) of the k best items per query vector."""
        if self._index is None:
            self.build_index()
        scores, ids = search(self._index, np.asarray(queries, dtype=np.float32), k)
        return scores, np.where(ids >= 0, ids + 1, 0)

    # --- persistence ----------------------------------------------------------------------------

    def save_pretrained(self, directory: str | Path, manifest: Mapping | None = None) -> Path:
        """Write weights.safetensors, features.safetensors, config.json, model.json, manifest.json, index/."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous() for k, v in self.state_dict().items()}
        save_file(state, str(out / "weights.safetensors"))
        arrays = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in self.features.arrays().items()}
        tag_texts = list(self.text_encoder.known())
        arrays["tag_text"] = torch.from_numpy(self.text_encoder.encode(tag_texts)).reshape(-1, TEXT_DIM)
        save_file(arrays, str(out / "features.safetensors"))
        self.config.to_json(out / "config.json")
        meta = {"vocab": list(self.vocab.ids), "features": self.features.meta(), "beta": self.beta, "tags": tag_texts,
                "profiles": self.profiles, "user_tags": self.user_tags}
        (out / "model.json").write_text(json.dumps(meta) + "\n")
        (out / "manifest.json").write_text(json.dumps(dict(manifest or {}), indent=2, sort_keys=True) + "\n")
        save_index(self._index if self._index is not None else self.build_index(), out / "index", self.config.index,
                   manifest={"item_id_offset": 1, **dict(manifest or {})})
        return out

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> "ThreeTowerModel":
        """Reverse `save_pretrained` exactly (safetensors + JSON + FAISS; nothing is unpickled)."""
        root = Path(directory)
        for name in ("weights.safetensors", "features.safetensors", "config.json", "model.json"):
            if not (root / name).is_file():
                raise FileNotFoundError(f"{root}: not a three-tower model folder, missing {name}")
        config = TowerConfig.from_json(root / "config.json")
        meta = json.loads((root / "model.json").read_text())
        arrays = {k: v.numpy() for k, v in load_file(str(root / "features.safetensors")).items()}
        tag_features = arrays.pop("tag_text")
        model = cls(config, ItemVocab(ids=tuple(meta["vocab"])), ItemFeatures.from_saved(arrays, meta["features"]),
                    profiles=meta["profiles"], beta=float(meta["beta"]))
        model.load_state_dict(load_file(str(root / "weights.safetensors")))
        model.set_user_tags(meta["user_tags"])
        model.text_encoder.remember(meta["tags"], tag_features)  # known tags are never re-encoded
        if (root / "index").is_dir():
            model._index, _ = load_index(root / "index")
        model.eval()
        return model
