"""SASRec (Kang & McAuley, ICDM 2018) in one file: model, losses, training, evaluation, save/load, scorer.

Faithful to the paper: item embeddings scaled by sqrt(d) plus learned absolute positions over the
left-padded window (so the most recent item always has the last position), dropout on the embeddings,
`blocks` × [causal multi-head self-attention, point-wise two-layer ReLU FFN], each sub-layer
x + Dropout(g(LayerNorm(x))) (the paper's eq. 4-5), padded positions zeroed after every block, a final
LayerNorm, and the input item embedding reused as the output layer (r_{i,t} = F_t · M_i).

Two losses (`SASRecConfig.loss`):
- "bce": the paper's binary cross-entropy with one negative per position, sampled uniformly from the
  items the user never interacted with.
- "ce": full softmax cross-entropy over the catalogue ("SASRec+", Klenitskiy & Vasilev 2023; gSASRec
  shows it fixes BCE's overconfidence from the single negative).

`SASRecConfig.content_features` ("sasrec_ce_content" in `llmrec evaluate`): the item embedding becomes the
id embedding PLUS a linear projection of the item's content features (the frozen text vectors the three-tower
item tower reads, genre multi-hot and year-bucket one-hot: `item_content_matrix`), in both the input and the
output layer. It gives SASRec the towers' content, so a tower-vs-SASRec gap is not just "more features".

Training uses the split's training sequences (each user's events before the validation target) with
next-item targets at every position; early stopping watches validation NDCG@10 (full catalogue, seen items
excluded) and keeps the best weights. Validation numbers pick settings; only `llmrec evaluate` reports.

Tuning record (ML-100K, llmrec.data.split leave-one-out, 943 users, full ranking, seen items excluded; seed 0;
hidden 64, 2 blocks, 1 head, lr 1e-3, batch 128, Adam betas (0.9, 0.98), eval every 4 epochs, patience 3;
1 torch thread on a shared 2-core box; valid / test NDCG@10):
- ce,  maxlen 50, dropout 0.2: best epoch 32, 0.0989 / 0.0901 (HR@10 0.182 / 0.176), 358 s -> the defaults.
- bce, maxlen 50, dropout 0.2: best epoch 32, 0.0773 / 0.0640 (HR@10 0.155 / 0.127).
- ce, maxlen 100, dropout 0.2: best epoch 20, 0.0999 / 0.0709, 856 s. Validation is a tie with maxlen 50
  (+0.001, one seed), so the cheaper maxlen 50 stays the default (test was not used to choose).
- ce, dropout 0.5: learns slower (epoch 20: 0.071 vs 0.091; epoch 32: 0.095 vs 0.099); stopped at epoch 36
  for lack of CPU time, not converged.
- ce, maxlen 200 (the paper's ML-1M value): 4x the attention cost per epoch; not run.
Reference points on the same protocol: popularity 0.0338 / 0.0432, item-kNN 0.0705 / 0.0540.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from llmrec.config import SASRecConfig
from llmrec.errors import ModelError
from llmrec.io import package_version
from llmrec.data import ItemVocab, user_sequences
from llmrec.data.behaviors import BehaviorVocab, training_events
from llmrec.metrics import hr_at_k, mrr, ndcg_at_k
from llmrec.progress import progress_bar
from llmrec.data.split import Split
from retrieval.base import rank_split_targets

log = logging.getLogger(__name__)

WEIGHTS_FILE = "model.safetensors"


# --- Model ----------------------------------------------------------------------------------------


class CausalSelfAttention(nn.Module):
    def __init__(self, d: int, heads: int, dropout: float):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.qkv = nn.Linear(d, 3 * d)
        self.out = nn.Linear(d, d)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        b, l, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=2)
        q, k, v = (t.view(b, l, self.heads, d // self.heads).transpose(1, 2) for t in (q, k, v))  # (B, nh, L, hs)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed[:, None],  # allowed: (B, 1, L, L)
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.out(y.transpose(1, 2).reshape(b, l, d))


class Block(nn.Module):
    """Pre-LN block: x + Dropout(SA(LN(x))), then x + Dropout(FFN(LN(x)))."""

    def __init__(self, d: int, heads: int, dropout: float):
        super().__init__()
        self.ln_attn = nn.LayerNorm(d, eps=1e-8)
        self.attn = CausalSelfAttention(d, heads, dropout)
        self.ln_ffn = nn.LayerNorm(d, eps=1e-8)
        self.ffn = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Dropout(dropout), nn.Linear(d, d))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.attn(self.ln_attn(x), allowed))
        return x + self.drop(self.ffn(self.ln_ffn(x)))


class SASRec(nn.Module):
    def __init__(self, n_items: int, config: SASRecConfig, n_features: int = 0):
        super().__init__()
        self.n_items, self.config = n_items, config
        d = config.hidden
        self.item_emb = nn.Embedding(n_items + 1, d, padding_idx=0)  # row 0 = padding; also the output layer
        self.content = None
        if config.content_features:
            if n_features < 1:
                raise ModelError("SASRecConfig.content_features is on but no item content features were given "
                                 "(train_sasrec(..., item_features=item_content_matrix(...)))")
            # (V, F) fixed content rows, saved with the weights; row 0 (padding) is all zeros.
            self.register_buffer("item_features", torch.zeros(n_items + 1, n_features))
            self.content = nn.Linear(n_features, d, bias=False)  # no bias: padding stays a zero vector
        self.pos_emb = nn.Embedding(config.maxlen, d)
        self.emb_drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(d, config.heads, config.dropout) for _ in range(config.blocks))
        self.ln_final = nn.LayerNorm(d, eps=1e-8)
        # Xavier-normal for every matrix, as the reference TF code initialises its embeddings: N(0, 1)
        # embeddings scaled by sqrt(d) give logits in the tens and a CE loss far above log(V).
        for name, p in self.named_parameters():
            if p.dim() == 2:
                nn.init.xavier_normal_(p)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()

    def encode(self, seqs: torch.Tensor) -> torch.Tensor:
        """(B, L) left-padded item indices -> (B, L, d) states; state t sees items 0..t only."""
        b, l = seqs.shape
        keep = (seqs > 0).unsqueeze(-1).float()  # (B, L, 1)
        pos = torch.arange(self.config.maxlen - l, self.config.maxlen, device=seqs.device)
        x = F.embedding(seqs, self.item_table()) * math.sqrt(self.config.hidden) + self.pos_emb(pos)  # (B, L, d)
        x = self.emb_drop(x) * keep
        causal = torch.ones(l, l, dtype=torch.bool, device=seqs.device).tril()
        # Keys: earlier real items; the diagonal stays allowed so an all-padding row never softmaxes over nothing.
        allowed = causal & ((seqs > 0)[:, None, :] | torch.eye(l, dtype=torch.bool, device=seqs.device))  # (B, L, L)
        for block in self.blocks:
            x = block(x, allowed) * keep
        return self.ln_final(x)

    def item_table(self) -> torch.Tensor:
        """(V, d) item embeddings: the id embedding, plus the projected content features when configured."""
        if self.content is None:
            return self.item_emb.weight
        return self.item_emb.weight + self.content(self.item_features)

    def item_scores(self, states: torch.Tensor) -> torch.Tensor:
        """(..., d) -> (..., V) relevance of every item index (shared embeddings)."""
        return states @ self.item_table().T


# --- Losses (pure functions) ------------------------------------------------------------------------


def bce_loss(states: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, item_emb: torch.Tensor) -> torch.Tensor:
    """The paper's loss: -log σ(r_pos) - log(1 - σ(r_neg)), averaged over non-padding positions.

    states (B, L, d); pos, neg (B, L) item indices (0 = no target); item_emb (V, d).
    """
    mask = pos > 0
    h = states[mask]  # (N, d)
    r_pos = (h * item_emb[pos[mask]]).sum(-1)  # (N,)
    r_neg = (h * item_emb[neg[mask]]).sum(-1)
    return F.binary_cross_entropy_with_logits(r_pos, torch.ones_like(r_pos)) + \
        F.binary_cross_entropy_with_logits(r_neg, torch.zeros_like(r_neg))


def ce_loss(states: torch.Tensor, pos: torch.Tensor, item_emb: torch.Tensor) -> torch.Tensor:
    """SASRec+: softmax cross-entropy over all items (padding column masked), mean over non-padding positions."""
    mask = pos > 0
    logits = states[mask] @ item_emb.T  # (N, V)
    logits[:, 0] = float("-inf")
    return F.cross_entropy(logits, pos[mask])


def sample_negatives(pos: torch.Tensor, seen: torch.Tensor, rows: torch.Tensor, gen: torch.Generator,
                     tries: int = 10) -> torch.Tensor:
    """(B, L) uniform items in 1..V-1 that user `rows[b]` never interacted with (`seen`: (U, V) bool)."""
    n_items = seen.shape[1] - 1
    neg = torch.randint(1, n_items + 1, pos.shape, generator=gen)
    for _ in range(tries):  # rejection sampling; users see a small share of the catalogue
        bad = seen[rows[:, None], neg]
        if not bad.any():
            break
        neg[bad] = torch.randint(1, n_items + 1, (int(bad.sum()),), generator=gen)
    return neg


# --- Training ---------------------------------------------------------------------------------------


def pad_left(seqs: Sequence[np.ndarray], maxlen: int) -> torch.Tensor:
    """(B, maxlen) int64: the last `maxlen` items of each sequence, left-padded with 0."""
    out = np.zeros((len(seqs), maxlen), dtype=np.int64)
    for b, s in enumerate(seqs):
        s = np.asarray(s, dtype=np.int64)[-maxlen:]
        if s.size:
            out[b, -s.size :] = s
    return torch.from_numpy(out)


def evaluate_stage(scorer, split: Split, vocab: ItemVocab, stage: str, k: int = 10) -> dict[str, float]:
    """NDCG@k, HR@k and MRR on the split's `stage` targets (full catalogue, seen items excluded)."""
    histories = user_sequences(split.history(stage), vocab)
    t = split.targets(stage)
    targets = dict(zip(t["user_id"], vocab.encode(t["item_id"])))
    ranks = rank_split_targets(scorer, histories, targets, vocab.size)
    return {f"ndcg@{k}": ndcg_at_k(ranks, k), f"hr@{k}": hr_at_k(ranks, k), "mrr": mrr(ranks), "users": len(ranks)}


