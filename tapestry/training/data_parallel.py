"""Data-parallel placement for the gradient-trained recommenders: one process, or N under `torchrun` with DDP.

    tapestry train --tenant ml1m --distributed 2     # every data-parallel model of the line-up on 2 processes

The math stays in the trainers; only placement lives here (as tapestry.training.distributed does for the DLRM's
sharded tables). The shared minibatch loop (tapestry.training.base.shuffled_epoch) and epoch loop
(tapestry.training.loop.run_epochs) call into this module, so a trainer changes at most a line or two.

How one fit runs on N processes:
- `fit` (the launching process, e.g. `tapestry train`) pickles the bound, unfitted recommender with the data and
  graph into a job directory and runs `python -m tapestry.training.data_parallel DIR` under torchrun through the
  DLRM's launcher (distributed.torchrun): gloo on CPU, NCCL on CUDA (one device per process).
- Every rank builds the model under the same seed; DDP broadcasts rank 0's weights anyway. Each epoch every rank
  draws the permutation (so the random streams advance alike) and rank 0's is broadcast: the ranks' shares
  partition one global permutation, the one a single process would have drawn.
- The GLOBAL batch stays `batch_size`: each global batch is split into N contiguous shares (sizes differ by at most
  one; a last global batch smaller than N is dropped on every rank). The step runs inside DDP's forward (a
  closure module, so trainers may call any method of their model, not only `forward`), then DDP averages the
  gradients. A loss that is a mean over `count` units (examples, predicted positions) is scaled by
  N * count / (the global count) first, so the averaged gradient is exactly that of the global batch's mean, even
  when shares hold different numbers of positions. If any rank has no loss for a step, every rank skips it.
- Rank 0 measures validation (early stopping); its decision is broadcast so all ranks stop together and restore
  the same best epoch. Rank 0 writes the fitted state (Recommender._get_state) and the fitted `*_` attributes;
  the launching process loads them into its recommender, then evaluates and saves it like any other model.

Randomness inside a step (dropout, BERT4Rec's Cloze masks, shared sampled negatives) comes from each rank's own
generator, seeded alike (their streams part once ranks draw different amounts, e.g. dropout over shares of
different widths). With dropout and masking off, N processes take the same steps as one, including the shared
negatives of a sampled softmax (tests/training/test_data_parallel.py: equal within float rounding with SGD; Adam
magnifies rounding noise where the exact gradient is zero); with them on, the steps are alike in distribution.
Losses that need the whole global batch (the two-tower's in-batch negatives) gather it across the ranks with
`gather_batch` (gradients flow back to the rank that owns each row); per-positive draws that must match the
single-process run draw for the whole global batch and keep `step_share()` of it (LightGCN's BPR negatives).
The neighbour-sampled GNNs (sage, rsage, hgt) step through the same loop over their positive edges
(tapestry.training.link_steps): each rank samples its share's subgraph, removes the whole global batch's supervision
edges (`global_rows`) and gathers candidate sets built from the whole batch (`gather_unique`); HGT's gradient
clipping runs after the all-reduce (`ClippedOptimizer`), on the global batch's gradient.
Every rank holds the whole training data (only the minibatch indices are sharded).
"""
from __future__ import annotations

import inspect
import os
import sys
import tempfile
import weakref
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from tapestry.training import distributed as D

JOB, RESULT, DEVICE = "job.pt", "result.pt", "device.txt"


# ---- where this process stands --------------------------------------------------------------------------------
def active() -> bool:
    """Inside a process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def is_lead() -> bool:
    """Rank 0, or the only process: the one that logs, validates and writes."""
    return not active() or dist.get_rank() == 0


def _wire() -> torch.device:
    """Where small collective tensors live: NCCL moves CUDA tensors only, gloo CPU ones."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def from_lead(value):
    """Rank 0's `value` (any picklable object) on every rank; `value` itself outside a process group."""
    if not active():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


