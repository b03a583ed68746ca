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
