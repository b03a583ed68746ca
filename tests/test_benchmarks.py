"""Benchmark code paths on a small synthetic catalog: the JSON contract, the plot, exact-vs-approximate sanity."""

from __future__ import annotations

import json

import numpy as np
import pytest

from serving.core.index import IndexSpec
from serving.recommender import Recommender
from twotower.benchmarks.catalog import clustered_catalog, taste_queries


@pytest.fixture(scope="module")
def bench_root(tmp_path_factory):
    return tmp_path_factory.mktemp("bench")


def test_catalog_has_cluster_structure():
    xb, centres = clustered_catalog(3000, 16, seed=0)
    assert xb.shape == (3000, 16) and np.allclose(np.linalg.norm(xb, axis=1), 1, atol=1e-5)
    nearest = (xb @ centres.T).max(1)
    assert np.median(nearest) > 0.6  # items sit near a topic centre
    for mixture in (1, 3):
        q = taste_queries(centres, 50, mixture=mixture)
        assert q.shape == (50, 16) and np.allclose(np.linalg.norm(q, axis=1), 1, atol=1e-5)


def test_latency_benchmark_contract(bench_root):
    from twotower.benchmarks.latency import run_latency
    from twotower.benchmarks.plot import plot_latency

    result = run_latency([2000], bench_root, ["flat", "hnsw"], {"hnsw": [8, 64]}, {"ef_construction": 40},
                         queries=25, k=10, dim=16, rounds=2)  # fmt: skip
    rows = result["results"]
    assert [r["index"] for r in rows] == ["Flat", "HNSW32,Flat", "HNSW32,Flat"]
    assert rows[0]["recall@10"] == 1.0  # exact index == exact search under the same exclusion
    assert rows[2]["recall@10"] >= rows[1]["recall@10"] - 0.05 and rows[2]["params"]["ef_search"] == 64
    for r in rows:
        assert set(r) >= {"n_items", "index", "params", "recall@10", "encode", "search", "recommend", "naive"}
        for name in ("encode", "recommend", "recommend_known_user", "encode_then_search", "search_user_vector",
                     "speed_probe"):  # fmt: skip
            assert 0 < r[name]["p50_ms"] <= r[name]["p99_ms"], name
        assert r["recommend"]["qps"] > 0 and r["recommend_known_user"]["qps"] > 0
        assert r["naive"]["p50_ms"] > 0 and r["build_seconds"] >= 0
        assert (
            0 < r["torch_faiss"]["p50_ms"] <= r["torch_faiss"]["p99_ms"] and r["speedup_vs_torch_faiss"] > 0
        )
    assert set(result["machine"]) >= {"cpu", "cores", "threads", "faiss", "onnxruntime", "torch"}
    json.dumps(result)
    plot_latency(result, bench_root / "latency.png")
    assert (bench_root / "latency.png").stat().st_size > 1000


def test_batch_throughput_contract(bench_root):
    from twotower.benchmarks.throughput import run_throughput

    result = run_throughput(2000, bench_root, n_users=300, k=20, exact_users=100,
                            spec=IndexSpec(kind="hnsw", ef_construction=40), search_values=[64], dim=16)  # fmt: skip
    row = result["results"][0]
    assert row["users_per_s"] > 0 and 0.5 <= row["recall@20"] <= 1.0 and result["exact"]["users_per_s"] > 0
    rec = Recommender.load(bench_root / "bundles" / "bundle-2000-d16")
    assert len(rec.item_ids) == 2000 and rec.manifest["dim"] == 16


def test_interleaved_times_the_call_not_its_preparation():
    import time

    from twotower.benchmarks.latency import interleaved

    seen = []

    def prepare(x):  # untimed: a sleep here must not show in the figures
        time.sleep(0.05)
        return x * 10

    times = interleaved(
        {"plain": seen.append, "prepared": (prepare, seen.append)}, [1, 2], rounds=2, warmup=1
    )
    assert len(times["plain"]) == len(times["prepared"]) == 4
    assert max(times["prepared"]) < 0.05
    assert seen == [1, 10, 1, 2, 10, 20, 1, 2, 10, 20]  # warm-up, then the passes alternating


