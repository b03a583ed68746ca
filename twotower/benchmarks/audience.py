"""Audience quality: item-to-user recall of the model's audiences against a baseline that ranks users by activity.

The protocol (leave-last-out, as every figure of the project): each user's last event is their test target and
everything before it their history. For each item ``i`` with test targets, ``T_i`` is the set of users whose next
(test) item is ``i``; the model's audience ``A_i(N)`` is the top ``N`` users by user vector . item vector, the
users being encoded from their history before the target with the bundle's ONNX tower on the batch path
(:class:`serving.audience.UserIndex`, exactly what ``scripts/audience.py`` ranks), users who already had ``i`` in
that history left out (``exclude_seen``). Recall@N of item ``i`` = ``|T_i & A_i(N)| / |T_i|``; reported as the mean
over items (macro) and pooled over targets (micro). Baselines on the same users with the same exclusion:
``activity`` ranks users by how many events their history holds (ties: first user first), ``random`` is the
expected recall of a uniformly random audience. A target user who already had ``i`` in their history cannot be
in ``A_i`` under ``exclude_seen``; the result says how many such targets there are (none on a log without
repeats, such as MovieLens).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from serving.audience import UserIndex
from serving.core.history import History, histories_from_frame
from serving.recommender import Recommender

log = logging.getLogger(__name__)


def audience_quality(
    run_dir: str | Path, bundle: str | Path | None = None, ns: Sequence[int] = (10, 50, 100), threads: int = 1
) -> dict:
    """Recall@N of the model's audiences and the baselines' on the run's test split (see the module docstring)."""
    from twotower.train import load_data  # torch side: the run's own loader, validation and split

    run = Path(run_dir)
    cfg = OmegaConf.load(run / "config.yaml")
    data, split = load_data(cfg)
    if not split.protocol.startswith("leave-last-out"):
        raise ValueError(
            f"{run}: audience quality needs the leave-last-out split, the run used {split.protocol!r}"
        )
    rec = Recommender.load(bundle or run / "bundle", threads=threads)
    users, test_pos = split.targets("test")
    started = time.perf_counter()
    histories = _histories_before(data, users, test_pos, rec)
    user_ids = [data.user_ids[u] for u in users]
    empty = History.build(np.zeros(0, np.int64))
    index = UserIndex.build(rec, user_ids, [histories.get(u, empty) for u in user_ids])
    encode_s = time.perf_counter() - started
    at = np.asarray(
        [index.position.get(u, -1) for u in user_ids]
    )  # (T,) index position of each target's user
    target_items = np.asarray(data.item_ids, dtype=object)[data.items[test_pos] - 1]  # (T,)
    targets: dict[str, list[int]] = {}
    for item, position in zip(target_items, at, strict=True):
        if position >= 0:
            targets.setdefault(str(item), []).append(int(position))
    items = sorted(targets, key=lambda i: rec.catalog.row_of[i])
    n = max(ns)
    started = time.perf_counter()
    model = {a.item_id: [index.position[u] for u in a.user_ids] for a in index.audiences(items, n)}
    rank_s = time.perf_counter() - started
    counts = np.zeros(len(index), np.int64)  # (U,) events before the target, per index position
    counts[at[at >= 0]] = (test_pos - data.user_offsets[users])[at >= 0]
    by_activity = np.argsort(-counts, kind="stable")  # (U,)
    seen = {i: index.item_users.get(rec.catalog.row_of[i], np.zeros(0, np.int64)) for i in items}
    activity = {i: by_activity[~np.isin(by_activity, seen[i])][:n].tolist() for i in items}
    already = sum(int(np.isin(targets[i], seen[i]).sum()) for i in items)
    results = {"model": _recalls(model, targets, ns), "activity": _recalls(activity, targets, ns),
               "random": _random_recalls(targets, seen, len(index), ns)}  # fmt: skip
    ratio = {f"recall@{k}": results["model"][f"recall@{k}"] / max(results["activity"][f"recall@{k}"], 1e-12)
             for k in ns}  # fmt: skip
    return {
        "protocol": "leave-last-out test targets; per item i with test targets, recall@N = share of the users whose "
        "test item is i found in the model's top-N users for i (user vector from the history before the target, "
        "users who already had i left out); macro = mean over items, micro = pooled over targets",
        "dataset": data.name,
        "model_version": rec.model_version,
        "users": len(index),
        "items_with_targets": len(items),
        "targets": int(sum(len(t) for t in targets.values())),
        "targets_already_seen": already,
        "results": results,
        "model_over_activity": ratio,
        "target_recall@100_ratio": 2.0,
        "target_met": bool(ratio.get("recall@100", 0.0) >= 2.0) if 100 in ns else None,
        "seconds": {"encode_and_index": round(encode_s, 3), "rank_all_items": round(rank_s, 3)},
    }


def _histories_before(data, users: np.ndarray, test_pos: np.ndarray, rec: Recommender) -> dict[str, History]:
    """Each user's events before their test target as a stored-histories table, read as serving reads one."""
    from twotower.artifacts import history_frame

    before = np.zeros(data.n_interactions, bool)
    for u, pos in zip(users, test_pos, strict=True):
        before[data.user_offsets[u] : pos] = True
    frame = history_frame(data, before)  # searches and context included: read as the bundle's histories are
    return histories_from_frame(frame, rec.catalog.row_of, rec.event_of, rec.signals.stored_arrays(frame))


def _recalls(audiences: dict[str, list[int]], targets: dict[str, list[int]], ns: Sequence[int]) -> dict:
    out = {}
    for k in ns:
        hits = {i: len(set(audiences[i][:k]) & set(t)) for i, t in targets.items()}
        out[f"recall@{k}"] = float(np.mean([hits[i] / len(t) for i, t in targets.items()]))
        out[f"micro_recall@{k}"] = sum(hits.values()) / sum(len(t) for t in targets.values())
    return out


def _random_recalls(
    targets: dict[str, list[int]], seen: dict[str, np.ndarray], n_users: int, ns: Sequence[int]
) -> dict:
    """Expected recall of a uniformly random audience of the users not excluded."""
    out = {}
    for k in ns:
        per_item = {i: (len(t) - np.isin(t, seen[i]).sum()) / len(t) * min(1.0, k / max(n_users - len(seen[i]), 1))
                    for i, t in targets.items()}  # fmt: skip
        out[f"recall@{k}"] = float(np.mean(list(per_item.values())))
        out[f"micro_recall@{k}"] = float(sum(per_item[i] * len(t) for i, t in targets.items()) /
                                         sum(len(t) for t in targets.values()))  # fmt: skip
    return out


def format_table(result: dict) -> str:
    ns = [key.split("@")[1] for key in result["results"]["model"] if key.startswith("recall@")]
    lines = [f"{result['dataset']}: {result['users']} users, {result['items_with_targets']} items with "
             f"{result['targets']} test targets ({result['targets_already_seen']} already seen)",
             f"{'':12}" + "".join(f"{'recall@' + n:>12}{'micro@' + n:>12}" for n in ns)]  # fmt: skip
    for name, row in result["results"].items():
        lines.append(
            f"{name:12}" + "".join(f"{row['recall@' + n]:12.4f}{row['micro_recall@' + n]:12.4f}" for n in ns)
        )
    ratio = result["model_over_activity"]
    lines.append("model / activity: " + ", ".join(f"{k} {v:.2f}x" for k, v in ratio.items()))
    return "\n".join(lines)