def item_content_matrix(text: np.ndarray, genres: np.ndarray, year: np.ndarray, n_year_buckets: int) -> np.ndarray:
    """(V, T + G + Y) float32 content rows: text vectors, genre multi-hot, year-bucket one-hot (bucket 0 =
    unknown gets no column, so the padding row 0 stays all zeros). Inputs as `retrieval.encoder.ItemFeatures`."""
    year_hot = np.zeros((len(year), n_year_buckets), dtype=np.float32)
    known = np.asarray(year) > 0
    year_hot[np.flatnonzero(known), np.asarray(year)[known] - 1] = 1.0
    return np.concatenate([np.asarray(text, np.float32), np.asarray(genres, np.float32), year_hot], axis=1)


def train_sasrec(split: Split, vocab: ItemVocab, config: SASRecConfig,
                 item_features: np.ndarray | None = None,
                 behaviors: BehaviorVocab | None = None) -> tuple["SASRecScorer", dict]:
    """Train on the split's training sequences; early-stop on validation NDCG@10; return the best model.

    Each evaluated epoch is logged at INFO as one JSON line (loss, seconds, validation metrics).

    item_features: (V, F) content rows (`item_content_matrix`), required when `config.content_features`.
    behaviors: the dataset's vocabulary (`Dataset.behavior_vocab`): events of its negative non-target types
        are left out of the training sequences (`llmrec.data.behaviors.training_events`).
    """
    torch.manual_seed(config.seed)
    torch.set_num_threads(config.threads)
    gen = torch.Generator().manual_seed(config.seed)
    # Negative feedback (skips, returns: `behaviors`' negative non-target types) is never a next-item target.
    seqs = [s for s in user_sequences(training_events(split.train, behaviors), vocab).values() if len(s) >= 2]
    inputs = pad_left([s[:-1] for s in seqs], config.maxlen)  # (U, L)
    targets = pad_left([s[1:] for s in seqs], config.maxlen)  # (U, L): next item at every position
    seen = torch.zeros(len(seqs), vocab.size, dtype=torch.bool)  # (U, V) for negative sampling
    for u, s in enumerate(seqs):
        seen[u, torch.from_numpy(s)] = True
    model = SASRec(vocab.size - 1, config, 0 if item_features is None else item_features.shape[1])
    if model.content is not None:
        if item_features.shape[0] != vocab.size:
            raise ModelError(f"item_features has {item_features.shape[0]} rows, the vocabulary {vocab.size}")
        model.item_features.copy_(torch.from_numpy(np.asarray(item_features, dtype=np.float32)))
    opt = torch.optim.Adam(model.parameters(), lr=config.lr, betas=(0.9, 0.98))
    scorer = SASRecScorer(model, vocab)
    best, best_state, bad_evals, curve, t0 = -1.0, None, 0, [], time.time()
    with progress_bar(range(1, config.epochs + 1), "SASRec epochs", config.epochs, unit="epoch") as epochs:
        for epoch in epochs:
            model.train()
            losses = []
            for rows in torch.randperm(len(seqs), generator=gen).split(config.batch_size):
                states = model.encode(inputs[rows])  # (B, L, d)
                if config.loss == "bce":
                    neg = sample_negatives(targets[rows], seen, rows, gen)
                    loss = bce_loss(states, targets[rows], neg, model.item_table())
                else:
                    loss = ce_loss(states, targets[rows], model.item_table())
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                losses.append(loss.item())
            entry = {"epoch": epoch, "loss": float(np.mean(losses)), "seconds": round(time.time() - t0, 1)}
            if epoch % config.eval_every == 0 or epoch == config.epochs:
                entry.update(evaluate_stage(scorer, split, vocab, "valid"))
                if entry["ndcg@10"] > best:
                    best, bad_evals = entry["ndcg@10"], 0
                    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                else:
                    bad_evals += 1
                log.info(json.dumps(entry))
            epochs.set_postfix(loss=f"{entry['loss']:.4f}", best_ndcg=f"{max(best, 0.0):.4f}")
            curve.append(entry)
            if bad_evals >= config.patience:
                break
    model.load_state_dict(best_state)
    model.eval()
    best_epoch = max((e for e in curve if "ndcg@10" in e), key=lambda e: e["ndcg@10"])["epoch"]
    return scorer, {"curve": curve, "best_epoch": best_epoch, "best_valid_ndcg@10": best,
                    "train_seconds": round(time.time() - t0, 1), "train_users": len(seqs)}


