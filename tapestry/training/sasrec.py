"""SASRec as a Recommender: next-item training with a full softmax, optionally fused with graph item vectors.

Training: for every user with >= 2 training events, the last `max_len + 1` items give `max_len` (input, next
item) pairs; the loss is cross-entropy over ALL items at every real position. On CPU that is a [positions, D] x
[D, num_items] product per batch; padded positions are dropped before it, so the cost follows the number of
real events, not batch * max_len; the product, log-sum-exp and gradient run in cache-sized chunks without
materialising the logits (tapestry.training.softmax_ce). A full softmax converges in far fewer epochs than the
paper's BCE with one sampled negative, which is what fits a useful model into a few CPU minutes.

Two ways to use a graph model's item vectors (named by its registry name, trained earlier in the same run):
- `item_init_from`: the ID table STARTS from them (rescaled to the table's init scale: their directions carry
  the information; LightGCN's magnitudes would swamp the positional embeddings after the sqrt(D) scaling).
- `graph_from` + `fusion`: they stay FROZEN beside the ID table and a learned projection fuses them in
  (tapestry.models.sequential.sasrec), so the structure survives training. Any width works.

`behaviour=True` (issue 19): each position also reads its event type (tapestry.models.sequential.behaviour_sasrec;
vocabulary and alignment in tapestry.training.behaviour), and `behaviour_head > 0` adds the auxiliary loss of
predicting the next event's type. Served too: the export records the vocabulary (the module's `event_types`) and the
serving stages carry each history's event types beside its items (HISTORY_TYPES; tapestry.serving.user_encoder).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from tapestry.inference.padding import left_pad, trim_padding
from tapestry.models.sequential.behaviour_sasrec import BehaviourSASRec
from tapestry.models.sequential.sasrec import SASRec
from tapestry.training.behaviour import BehaviourLog, event_vocabulary, type_sequences
from tapestry.training.base import Recommender, seeded, shuffled_epoch
from tapestry.training.loop import run_epochs
from tapestry.training.sequential import SequentialRecommender
from tapestry.training.softmax_ce import full_softmax_ce


@dataclass
class SASRecConfig:
    hidden_dim: int = 64          # = the graph model's embedding_dim when initialising from it
    num_blocks: int = 2
    num_heads: int = 1
    max_len: int = 100            # 200 costs 1.7x per epoch on ML-1M for no gain per minute of training
    dropout: float = 0.2
    epochs: int = 26              # at most; ~8 s/epoch on ML-1M (2 CPU cores) with the full softmax
    patience: int = 3             # validation checks without gain before stopping (0: run every epoch)
    batch_size: int = 128
    lr: float = 4e-3              # full-softmax CE tolerates a higher lr than the paper's 1e-3 (BCE)
    # The published SASRec-CE recipe uses AdamW with weight decay and max_len 200. On ML-1M it won on validation
    # (benchmarks/sasrec_settings.py: NDCG@10 0.1805 vs 0.1705, 1 seed, at 1.5x the epoch time and all 26 epochs
    # used), so the ML-1M leaderboard runs it (benchmarks/leaderboard.py ML1M_PARAMS); the defaults stay the cheaper
    # recipe until it is measured on other data.
    optimizer: str = "adam"       # "adam" (beta2 0.98, the SASRec paper) or "adamw" (decoupled weight decay)
    weight_decay: float = 0.0     # AdamW's decoupled decay (ignored by "adam")
    # "softmax": cross-entropy over the whole catalogue; "sampled": over the target + `num_negatives` uniform items
    # shared by the batch (accidental hits masked); "auto": softmax below FULL_SOFTMAX_MAX_ITEMS items, else sampled
    # (a [positions x catalogue] logit matrix stops fitting in memory and time around there).
    loss: str = "auto"
    num_negatives: int = 1024
    # The full softmax's matrix products: "float32" (exact) or "bfloat16" (several times faster on CPUs with
    # AVX512-BF16/AMX; gradients within ~0.2 %; tapestry.training.softmax_ce). Both fused and chunked.
    softmax_dtype: str = "float32"
    item_init_from: str | None = None   # registry name of a model whose item_embeddings() start the ID table
    graph_from: str | None = None       # registry name of a model whose item_embeddings() are fused in, frozen
    fusion: str = "add"                 # "add" or "gate" (with graph_from)
    # Issue 19: event-type embeddings beside the item embeddings (opt-in; served with the request's event types).
    behaviour: bool = False
    behaviour_head: float = 0.0         # weight of the auxiliary next-event-type loss (with behaviour; 0 = off)
    seed: int = 0


FULL_SOFTMAX_MAX_ITEMS = 200_000
SOFTMAX_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def resolve_loss(loss: str, num_items: int) -> str:
    if loss not in ("auto", "softmax", "sampled"):
        raise ValueError(f"loss must be 'auto', 'softmax' or 'sampled', got {loss!r}")
    if loss == "auto":
        return "softmax" if num_items <= FULL_SOFTMAX_MAX_ITEMS else "sampled"
    return loss


def sampled_softmax(h: torch.Tensor, table: torch.Tensor, targets: torch.Tensor, num_negatives: int) -> torch.Tensor:
    """Cross-entropy of each position's target against `num_negatives` uniform items 1..N-1 shared by the batch.
    Uniform proposals need no log-Q correction (it is the same constant for every item); a negative that equals
    the position's target is masked, so the target is never its own negative."""
    negatives = torch.randint(1, table.shape[0], (num_negatives,), device=h.device)
    pos = (h * table[targets]).sum(-1, keepdim=True)                       # [P, 1]
    neg = (h @ table[negatives].T).masked_fill(negatives[None, :] == targets[:, None], float("-inf"))
    logits = torch.cat([pos, neg], dim=1)
    return F.cross_entropy(logits, torch.zeros(len(targets), dtype=torch.long, device=h.device))


