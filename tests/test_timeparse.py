"""Time columns: one format for the whole column, native timestamps in seconds, units checked; every refusal
names the file, the column, the row and the option that fixes it."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from twotower.data.loaders import load_csv_log, load_events
from twotower.data.parquet import load_parquet_log
from twotower.data.schema import DataError

DAY = 86_400.0
JAN1 = 1_704_067_200.0  # 2024-01-01 00:00 UTC, a Monday


def times(tmp_path, values: list[str], **kwargs) -> list[float]:
    path = tmp_path / "log.csv"
    path.write_text("user_id,item_id,timestamp\n" + "".join(f"u,i{k},{v}\n" for k, v in enumerate(values)))
    return load_events(path, **kwargs)["ts"].tolist()


def test_day_first_dates_are_read_with_one_order_for_the_column(tmp_path):
    # 5 Jan, 20 Jan, 3 Feb: month-first cannot read 20/01, so the whole column is day-first
    ts = times(tmp_path, ["05/01/2024 10:00", "20/01/2024 10:00", "03/02/2024 10:00"])
    assert ts == [JAN1 + 4 * DAY + 36_000, JAN1 + 19 * DAY + 36_000, JAN1 + 33 * DAY + 36_000]
    assert times(tmp_path, ["01/05/2024", "01/20/2024"]) == [JAN1 + 4 * DAY, JAN1 + 19 * DAY]  # month-first


def test_ambiguous_or_inconsistent_dates_are_refused_naming_the_row(tmp_path):
    with pytest.raises(DataError, match=r"ambiguous timestamp '05/01/2024' in column 'timestamp' at line 2.*"
                       r"data\.time_format='%m/%d/%Y' or '%d/%m/%Y'"):  # fmt: skip
        times(tmp_path, ["05/01/2024", "06/01/2024"])
    assert times(tmp_path, ["05/01/2024", "06/01/2024"], time_format="%d/%m/%Y") == [
        JAN1 + 4 * DAY,
        JAN1 + 5 * DAY,
    ]
    with pytest.raises(DataError, match=r"'05/01/2024' in column 'timestamp' at line 2.*data\.time_format"):
        times(tmp_path, ["05/01/2024", "2024-01-20"])  # two formats in one column
    with pytest.raises(DataError, match=r"'20/01/2024' .* at line 3 \(it does not match data\.time_format"):
        times(tmp_path, ["05/01/2024", "20/01/2024"], time_format="%m/%d/%Y")
    assert times(tmp_path, ["05/01/2024", "20/01/2024"], time_format="mixed")[0] == JAN1 + 121 * DAY  # 1 May


def test_iso_strings_with_zones_offsets_and_naive_keep_working(tmp_path):
    ts = times(tmp_path, ["2024-01-01T00:00:00Z", "2024-01-01 00:01:00", "2024-01-01T02:00:30+01:00",
                          "2024-01-01T00:00:00.5Z", "2024-03-31T03:30:00+02:00"])  # fmt: skip
    assert ts == [JAN1, JAN1 + 60, JAN1 + 3630, JAN1 + 0.5, JAN1 + 90 * DAY + 5400]


def test_native_parquet_timestamps_are_seconds_in_both_loaders(tmp_path):
    when = pd.to_datetime(["2024-01-01 00:00", "2024-01-01 00:01", "2024-01-02 00:00"], utc=True)
    for zone in ("UTC", None):
        frame = pd.DataFrame({"user_id": ["a"] * 3, "item_id": ["x", "y", "z"],
                              "timestamp": when if zone else when.tz_localize(None)})  # fmt: skip
        frame.to_parquet(tmp_path / "ts.parquet")
        as_csv = load_csv_log(tmp_path / "ts.parquet", hour_of_week=True).events
        as_parquet = load_parquet_log(tmp_path / "ts.parquet", stream=False, hour_of_week=True).events
        assert as_csv["ts"].tolist() == as_parquet["ts"].tolist() == [JAN1, JAN1 + 60, JAN1 + DAY]
        assert as_csv["context:hour_of_week"].tolist() == ["0", "0", "24"]


def test_time_format_applies_to_numeric_looking_dates(tmp_path):
    assert times(tmp_path, ["20240101", "20240102"], time_format="%Y%m%d") == [JAN1, JAN1 + DAY]
    frame = pd.DataFrame({"user_id": ["a", "a"], "item_id": ["x", "y"], "timestamp": [20240101, 20240102]})
    frame.to_parquet(tmp_path / "days.parquet")  # an int64 column
    assert load_events(tmp_path / "days.parquet", time_format="%Y%m%d")["ts"].tolist() == [JAN1, JAN1 + DAY]


def test_millisecond_epochs_are_refused_unless_the_unit_says_so(tmp_path):
    ms = [str(int(JAN1 * 1000)), str(int(JAN1 * 1000) + 60_000)]
    with pytest.raises(DataError, match=r"'1704067200000' in column 'timestamp' at line 2 is not a unix time "
                       r"between 1970 and 2100.*set data\.time_unit=ms"):  # fmt: skip
        times(tmp_path, ms)
    assert times(tmp_path, ms, time_unit="ms") == [JAN1, JAN1 + 60]
    assert times(tmp_path, [str(int(JAN1 * 1e6))], time_unit="us") == [JAN1]
    with pytest.raises(DataError, match=r"'1e300' in column 'timestamp' at line 2 is not a unix time"):
        times(tmp_path, ["1e300", "1e301"])
    with pytest.raises(DataError, match=r"'-5' in column 'timestamp' at line 3"):
        times(tmp_path, [str(int(JAN1)), "-5"])
    with pytest.raises(DataError, match=r"data\.time_unit='h': expected one of s, ms, us, ns"):
        times(tmp_path, ["1"], time_unit="h")


def test_streamed_path_uses_the_same_time_rules(tmp_path):
    frame = pd.DataFrame({"user_id": ["a"] * 4, "item_id": list("wxyz"),
                          "timestamp": np.array([JAN1, JAN1 + 1, JAN1 + 2, JAN1 + 3]) * 1000})  # fmt: skip
    frame.to_parquet(tmp_path / "ms.parquet")
    with pytest.raises(DataError, match=r"ms\.parquet: .* at row 1 .*data\.time_unit=ms"):
        load_parquet_log(tmp_path / "ms.parquet", stream=True, cache_dir=tmp_path / "cache")
    log = load_parquet_log(tmp_path / "ms.parquet", stream=True, cache_dir=tmp_path / "cache", time_unit="ms",
                           min_partitions=1, eval_max_users=None)  # fmt: skip
    assert log.ts.tolist() == [JAN1, JAN1 + 1, JAN1 + 2, JAN1 + 3]


def test_parquet_infers_one_format_for_the_dataset_as_csv_does(tmp_path, monkeypatch):
    """A file whose days are all <= 12 is read day-first when another file settles the order, on both Parquet
    paths, as data=csv reads the same rows; a dataset that never settles it is refused, naming a file row."""

    def dataset(name: str, days: list[list[int]]) -> tuple:
        root = tmp_path / name
        root.mkdir()
        frames = [
            pd.DataFrame(
                {
                    "user_id": [f"u{k}"] * len(d),
                    "item_id": [f"i{j}" for j in range(len(d))],
                    "timestamp": [f"{day:02d}/01/2024 10:00" for day in d],
                }
            )  # fmt: skip
            for k, d in enumerate(days)
        ]
        for k, frame in enumerate(frames):
            frame.to_parquet(root / f"part-{k}.parquet")
        pd.concat(frames).to_csv(tmp_path / f"{name}.csv", index=False)
        return root, tmp_path / f"{name}.csv"

    root, csv = dataset("settled", [[5, 6, 7], [8, 9, 25]])
    expected = [JAN1 + (d - 1) * DAY + 36_000 for d in (5, 6, 7, 8, 9, 25)]
    assert load_events(csv)["ts"].tolist() == expected
    assert load_parquet_log(root, stream=False, min_events=1).events["ts"].tolist() == expected
    streamed = load_parquet_log(root, stream=True, cache_dir=tmp_path / "c1", min_events=1, min_partitions=1,
                                eval_max_users=None)  # fmt: skip
    assert sorted(streamed.ts.tolist()) == expected
    # a sample that misses the one settling row (25/01) is settled by reading every row
    import twotower.data.parquet.timefmt as timefmt

    monkeypatch.setattr(timefmt, "PER_BATCH", 1)
    assert load_parquet_log(root, stream=False, min_events=1).events["ts"].tolist() == expected
    root, csv = dataset("open", [[5, 6, 7], [8, 9, 10]])
    for load in (lambda: load_events(csv), lambda: load_parquet_log(root, stream=False, min_events=1)):
        with pytest.raises(DataError, match=r"ambiguous timestamp '05/01/2024 10:00' .* (line 2|row 1)"):
            load()
    assert (
        load_parquet_log(root, stream=False, min_events=1, time_format="%d/%m/%Y %H:%M").events["ts"].iloc[0]
        == expected[0]
    )


def test_a_row_off_the_inferred_format_is_named_in_its_file(tmp_path, monkeypatch):
    import twotower.data.parquet.timefmt as timefmt

    for k, stamps in enumerate(
        [["25/01/2024 10:00", "26/01/2024 10:00"], ["27/01/2024 10:00", "2024/01/28"]]
    ):
        frame = pd.DataFrame({"user_id": ["u", "u"], "item_id": ["a", "b"], "timestamp": stamps})
        frame.to_parquet(tmp_path / f"part-{k}.parquet")
    where = r"part-1\.parquet: unparsable timestamp '2024/01/28' in column 'timestamp' at row 2"
    with pytest.raises(DataError, match=where + r": the column is read with one format for every row"):
        load_parquet_log(tmp_path, stream=False, min_events=1)  # the sample holds the row
    monkeypatch.setattr(timefmt, "PER_BATCH", 1)
    with pytest.raises(DataError, match=where + r" \(it does not match .*inferred from rows of every file"):
        load_parquet_log(tmp_path, stream=False, min_events=1)  # the batch's parse finds it


def test_raw_time_unit_reads_any_number_as_seconds(tmp_path):
    with pytest.raises(DataError, match=r"'-100' .* data\.time_unit=raw reads any number as seconds"):
        times(tmp_path, ["-100", "5", "10"])
    assert times(tmp_path, ["-100", "5", "1e11"], time_unit="raw") == [-100.0, 5.0, 1e11]
    frame = pd.DataFrame({"user_id": ["a"] * 3, "item_id": list("xyz"), "timestamp": [-3.5, 0.0, 2.0]})
    frame.to_parquet(tmp_path / "rel.parquet")
    log = load_parquet_log(tmp_path / "rel.parquet", stream=True, cache_dir=tmp_path / "cache", time_unit="raw",
                           min_partitions=1, eval_max_users=None)  # fmt: skip
    assert log.ts.tolist() == [-3.5, 0.0, 2.0]
    with pytest.raises(DataError, match=r"non-finite timestamp"):
        times(tmp_path, ["1", "inf"], time_unit="raw")
