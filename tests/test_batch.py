"""Batch scoring: same answers as online, bounded chunks, resume after interruption, shards, inputs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from serving.batch import BatchScorer
from serving.batch_job import honour_erasures, load_users, profiles_for, score_to_parquet
from serving.historylog import HistoryLogError, read_history_log
from serving.recommender import Recommender


@pytest.fixture(scope="module")
def rec(run_and_bundle):
    return Recommender.load(run_and_bundle[1], threads=2)


def test_batch_top_k_agrees_with_online(rec):
    users, histories = load_users(rec)
    scores, rows = BatchScorer(rec, k=10, overfetch=4).top_k(histories)
    agreement = []
    for user, top in zip(users, rows, strict=True):
        online = [x["item_id"] for x in rec.recommend(user_id=user, k=10).items]
        agreement.append(len(set(online) & {rec.item_ids[r] for r in top}) / 10)
        assert not set(top) & set(
            rec.histories[user].rows.tolist()
        )  # history excluded, even past the overfetch
    assert np.mean(agreement) >= 0.95 and (rows >= 0).all()
    assert (np.diff(scores, axis=1) <= 1e-6).all()  # sorted


def test_parallel_batches_encode_every_user_in_order(rec):
    """Small batches in length order, run on two threads at once, come back in the callers' order with the
    vectors each history gets alone (the unpadded single-request graph)."""
    assert rec.threads == 2
    _, histories = load_users(rec)
    histories = histories[::-1]  # not in length order
    vectors = BatchScorer(rec).encode(histories, batch=7)  # many batches, two at a time
    alone = np.stack([rec.encode(h) for h in histories])
    np.testing.assert_allclose(vectors, alone, atol=1e-5)
    np.testing.assert_allclose(vectors, BatchScorer(rec).encode(histories, batch=len(histories)), atol=1e-6)


class Interrupt(Exception):
    pass


def test_resume_after_interruption_and_file_contract(rec, tmp_path):
    users, histories = load_users(rec)
    scorer = BatchScorer(rec, k=5)
    calls = {"n": 0}
    original = scorer.table

    def flaky(u, h):
        calls["n"] += 1
        if calls["n"] == 3:
            raise Interrupt
        return original(u, h)

    scorer.table = flaky
    out = tmp_path / "top.parquet"
    with pytest.raises(Interrupt):
        score_to_parquet(scorer, users, histories, out, chunk_size=7, progress=False)
    assert len(list((tmp_path / "top.parquet.parts").glob("chunk-*.parquet"))) == 2 and not out.exists()
    scorer.table = original
    summary = score_to_parquet(scorer, users, histories, out, chunk_size=7, progress=False)
    assert summary["chunks_resumed"] == 2 and summary["rows"] == 5 * len(users)
    table = pq.read_table(out)
    assert table.column_names == ["user_id", "rank", "item_id", "score"]
    assert table.schema.metadata[b"twotower.model_version"].decode() == rec.model_version
    frame = table.to_pandas()
    assert frame.groupby("user_id")["rank"].apply(list).map(lambda r: r == [1, 2, 3, 4, 5]).all()
    assert sorted(frame["user_id"].unique()) == sorted(users)
    with pytest.raises(ValueError, match="different job"):
        (tmp_path / "top.parquet.parts").mkdir()
        (tmp_path / "top.parquet.parts" / "plan.json").write_text('{"k": 1}')
        score_to_parquet(scorer, users, histories, out, chunk_size=7, progress=False)


def test_shards_split_the_users(rec, tmp_path):
    users, histories = load_users(rec)
    seen = []
    for shard in range(3):
        out = tmp_path / f"part-{shard}.parquet"
        score_to_parquet(BatchScorer(rec, k=2), users, histories, out, chunk_size=5, num_shards=3, shard=shard,
                         progress=False)  # fmt: skip
        seen.append(set(pq.read_table(out).column("user_id").to_pylist()))
    assert not (seen[0] & seen[1]) and not (seen[1] & seen[2]) and set().union(*seen) == set(users)
    with pytest.raises(ValueError, match="shard"):
        score_to_parquet(BatchScorer(rec), users, histories, tmp_path / "x.parquet", num_shards=2, shard=2)


def test_inputs_from_a_log_file_and_a_user_list(rec, tmp_path):
    log = pd.DataFrame({"user_id": ["a", "a", "b"], "item_id": [rec.item_ids[0], rec.item_ids[1], "ghost"],
                        "ts": [2.0, 1.0, 3.0]})  # fmt: skip
    log.to_csv(tmp_path / "log.csv", index=False)
    (tmp_path / "users.txt").write_text("a\nb\nnobody\n")
    users, histories = load_users(
        rec, users_file=str(tmp_path / "users.txt"), histories_file=str(tmp_path / "log.csv")
    )
    assert users == ["a", "b", "nobody"]
    assert histories[0].rows.tolist() == [1, 0]  # sorted by time
    assert len(histories[1]) == 0 and len(histories[2]) == 0  # only unknown items / no events: the fallback
    _, rows = BatchScorer(rec, k=3).top_k(histories)
    assert rows[1].tolist() == rec.popular_rows[:3].tolist() == rows[2].tolist()
    with pytest.raises(ValueError, match="missing columns"):
        pd.DataFrame({"user": ["a"]}).to_csv(tmp_path / "bad.csv", index=False)
        load_users(rec, histories_file=str(tmp_path / "bad.csv"))


def test_lightning_predict_matches_the_cpu_batch_path(run_and_bundle, rec, tmp_path):
    import pytorch_lightning as pl

    from twotower.artifacts import load_model
    from twotower.batch_predict import (
        ParquetPartWriter,
        TopKPredictor,
        history_loader,
        run_histories,
        run_intent,
    )

    users, item_ids, histories = run_histories(run_and_bundle[0])
    writer = ParquetPartWriter(tmp_path / "parts", users, item_ids)
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, callbacks=[writer], logger=False, enable_progress_bar=False
    )
    assert rec.intent is not None  # the synthetic catalog has categories: the served re-rank is on
    predictor = TopKPredictor(
        load_model(run_and_bundle[0] / "model.pt"), k=10, intent=run_intent(run_and_bundle[0])
    )
    trainer.predict(predictor,
                    dataloaders=history_loader(histories, rec.max_len, batch_size=16), return_predictions=False)  # fmt: skip
    frame = pd.concat(pd.read_parquet(p) for p in sorted((tmp_path / "parts").glob("*.parquet")))
    assert len(frame) == 10 * len(users) and set(frame["user_id"]) == set(users)
    agree = []
    for user, group in frame.groupby("user_id"):
        online = {x["item_id"] for x in rec.recommend(user_id=user, k=10).items}
        agree.append(len(online & set(group["item_id"])) / 10)
        assert not set(group["item_id"]) & {rec.item_ids[r] for r in rec.histories[user].rows}
    assert np.mean(agree) >= 0.95


def test_a_history_longer_than_the_model_window_excludes_every_seen_item(rec, tmp_path):
    """The model reads the last ``max_len`` events; every item of the history is still left out, in batch
    scoring (a log file holds whole histories) and online."""
    catalog = len(rec.item_ids)
    seen_ids = [rec.item_ids[r] for r in rec.popular_rows[: catalog - 12]]  # the most popular first: oldest
    assert len(seen_ids) > 2 * rec.max_len
    log = pd.DataFrame({"user_id": "long", "item_id": seen_ids, "ts": np.arange(len(seen_ids), dtype=float)})
    log.to_csv(tmp_path / "log.csv", index=False)
    _, histories = load_users(rec, histories_file=str(tmp_path / "log.csv"))
    assert len(histories[0]) == len(seen_ids)
    _, rows = BatchScorer(rec, k=10).top_k(histories)
    unseen = set(rec.item_ids) - set(seen_ids)
    assert {rec.item_ids[r] for r in rows[0]} <= unseen and (rows[0] >= 0).all()
    online = rec.recommend(history=seen_ids, k=10).items
    assert len(online) == 10 and {x["item_id"] for x in online} <= unseen


def test_a_log_keeps_its_ids_as_text_and_reads_iso_times(rec, tmp_path):
    """Ids are the strings the log holds ("0196" is not 196), stripped; ISO times are UTC seconds; a bad
    cell is refused naming file, column and row."""
    (tmp_path / "log.csv").write_text(
        "user_id,item_id,ts,dwell_s\n0196, 007 ,2024-01-01T10:00:00Z,\n0196,12,2024-01-01T09:30:00+01:00,3.5\n"
    )
    frame = read_history_log(tmp_path / "log.csv")
    assert frame["user_id"].tolist() == ["0196", "0196"] and frame["item_id"].tolist() == ["12", "007"]
    pd.DataFrame({"user_id": [196.0, 22.0], "item_id": ["1", "2"]}).to_parquet(tmp_path / "f.parquet")
    assert read_history_log(tmp_path / "f.parquet")["user_id"].tolist() == ["196", "22"]  # not "196.0"
    assert frame["ts"].tolist() == [1704097800.0, 1704103200.0]  # 09:30+01:00 is 08:30Z: first
    assert np.isnan(frame["dwell_s"].iloc[1]) and frame["dwell_s"].iloc[0] == 3.5
    known = rec.item_ids[0]
    pd.DataFrame({"user_id": ["007"], "item_id": [known]}).to_csv(tmp_path / "z.csv", index=False)
    users, histories = load_users(rec, histories_file=str(tmp_path / "z.csv"))
    assert users == ["007"] and histories[0].rows.tolist() == [rec.catalog.row_of[known]]
    for body, where in (("user_id,item_id,ts\na,1,yesterday\n", "column ts: 'yesterday' at row 2"),
                        ("user_id,item_id\n,1\n", "column user_id: empty at row 2"),
                        ("user_id,item_id,dwell_s\na,1,long\n", "column dwell_s: 'long' at row 2")):  # fmt: skip
        (tmp_path / "bad.csv").write_text(body)
        with pytest.raises(HistoryLogError, match=where):
            read_history_log(tmp_path / "bad.csv")


def test_batch_jobs_leave_out_erased_users_or_warn(rec, tmp_path, caplog, monkeypatch):
    from serving.privacy import pseudonym_key, user_key
    from serving.store import SQLiteHistoryStore

    users = sorted(rec.histories)[:3]
    histories = [rec.histories[u] for u in users]
    SQLiteHistoryStore(tmp_path / "state", max_events=10).erase(
        user_key(pseudonym_key(tmp_path / "state"), users[0])
    )
    kept, _ = honour_erasures(users, histories, str(tmp_path / "state"), from_store=False, configured_key="")
    assert kept == users[1:]
    with caplog.at_level("WARNING"):
        kept, _ = honour_erasures(users, histories, None, from_store=False, configured_key="")
    assert kept == users and "no erasure log given" in caplog.text
    with pytest.raises(FileNotFoundError, match="erasures=.*nowhere"):
        honour_erasures(users, histories, str(tmp_path / "nowhere"), from_store=False, configured_key="")
    assert not (tmp_path / "nowhere").exists()  # a wrong path creates no store
    monkeypatch.setenv("TWOTOWER_STATE_DIR", str(tmp_path / "state"))  # auto: the service's store
    assert honour_erasures(users, histories, "auto", from_store=False, configured_key="")[0] == users[1:]
    monkeypatch.setenv("TWOTOWER_STATE_DIR", str(tmp_path / "empty"))  # no store there (yet): nothing erased
    caplog.clear()
    with caplog.at_level("WARNING"):
        assert honour_erasures(users, histories, "auto", from_store=False, configured_key="")[0] == users
    assert "no erasure log given" in caplog.text


def test_batch_scoring_from_a_store_leaves_out_profiles_of_erased_users(signal_bundle, tmp_path):
    """A user erased and back with new events is scored from the store's history, without the old profile."""
    from serving.privacy import pseudonym_key, user_key
    from serving.recommender import Recommender
    from serving.store import SQLiteHistoryStore

    rec = Recommender.load(signal_bundle[1])
    store = SQLiteHistoryStore(tmp_path / "state", max_events=10)
    store.erase(user_key(pseudonym_key(tmp_path / "state"), "u0"))
    profiles = profiles_for(rec, ["u0", "u1"], str(tmp_path / "state"))
    assert "u0" not in profiles and "u1" in profiles and "u0" in rec.user_features
    assert profiles_for(rec, ["u1"], str(tmp_path / "state")) is rec.user_features  # nobody erased: as is
    history = rec.histories["u1"]
    scorer, plain = BatchScorer(rec, k=5, profiles=profiles), BatchScorer(rec, k=5)
    np.testing.assert_array_equal(scorer.top_k([history], ["u1"])[1], plain.top_k([history], ["u1"])[1])
    blind = BatchScorer(rec, k=5, profiles={})
    assert (scorer.top_k([history], ["u0"])[0] == blind.top_k([history], ["u0"])[0]).all()
    assert not np.allclose(
        plain.top_k([history], ["u0"])[0], blind.top_k([history], ["u0"])[0]
    )  # it would move
