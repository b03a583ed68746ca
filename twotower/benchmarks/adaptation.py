"""The feedback-loop check: a brand-new user clicks items of one category, then of another; how many of
their next top-10 are of that category? (`scripts/check_adaptation.py`, and the slow ml-100k test.)"""

from __future__ import annotations

import itertools
import tempfile
import time
import uuid

from serving.live import LiveService
from serving.recommender import Recommender
from serving.store import SQLiteHistoryStore


def items_by_category(rec: Recommender, only: bool = False) -> dict[str, list[str]]:
    """Category -> item ids, most trained-on first (``only``: items of that category and no other)."""
    frame = rec.bundle.items.sort_values("train_count", ascending=False, kind="stable")
    out: dict[str, list[str]] = {}
    for item, categories in zip(frame["item_id"].astype(str), frame["categories"], strict=True):
        if only and len(categories) != 1:
            continue
        for category in categories:
            out.setdefault(str(category), []).append(item)
    return out


def adaptation_check(
    rec: Recommender,
    categories: list[str],
    clicks: int = 15,
    k: int = 10,
    event: str | None = None,
    only: bool = False,
) -> dict:
    """For each category in turn: ``clicks`` click events on its most popular items (``only``: among items of
    that category alone), then count how many of the top-k carry the category."""
    members = items_by_category(rec)
    clicked_from = items_by_category(rec, only=True) if only else members
    with tempfile.TemporaryDirectory(prefix="twotower-adapt-") as state:
        live = LiveService(rec, SQLiteHistoryStore(state, max_events=rec.max_len + 1))
        user, now = f"adapt-{uuid.uuid4().hex[:8]}", time.time() - 3600
        steps = [{"category": None, **_count(live.recommend(user_id=user, k=k).items, members, categories)}]
        for step, category in enumerate(categories):
            if category not in members:
                raise ValueError(f"unknown category {category!r}; known: {sorted(members)}")
            chosen = (
                clicked_from.get(category, [])
                + [i for i in members[category] if i not in clicked_from.get(category, [])]
            )[:clicks]
            live.ingest([{"user_id": user, "item_id": item, "event": event, "dwell_s": None,
                          "ts": now + 30 * (step * clicks + j)} for j, item in enumerate(chosen)])  # fmt: skip
            result = live.recommend(user_id=user, k=k)
            steps.append({"category": category, "source": result.source,
                          **_count(result.items, members, categories)})  # fmt: skip
        live.store.close()
    return {"model_version": rec.model_version, "clicks_per_step": clicks, "k": k, "event": event,
            "clicked_items": "single-category items first" if only else "most popular of the category",
            "steps": steps}  # fmt: skip


def _count(items: list[dict], members: dict[str, list[str]], categories: list[str]) -> dict:
    ids = [x["item_id"] for x in items]
    return {
        "top": ids,
        "in_category": {c: sum(i in set(members.get(c, [])) for i in ids) for c in categories},
    }


def pair_sweep(
    rec: Recommender, n_categories: int = 10, clicks: int = 15, k: int = 10, need: int = 5
) -> dict:
    """:func:`adaptation_check` over every ordered pair of the ``n_categories`` largest categories: in how many
    pairs do both steps put at least ``need`` of the top-k in the clicked category?"""
    members = items_by_category(rec)
    largest = sorted(members, key=lambda c: -len(members[c]))[:n_categories]
    passed, first, second = [], 0, 0
    for a, b in itertools.permutations(largest, 2):
        steps = adaptation_check(rec, [a, b], clicks, k)["steps"]
        hits = (steps[1]["in_category"][a], steps[2]["in_category"][b])
        first, second = first + (hits[0] >= need), second + (hits[1] >= need)
        passed.append(min(hits) >= need)
    return {"categories": largest, "pairs": len(passed), "both_steps_pass": int(sum(passed)),
            "first_step_pass": first, "second_step_pass": second, "need": need, "k": k}  # fmt: skip
