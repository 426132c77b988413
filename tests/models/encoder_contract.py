"""What every servable user encoder promises (tapestry/inference/encoders.py), tested once for each module.

A test class subclasses EncoderContract and implements `make()` (a module in eval mode, perturbed so that the
tests see a generic network rather than the symmetric untrained one).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tapestry.inference.padding import left_pad

HISTORIES = [np.array([3, 1, 4, 1, 5]), np.array([9]), np.array([], np.int64)]


def perturbed(m: torch.nn.Module, scale: float = 0.1) -> torch.nn.Module:
    """Add noise to every parameter (row 0 of `item_emb`, the padding row, stays zero); eval mode."""
    with torch.no_grad():
        for p in m.parameters():
            p.add_(scale * torch.randn_like(p))
        if hasattr(m, "item_emb"):
            m.item_emb.weight[0].zero_()
    return m.eval()


class EncoderContract:
    atol = 1e-6
    scriptable = True       # torch.jit.script(module) must run it (SR-GNN builds its graph in eager code only)

    def make(self) -> torch.nn.Module:
        raise NotImplementedError

    @pytest.fixture
    def encoder(self):
        torch.manual_seed(0)
        return self.make()

    def _close(self, a, b):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=self.atol)

    @torch.no_grad()
    def test_padding_width_and_batch_neighbours_do_not_change_a_users_vectors(self, encoder):
        history = np.array([5, 9, 3, 17, 2])
        narrow = encoder.encode(torch.from_numpy(left_pad([history], encoder.max_len)))
        wide = encoder.encode(torch.from_numpy(left_pad([history], encoder.max_len, width=encoder.max_len)))
        batched = encoder.encode(torch.from_numpy(left_pad([np.arange(1, 20), history], encoder.max_len)))
        self._close(narrow, wide)
        self._close(narrow[0], batched[1])
        assert narrow.abs().sum() > 0

    @torch.no_grad()
    def test_vectors_live_in_the_item_space(self, encoder):
        vecs = encoder.encode(torch.from_numpy(left_pad(HISTORIES, encoder.max_len)))
        table = encoder.item_embeddings()
        assert table.shape[0] == encoder.num_items and not table[0].any()     # row 0 = padding = zeros
        assert vecs.dim() in (2, 3) and vecs.shape[0] == 3 and vecs.shape[-1] == table.shape[1]
        assert torch.isfinite(vecs).all() and not vecs[2].any()             # an empty history encodes to zeros

    @torch.no_grad()
    def test_rebuild_from_init_args_and_state_dict(self, encoder):
        twin = type(encoder)(**encoder.init_args)
        twin.load_state_dict(encoder.state_dict())
        twin.eval()
        seqs = torch.from_numpy(left_pad(HISTORIES, encoder.max_len))
        assert torch.equal(twin.encode(seqs), encoder.encode(seqs))
        assert torch.equal(twin.item_embeddings(), encoder.item_embeddings())

    @pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
    def test_torchscript_matches_eager_single_thread(self, encoder):
        if not self.scriptable:
            pytest.skip("not a TorchScript module")
        seqs = torch.from_numpy(left_pad(HISTORIES, encoder.max_len))
        scripted = torch.jit.script(encoder)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)                  # as inside Triton's python backend
        try:
            torch.testing.assert_close(scripted.encode(seqs), encoder.encode(seqs))
            assert torch.equal(scripted.item_embeddings(), encoder.item_embeddings())
        finally:
            torch.set_num_threads(threads)
