"""Million-item catalogs: no (B, N) table in the sampled loss's history mask, item-kNN in bounded blocks,
baselines that cannot run at that size skipped with the reason in metrics.json."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from tests.conftest import FAST_TRAIN, compose_config
from twotower import baselines
from twotower.baselines import ItemKNN, skip_reason
from twotower.data.schema import EncodedLog
from twotower.losses import WindowHistory


def test_candidate_matches_equal_the_first_position_table():
    """The large-catalog mask (B, L, C matches) is the table path's exact twin."""
    gen = torch.Generator().manual_seed(0)
    inputs = torch.randint(0, 40, (6, 9), generator=gen)  # (B, L), 0 = padding
    inputs[0, 5:] = 0
    mask = torch.rand(6, 9, generator=gen) < 0.7
    rows, positions = mask.nonzero(as_tuple=True)
    history = WindowHistory(inputs, rows, positions)
    candidates = torch.tensor([3, 7, 1, 39, 12, 5, 22])
    table = history.seen(candidates, n_items=39)  # 7 x 9 candidate cells >= 40 catalog cells: the table path
    first = torch.full((6, 40), 9, dtype=torch.long)
    first.scatter_reduce_(1, inputs, torch.arange(9).expand(6, 9), reduce="amin")
    first[:, 0] = 9
    expected = first[:, candidates][rows] <= positions.unsqueeze(1)
    assert torch.equal(history.seen_among(candidates), expected)
    assert torch.equal(table, expected)
    assert torch.equal(history.seen(candidates, n_items=1000), expected)  # a large catalog: the match path


def test_million_item_mask_allocates_no_catalog_table():
    inputs = torch.randint(1, 1_000_001, (64, 51))
    rows, positions = (inputs > 0).nonzero(as_tuple=True)
    candidates = torch.unique(torch.randint(1, 1_000_001, (4000,)))
    seen = WindowHistory(inputs, rows, positions).seen(candidates, n_items=1_000_000)
    assert seen.shape == (len(rows), len(candidates))


def test_baselines_too_large_are_skipped_with_a_reason():
    assert skip_reason("popularity", 1_000_000, 20_000) is None
    assert "EASE inverts a dense N x N matrix (7451 GiB" in skip_reason("ease", 1_000_000, 20_000)
    assert "eval.knn_max_items=250000" in skip_reason("itemknn", 1_000_000, 20_000)
    assert skip_reason("itemknn", 1_000_000, 20_000, knn_max_items=2_000_000) is None
    assert skip_reason("ease", 1682, 20_000) is None and skip_reason("itemknn", 1682, 20_000) is None


def test_itemknn_blocks_follow_the_catalog_size(monkeypatch):
    rng = np.random.default_rng(0)
    train = sp.csr_matrix((rng.random((50, 30)) < 0.2).astype(np.float32))
    reference = ItemKNN(train, neighbors=5).sim.toarray()
    monkeypatch.setattr(baselines, "KNN_BLOCK_CELLS", 70)  # 2 rows per block at 30 items
    assert np.allclose(ItemKNN(train, neighbors=5).sim.toarray(), reference)


def million_item_log(n_items: int = 1_000_000, n_users: int = 150, events: int = 8) -> EncodedLog:
    """A handful of users over a catalog of ``n_items`` items (most never seen: the model still holds them)."""
    rng = np.random.default_rng(0)
    users = np.repeat(np.arange(n_users), events)
    items = rng.integers(1, n_items + 1, len(users))
    items[::4] = rng.integers(1, 50, len(items[::4]))  # a few popular items
    return EncodedLog(
        name="million", user_ids=[f"u{u}" for u in range(n_users)], item_ids=[f"i{i}" for i in range(n_items)],
        event_names=["<other>"], category_names=["<pad>"], users=users, items=items,
        ts=np.tile(np.arange(events, dtype=np.float64), n_users), events=np.zeros(len(users), np.int64),
        dwell=np.full(len(users), -1.0, np.float32), user_offsets=np.arange(n_users + 1) * events,
        item_categories=np.zeros((n_items + 1, 1), np.int64),
    )  # fmt: skip


@pytest.mark.slow  # ~40 s on the 2-core machine: the catalog is scored in chunks for every query
def test_one_epoch_and_the_evaluation_on_a_million_item_catalog(tmp_path):
    """Training steps, chunked evaluation and the baselines at 1,000,000 items, on the functions train() runs."""
    import hydra
    import pytorch_lightning as pl

    from twotower.data.splits import leave_last_out
    from twotower.datamodule import TwoTowerDataModule
    from twotower.train import build_net, evaluate_all

    cfg = compose_config(FAST_TRAIN + ["model.loss.mode=sampled", "model.loss.num_uniform_negatives=256",
                                       "rerank=none", "eval.baselines=[popularity,itemknn,ease]"], tmp_path)  # fmt: skip
    data = million_item_log()
    split = leave_last_out(data)
    datamodule = TwoTowerDataModule(
        data, split, max_len=cfg.model.net.max_len, batch_size=32, val_max_users=50
    )
    net = build_net(cfg.model.net, data)
    loss = hydra.utils.instantiate(cfg.model.loss)
    loss.set_item_frequencies(datamodule.target_counts())
    assert not loss.uses_full_softmax(data.n_items)
    module_cfg = {k: v for k, v in cfg.model.items() if k not in ("net", "loss")}
    module = hydra.utils.instantiate(module_cfg, _partial_=True)(net=net, loss=loss)
    module.eval_chunk_items = 65_536
    trainer = pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu", num_sanity_val_steps=0)  # fmt: skip
    trainer.fit(module, datamodule=datamodule)
    results = evaluate_all(cfg, data, split, datamodule, module.eval_net.eval())
    assert results["test"]["queries"] == 150 and "popularity" in results["baselines"]
    assert set(results["baselines_skipped"]) == {"itemknn", "ease"}
    assert "1000000 items > eval.ease_max_items" in results["baselines_skipped"]["ease"]
