"""The fused, chunked full-softmax cross-entropy SASRec trains with: the value and gradients of F.cross_entropy
(float32), close to them in bfloat16, and a SASRec fit that uses it (and refuses an unknown dtype)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tapestry.training import sasrec as S
from tapestry.training.data import InteractionData
from tapestry.training.softmax_ce import full_softmax_ce


def _grads(loss_fn, h0, t0):
    h, table = h0.clone().requires_grad_(), t0.clone().requires_grad_()
    loss = loss_fn(h, table)
    (3.0 * loss).backward()                   # an upstream gradient other than 1 must scale both gradients
    return float(loss.detach()), h.grad, table.grad


@pytest.mark.parametrize("chunk", [1, 7, 512])      # uneven chunks, one row at a time, and a single chunk
def test_float32_equals_cross_entropy_in_value_and_gradients(chunk):
    g = torch.Generator().manual_seed(0)
    h0, t0 = torch.randn(23, 8, generator=g), torch.randn(11, 8, generator=g)
    targets = torch.randint(0, 11, (23,), generator=g)
    want = _grads(lambda h, t: F.cross_entropy(h @ t.T, targets), h0, t0)
    got = _grads(lambda h, t: full_softmax_ce(h, t, targets, chunk=chunk), h0, t0)
    assert got[0] == pytest.approx(want[0], rel=1e-5)
    torch.testing.assert_close(got[1], want[1], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got[2], want[2], rtol=1e-5, atol=1e-6)


def test_bfloat16_stays_within_a_percent_of_float32():
    g = torch.Generator().manual_seed(1)
    h0, t0 = 0.3 * torch.randn(300, 32, generator=g), 0.3 * torch.randn(200, 32, generator=g)
    targets = torch.randint(0, 200, (300,), generator=g)
    want = _grads(lambda h, t: F.cross_entropy(h @ t.T, targets), h0, t0)
    got = _grads(lambda h, t: full_softmax_ce(h, t, targets, chunk=64, dtype=torch.bfloat16), h0, t0)
    assert got[0] == pytest.approx(want[0], rel=1e-2)
    for a, b in ((got[1], want[1]), (got[2], want[2])):
        assert a.dtype == torch.float32 and float((a - b).norm() / b.norm()) < 1e-2


def test_no_positions_gives_a_zero_loss_with_zero_gradients():
    h, table = torch.zeros(0, 4, requires_grad=True), torch.randn(5, 4, requires_grad=True)
    loss = full_softmax_ce(h, table, torch.zeros(0, dtype=torch.long))
    loss.backward()
    assert float(loss) == 0.0 and float(table.grad.abs().sum()) == 0.0


def test_a_bfloat16_sasrec_fit_trains_and_an_unknown_dtype_is_refused(tiny_etl):
    data = InteractionData.load(tiny_etl)
    model = S.SASRecRecommender(hidden_dim=16, num_blocks=1, max_len=20, epochs=4, patience=0, loss="softmax",
                                softmax_dtype="bfloat16", device="cpu", progress=False).fit(data)
    assert model.loss_history_[-1] < model.loss_history_[0]
    with pytest.raises(ValueError, match="softmax_dtype must be one of"):
        S.SASRecRecommender(epochs=1, softmax_dtype="float16", device="cpu", progress=False).fit(data)
