"""data=parquet: the streamed shards hold the in-memory path's sequences; errors name file, column and row; the
cache is reused; every rank gets the same number of batches."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import FAST_TRAIN, compose_config
from twotower.data.encode import encode_log
from twotower.data.parquet import load_parquet_log
from twotower.data.parquet.scan import Columns
from twotower.data.parquet.store import StreamLog
from twotower.data.schema import DataError
from twotower.data.sequences import SequenceArrays, TrainWindows
from twotower.data.splits import leave_last_out
from twotower.data.stream import ShardStream, plan
from twotower.data.synthetic import generate

COLS = {"user_col": "user_id", "item_col": "item_id", "time_col": "timestamp", "event_col": "event",
        "dwell_col": "dwell"}  # fmt: skip


def write_dataset(root: Path, frame: pd.DataFrame, files: int = 4) -> Path:
    """``frame`` as a hive-partitioned dataset of ``files`` files, rows in order (file order = sorted paths)."""
    for k, rows in enumerate(np.array_split(np.arange(len(frame)), files)):
        folder = root / f"day={k}"
        folder.mkdir(parents=True)
        pq.write_table(
            pa.Table.from_pandas(frame.iloc[rows], preserve_index=False), folder / "part-0.parquet"
        )
    return root


@pytest.fixture(scope="module")
def log_frame() -> pd.DataFrame:
    """A synthetic log with exact duplicates, a short user and same-timestamp ties."""
    raw = generate(n_users=150, n_items=80, n_categories=5, mean_events=14, seed=7)
    frame = raw.events.rename(
        columns={"user": "user_id", "item": "item_id", "ts": "timestamp", "dwell_s": "dwell"}
    )
    short = pd.DataFrame({"user_id": ["short"] * 2, "item_id": ["i1", "i2"], "timestamp": [1.0, 2.0],
                          "event": ["view", "click"], "dwell": [1.0, 2.0]})  # fmt: skip
    frame = pd.concat([frame, frame.iloc[10:40], short]).reset_index(drop=True)
    frame.loc[frame.index[5:9], "timestamp"] = frame.loc[frame.index[5], "timestamp"]
    return frame.sample(frac=1.0, random_state=0).reset_index(drop=True)  # users spread over every file


@pytest.fixture(scope="module")
def both(log_frame, tmp_path_factory):
    root = write_dataset(tmp_path_factory.mktemp("ds") / "log", log_frame)
    memory = encode_log(load_parquet_log(root, stream=False, **COLS), min_events=3)
    cache = tmp_path_factory.mktemp("cache")
    streamed = load_parquet_log(root, stream=True, cache_dir=cache, max_len=6, eval_max_users=None,
                                min_partitions=3, **COLS)  # fmt: skip
    return memory, streamed, root, cache


def window_rows(arrays: SequenceArrays, windows: np.ndarray, ids: list[str]) -> list[tuple]:
    """Each window as its item ids, events, dwell and gaps (what a training batch is made of)."""
    return sorted(
        (tuple(ids[i - 1] for i in arrays.items[b:e]), tuple(arrays.events[b:e]), tuple(arrays.dwell[b:e]),
         tuple(np.round(arrays.gaps[b:e], 3)))
        for b, e in windows
    )  # fmt: skip


def test_streamed_log_equals_the_in_memory_path(both):
    memory, streamed, _, _ = both
    assert isinstance(streamed, StreamLog)
    assert streamed.item_ids == memory.item_ids and streamed.user_ids == memory.user_ids
    assert streamed.event_names == memory.event_names
    for name in ("users", "items", "ts", "events", "dwell", "user_offsets"):
        assert np.array_equal(getattr(streamed, name), getattr(memory, name)), name
    assert streamed.report.duplicates_dropped == memory.report.duplicates_dropped >= 30
    assert streamed.report.short_users_dropped == memory.report.short_users_dropped == 1
    split = leave_last_out(memory)
    for stage in ("val", "test"):
        assert [
            np.array_equal(a, b)
            for a, b in zip(streamed.split.targets(stage), split.targets(stage), strict=True)
        ] == [1, 1]


def test_shards_hold_the_in_memory_windows(both):
    memory, streamed, _, _ = both
    split = leave_last_out(memory)
    arrays = SequenceArrays.from_log(memory)
    windows = TrainWindows(memory, split, arrays, max_len=6)
    expected = window_rows(arrays, windows.windows, memory.item_ids)
    got = []
    for shard in streamed.index["shards"]:
        folder = streamed.entry / shard["path"]
        load = {k: np.load(folder / f"{k}.npy") for k in ("items", "events", "dwell", "gaps", "windows")}
        shard_arrays = SequenceArrays(
            load["items"], load["events"], load["dwell"], load["gaps"], load["dwell"]
        )
        got += window_rows(shard_arrays, load["windows"], streamed.item_ids)
    assert sorted(got) == expected
    assert np.array_equal(streamed.counts("target").numpy(), windows.target_counts(memory.n_items))
    item_counts = np.bincount(memory.items[split.train_mask(memory)], minlength=memory.n_items + 1)
    assert np.array_equal(streamed.counts("item").numpy(), item_counts)


def test_the_cache_is_reused_and_keyed_by_settings(both):
    _, streamed, root, cache = both
    index = streamed.entry / "index.json"
    stamp = index.stat().st_mtime_ns
    again = load_parquet_log(root, stream=True, cache_dir=cache, max_len=6, eval_max_users=None,
                             min_partitions=3, **COLS)  # fmt: skip
    assert again.entry == streamed.entry and index.stat().st_mtime_ns == stamp
    other = load_parquet_log(root, stream=True, cache_dir=cache, max_len=7, eval_max_users=None,
                             min_partitions=3, **COLS)  # fmt: skip
    assert other.entry != streamed.entry


def test_memory_budget_sets_the_partition_count(both, tmp_path):
    _, _, root, _ = both
    small = load_parquet_log(root, stream=True, cache_dir=tmp_path, max_len=6, memory_mb=0.2, min_partitions=1,
                             **COLS)  # fmt: skip
    assert small.index["partitions"] > 3  # ~2,100 rows x 400 B in 0.2 MB partitions


@pytest.mark.parametrize(
    ("column", "value", "message"),
    [
        ("user_id", "  ", "empty id in column 'user_id' at row 4"),
        ("timestamp", "yesterday-ish", "unparsable timestamp 'yesterday-ish' in column 'timestamp' at row 4"),
        ("dwell", "-3", "in column 'dwell' at row 4 (expected seconds >= 0 or empty)"),
    ],
)
def test_errors_name_file_column_and_row(tmp_path, column, value, message):
    frame = pd.DataFrame({"user_id": [f"u{i % 5}" for i in range(40)], "item_id": [f"i{i}" for i in range(40)],
                          "timestamp": [str(1_700_000_000 + i) for i in range(40)],
                          "event": ["view"] * 40, "dwell": [1.5] * 40})  # fmt: skip
    if column == "dwell":
        frame["dwell"] = frame["dwell"].astype(float)
        value = -3.0
    frame.loc[23, column] = value  # file day=2 (rows 20..29): its 4th row
    root = write_dataset(tmp_path / "log", frame, files=4)
    with pytest.raises(DataError) as error:
        load_parquet_log(root, stream=True, cache_dir=tmp_path / "cache", **COLS)
    assert "day=2/part-0.parquet" in str(error.value) and message in str(error.value)


def test_missing_column_is_named(tmp_path):
    root = write_dataset(tmp_path / "log", pd.DataFrame({"user_id": ["a"], "item_id": ["b"], "ts": [1]}), 1)
    with pytest.raises(DataError, match=r"column 'timestamp' \(data.time_col\) not found"):
        load_parquet_log(root, cache_dir=tmp_path / "cache", user_col="user_id", item_col="item_id")


@pytest.mark.parametrize("world", [1, 2, 3])
@pytest.mark.parametrize("workers", [1, 2])
def test_plan_gives_every_rank_the_same_batches(world, workers):
    batches = [7, 3, 3, 9, 1, 4, 6, 2]
    shards, quotas, per_rank = plan(batches, world, workers)
    assert sorted(s for rank in shards for worker in rank for s in worker) == list(range(len(batches)))
    for rank_shards, rank_quotas in zip(shards, quotas, strict=True):
        assert sum(rank_quotas) == per_rank
        for worker_shards, quota in zip(rank_shards, rank_quotas, strict=True):
            assert 0 <= quota <= sum(batches[s] for s in worker_shards)
    assert per_rank >= sum(batches) // world - max(batches)


def test_ranks_yield_equal_batches_and_one_rank_sees_every_window(both):
    _, streamed, _, _ = both
    alone = list(ShardStream(streamed, batch_size=8, seed=1, rank=0, world_size=1))
    targets = sum(int((b["targets"] > 0).sum()) for b in alone)
    assert targets == streamed.index["targets"]  # one rank: every window once
    counts = [len(list(ShardStream(streamed, batch_size=8, seed=1, rank=r, world_size=2))) for r in (0, 1)]
    assert counts[0] == counts[1] == len(ShardStream(streamed, batch_size=8, rank=0, world_size=2))


def test_epochs_draw_other_orders(both):
    _, streamed, _, _ = both
    stream = ShardStream(streamed, batch_size=8, seed=1, rank=0, world_size=1)
    first = [b["targets"][0, 0].item() for b in stream]
    stream.epoch = 1
    assert first != [b["targets"][0, 0].item() for b in stream]


def test_train_reads_the_shards(both, tmp_path):
    _, _, root, cache = both
    overrides = FAST_TRAIN + [
        "data=parquet", f"data.path={root}", "data.stream=true", "data.event_col=event", "data.dwell_col=dwell",
        f"data.loader.cache_dir={cache}", "data.min_partitions=3", "trainer.max_epochs=1", "logger=none",
        "eval.baselines=[popularity]", "data.eval_max_users=100",
    ]  # fmt: skip
    from twotower.train import train

    result = train(compose_config(overrides, tmp_path / "run"))
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["dataset"]["users"] == 150 and metrics["dataset"]["evaluated_users"] == 100
    assert metrics["test"]["queries"] == 100 and "popularity" in metrics["baselines"]
    assert result["metrics"]["train_targets_per_epoch"] > 0
    assert Columns().user_col == "user_id"


def test_workers_share_a_rank_without_repeats(both):
    """Two DataLoader workers: the rank's planned batch count, every window once."""
    from twotower.data.stream import _EpochLoader

    _, streamed, _, _ = both
    stream = ShardStream(streamed, batch_size=8, seed=1, workers=2, rank=0, world_size=1)
    batches = list(_EpochLoader(stream, module=None, num_workers=2))
    assert len(batches) == len(stream)
    assert sum(int((b["targets"] > 0).sum()) for b in batches) == streamed.index["targets"]


