"""Loaders and validation: clear errors that name file, column and row; counted drops."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tests.conftest import ML100K, needs_ml100k
from twotower.data.encode import encode_log
from twotower.data.loaders import load_csv_log, load_events, load_items
from twotower.data.movielens import load_ml100k, load_movielens_csv
from twotower.data.schema import DataError


def write(path, text):
    path.write_text(text)
    return path


def test_csv_with_header_maps_columns(tmp_path):
    path = write(
        tmp_path / "log.csv", "uid,iid,when,kind,secs\n1,10,100,click,3.5\n1,11,90,view,\n2,10,50,buy,7\n"
    )
    ev = load_events(
        path, user_col="uid", item_col="iid", time_col="when", event_col="kind", dwell_col="secs"
    )
    assert list(ev.columns) == ["user", "item", "ts", "event", "dwell_s"]
    assert ev["user"].tolist() == ["1", "1", "2"] and ev["item"].tolist() == ["10", "11", "10"]
    assert ev["ts"].tolist() == [100.0, 90.0, 50.0]
    assert ev["dwell_s"].tolist() == [3.5, -1.0, 7.0]  # empty dwell = unknown


def test_headerless_tsv_with_names(tmp_path):
    path = write(tmp_path / "u.data", "7\t3\t5\t881250949\n8\t4\t3\t881250950\n")
    ev = load_events(path, sep="\t", header=False, names=["user_id", "item_id", "rating", "timestamp"])
    assert ev["user"].tolist() == ["7", "8"] and ev["ts"].iloc[1] == 881250950.0


def test_datetime_strings_are_parsed(tmp_path):
    path = write(
        tmp_path / "log.csv", "user_id,item_id,timestamp\na,x,2024-01-01T00:00:00Z\na,y,2024-01-01 00:01:00\n"
    )
    ev = load_events(path)
    assert ev["ts"].iloc[1] - ev["ts"].iloc[0] == 60.0


def test_parquet_round_trip(tmp_path):
    frame = pd.DataFrame({"user_id": [1, 2], "item_id": ["a", "b"], "timestamp": [10, 20]})
    frame.to_parquet(tmp_path / "log.parquet")
    ev = load_events(tmp_path / "log.parquet")
    assert ev["user"].tolist() == ["1", "2"] and ev["item"].tolist() == ["a", "b"]


@pytest.mark.parametrize(
    ("content", "kwargs", "expected"),
    [
        ("", {}, "is empty"),
        ("user_id,item_id,timestamp\n", {}, "no data rows"),
        ("user_id,item,timestamp\n1,2,3\n", {}, "column 'item_id' (data.item_col) not found"),
        ("user_id,item_id,timestamp\n1,2,3\n1,3,4\n1,4,yesterday-ish\n", {}, "'timestamp' at line 4"),
        ("user_id,item_id,timestamp\n1,2,3\n,3,4\n", {}, "empty id in column 'user_id' at line 3"),
        (
            "user_id,item_id,timestamp,d\n1,2,3,-4\n",
            {"dwell_col": "d"},
            "invalid dwell time '-4' in column 'd'",
        ),
        ("user_id,item_id,timestamp,d\n1,2,3,long\n", {"dwell_col": "d"}, "at line 2"),
    ],
)
def test_bad_files_raise_clear_errors(tmp_path, content, kwargs, expected):
    path = write(tmp_path / "bad.csv", content)
    with pytest.raises(DataError) as err:
        load_events(path, **kwargs)
    assert expected in str(err.value) and str(path) in str(err.value)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        load_events(tmp_path / "nope.csv")


def test_item_table_and_duplicate_item_ids(tmp_path):
    items = load_items(write(tmp_path / "items.csv", "item_id,category\n1,a|b\n2,\n"))
    assert items["categories"].tolist() == [["a", "b"], []]
    with pytest.raises(DataError, match="duplicate item id '1' at line 3"):
        load_items(write(tmp_path / "dup.csv", "item_id,category\n1,a\n1,b\n"))


def test_encode_counts_duplicates_and_short_users(tmp_path):
    rows = "user_id,item_id,timestamp\n" + "".join(f"u1,i{i},{i}\n" for i in range(4))
    rows += "u1,i0,0\n"  # exact duplicate (user, item, time)
    rows += "u2,i1,1\nu2,i2,2\n"  # too short for leave-last-out
    raw = load_csv_log(write(tmp_path / "log.csv", rows))
    data = encode_log(raw, min_events=3)
    assert data.report.duplicates_dropped == 1
    assert data.report.short_users_dropped == 1 and data.report.short_user_events_dropped == 2
    assert data.user_ids == ["u1"] and data.n_interactions == 4


def test_without_time_only_consecutive_repeats_are_dropped(tmp_path):
    """A play log with re-listens keeps the latest one: a,1 / a,2 / a,1 is three events; a repeated row is one."""
    rows = "user_id,item_id\n" + "".join(f"a,{i}\n" for i in (1, 2, 1, 1, 3)) + "b,1\nb,2\nb,1\n"
    data = encode_log(load_csv_log(write(tmp_path / "log.csv", rows), time_col=None), min_events=3)
    assert data.report.duplicates_dropped == 1
    ordered = [data.item_ids[i - 1] for i in data.items]
    assert ordered == ["1", "2", "1", "3", "1", "2", "1"]
    assert data.users.tolist() == [0, 0, 0, 0, 1, 1, 1]


def test_encode_sorts_by_time_stably(tmp_path):
    raw = load_csv_log(write(tmp_path / "log.csv", "user_id,item_id,timestamp\nu,c,5\nu,a,1\nu,b,5\nu,d,3\n"))
    data = encode_log(raw)
    ordered = [data.item_ids[i - 1] for i in data.items]
    assert ordered == ["a", "d", "c", "b"]  # ties (c, b at t=5) keep file order


def test_no_time_column_uses_file_order(tmp_path):
    raw = load_csv_log(write(tmp_path / "log.csv", "user_id,item_id\nu,c\nu,a\nu,b\n"), time_col=None)
    data = encode_log(raw)
    assert not data.has_time
    assert [data.item_ids[i - 1] for i in data.items] == ["c", "a", "b"]


def test_movielens_csv_layout(tmp_path):
    write(tmp_path / "ratings.csv", "userId,movieId,rating,timestamp\n1,10,4.5,3\n1,20,3.0,1\n1,30,5.0,2\n")
    write(
        tmp_path / "movies.csv",
        'movieId,title,genres\n10,A (1999),Comedy|Drama\n20,"B, The",(no genres listed)\n',
    )
    data = encode_log(load_movielens_csv(tmp_path))
    assert data.event_names == ["<other>", "rating_3", "rating_4.5", "rating_5"]
    first = data.item_ids.index("10") + 1
    cats = {data.category_names[c] for c in data.item_categories[first] if c}
    assert cats == {"Comedy", "Drama"}
    assert data.report.unknown_item_features == 1  # movie 30 has no row


@needs_ml100k
def test_ml100k_loader():
    data = encode_log(load_ml100k(ML100K))
    assert (data.n_users, data.n_items, data.n_interactions) == (943, 1682, 100000)
    assert data.n_categories == 20  # 19 genres + padding
    assert np.all(np.diff(data.ts[data.user_slice(0)]) >= 0)
    toy_story = data.item_ids.index("1") + 1
    assert data.item_titles[toy_story - 1] == "Toy Story (1995)"
    assert {data.category_names[c] for c in data.item_categories[toy_story] if c} == {
        "Animation", "Children's", "Comedy"
    }  # fmt: skip


def test_ids_are_stripped_alike_in_csv_and_parquet(tmp_path):
    """pandas 3 reads text as StringDtype, not object: ids with spaces (", "-separated exports) are stripped."""
    from twotower.data.parquet import load_parquet_log

    text = "user_id, item_id, timestamp, d\n" + "".join(
        f" u{u} , i{i}, {10 * u + i},  \n" for u in range(2) for i in range(3)
    )
    path = write(tmp_path / "events.csv", text)
    pd.read_csv(path, dtype=str).rename(columns=str.strip).to_parquet(tmp_path / "events.parquet")
    items = write(tmp_path / "items.csv", "item_id,category\n i0 ,a\ni1,b\ni2,a\n")
    cols = {"time_col": "timestamp", "dwell_col": "d"}
    from_csv = encode_log(load_csv_log(path, items_path=items, **cols))
    from_parquet = encode_log(load_parquet_log(tmp_path / "events.parquet", items_path=items, **cols))
    assert from_csv.user_ids == from_parquet.user_ids == ["u0", "u1"]
    assert from_csv.item_ids == from_parquet.item_ids == ["i0", "i1", "i2"]
    assert from_csv.report.unknown_item_features == from_parquet.report.unknown_item_features == 0
    assert (from_csv.dwell == -1).all()  # a blank dwell is unknown, not an error


def test_duplicates_are_identical_events_only(tmp_path):
    rows = "user_id,item_id,date,event,secs\n" + "a,1,2024-01-01,view,5\na,1,2024-01-01,purchase,5\n"
    rows += "a,1,2024-01-01,view,9\na,1,2024-01-01,view,5\na,2,2024-01-02,view,1\na,3,2024-01-03,view,1\n"
    raw = load_csv_log(
        write(tmp_path / "log.csv", rows), time_col="date", event_col="event", dwell_col="secs"
    )
    data = encode_log(raw)
    assert data.report.duplicates_dropped == 1  # only the repeated (view, 5 s) row
    assert data.event_names == ["<other>", "purchase", "view"]
    assert [data.event_names[e] for e in data.events] == ["view", "purchase", "view", "view", "view"]


def test_without_time_identical_rows_are_dropped(tmp_path):
    rows = "user_id,item_id,event\na,1,view\na,2,view\na,3,view\na,3,view\na,3,buy\nb,1,view\nb,2,view\nb,2,view\n"
    raw = load_csv_log(write(tmp_path / "log.csv", rows), time_col=None, event_col="event")
    data = encode_log(raw, min_events=2)
    assert data.report.duplicates_dropped == 2
    a = data.user_slice(data.user_ids.index("a"))
    assert [(data.item_ids[i - 1], data.event_names[e]) for i, e in zip(data.items[a], data.events[a], strict=True)] == [
        ("1", "view"), ("2", "view"), ("3", "view"), ("3", "buy")
    ]  # fmt: skip


def test_hour_of_week_without_a_time_column_is_refused(tmp_path):
    from twotower.data.parquet import load_parquet_log

    path = write(tmp_path / "log.csv", "user_id,item_id\na,1\na,2\na,3\n")
    with pytest.raises(
        DataError, match=r"data\.hour_of_week=true needs a time column.*data\.time_col is null"
    ):
        load_csv_log(path, time_col=None, hour_of_week=True)
    pd.read_csv(path, dtype=str).to_parquet(tmp_path / "log.parquet")
    with pytest.raises(DataError, match=r"data\.hour_of_week=true needs a time column"):
        load_parquet_log(tmp_path / "log.parquet", time_col=None, hour_of_week=True, stream=False)


def test_a_log_sorted_by_item_without_time_is_warned_about(tmp_path, caplog):
    """Without time, file order is the event order: a log sorted by (user, item id), as Last.fm's
    user_artists.dat, would make every user's largest id the test target."""
    rows = [(u, i) for u in range(20) for i in sorted(np.random.default_rng(u).choice(500, 6, replace=False))]
    text = "userID\tartistID\n" + "".join(f"{u}\t{i}\n" for u, i in rows)
    sorted_log = load_csv_log(write(tmp_path / "sorted.tsv", text), sep="\t", user_col="userID",
                              item_col="artistID", time_col=None)  # fmt: skip
    with caplog.at_level("WARNING", logger="twotower.data.encode"):
        encode_log(sorted_log)
    assert "hold out each user's largest item id" in caplog.text and "data.time_col" in caplog.text
    caplog.clear()
    shuffled = np.random.default_rng(0).permutation(len(rows))
    text = "userID\tartistID\n" + "".join(f"{rows[k][0]}\t{rows[k][1]}\n" for k in shuffled)
    shuffled_log = load_csv_log(write(tmp_path / "shuffled.tsv", text), sep="\t", user_col="userID",
                                item_col="artistID", time_col=None)  # fmt: skip
    with caplog.at_level("WARNING", logger="twotower.data.encode"):
        encode_log(shuffled_log)
    assert "sorted by item" not in caplog.text
