"""Tenant cold start (issue 20 item 3): opt-in pre-training, name-keyed transfer, fine-tuning, save/load."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tapestry.artifacts import latest_version
from tapestry.cli import main
from tapestry.etl import run_etl
from tapestry.etl.synthetic import synthetic_tables
from tapestry.models.sequential.content_sasrec import TENANT_KEYS, shared_state
from tapestry.tenant_settings import TenantSettings, load_settings, opted_in_tenants, save_settings
from tapestry.training import data as data_module
from tapestry.training.data import InteractionData
from tapestry.training.foundation import FoundationConfig, FoundationRecommender
from tapestry.training.global_model import load_global, merge_tenants, train_global
from tapestry.training.item_content import OOV, AttributeVocab, item_token_tables, title_tokens

TINY = FoundationConfig(hidden_dim=16, num_blocks=1, max_len=10, epochs=2, patience=0, batch_size=64,
                        title_buckets=64, max_title_tokens=4)


def _quiet(*_a, **_k) -> None:
    pass


def _tenant(root, name, genres, seed, share):
    run_etl(synthetic_tables(num_users=40, num_items=30, num_genres=genres, seed=seed), name, root=root, log=_quiet)
    save_settings(name, TenantSettings(share_for_global=share), root)


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    """Two roots with the same opted-in tenants (a, c); only the first also holds `private`, which did not opt in."""
    with_private, without = tmp_path_factory.mktemp("with"), tmp_path_factory.mktemp("without")
    for root in (with_private, without):
        _tenant(root, "a", 3, 0, True)
        _tenant(root, "c", 4, 2, True)
    _tenant(with_private, "private", 5, 1, False)
    return with_private, without


def test_settings_default_off_and_bad_file_is_refused(tmp_path):
    assert load_settings("t", tmp_path) == TenantSettings(share_for_global=False)
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "settings.json").write_text('{"share_for_global": "yes"}')
    with pytest.raises(ValueError, match="true or false"):
        load_settings("t", tmp_path)


def test_a_tenant_that_did_not_opt_in_contributes_nothing(roots, monkeypatch):
    with_private, without = roots
    assert opted_in_tenants(with_private) == ["a", "c"]
    read = []
    original = data_module.InteractionData.load.__func__

    def spy(cls, path):
        read.append(str(path))
        return original(cls, path)

    monkeypatch.setattr(data_module.InteractionData, "load", classmethod(spy))
    first = train_global(with_private, TINY, log=_quiet, device="cpu")
    assert read and not any("/private/" in p for p in read)          # its data is never even read
    second = train_global(without, TINY, log=_quiet, device="cpu")
    a, b = (torch.load(p / "model.pt", weights_only=True)["state"]["model"] for p in (first, second))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)   # bit-identical without it
    manifest = load_global(with_private, "cpu")[1]
    assert manifest["tenants"] == ["a", "c"]


def test_merged_tenants_keep_their_items_apart(roots):
    root = roots[1]
    a, c = (InteractionData.load(latest_version(t, "etl", root)) for t in ("a", "c"))
    merged = merge_tenants([a, c])
    assert merged.num_items == a.num_items + c.num_items - 1
    assert merged.train.height == a.train.height + c.train.height
    assert merged.train.filter(merged.train["user_idx"] >= a.num_users)["item_idx"].min() >= a.num_items


def test_fine_tune_maps_attributes_by_name_and_starts_from_global_weights(roots):
    root = roots[1]
    glob, _ = load_global(root, "cpu")
    assert "genre=Action" in glob.vocab.names and "genre=Romance" not in glob.vocab.names   # a: 3, c: 4 genres
    new = InteractionData.load(run_etl(synthetic_tables(num_users=30, num_items=24, num_genres=6, seed=5), "new",
                                       root=root, log=_quiet).path)
    tuned = FoundationRecommender.from_global(glob, epochs=1, seed=3)
    before = tuned._new_model(new.num_items)           # the model fine-tuning starts from
    global_shared = shared_state(glob.model)
    assert all(torch.equal(before.state_dict()[k], v) for k, v in global_shared.items())
    assert not before.item_emb.weight.any()            # the tenant's own ids start at zero
    tuned.fit(new)
    attrs, _ = item_token_tables(new, glob.vocab, TINY.title_buckets, TINY.max_attributes, TINY.max_title_tokens)
    names = dict(new.items.select("item_idx", "title").iter_rows())
    comedy = glob.vocab.index()["genre=Comedy"]
    for idx, title in names.items():
        genre = title.split("(")[1].rstrip(")")
        expected = glob.vocab.index().get(f"genre={genre}", OOV)
        assert attrs[idx, 0] == expected
    assert (attrs == comedy).any() and (attrs == OOV).any()     # a shared name and an unknown one (Romance, Sci-Fi)
    # Fine-tuning moved the shared weights and learned the OOV row (it is trained: unknown names use it).
    oov_before = global_shared["content.attributes.weight"][OOV]
    assert not torch.equal(tuned.model.content.attributes.weight[OOV].detach().cpu(), oov_before)


def test_content_only_transfer_keeps_a_fresh_encoder(roots):
    glob, _ = load_global(roots[1], "cpu")
    new = FoundationRecommender.from_global(glob, transfer="content", seed=7)
    new.vocab = glob.vocab
    model = new._new_model(glob.num_items)
    assert torch.equal(model.content.title.weight, glob.model.content.title.weight)
    assert not torch.equal(model.blocks[0].qkv.weight, glob.model.blocks[0].qkv.weight)
    with pytest.raises(ValueError, match="transfer"):
        FoundationRecommender.from_global(glob, transfer="ids")


def test_vocab_and_titles_are_stable_strings():
    vocab = AttributeVocab.build(["genre=Drama", "genre=Action", "genre=Drama"])
    assert vocab.encode(["genre=Action", "genre=Drama", "brand=Acme"]) == [2, 3, OOV]
    assert title_tokens("Toy Story (1995)", 1000, 10) == title_tokens("toy story 1995", 1000, 10)
    assert len(title_tokens("Toy Story (1995)", 1000, 10)) == 5           # 3 words + 2 bigrams
    assert all(1 <= t <= 1000 for t in title_tokens("a b c d e f", 1000, 4))


def test_pretraining_keeps_item_ids_at_zero_and_save_load_round_trips(roots, tmp_path):
    glob, _ = load_global(roots[1], "cpu")
    assert not glob.model.item_emb.weight.any()        # pre-training: item vectors come from content only
    data = InteractionData.load(latest_version("a", "etl", roots[1]))
    scratch = FoundationRecommender(TINY, device="cpu").fit(data)
    assert scratch.model.item_emb.weight.any()         # a tenant's own fit learns its ids
    same = FoundationRecommender.load(scratch.save(tmp_path / "m.pt"), device="cpu")
    users = np.arange(1, 6)
    hist = data.sequences(("train",))
    assert torch.allclose(scratch.score(users, [hist[u] for u in users]), same.score(users, [hist[u] for u in users]))
    assert same.vocab == scratch.vocab
    assert set(TENANT_KEYS) & set(shared_state(same.model)) == set()


def test_cli_settings_and_global_commands(roots, capsys):
    root = roots[1]
    main(["settings", "--tenant", "new", "--root", str(root)])
    assert '"share_for_global": false' in capsys.readouterr().out
    main(["global", "finetune", "--tenant", "a", "--root", str(root), "--params", '{"epochs": 1}', "--device", "cpu"])
    assert (latest_version("a", "cold_start", root) / "model.pt").exists()
    main(["settings", "--tenant", "new", "--root", str(root), "--share-for-global", "on"])
    assert load_settings("new", root).share_for_global
    save_settings("new", TenantSettings(), root)      # back off: the other tests' global model stays a + c
    with pytest.raises(SystemExit, match="needs --tenant"):
        main(["global", "finetune", "--root", str(root)])
