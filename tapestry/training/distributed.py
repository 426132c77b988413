"""Placement for models with TorchRec embedding tables: one process, or many under `torchrun` with
DistributedModelParallel (tables sharded by TorchRec's planner, the dense rest replicated by DDP).

The math lives in tapestry.models.ranking; nothing here knows what the model computes. The training loop asks
for `Placement.create(...)` and gets back a module to call, an optimizer to step, and, at the end, the full
unsharded state on rank 0 (what inference loads).

Facts this code relies on (checked by tests/training/test_dlrm_distributed.py and ../shared/notes/stack-facts.md):
- gloo on CPU, NCCL on CUDA; `torchrun` sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT.
- TorchRec divides embedding gradients by the world size in its all-to-all backward, and DDP averages the dense
  ones: with a per-process mean loss over equal shards, one sharded step equals one unsharded step on the global
  batch. So every table must be model-parallel (table-wise / column-wise / row-wise): a data-parallel table would
  go through DDP as well. The planner is told so per table.
- Embedding optimizers are fused into the backward (`apply_optimizer_in_backward`): FBGEMM's kernel when sharded,
  the same update in Python when not, so both paths take the same step. Not Adam (FBGEMM updates only the rows a
  batch touches); and row-wise Adagrad keeps one accumulator per row AND column shard, so column-wise sharding
  changes its steps (SGD / Adagrad are shard-invariant).
- Gradients equal to ~1e-9 are equal: but Adam(W) divides by their root mean square, so parameters whose exact
  gradient is zero (a listwise softmax is blind to biases shared by a list) move by rounding noise. The equality
  test therefore steps the dense part with SGD; training uses AdamW.
- TorchRec's sharder leaves row-wise out of its CPU list, so the planner refuses it ("No available sharding type");
  asking for `row_wise` here swaps in a sharder that offers it, and it then trains like the others (tested).
- `dist.barrier()` before `destroy_process_group()`: without it about 1 run in 9 aborted at exit.
"""
from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

SPARSE_OPTIMIZERS = ("sgd", "adagrad", "rowwise_adagrad")
DENSE_OPTIMIZERS = ("adamw", "sgd")


def world() -> tuple[int, int]:
    """(rank, world size) from the torchrun environment; (0, 1) outside it."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def init_process_group(cuda: bool | None = None) -> torch.device:
    """Join the torchrun job (when there is one) and return this process's device: cuda:LOCAL_RANK with NCCL when
    `cuda` (None: whenever CUDA is available), else the CPU with gloo."""
    rank, size = world()
    cuda = torch.cuda.is_available() if cuda is None else cuda
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}") if cuda else torch.device("cpu")
    if size > 1 and not dist.is_initialized():
        if cuda:
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if cuda else "gloo")
    return device


def torchrun(module: str, job_dir, processes: int, what: str, result: str = "result.pt",
             capture_stdout: bool = True) -> str:
    """Run `python -m <module> <job_dir>` on `processes` local processes under torchrun (standalone rendezvous) and
    return its stdout ("" when not captured: it then goes straight to this process's stdout). The one launcher of
    the DLRM's sharded loop and the data-parallel trainers (tapestry.training.data_parallel). Raises RuntimeError
    with the tail of stderr when the job fails or rank 0 wrote no `result` in `job_dir`."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
           "-m", module, str(job_dir)]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE if capture_stdout else None, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0 or not (Path(job_dir) / result).exists():
        raise RuntimeError(f"distributed {what} training failed ({' '.join(cmd)}):\n{proc.stderr[-4000:]}")
    return proc.stdout or ""


def shutdown() -> None:
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def rank_slice(n: int, rank: int, size: int) -> slice:
    """This rank's contiguous share of n rows; shares differ by at most one row."""
    per, extra = divmod(n, size)
    lo = rank * per + min(rank, extra)
    return slice(lo, lo + per + (rank < extra))


def all_reduce_sum(values: list[float]) -> list[float]:
    if not dist.is_initialized():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t)
    return t.tolist()


def _dense_optimizer(name: str, lr: float, weight_decay: float):
    if name not in DENSE_OPTIMIZERS:
        raise ValueError(f"dense_optimizer must be one of {DENSE_OPTIMIZERS}, got {name!r}")
    cls = torch.optim.AdamW if name == "adamw" else torch.optim.SGD
    return lambda params: cls(params, lr=lr, weight_decay=weight_decay)


def _sparse_optimizer(name: str):
    from torchrec.optim import RowWiseAdagrad

    return {"sgd": torch.optim.SGD, "adagrad": torch.optim.Adagrad, "rowwise_adagrad": RowWiseAdagrad}[name]