# --- Scoring and artifacts --------------------------------------------------------------------------


class SASRecScorer:
    """`SequenceScorer` over a trained SASRec: the last position's state against every item embedding."""

    def __init__(self, model: SASRec, vocab: ItemVocab, batch_size: int = 256):
        if model.n_items != len(vocab.ids):
            raise ValueError(f"model has {model.n_items} items, vocabulary {len(vocab.ids)}")
        self.model, self.vocab, self.batch_size = model, vocab, batch_size
        self.name = f"sasrec_{model.config.loss}"

    @torch.no_grad()
    def score(self, histories: Sequence[np.ndarray], user_ids: Sequence[str]) -> np.ndarray:
        was_training = self.model.training
        self.model.eval()
        out = np.empty((len(histories), self.vocab.size), dtype=np.float32)  # (B, V)
        for start in range(0, len(histories), self.batch_size):
            seqs = pad_left(histories[start : start + self.batch_size], self.model.config.maxlen)
            last = self.model.encode(seqs)[:, -1]  # (b, d): state after the most recent item
            out[start : start + len(seqs)] = self.model.item_scores(last).numpy()
        self.model.train(was_training)
        return out

    def save_pretrained(self, directory: str | Path, manifest: dict | None = None) -> Path:
        """model.safetensors + config.json + vocab.json + manifest.json (split hash, versions, metrics)."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.model.state_dict().items()}, str(out / WEIGHTS_FILE))
        self.model.config.to_json(out / "config.json")
        (out / "vocab.json").write_text(json.dumps(list(self.vocab.ids)) + "\n")
        meta = {"model": "sasrec", "n_items": self.model.n_items, "torch_version": torch.__version__,
                "llmrec_version": package_version(), **(manifest or {})}
        (out / "manifest.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        return out

    @classmethod
    def from_pretrained(cls, directory: str | Path, expect_split_hash: str | None = None) -> "SASRecScorer":
        """Reverse `save_pretrained`; with `expect_split_hash`, refuse a model trained on another split."""
        root = Path(directory)
        for name in (WEIGHTS_FILE, "config.json", "vocab.json", "manifest.json"):
            if not (root / name).is_file():
                raise FileNotFoundError(f"{root}: not a SASRec folder, missing {name} (train with `llmrec train-sasrec`)")
        manifest = json.loads((root / "manifest.json").read_text())
        if expect_split_hash is not None and manifest.get("split_hash") != expect_split_hash:
            raise ValueError(f"{root}: trained on split {manifest.get('split_hash')!r}, expected {expect_split_hash!r}")
        vocab = ItemVocab(ids=tuple(json.loads((root / "vocab.json").read_text())))
        weights = load_file(str(root / WEIGHTS_FILE))
        n_features = weights["item_features"].shape[1] if "item_features" in weights else 0
        model = SASRec(len(vocab.ids), SASRecConfig.from_json(root / "config.json"), n_features)
        model.load_state_dict(weights)
        model.eval()
        return cls(model, vocab)

