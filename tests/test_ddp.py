"""Data-parallel training: rank-sharded batches, the loss gathered across ranks (2 gloo processes), rank
agreement checks, and (slow) 2-process Lightning DDP training end to end."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tests.conftest import FAST_TRAIN
from twotower.config import PROJECT_ROOT
from twotower.data.sequences import LengthGroupedBatches
from twotower.distributed import (
    DistributedLengthGroupedBatches,
    RankMismatchError,
    RankShard,
    check_ranks_agree,
    gather_uneven,
)
from twotower.losses import SoftmaxLoss, WindowHistory
from twotower.model import ModelConfig, TwoTower

LENGTHS = np.random.default_rng(0).integers(1, 30, size=203)


def rank_batches(world: int, epoch: int, batch_size: int = 8) -> list[list[list[int]]]:
    out = []
    for rank in range(world):
        sampler = DistributedLengthGroupedBatches(LENGTHS, batch_size, world, rank, pool=4, seed=5)
        sampler.set_epoch(epoch)
        out.append(list(sampler))
    return out


@pytest.mark.parametrize("world", [2, 3, 4])
def test_every_rank_gets_the_same_number_of_batches_and_together_they_cover_every_window(world):
    per_rank = rank_batches(world, epoch=0)
    n_global = -(-len(LENGTHS) // 8)  # 26 batches: 26 = 2 * 13, 3 * 9 - 1, 4 * 7 - 2
    assert {len(b) for b in per_rank} == {-(-n_global // world)}
    assert all(len(b) == len(DistributedLengthGroupedBatches(LENGTHS, 8, world, 0)) for b in per_rank)
    seen = sorted(i for batches in per_rank for batch in batches for i in batch)
    assert set(seen) == set(range(len(LENGTHS)))
    repeats = len(seen) - len(LENGTHS)  # only the short ranks' padding batches repeat windows
    assert repeats <= (world - 1) * 8
    if n_global % world == 0:
        assert repeats == 0


def test_rank_batches_are_the_single_process_batches_dealt_round_robin_and_reproducible_per_epoch():
    single = LengthGroupedBatches(LENGTHS, 8, pool=4, seed=5)
    single.epoch = 3
    order = list(single)
    per_rank = rank_batches(2, epoch=3)
    assert per_rank[0] == order[0::2] and per_rank[1] == order[1::2]
    assert rank_batches(2, epoch=3) == per_rank  # same seed and epoch: same batches on every run
    assert rank_batches(2, epoch=4) != per_rank  # a new draw every epoch


def test_rank_shard_splits_without_repeats():
    shards = [list(RankShard(10, 3, r)) for r in range(3)]
    assert sorted(i for s in shards for i in s) == list(range(10))
    assert [len(RankShard(10, 3, r)) for r in range(3)] == [4, 3, 3]


def test_outside_a_process_group_the_collectives_are_the_identity():
    x = torch.arange(5)
    assert gather_uneven(x) is x
    check_ranks_agree({"users": 3})  # nothing to compare against


# ---------------------------------------------------------------- the loss across 2 gloo processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def global_batch() -> dict[str, torch.Tensor]:
    """7 training rows from 3 windows; rank 0 gets windows 0-1 (rows 0-3), rank 1 window 2 (rows 4-6)."""
    g = torch.Generator().manual_seed(1)
    inputs = torch.tensor([[3, 1, 3, 0], [2, 2, 5, 0], [7, 9, 1, 4]])  # (B=3, L=4)
    return {
        "users": torch.randn(7, 8, generator=g),
        "targets": torch.tensor([1, 3, 5, 6, 2, 6, 11]),  # 6 is a target on both ranks
        "weights": torch.tensor([1.0, 0.5, 2.0, 1.0, 1.0, 3.0, 1.0]),
        "inputs": inputs,
        "rows": torch.tensor([0, 0, 1, 1, 2, 2, 2]),
        "positions": torch.tensor([0, 2, 1, 2, 0, 1, 3]),
    }


SHARDS = {0: (slice(0, 4), slice(0, 2), 0), 1: (slice(4, 7), slice(2, 3), 2)}  # rows, windows, window offset


def make_loss(**kw) -> tuple[TwoTower, SoftmaxLoss]:
    torch.manual_seed(0)
    model = TwoTower(ModelConfig(n_items=12, dim=8, max_len=4, encoder="mean", dropout=0.0)).eval()
    loss_fn = SoftmaxLoss(mode="sampled", mask_history=True, **kw)
    loss_fn.set_item_frequencies(torch.tensor([0, 5, 1, 2, 1, 3, 4, 1, 1, 2, 1, 2, 1]))
    return model, loss_fn


def run_loss(model, loss_fn, batch, rows=slice(None), windows=slice(None), offset=0):
    users = batch["users"][rows].clone().requires_grad_(True)
    history = WindowHistory(batch["inputs"][windows], batch["rows"][rows] - offset, batch["positions"][rows])
    loss = loss_fn(model, users, batch["targets"][rows], batch["weights"][rows], history)
    model.zero_grad()
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), grads, users.grad


def loss_worker(rank: int, port: int, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    rows, windows, offset = SHARDS[rank]
    results = {}
    for name, kw in {"cross": {}, "local": {"cross_rank_negatives": False}}.items():
        model, loss_fn = make_loss(num_uniform_negatives=0, **kw)
        loss, grads, user_grad = run_loss(model, loss_fn, global_batch(), rows, windows, offset)
        for g in grads.values():  # what DDP does to the gradients
            dist.all_reduce(g)
            g /= 2
        results[name] = {"loss": loss, "grads": grads, "users": user_grad}
    torch.manual_seed(0)  # both ranks draw alike: the rotation must still tell their negatives apart
    model, loss_fn = make_loss(num_uniform_negatives=5)
    batch = global_batch()
    candidates, logits, labels, _ = loss_fn._global_sampled_logits(
        model, batch["users"][rows], batch["targets"][rows], 12
    )
    results["uniform"] = {"candidates": candidates, "logits": logits, "labels": labels}
    results["gathered"] = gather_uneven(torch.arange(3 - rank) + 10 * rank)  # 3 rows on rank 0, 2 on rank 1
    try:
        check_ranks_agree({"users": 3, "items": 10 + rank, "path": "/data"}, hints={"items": "read one log"})
    except RankMismatchError as error:
        results["mismatch"] = str(error)
    torch.save(results, Path(out) / f"rank{rank}.pt")
    # both ranks done before either tears down: rank 0 hosts the store, and a rank still talking to it when it
    # goes aborts in gloo ("terminate called without an active exception", seen once in a CI run)
    dist.barrier()
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_rank_losses(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp_loss")
    mp.spawn(loss_worker, args=(free_port(), str(out)), nprocs=2, join=True)
    return [torch.load(out / f"rank{r}.pt") for r in range(2)]


def test_cross_rank_loss_and_gradients_equal_one_process_on_the_concatenated_batch(two_rank_losses):
    model, loss_fn = make_loss(num_uniform_negatives=0)
    loss, grads, user_grad = run_loss(model, loss_fn, global_batch())
    ranks = [r["cross"] for r in two_rank_losses]
    torch.testing.assert_close((ranks[0]["loss"] + ranks[1]["loss"]) / 2, loss)
    for name, grad in grads.items():  # identical on both ranks after the all-reduce, and equal to one process
        torch.testing.assert_close(ranks[0]["grads"][name], grad, msg=name)
        torch.testing.assert_close(ranks[1]["grads"][name], grad, msg=name)
    # each rank's loss is its share of the global mean times the world size (DDP divides by it)
    torch.testing.assert_close(torch.cat([r["users"] for r in ranks]) / 2, user_grad)


def test_switched_off_each_rank_scores_only_its_own_batch(two_rank_losses):
    for rank, results in enumerate(two_rank_losses):
        rows, windows, offset = SHARDS[rank]
        model, loss_fn = make_loss(num_uniform_negatives=0, cross_rank_negatives=False)
        loss, _, _ = run_loss(model, loss_fn, global_batch(), rows, windows, offset)
        torch.testing.assert_close(results["local"]["loss"], loss)
    cross = [r["cross"]["loss"] for r in two_rank_losses]
    assert not torch.allclose(cross[0], two_rank_losses[0]["local"]["loss"])


def test_every_rank_scores_the_global_targets_and_both_ranks_uniform_draws(two_rank_losses):
    batch = global_batch()
    in_batch = torch.unique(batch["targets"])  # 6 global targets, 6 counted once
    for rank, results in enumerate(two_rank_losses):
        u = results["uniform"]
        rows = SHARDS[rank][0]
        assert u["logits"].shape == (len(batch["targets"][rows]), len(in_batch) + 2 * 5)
        assert torch.equal(u["candidates"][: len(in_batch)], in_batch)
        assert torch.equal(in_batch[u["labels"]], batch["targets"][rows])
    drawn = two_rank_losses[0]["uniform"]["candidates"][len(in_batch) :]
    assert torch.equal(drawn, two_rank_losses[1]["uniform"]["candidates"][len(in_batch) :])
    assert not torch.equal(drawn[:5], drawn[5:])  # the same seed on both ranks, yet distinct draws


def test_uneven_rows_gather_in_rank_order(two_rank_losses):
    for results in two_rank_losses:
        assert results["gathered"].tolist() == [0, 1, 2, 10, 11]


def test_ranks_that_loaded_different_data_all_fail_naming_the_ranks_and_the_difference(two_rank_losses):
    for results in two_rank_losses:  # every rank raises: none is left waiting in a collective
        message = results["mismatch"]
        assert "items: rank 0=10, rank 1=11 (read one log)" in message
        assert "users" not in message and "path" not in message


# ---------------------------------------------------------------- Lightning DDP end to end (slow)


def tiny_csv(path: Path, extra_rows: int = 0) -> Path:
    from twotower.data.synthetic import generate

    events = generate(n_users=120, n_items=60, n_categories=6, mean_events=15, seed=3).events
    events = events[["user", "item", "ts"]].rename(columns={"user": "user_id", "item": "item_id"})
    events = events.rename(columns={"ts": "timestamp"})
    if extra_rows:  # another node's copy of the log, a few events longer
        events = pd.concat([events, events.tail(extra_rows).assign(user_id="late-user")])
    events.to_csv(path, index=False)
    return path


def run_ddp(*overrides: str, timeout: int = 300) -> tuple[subprocess.CompletedProcess, float]:
    """``python -m twotower.cli.train`` with 2 CPU processes (Lightning's launcher re-runs it for rank 1)."""
    command = [sys.executable, "-m", "twotower.cli.train", "data=csv", "trainer.accelerator=cpu",
               "trainer.devices=2", "trainer.strategy=ddp", "trainer.process_group_timeout_s=60",
               "model.loss.mode=sampled", "model.loss.num_uniform_negatives=8", "eval.baselines=[popularity]",
               *FAST_TRAIN, *overrides]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("LOCAL_RANK", None)
    start = time.perf_counter()
    proc = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=timeout, env=env)
    return proc, time.perf_counter() - start


