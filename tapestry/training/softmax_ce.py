"""Full-softmax cross-entropy over a whole item table, fused and chunked: the cost centre of SASRec's training on CPU.

`F.cross_entropy(h @ table.T, targets)` materialises the [positions, items] logits, a log-softmax copy of them,
a zero-filled gradient of the same size and the log-softmax gradient: about nine passes over a matrix that does
not fit in cache (ML-1M: 25k positions x 3.6k items = 360 MB per batch at max_len 200). Here the logits are made a
CHUNK of positions at a time (a few MB, cache-sized) in the forward pass, only each row's log-sum-exp is kept, and
the backward pass recomputes each chunk's logits and turns them into the gradient in place:
d loss / d logits = softmax - onehot(target), then grad_h = G @ table and grad_table += G.T @ h. One extra matrix
product, far fewer passes over memory; the result equals F.cross_entropy's up to float rounding.

`dtype=torch.bfloat16` runs the three matrix products in bfloat16 (CPUs with AVX512-BF16 / AMX do them several
times faster); the log-sum-exp, the softmax and the accumulation of the gradients stay in float32. The gradients
then differ from float32's by ~0.2 % (relative norm): opt-in (SASRecConfig.softmax_dtype), measured on validation
before it is anyone's default.
"""
from __future__ import annotations

import torch

CPU_CHUNK = 512        # 512 x 3.6k items x 4 B = 7 MB of logits: within a server CPU's L2 + L3 share
GPU_CHUNK = 16384      # on a GPU the loop's kernel launches, not the memory traffic, are what a chunk costs


class _ChunkedSoftmaxCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, table, targets, chunk: int, dtype: torch.dtype):
        hc, tc = h.detach().to(dtype), table.detach().to(dtype)
        lse = torch.empty(h.shape[0], dtype=torch.float32, device=h.device)
        for s in range(0, h.shape[0], chunk):
            lse[s:s + chunk] = torch.logsumexp(torch.mm(hc[s:s + chunk], tc.T).float(), dim=1)
        target_logit = (h.detach().float() * table.detach()[targets].float()).sum(-1)
        ctx.save_for_backward(h, table, targets, lse)
        ctx.chunk, ctx.dtype = chunk, dtype
        return (lse - target_logit).mean()

    @staticmethod
    def backward(ctx, grad_out):
        h, table, targets, lse = ctx.saved_tensors
        chunk, dtype = ctx.chunk, ctx.dtype
        hc, tc = h.to(dtype), table.to(dtype)
        grad_h = torch.empty(h.shape, dtype=torch.float32, device=h.device)
        grad_table = torch.zeros(table.shape, dtype=torch.float32, device=h.device)
        for s in range(0, h.shape[0], chunk):
            e = min(s + chunk, h.shape[0])
            g = torch.mm(hc[s:e], tc.T).float().sub_(lse[s:e, None]).exp_()        # softmax, in place
            g[torch.arange(e - s, device=h.device), targets[s:e]] -= 1.0          # - onehot(target)
            gc = g.to(dtype)
            grad_h[s:e] = torch.mm(gc, tc)
            if dtype == torch.float32:
                grad_table.addmm_(gc.T, hc[s:e])
            else:
                grad_table += torch.mm(gc.T, hc[s:e]).float()
        scale = grad_out / h.shape[0]
        return (grad_h * scale).to(h.dtype), (grad_table * scale).to(table.dtype), None, None, None


def full_softmax_ce(h: torch.Tensor, table: torch.Tensor, targets: torch.Tensor, chunk: int | None = None,
                    dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Mean cross-entropy of `h` [P, D] against every row of `table` [N, D], targets [P] in 0..N-1: the value of
    F.cross_entropy(h @ table.T, targets), with gradients to `h` and `table`. `chunk`: positions per block of
    logits (default by device)."""
    if h.shape[0] == 0:
        return (h.sum() + table.sum()) * 0.0
    chunk = chunk or (CPU_CHUNK if h.device.type == "cpu" else GPU_CHUNK)
    return _ChunkedSoftmaxCE.apply(h, table, targets, chunk, dtype)