def _predict_parts(tmp_path, writer_cls=None, fail: bool = False, **writer_args):
    """Lightning predict over a small catalog with the Parquet writer; returns the parts directory."""
    import pytorch_lightning as pl

    from serving.core.history import History
    from twotower.batch_predict import ParquetPartWriter, TopKPredictor, history_loader
    from twotower.benchmarks.synthetic import catalog_net

    rng = np.random.default_rng(0)
    net = catalog_net(clustered_catalog(500, 16)[0], max_len=10, num_layers=1)
    histories = [History(rng.integers(0, 500, size=n), np.ones(n, np.int64), np.ones(n, np.float32),
                         np.ones(n, np.float32)) for n in rng.integers(1, 12, size=70)]  # fmt: skip
    users, items = [f"u{i}" for i in range(70)], [f"i{i}" for i in range(500)]
    writer = (writer_cls or ParquetPartWriter)(tmp_path, users, items, **writer_args)
    if fail:
        writer.table = lambda *a: (_ for _ in ()).throw(OSError("disk full"))
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, callbacks=[writer], logger=False, enable_progress_bar=False
    )
    trainer.predict(TopKPredictor(net, k=7), dataloaders=history_loader(histories, 10, batch_size=16),
                    return_predictions=False)  # fmt: skip
    return tmp_path


def test_parquet_writer_in_a_thread_writes_the_files_the_frame_writer_did(tmp_path):
    """The background writer gives the same files, columns and rows as writing each batch's pandas frame in
    the predict loop (the writer before it)."""
    import pandas as pd
    from pytorch_lightning.callbacks import BasePredictionWriter

    class FrameWriter(BasePredictionWriter):  # the previous writer, verbatim in substance
        def __init__(self, out, users, item_ids):
            super().__init__(write_interval="batch")
            self.out, self.users = out, np.asarray(users, dtype=object)
            out.mkdir(parents=True, exist_ok=True)
            self.item_ids = np.asarray(item_ids, dtype=object)

        def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dl=0):
            index = prediction["index"].cpu().numpy()
            rows, scores = prediction["rows"].cpu().numpy(), prediction["scores"].float().cpu().numpy()
            k = rows.shape[1]
            found = (rows >= 0).ravel()
            frame = pd.DataFrame({"user_id": np.repeat(self.users[index], k)[found],
                                  "rank": np.tile(np.arange(1, k + 1), len(index))[found],
                                  "item_id": self.item_ids[rows.ravel()[found]], "score": scores.ravel()[found]})  # fmt: skip
            frame.to_parquet(
                self.out / f"rank-{trainer.global_rank}-batch-{batch_idx:06d}.parquet", index=False
            )

    new = _predict_parts(tmp_path / "new")
    old = _predict_parts(tmp_path / "old", FrameWriter)
    names = sorted(p.name for p in new.glob("*.parquet"))
    assert names == sorted(p.name for p in old.glob("*.parquet")) and len(names) == 5
    for name in names:
        got, expected = pd.read_parquet(new / name), pd.read_parquet(old / name)
        assert list(got.columns) == ["user_id", "rank", "item_id", "score"]
        pd.testing.assert_frame_equal(got, expected)
    assert sum(len(pd.read_parquet(new / n)) for n in names) == 70 * 7


def test_parquet_writers_side_by_side_write_what_one_writer_does(tmp_path):
    """Three writer threads with two parts in flight (the loop waits on them) give one thread's files."""
    import pandas as pd

    many = _predict_parts(tmp_path / "many", writers=3, queue_size=2)
    one = _predict_parts(tmp_path / "one", writers=1, queue_size=1)
    names = sorted(p.name for p in one.glob("*.parquet"))
    assert names == sorted(p.name for p in many.glob("*.parquet")) and len(names) == 5
    for name in names:
        pd.testing.assert_frame_equal(pd.read_parquet(many / name), pd.read_parquet(one / name))


def test_a_failed_predict_loop_stops_the_writers_and_keeps_its_own_error(tmp_path):
    """The loop fails while parts wait for a writer: the waiting parts are dropped, the parts under way
    finish, nothing else is raised from the hook (the loop's error is the one the trainer raises), and the
    writer can run again."""
    import threading

    from twotower.batch_predict import ParquetPartWriter

    writer = ParquetPartWriter(tmp_path, ["u0", "u1"], ["a", "b", "c"], queue_size=8, writers=1)
    gate, written = threading.Event(), []
    writer._write = lambda path, part: (gate.wait(5), written.append(path))
    part = (np.array([0, 1]), np.array([[0, 1], [2, 0]]), np.ones((2, 2), np.float32))
    for i in range(4):  # one under way (held at the gate), three waiting
        writer._put(tmp_path / f"p{i}.parquet", part)
    threading.Timer(0.2, gate.set).start()
    writer.on_exception(None, None, RuntimeError("CUDA out of memory"))
    assert len(written) < 4 and writer._pool is None and writer._pending == []
    writer._put(tmp_path / "again.parquet", part)
    writer.close()
    assert written[-1] == tmp_path / "again.parquet"


@pytest.mark.parametrize("writers", [1, 3])
def test_parquet_writer_thread_errors_surface(tmp_path, writers):
    with pytest.raises(RuntimeError, match="writing Parquet parts") as info:
        _predict_parts(tmp_path, fail=True, writers=writers)
    assert isinstance(info.value.__cause__, OSError)