class SASRecRecommender(SequentialRecommender):
    Config = SASRecConfig
    parallelism = "data"            # shuffled_epoch: DDP under --distributed N

    def __init__(self, config: SASRecConfig | None = None, *, item_init: torch.Tensor | None = None,
                 side: torch.Tensor | None = None, **kwargs):
        super().__init__(config, **kwargs)
        if item_init is not None and item_init.shape[-1] != self.cfg.hidden_dim:
            raise ValueError(f"item_init has dimension {item_init.shape[-1]} but hidden_dim is {self.cfg.hidden_dim}")
        self.item_init, self.side = item_init, side
        self.initialised_from_graph = False
        self.model: SASRec | None = None
        self.event_types_: list[str] = []           # behaviour vocabulary (index i + 1 = event_types_[i])
        self.behaviour_log_: BehaviourLog | None = None

    def bind(self, upstream: dict[str, Recommender]) -> None:
        for field_name in ("item_init_from", "graph_from"):
            source = getattr(self.cfg, field_name)
            if source is None:
                continue
            vectors = self.upstream_model(upstream, field_name).item_embeddings().detach()
            if field_name == "item_init_from":
                if vectors.shape[-1] != self.cfg.hidden_dim:
                    raise ValueError(f"item_init_from={source!r} gives dimension {vectors.shape[-1]} but "
                                     f"hidden_dim is {self.cfg.hidden_dim}")
                self.item_init = vectors
            else:
                self.side = vectors

    def _new_model(self, num_items: int, side_dim: int = 0) -> SASRec:
        c = self.cfg
        if c.behaviour:
            return BehaviourSASRec(num_items, max(len(self.event_types_), 1), c.hidden_dim, c.num_blocks,
                                   c.num_heads, c.max_len, c.dropout, side_dim=side_dim,
                                   fusion=c.fusion, event_types=self.event_types_).to(self.device)
        return SASRec(num_items, c.hidden_dim, c.num_blocks, c.num_heads, c.max_len, c.dropout,
                      side_dim=side_dim, fusion=c.fusion).to(self.device)

    @torch.no_grad()
    def encode_behaviour(self, histories: list[np.ndarray], types: list[np.ndarray],
                         batch_size: int = 512) -> torch.Tensor:
        """User vectors [B, D] from item histories and their aligned event-type indices (0 = unknown)."""
        if not self.cfg.behaviour:
            return self.encode(histories, batch_size)
        for h, t in zip(histories, types):
            if len(h) != len(t):
                raise ValueError(f"an event-type history has {len(t)} entries for {len(h)} items")
        self.model.eval()
        out = []
        for s in range(0, len(histories), batch_size):
            seqs = torch.from_numpy(left_pad(histories[s:s + batch_size], self.cfg.max_len)).to(self.device)
            ev = torch.from_numpy(left_pad(types[s:s + batch_size], self.cfg.max_len, seqs.shape[1]))
            out.append(self.model.encode(seqs, ev.to(self.device)))
        return torch.cat(out) if out else torch.zeros(0, self.cfg.hidden_dim, device=self.device)

    @torch.no_grad()
    def score(self, user_idx: np.ndarray, histories: list[np.ndarray]) -> torch.Tensor:
        if not self.cfg.behaviour:
            return super().score(user_idx, histories)
        types = [self.behaviour_log_.types_for(int(u), h) for u, h in zip(user_idx, histories)]
        return self._mask_padding(self.encode_behaviour(histories, types) @ self.model.item_embeddings().T)

    def _training_windows(self, sequences: list[np.ndarray]) -> torch.Tensor:
        """[U, max_len + 1]: each trainable user's last max_len + 1 training items, left-padded."""
        usable = [s for s in sequences if len(s) >= 2]
        return torch.from_numpy(left_pad(usable, self.cfg.max_len + 1, self.cfg.max_len + 1))

    def fit(self, data, graph=None) -> "SASRecRecommender":
        c = self.cfg
        self.num_items = data.num_items
        events = None
        if c.behaviour:
            self.event_types_ = event_vocabulary(data)
            self.behaviour_log_ = BehaviourLog.from_data(data, self.event_types_)
            items, types = type_sequences(data, ("train",), self.event_types_)
            windows = self._training_windows(items)
            events = torch.from_numpy(left_pad([t for t in types if len(t) >= 2], c.max_len + 1, c.max_len + 1))
        else:
            windows = self._training_windows(data.sequences(("train",)))
        with seeded(self.device, c.seed):
            side_dim = int(self.side.shape[-1]) if self.side is not None else 0
            self.model = model = self._new_model(self.num_items, side_dim)
            if self.side is not None:
                model.set_side_embeddings(self.side.float())
            if self.item_init is not None:
                init = self.item_init.detach().float().to(self.device)
                target_std = float(model.item_emb.weight[1:].detach().std())
                model.init_item_embeddings(init * (target_std / float(init[1:].std().clamp_min(1e-12))))
                self.initialised_from_graph = True
            if c.optimizer == "adamw":
                opt = torch.optim.AdamW(model.parameters(), lr=c.lr, betas=(0.9, 0.98), weight_decay=c.weight_decay)
            elif c.optimizer == "adam":   # beta2 = 0.98 as in the SASRec paper; dropout regularises
                opt = torch.optim.Adam(model.parameters(), lr=c.lr, betas=(0.9, 0.98))
            else:
                raise ValueError(f"optimizer must be 'adam' or 'adamw', got {c.optimizer!r}")
            self.loss_used_ = resolve_loss(c.loss, self.num_items)
            if c.softmax_dtype not in SOFTMAX_DTYPES:
                raise ValueError(f"softmax_dtype must be one of {sorted(SOFTMAX_DTYPES)}, got {c.softmax_dtype!r}")
            run_epochs(self, model, c.epochs, "sasrec",
                       lambda beat: self._train_epoch(model, opt, windows, beat, events), data, c.patience)
        return self

    def _train_epoch(self, model: SASRec, opt: torch.optim.Optimizer, windows: torch.Tensor, beat=None,
                     events: torch.Tensor | None = None) -> float:
        """One pass over the users in random order; returns the mean loss per predicted position. `events`
        [U, max_len + 1], aligned with `windows`, are the event types of a behaviour-aware model."""
        softmax_dtype = SOFTMAX_DTYPES[self.cfg.softmax_dtype]

        def batch_loss(rows):
            batch = trim_padding(windows[rows].to(self.device))
            inputs, targets = batch[:, :-1], batch[:, 1:]
            real = targets > 0
            if events is None:
                h = model(inputs)[real]                                           # [P, D]
            else:
                ev = events[rows][:, events.shape[1] - batch.shape[1]:].to(self.device)   # the same trimmed columns
                h = model(inputs, ev[:, :-1])[real]
            if self.loss_used_ == "sampled":
                loss = sampled_softmax(h, model.item_table(), targets[real], self.cfg.num_negatives)
            else:   # full softmax over real items 1..N-1 (index 0 is padding, never a target)
                loss = full_softmax_ce(h, model.item_table()[1:], targets[real] - 1, dtype=softmax_dtype)
            if events is not None and self.cfg.behaviour_head > 0:
                loss = loss + self.cfg.behaviour_head * F.cross_entropy(model.next_type_logits(h), ev[:, 1:][real])
            return loss, h.shape[0]

        return shuffled_epoch(model, opt, windows.shape[0], self.cfg.batch_size, batch_loss, beat)

    def _get_state(self):
        state = {"num_items": self.num_items, "initialised_from_graph": self.initialised_from_graph,
                 "side_dim": self.model.side_dim,
                 "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()}}
        if self.cfg.behaviour:
            state["event_types"] = list(self.event_types_)
            state["behaviour_log"] = self.behaviour_log_.state()
        return state

    def _set_state(self, state):
        self.num_items = int(state["num_items"])
        self.initialised_from_graph = bool(state["initialised_from_graph"])
        if self.cfg.behaviour:
            self.event_types_ = [str(t) for t in state["event_types"]]
            self.behaviour_log_ = BehaviourLog.from_state(state["behaviour_log"])
        self.model = self._new_model(self.num_items, int(state.get("side_dim", 0)))
        self.model.load_state_dict(state["model"])
        self.model.eval()