# ---- the minibatch loop ---------------------------------------------------------------------------------------
class _Step(nn.Module):
    """Runs a loss closure inside DDP's forward, so every parameter the closure touches is synchronised."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, fn, *args):
        return fn(*args)


_WRAPPED: dict[int, tuple[weakref.ref, nn.Module]] = {}


def _ddp(model: nn.Module) -> nn.Module:
    """The DDP wrapper of `model` (built once per module: construction broadcasts rank 0's weights)."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    ref, wrapped = _WRAPPED.get(id(model), (None, None))
    if ref is None or ref() is not model:
        device = next(model.parameters()).device
        # Buffers here are constants (frozen tables, attribute indices): no per-step broadcast of them.
        no_buffer_sync = ({"forward_sync_buffers": False}
                          if "forward_sync_buffers" in inspect.signature(DDP.__init__).parameters
                          else {"broadcast_buffers": False})
        # find_unused_parameters: a step may leave parameters out (SASRec's fusion gate without graph vectors).
        wrapped = DDP(_Step(model), device_ids=[device.index] if device.type == "cuda" else None,
                      find_unused_parameters=True, **no_buffer_sync)
        _WRAPPED[id(model)] = (weakref.ref(model), wrapped)
    return wrapped


def epoch_permutation(num_examples: int) -> torch.Tensor:
    """This epoch's order: every rank draws one (their random streams advance alike), rank 0's is used."""
    perm = torch.randperm(num_examples)
    if active():
        wire = perm.to(_wire())
        dist.broadcast(wire, src=0)
        perm = wire.cpu()
    return perm


_SHARE: tuple[int, int, int] | None = None      # (start, stop, global batch size) of the step in progress
_ROWS: torch.Tensor | None = None                # the global batch's rows of the step in progress


def step_share() -> tuple[slice, int]:
    """(this rank's slice of the current global batch, the global batch size), for draws that must be made for
    the whole global batch (then sliced) to match a single-process run. Only valid inside a step."""
    if _SHARE is None:
        raise RuntimeError("step_share() is only defined inside a data-parallel step")
    start, stop, total = _SHARE
    return slice(start, stop), total


def share_of(rows: torch.Tensor) -> tuple[slice, int]:
    """step_share() inside a data-parallel step; (all of `rows`, len(rows)) anywhere else: one code path for
    trainers that draw per-step randomness for the whole global batch."""
    return step_share() if active() and _SHARE is not None else (slice(0, len(rows)), len(rows))


def global_rows(rows: torch.Tensor) -> torch.Tensor:
    """The whole global batch this rank's `rows` belong to (every rank knows it: the permutation is shared);
    `rows` itself outside a data-parallel step. The sampled GNNs remove the global batch's supervision edges."""
    return _ROWS if active() and _ROWS is not None else rows


def shuffled_epoch(model: nn.Module, opt: torch.optim.Optimizer, num_examples: int, batch_size: int,
                   batch_loss, heartbeat=None) -> float:
    """tapestry.training.base.shuffled_epoch on every rank of a process group (see the module docstring). Returns
    the epoch's mean loss as one process would report it: each step's loss is the global batch's (the shares'
    losses weighted by their counts); a step's weight is the sum of the shares' weights, or, when `batch_loss`
    returns (loss, weight, count), `weight` as given (a per-step weight, e.g. 1)."""
    global _SHARE, _ROWS
    model.train()
    perm = epoch_permutation(num_examples)
    step = _ddp(model)
    rank, size = dist.get_rank(), dist.get_world_size()
    total, weight = 0.0, 0.0
    try:
        for start in range(0, num_examples, batch_size):
            rows = perm[start:start + batch_size]
            if len(rows) < size:
                break                                   # too few for one example per rank: dropped everywhere
            share = D.rank_slice(len(rows), rank, size)
            _SHARE, _ROWS = (share.start, share.stop, len(rows)), rows
            out = step(batch_loss, rows[share])
            if out is None:
                loss, n, count = None, 0, 0
            else:
                loss, n, count = out if len(out) == 3 else (*out, out[1])
            value = 0.0 if loss is None else float(loss.detach())
            # The global count, how many ranks have no loss, the global sum of loss x count, the summed weights.
            agreed = torch.tensor([float(count), float(loss is None), value * count, float(n)], dtype=torch.float64,
                                  device=_wire())
            dist.all_reduce(agreed)
            agreed = agreed.cpu()
            if agreed[1] > 0 or agreed[0] <= 0:
                continue                                # someone has nothing to back-propagate: nobody does
            opt.zero_grad(set_to_none=True)
            (loss * (size * count / float(agreed[0]))).backward()
            opt.step()
            step_weight = float(n) if len(out) == 3 else float(agreed[3])
            total, weight = total + float(agreed[2] / agreed[0]) * step_weight, weight + step_weight
            if heartbeat is not None:
                heartbeat()
    finally:
        _SHARE, _ROWS = None, None
    return total / max(weight, 1)


def _all_gather(t: torch.Tensor) -> torch.Tensor:
    """[world size, *t.shape]: every rank's equal-shaped `t`."""
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, t.contiguous())
    return torch.stack(parts)


class _GatherRows(torch.autograd.Function):
    """_all_gather whose backward hands each rank the sum of every rank's gradient for its own part (all_reduce,
    then this rank's slice: gloo has no reduce_scatter)."""

    @staticmethod
    def forward(ctx, t):
        return _all_gather(t)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad[dist.get_rank()]