@pytest.mark.slow
@pytest.mark.parametrize("group_by_length", [True, False])
def test_two_process_ddp_trains_writes_metrics_once_and_resumes(tmp_path, group_by_length):
    data = tiny_csv(tmp_path / "events.csv")
    # a per-microsecond output dir: rank 1 starts later and must still write to rank 0's directory
    common = [
        f"data.path={data}",
        f"datamodule.group_by_length={str(group_by_length).lower()}",
        "datamodule.val_max_users=101",
        "datamodule.eval_batch_size=10",
    ]  # 6 and 5 validation batches
    proc, _ = run_ddp(*common, f"paths.output_dir={tmp_path}/run-${{now:%H%M%S%f}}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = list(tmp_path.glob("run-*"))
    assert len(runs) == 1, runs
    out = proc.stdout + proc.stderr
    assert out.count("wrote ") == 1 and proc.stdout.count("metrics: ") == 1  # rank 0 alone evaluates
    assert "rank 1 of 2 done training" in out
    metrics = json.loads((runs[0] / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["strategy"] == "DDPStrategy"
    assert metrics["cross_rank_negatives"] is True and metrics["epochs_run"] == 2
    assert (runs[0] / "checkpoints" / "last.ckpt").is_file()
    if not group_by_length:
        return
    # resumed with both ranks restoring their own random state from rank 0's checkpoint
    state = torch.load(runs[0] / "checkpoints" / "last.ckpt", weights_only=False)
    randomness = next(v for k, v in state["callbacks"].items() if "ResumableRandomness" in k)
    assert len(randomness["ranks"]) == 2
    proc, _ = run_ddp(*common, f"paths.output_dir={runs[0]}", "ckpt_path=last", "trainer.max_epochs=3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((runs[0] / "metrics.json").read_text())
    assert metrics["epochs_run"] == 3 and metrics["resumed_from"].endswith("last.ckpt")


@pytest.mark.slow
def test_a_file_missing_on_one_rank_fails_the_run_quickly_naming_it(tmp_path):
    tiny_csv(tmp_path / "rank0.csv")  # rank 1 (LOCAL_RANK=1) looks for rank1.csv: not there
    proc, seconds = run_ddp(
        f"data.path={tmp_path}/rank${{oc.env:LOCAL_RANK,0}}.csv", f"paths.output_dir={tmp_path}"
    )
    assert proc.returncode != 0
    assert "rank1.csv" in proc.stderr
    assert seconds < 120  # the launcher ends rank 0 when rank 1 dies: no hang until the timeout
    assert not (tmp_path / "metrics.json").exists()


@pytest.mark.slow
def test_ranks_that_read_different_logs_fail_naming_the_difference(tmp_path):
    tiny_csv(tmp_path / "rank0.csv")
    tiny_csv(tmp_path / "rank1.csv", extra_rows=5)
    proc, _ = run_ddp(
        f"data.path={tmp_path}/rank${{oc.env:LOCAL_RANK,0}}.csv", f"paths.output_dir={tmp_path}"
    )
    assert proc.returncode != 0
    assert "the 2 ranks of this run loaded different data" in proc.stderr
    assert "users: rank 0=" in proc.stderr
    assert not (tmp_path / "metrics.json").exists()


def test_the_process_group_timeout_reaches_every_ddp_strategy_and_leaves_others_alone():
    from twotower.ddp import build_strategy

    for name, start_method in [("ddp", "popen"), ("ddp_spawn", "spawn")]:
        strategy = build_strategy(name, 60)
        assert strategy._timeout.total_seconds() == 60 and strategy._start_method == start_method
    assert build_strategy("auto", 60) == "auto" and build_strategy("ddp", None) == "ddp"


@pytest.mark.parametrize("group_by_length", [True, False])
def test_the_datamodule_gives_every_rank_as_many_training_batches_and_its_own_validation_queries(
    tiny_data, tiny_split, group_by_length
):
    from types import SimpleNamespace

    from twotower.datamodule import TwoTowerDataModule

    loaders = []
    for rank in range(2):
        dm = TwoTowerDataModule(tiny_data, tiny_split, max_len=10, batch_size=7, eval_batch_size=8,
                                group_by_length=group_by_length)  # fmt: skip
        dm.trainer = SimpleNamespace(global_rank=rank, world_size=2)
        loaders.append((dm.train_dataloader(), dm.val_dataloader()))
    n_windows = len(dm.train_set)
    assert len(loaders[0][0]) == len(loaders[1][0]) == -(-n_windows // 14)
    train = [[i for b in loader.batch_sampler for i in b] for loader, _ in loaders]
    assert set(train[0]) | set(train[1]) == set(range(n_windows))
    val = [list(val.sampler) for _, val in loaders]
    assert sorted(val[0] + val[1]) == list(range(len(dm.val_set)))


def test_the_ema_update_pickles_for_ddp_spawn_and_equals_torchs():
    import functools
    import pickle

    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    from twotower.lit_module import ema_update

    torch.manual_seed(0)
    net = torch.nn.Linear(4, 3)
    ours = AveragedModel(net, multi_avg_fn=functools.partial(ema_update, decay=0.9))
    torchs = AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(0.9))
    for _ in range(3):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn_like(p))
        ours.update_parameters(net)
        torchs.update_parameters(net)
    assert all(torch.equal(a, b) for a, b in zip(ours.parameters(), torchs.parameters(), strict=True))
    pickle.loads(pickle.dumps(ours))