def test_small_logs_stay_in_memory(both):
    _, _, root, _ = both
    raw = load_parquet_log(root, **COLS)  # stream=auto, far below stream_min_rows
    assert not isinstance(raw, StreamLog) and len(raw.events) == 2_296


def test_other_local_ranks_wait_for_the_shards(both, tmp_path, monkeypatch):
    """Under DDP only local rank 0 builds; the others read its entry, or fail with a clear timeout."""
    _, streamed, root, cache = both
    monkeypatch.setenv("LOCAL_RANK", "1")
    same = load_parquet_log(root, stream=True, cache_dir=cache, max_len=6, eval_max_users=None,
                            min_partitions=3, **COLS)  # fmt: skip
    assert same.entry == streamed.entry
    with pytest.raises(TimeoutError, match="built by local rank 0"):
        load_parquet_log(root, stream=True, cache_dir=tmp_path, wait_s=0.2, **COLS)


@pytest.mark.slow
def test_two_process_ddp_trains_from_the_shards(both, tmp_path):
    """2 gloo processes: local rank 0 builds the shards, rank 1 waits for them; equal steps, one metrics.json."""
    import os
    import subprocess
    import sys

    from twotower.config import PROJECT_ROOT

    _, _, root, _ = both
    command = [sys.executable, "-m", "twotower.cli.train", "data=parquet", f"data.path={root}", "data.stream=true",
               "data.event_col=event", "data.dwell_col=dwell", f"data.loader.cache_dir={tmp_path / 'cache'}",
               "data.min_partitions=3", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp",
               "trainer.process_group_timeout_s=60", "model.loss.mode=sampled", "model.loss.num_uniform_negatives=8",
               "eval.baselines=[popularity]", *FAST_TRAIN, "logger=none", f"paths.output_dir={tmp_path / 'run'}"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("LOCAL_RANK", None)
    proc = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["epochs_run"] == 2
    assert len(list((tmp_path / "cache").iterdir())) == 1  # one entry, no staging left behind


@pytest.mark.slow
def test_a_resumed_streamed_run_is_the_uninterrupted_run(both, tmp_path):
    """The shard order of each epoch follows the trainer's epoch, also in a resumed run's first epoch."""
    from twotower.train import train

    _, _, root, cache = both
    common = FAST_TRAIN + [
        "data=parquet", f"data.path={root}", "data.stream=true", "data.event_col=event", "data.dwell_col=dwell",
        f"data.loader.cache_dir={cache}", "data.min_partitions=3", "logger=none", "eval.baselines=[popularity]",
        "callbacks.early_stopping.patience=100",
    ]  # fmt: skip
    train(compose_config([*common, "trainer.max_epochs=1"], tmp_path / "stopped"))
    resumed = train(compose_config([*common, "trainer.max_epochs=2", "ckpt_path=last"], tmp_path / "stopped"))
    straight = train(compose_config([*common, "trainer.max_epochs=2"], tmp_path / "straight"))
    assert resumed["metrics"]["test"] == straight["metrics"]["test"]


def test_stream_datamodule_takes_every_argument_of_the_in_memory_one():
    """train() swaps the datamodule's target for a streamed log and keeps its arguments (datamodule=gpu's
    pin_memory included): both constructors must accept the same keywords."""
    import inspect

    from twotower.data.stream import StreamDataModule
    from twotower.datamodule import TwoTowerDataModule

    def keywords(cls) -> set[str]:
        return set(inspect.signature(cls.__init__).parameters) - {"self"}

    assert keywords(TwoTowerDataModule) <= keywords(StreamDataModule)


def test_searches_context_and_user_features_read_as_the_csv_loader_reads_them(tmp_path):
    """The in-memory Parquet path gives the CSV loader's encoded log, signals included; the streamed path
    refuses the signal options, naming them, instead of training without them."""
    from twotower.data.loaders import load_csv_log

    raw = generate(n_users=60, n_items=40, n_categories=4, mean_events=10, search_prob=0.3, seed=2)
    events = raw.events.rename(columns={"user": "user_id", "item": "item_id", "ts": "timestamp"})
    events["device"] = np.random.default_rng(0).choice(["mobile", "desktop", " ", None], len(events))
    assert events["item_id"].isna().any()  # search rows without an item
    events.to_csv(tmp_path / "events.csv", index=False)
    root = write_dataset(tmp_path / "log", events, files=3)
    users = pd.DataFrame({"user_id": [f"u{i}" for i in range(50)], "segment": ["a", "b"] * 25})
    users.to_csv(tmp_path / "users.csv", index=False)
    signals = {"query_col": "query", "context_cols": ["device"], "hour_of_week": True,
               "users_path": tmp_path / "users.csv"}  # fmt: skip
    cols = {"user_col": "user_id", "item_col": "item_id", "time_col": "timestamp", "event_col": "event",
            "dwell_col": "dwell_s"}  # fmt: skip
    from_csv = encode_log(load_csv_log(tmp_path / "events.csv", **cols, **signals), min_events=3)
    from_parquet = encode_log(load_parquet_log(root, stream=False, **cols, **signals), min_events=3)
    assert from_parquet.report.searches == from_csv.report.searches > 0
    for name in ("users", "items", "events", "ts", "queries", "context", "user_features"):
        np.testing.assert_array_equal(getattr(from_parquet, name), getattr(from_csv, name), err_msg=name)
    assert from_parquet.context_vocab == from_csv.context_vocab
    assert from_parquet.user_feature_vocab == from_csv.user_feature_vocab
    with pytest.raises(
        DataError, match=r"data\.query_col, data\.context_cols, data\.users_path.*stream=false"
    ):
        load_parquet_log(root, stream=True, cache_dir=tmp_path / "cache", **cols, **signals)


@pytest.mark.parametrize(("time_col", "dropped"), [("timestamp", 2), (None, 1)])
def test_streamed_duplicates_are_identical_events_as_in_memory(tmp_path, time_col, dropped):
    """A view and a purchase of one item at one time are two events on both paths; identical rows are one.
    Without a time column (``ts`` is the row number, left out of the key) only a user's consecutive repeats
    go: a's second (1, view, 5) after other rows is a re-consumption and stays, b's repeated (2, view) goes."""
    rows = [("a", "1", 10, "view", 5.0), ("a", "1", 10, "purchase", 5.0), ("a", "1", 10, "view", 9.0),
            ("a", "1", 10, "view", 5.0), ("a", "2", 11, "view", 1.0), ("b", "1", 10, "view", 1.0),
            ("b", "2", 12, "view", 1.0), ("b", "2", 12, "view", 1.0), ("b", "3", 13, "view", 1.0)]  # fmt: skip
    frame = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "event", "dwell"])
    root = write_dataset(tmp_path / "log", frame, files=2)
    cols = {**COLS, "time_col": time_col}
    memory = encode_log(load_parquet_log(root, stream=False, **cols), min_events=2)
    streamed = load_parquet_log(root, stream=True, cache_dir=tmp_path / "cache", max_len=6, eval_max_users=None,
                                min_partitions=2, min_events=2, **cols)  # fmt: skip
    assert memory.report.duplicates_dropped == streamed.report.duplicates_dropped == dropped
    assert memory.event_names == streamed.event_names == ["<other>", "purchase", "view"]
    for name in ("users", "items", "events", "dwell"):
        np.testing.assert_array_equal(getattr(streamed, name), getattr(memory, name), err_msg=name)


def test_streamed_log_sorted_by_item_without_time_is_warned_about(tmp_path, caplog):
    rng = np.random.default_rng(0)
    rows = [(f"u{u}", str(i)) for u in range(12) for i in sorted(rng.choice(300, 5, replace=False))]
    root = write_dataset(tmp_path / "log", pd.DataFrame(rows, columns=["user_id", "item_id"]), files=2)
    with caplog.at_level("WARNING", logger="twotower.data.encode"):
        load_parquet_log(root, time_col=None, stream=True, cache_dir=tmp_path / "cache", min_partitions=3)
    assert "hold out each user's largest item id" in caplog.text