def gather_batch(t: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(every rank's rows of `t` in rank order, i.e. the global batch; where this rank's rows start). Gradients
    flow back to the rank that owns each row. Outside a process group: (t, 0)."""
    if not active():
        return t, 0
    size, rank = dist.get_world_size(), dist.get_rank()
    lengths = [torch.zeros(1, dtype=torch.long, device=t.device) for _ in range(size)]
    dist.all_gather(lengths, torch.tensor([len(t)], dtype=torch.long, device=t.device))
    lengths = [int(x) for x in lengths]
    longest = max(lengths)
    padded = torch.cat([t, t.new_zeros((longest - len(t), *t.shape[1:]))]) if len(t) < longest else t
    parts = _GatherRows.apply(padded) if t.requires_grad else _all_gather(padded)
    return torch.cat([p[:n] for p, n in zip(parts, lengths)]), sum(lengths[:rank])


def gather_unique(rows: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """Every rank's `rows` (vectors keyed by `keys`, e.g. item vectors by global item id), one row per distinct key
    over the global batch (the first rank's copy; gradients flow back to it): the candidate set a single process
    would have built from the whole batch. Outside a process group: `rows` as given (already distinct)."""
    if not active():
        return rows
    everything, _ = gather_batch(rows)
    every_key, _ = gather_batch(keys)
    distinct, inverse = torch.unique(every_key, return_inverse=True)
    first = torch.full((len(distinct),), len(every_key), dtype=torch.long, device=every_key.device)
    first.scatter_reduce_(0, inverse, torch.arange(len(every_key), device=every_key.device), reduce="amin")
    return everything[first]


class ClippedOptimizer:
    """`opt` whose step first clips the gradient norm of `params` to `max_norm` (0 = no clipping): lets a trainer
    that clips run through the shared minibatch loop. Under DDP the gradients are already averaged then, so the
    clipped norm is the global batch's, as in one process."""

    def __init__(self, opt: torch.optim.Optimizer, params, max_norm: float):
        self.opt, self.params, self.max_norm = opt, list(params), max_norm

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.opt.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        if self.max_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.params, self.max_norm)
        self.opt.step()


# ---- one fit on N processes -----------------------------------------------------------------------------------
def check(rec, processes: int) -> None:
    """A clear error when `rec` cannot train on `processes` > 1 processes by data parallelism."""
    kind = getattr(rec, "parallelism", "single")
    if processes > 1 and kind != "data":
        raise ValueError(f"{type(rec).__name__} does not train data-parallel (its parallelism is {kind!r}); "
                         f"train it with distributed=1")


def fitted_attributes(rec) -> dict:
    """The fitted `name_` attributes (loss_history_, best_epoch_, ...) that are plain Python values."""
    def plain(v):
        if isinstance(v, (list, tuple)):
            return all(plain(x) for x in v)
        if isinstance(v, dict):
            return all(isinstance(k, str) and plain(x) for k, x in v.items())
        return v is None or isinstance(v, (bool, int, float, str))
    return {k: v for k, v in vars(rec).items() if k.endswith("_") and not k.startswith("_") and plain(v)}


def fit(rec, data, graph=None, processes: int = 2):
    """Fit `rec` (bound, unfitted) on `processes` torchrun processes; its fitted state comes back into `rec`."""
    check(rec, processes)
    if processes <= 1:
        return rec.fit(data, graph)
    cuda = rec.device.type == "cuda"
    if cuda and torch.cuda.device_count() < processes:
        raise ValueError(f"distributed={processes} on CUDA needs one GPU per process (NCCL); this machine has "
                         f"{torch.cuda.device_count()}: use fewer processes or device='cpu' (gloo)")
    with tempfile.TemporaryDirectory(prefix="tapestry-ddp-") as tmp:
        torch.save({"model": rec, "data": data, "graph": graph}, Path(tmp) / JOB)
        (Path(tmp) / DEVICE).write_text("cuda" if cuda else "cpu")     # read before the job: it picks the backend
        # stdout is not captured: rank 0's heartbeat lines show as they come.
        D.torchrun(__name__, tmp, processes, f"data-parallel {type(rec).__name__}", capture_stdout=False)
        result = torch.load(Path(tmp) / RESULT, map_location="cpu", weights_only=False)
    rec._set_state(result["state"])
    for name, value in result["fitted"].items():
        setattr(rec, name, value)
    rec.processes_ = processes
    return rec


def _place(rec, device: torch.device, seen=None) -> None:
    """Point a recommender (and recommenders it holds, e.g. a distillation teacher) at this rank's device."""
    from tapestry.training.base import Recommender

    seen = seen if seen is not None else set()
    if id(rec) in seen:
        return
    seen.add(id(rec))
    rec.device = device
    for value in vars(rec).values():
        if isinstance(value, Recommender):
            _place(value, device, seen)


def main(job_dir: str) -> None:
    """One rank of a `fit` job (run by torchrun)."""
    job_dir = Path(job_dir)
    device = D.init_process_group(cuda=(job_dir / DEVICE).read_text().strip() == "cuda")
    try:
        job = torch.load(job_dir / JOB, map_location=device, weights_only=False)
        rec = job["model"]
        _place(rec, device)
        if not is_lead():
            rec.progress = False
        rec.fit(job["data"], job["graph"])
        if is_lead():
            tmp = job_dir / f"{RESULT}.tmp"
            torch.save({"state": rec._get_state(), "fitted": fitted_attributes(rec)}, tmp)
            os.replace(tmp, job_dir / RESULT)
    finally:
        D.shutdown()


if __name__ == "__main__":
    main(sys.argv[1])
