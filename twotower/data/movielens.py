"""MovieLens readers: the 100K layout (u.data / u.item) and the ratings.csv / movies.csv layout."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from twotower.data.loaders import load_events, load_items, read_table
from twotower.data.schema import CATEGORIES, EVENT, ITEM, TITLE, USER, DataError, LoadReport, RawLog
from twotower.data.signals import add_hour_of_week

ML100K_GENRES = [
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
]  # fmt: skip
NO_GENRE = "(no genres listed)"


def _ratings_as_events(events: pd.DataFrame, ratings: pd.Series) -> pd.DataFrame:
    """Explicit ratings become event types ('rating_4', 'rating_4.5', ...) the user tower can read."""
    numbers = pd.to_numeric(ratings, errors="coerce")
    events[EVENT] = ["rating_" + (f"{r:g}" if pd.notna(r) else "unknown") for r in numbers]
    return events


AGE_EDGES = (18, 25, 35, 45, 50, 56)  # MovieLens 1M's age groups: <18, 18-24, 25-34, 35-44, 45-49, 50-55, 56+
AGE_NAMES = ("<18", "18-24", "25-34", "35-44", "45-49", "50-55", "56+")


def age_bucket(age: object) -> str | None:
    """An age in years -> its MovieLens age group; None (unknown) when it is not a number."""
    years = pd.to_numeric(pd.Series([age]), errors="coerce").iloc[0]
    if pd.isna(years):
        return None
    return AGE_NAMES[sum(years >= edge for edge in AGE_EDGES)]


def zip_region(code: object) -> str | None:
    """A US zip code -> its first digit (the national area, 0-9); other codes (Canadian, letters) -> "other"."""
    text = str(code).strip() if code is not None and not pd.isna(code) else ""
    if not text:
        return None
    return text[0] if text[0].isdigit() else "other"


def load_ml100k_users(path: str | Path) -> pd.DataFrame:
    """``u.user`` (user|age|gender|occupation|zip) -> features age_group, gender, occupation, region."""
    frame = read_table(path, sep="|", header=False, names=["user_id", "age", "gender", "occupation", "zip"],
                       encoding="latin-1")  # fmt: skip
    return pd.DataFrame(
        {
            USER: frame["user_id"].astype(str).str.strip(),
            "age_group": [age_bucket(a) for a in frame["age"]],
            "gender": frame["gender"].astype(str).str.strip(),
            "occupation": frame["occupation"].astype(str).str.strip(),
            "region": [zip_region(z) for z in frame["zip"]],
        }
    )


def load_ml100k(
    path: str | Path,
    rating_as_event: bool = True,
    name: str = "ml-100k",
    users_path: str | Path | None = None,
    hour_of_week: bool = False,
) -> RawLog:
    """MovieLens 100K directory: ``u.data`` (tab: user, item, rating, ts) and ``u.item`` (latin-1, 19 genre flags).

    ``users_path`` (e.g. ``DIR/u.user``): static user features; ``hour_of_week``: a context column from the time."""
    root = Path(path)
    data_file = root / "u.data"
    columns = ["user_id", "item_id", "rating", "timestamp"]
    events = load_events(data_file, sep="\t", header=False, names=columns)
    if rating_as_event:
        raw = read_table(data_file, sep="\t", header=False, names=columns)
        events = _ratings_as_events(events, raw["rating"])
    item_file = root / "u.item"
    items = None
    if item_file.exists():
        frame = read_table(
            item_file,
            sep="|",
            header=False,
            names=["item_id", "title", "release", "video_release", "url", *ML100K_GENRES],
            encoding="latin-1",
        )
        flags = frame[ML100K_GENRES].apply(pd.to_numeric, errors="coerce").fillna(0).astype(int)
        items = pd.DataFrame(
            {
                ITEM: frame["item_id"].astype(str).str.strip(),
                CATEGORIES: [
                    [g for g, f in zip(ML100K_GENRES, row, strict=True) if f] for row in flags.to_numpy()
                ],
                TITLE: frame["title"].astype(str),
            }
        )
    if hour_of_week:
        events = add_hour_of_week(events)
    users = load_ml100k_users(users_path) if users_path else None
    return RawLog(
        events=events, items=items, name=name, report=LoadReport(rows_read=len(events)), users=users
    )


def load_movielens_csv(path: str | Path, rating_as_event: bool = True, name: str | None = None) -> RawLog:
    """MovieLens ``ratings.csv`` (userId, movieId, rating, timestamp) + ``movies.csv`` (movieId, title, genres)."""
    root = Path(path)
    ratings_file = root / "ratings.csv"
    if not ratings_file.exists():
        raise DataError(f"{ratings_file}: file not found (expected the MovieLens ratings.csv layout)")
    events = load_events(ratings_file, user_col="userId", item_col="movieId", time_col="timestamp")
    if rating_as_event:
        raw = read_table(ratings_file)
        events = _ratings_as_events(events, raw["rating"])
    items = None
    movies_file = root / "movies.csv"
    if movies_file.exists():
        items = load_items(
            movies_file, item_col="movieId", category_col="genres", category_sep="|", title_col="title"
        )
        items[CATEGORIES] = [[g for g in cats if g != NO_GENRE] for cats in items[CATEGORIES]]
    return RawLog(
        events=events, items=items, name=name or root.name, report=LoadReport(rows_read=len(events))
    )