@dataclass
class Placement:
    module: nn.Module                 # call this one (DMP when sharded, the plain model otherwise)
    optimizer: object                 # .zero_grad() / .step() for the dense parameters (embeddings step in backward)
    plan: object | None               # TorchRec ShardingPlan (None when single-process)
    rank: int = 0
    size: int = 1

    @classmethod
    def create(cls, model: nn.Module, ebc: nn.Module, device: torch.device, sparse_optimizer: str, sparse_lr: float,
               dense_lr: float, weight_decay: float = 0.0, sharding_types: tuple[str, ...] = ("table_wise",),
               column_shard_dim: int | None = None, shard: bool = True,
               dense_optimizer: str = "adamw", table_lrs: dict[str, float] | None = None) -> "Placement":
        """`model` holds its unsharded, initialised weights; `ebc` is its EmbeddingBagCollection. Every rank must
        pass the same weights (build them under the same seed): sharding copies them into the local shards.
        `shard=False` keeps the model whole even inside a process group (a reference twin in tests).
        `table_lrs` overrides `sparse_lr` per table name (0 freezes a table: FBGEMM groups tables by optimizer
        settings, so this costs nothing)."""
        from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward

        if sparse_optimizer not in SPARSE_OPTIMIZERS:
            raise ValueError(f"sparse_optimizer must be one of {SPARSE_OPTIMIZERS}, got {sparse_optimizer!r}")
        kwargs = {"lr": sparse_lr} if sparse_optimizer == "sgd" else {"lr": sparse_lr, "eps": 1e-8}
        rank, size = world()
        single = not shard or size == 1 or not dist.is_initialized()
        if single:
            model.to(device)     # before the in-backward optimizers attach to the parameters
        for cfg in ebc.embedding_bag_configs():
            lr = (table_lrs or {}).get(cfg.name, sparse_lr)
            apply_optimizer_in_backward(_sparse_optimizer(sparse_optimizer), [ebc.embedding_bags[cfg.name].weight],
                                        {**kwargs, "lr": lr})
        make_dense = _dense_optimizer(dense_optimizer, dense_lr, weight_decay)
        if single:
            return cls(model, make_dense([p for p in model.parameters() if not hasattr(p, "_in_backward_optimizers")]),
                       None)
        return cls._sharded(model, ebc, device, make_dense, sharding_types, column_shard_dim, rank, size)

    @classmethod
    def _sharded(cls, model, ebc, device, make_dense, sharding_types, column_shard_dim, rank, size):
        from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
        from torchrec.distributed.model_parallel import DistributedModelParallel
        from torchrec.distributed.planner import EmbeddingShardingPlanner, ParameterConstraints, Topology
        from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper
        from torchrec.optim.optimizers import in_backward_optimizer_filter

        full = {k: v.detach().clone() for k, v in model.state_dict().items()}
        constraints = {c.name: ParameterConstraints(sharding_types=list(sharding_types),
                                                    min_partition=column_shard_dim)
                       for c in ebc.embedding_bag_configs()}
        planner = EmbeddingShardingPlanner(
            topology=Topology(world_size=size, local_world_size=size, compute_device=device.type),
            constraints=constraints)
        sharders = [_RowWiseAllowedSharder() if "row_wise" in sharding_types else EmbeddingBagCollectionSharder()]
        plan = planner.collective_plan(model, sharders, dist.GroupMember.WORLD)
        dmp = DistributedModelParallel(model, device=device, plan=plan, sharders=sharders)
        load_full_state(dmp, full)
        dense = KeyedOptimizerWrapper(dict(in_backward_optimizer_filter(dmp.named_parameters())), make_dense)
        return cls(dmp, CombinedOptimizer([dmp.fused_optimizer, dense]), plan, rank, size)

    def full_state(self) -> dict[str, torch.Tensor] | None:
        """The unsharded state dict (CPU tensors) on rank 0; None on the other ranks. Collective: all ranks call."""
        if self.plan is None:
            return {k: v.detach().cpu().clone() for k, v in self.module.state_dict().items()}
        return gather_full_state(self.module, self.rank)


def _RowWiseAllowedSharder():
    """TorchRec's EBC sharder, also offering row-wise on CPU (its CPU list leaves row-wise out)."""
    from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder

    class Sharder(EmbeddingBagCollectionSharder):
        def sharding_types(self, compute_device_type: str) -> list[str]:
            types = super().sharding_types(compute_device_type)
            return types if "row_wise" in types else [*types, "row_wise"]

    return Sharder()


def load_full_state(dmp: nn.Module, full: dict[str, torch.Tensor]) -> None:
    """Copy unsharded tensors into this rank's shards (and the replicated dense tensors)."""
    from torch.distributed._shard.sharded_tensor import ShardedTensor

    with torch.no_grad():
        for name, local in dmp.state_dict().items():
            src = full[name]
            if isinstance(local, ShardedTensor):
                for shard in local.local_shards():
                    (r0, c0), (r, c) = shard.metadata.shard_offsets, shard.tensor.shape
                    shard.tensor.copy_(src[r0:r0 + r, c0:c0 + c])
            else:
                local.copy_(src)


def gather_full_state(dmp: nn.Module, rank: int) -> dict[str, torch.Tensor] | None:
    from torch.distributed._shard.sharded_tensor import ShardedTensor

    out = {}
    for name, local in dmp.state_dict().items():
        if isinstance(local, ShardedTensor):
            full = torch.empty(local.size(), dtype=local.dtype) if rank == 0 else None
            local.gather(dst=0, out=full)
            out[name] = full
        else:
            out[name] = local.detach().cpu().clone()
    return out if rank == 0 else None
