"""The evaluation of what a bundle serves: the list re-rank on top of the served scores, and its defaults.

Serving chooses each list with :func:`serving.core.diversify.rerank_list` from the best ``depth`` items by
served score; :class:`ListReranker` runs the same function on the evaluation's best ``depth`` candidates (from
the (B, N) scores in numpy, from the torch ranker's top-k on the device), so the ``served`` metrics are those
of the answers a k=10 request gets. Positions past the list (Recall@20 and on) follow the served scores, the
chosen items taken out.

:func:`pick_list_settings` chooses the served default on validation: the smallest ``diversity`` of a grid whose
lists are at least as diverse as the model's own at no more than a set loss of its Recall@10 (no narrowing
by default, without buying diversity with accuracy the user would notice).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from serving.core.chooser import ListChooser
from serving.core.diversify import request_seed
from serving.core.intent import CategoryIntent, IntentSettings, membership
from serving.core.listsettings import ListSettings
from twotower import metrics
from twotower.data.schema import EncodedLog
from twotower.evaluate import IntentScorer, ModelScorer, ScaledScorer, evaluate_scorer

log = logging.getLogger(__name__)

LIST_K = 10  # the list a request gets; deeper evaluation cut-offs rank the rest by score
RECALL_KEEP = 0.95  # the served default keeps at least this share of the model's validation Recall@10


class ListReranker:
    """The served list re-rank over evaluation batches: (B, N) served scores -> (B, LIST_K) chosen columns,
    through the :class:`~serving.core.chooser.ListChooser` the service runs."""

    def __init__(
        self,
        settings: ListSettings,
        item_vectors: np.ndarray,
        item_categories: np.ndarray,
        n_categories: int,
        train_counts: np.ndarray,
    ) -> None:
        """``item_vectors`` (N, D) as the bundle holds them; ``item_categories`` (N, C_max) category indices
        (0 = none); ``train_counts`` (N,) training interactions (the popular head)."""
        self.settings = settings
        members = membership(item_categories.tolist(), n_categories)  # (N, C)
        self.chooser = ListChooser(item_vectors, members if members.any() else None, train_counts)

    @property
    def depth(self) -> int:
        """Candidates read per query: the best ``settings.depth`` by served score (at least the list)."""
        return max(LIST_K, self.settings.depth)

    def __call__(self, scores: np.ndarray, batch: dict[str, torch.Tensor]) -> np.ndarray:
        """(B, N) served scores, history already at -inf -> (B, LIST_K) chosen columns (-1 where short)."""
        top = metrics.top_k(scores, min(self.depth, scores.shape[1]))  # (B, M) columns, best first
        return self.choose(top, np.take_along_axis(scores, top, axis=1), batch)

    def choose(self, top: np.ndarray, top_scores: np.ndarray, batch: dict[str, torch.Tensor]) -> np.ndarray:
        """(B, M) best columns by served score (best first, ties to the lower column) and their scores ->
        (B, LIST_K) chosen columns (-1 where short): what the torch ranker feeds, never a (B, N) matrix."""
        s = self.settings
        histories = batch["items"].numpy()  # (B, L) 1-based, 0 = pad: the window serving reads too
        out = np.full((len(top), LIST_K), -1, dtype=np.int64)
        for b in range(len(top)):
            finite = np.isfinite(top_scores[b])
            columns = top[b][finite]  # (M',)
            history = histories[b][histories[b] > 0] - 1
            seed = request_seed(None, history.tobytes()) if s.explore else 0  # no user id in an evaluation
            chosen, _ = self.chooser.choose_rows(top_scores[b][finite], columns, LIST_K, s, history, seed)
            out[b, : len(chosen)] = columns[chosen]
        return out


def pick_list_settings(
    base: ListSettings,
    grid: Mapping[str, Sequence[float]],
    evaluate: Callable[[ListSettings], dict[str, float]],
    model_val: dict[str, float],
) -> tuple[ListSettings, dict[str, Any]]:
    """The served default of the knobs in ``grid`` (every combination of their values is tried on validation).

    Of the settings whose lists are at least as diverse as the model's own (``diversity@10``) at Recall@10 >=
    RECALL_KEEP x the model's, the least miscalibrated (``miscalibration@10``: the list mirrors the user's own
    range of interests rather than the session's pull, which is what keeps a feedback loop from narrowing;
    ties and catalogs without categories: the most accurate, Recall@10 then NDCG@10, then the gentler knobs).
    When none is that diverse, the most diverse that keeps the recall; when none keeps it, the most accurate.
    Returns it and the record of what was tried."""
    target_div, floor = model_val.get("diversity@10"), RECALL_KEEP * model_val["recall@10"]
    names = list(grid)
    tried: list[dict[str, Any]] = []
    for values in itertools.product(*(sorted(float(v) for v in grid[n]) for n in names)):
        knobs = dict(zip(names, values, strict=True))
        val = evaluate(replace(base, **knobs))
        kept = ("recall@10", "ndcg@10", "diversity@10", "miscalibration@10")
        tried.append({**knobs, **{k: val[k] for k in kept if k in val}})
    gentle = {id(t): sum(t[n] for n in names) for t in tried}

    def accuracy(t: dict[str, Any]) -> tuple:
        return (t["recall@10"], t.get("ndcg@10", 0.0), -gentle[id(t)])

    keeps = [t for t in tried if t["recall@10"] >= floor]
    wide = [t for t in keeps if target_div is None or t.get("diversity@10", 0.0) >= target_div]
    if wide and all("miscalibration@10" in t for t in wide):
        chosen = min(wide, key=lambda t: (round(t["miscalibration@10"], 6), tuple(-v for v in accuracy(t))))
        how = "as diverse as the model, recall kept: the least miscalibrated"
    elif wide:
        chosen, how = max(wide, key=accuracy), "as diverse as the model, recall kept: the most accurate"
    elif keeps:
        chosen, how = (
            max(keeps, key=lambda t: (t.get("diversity@10", 0.0), -gentle[id(t)])),
            "most diverse, recall kept",
        )
    else:
        chosen, how = max(tried, key=accuracy), "no setting keeps the recall: the most accurate"
    picked = {n: chosen[n] for n in names}
    record = {"grid": {n: [float(v) for v in grid[n]] for n in names}, "val": tried, "chosen": picked, "outcome": how,
              "rule": f"of the settings with val diversity@10 >= the model's and recall@10 >= {RECALL_KEEP} x the "
                      "model's, the least miscalibrated; else the most diverse keeping the recall; else the most "
                      "accurate",
              "model_val": {k: model_val[k] for k in ("recall@10", "ndcg@10", "diversity@10") if k in model_val}}  # fmt: skip
    log.info("served list settings %s picked on validation (%s)", picked, how)
    return replace(base, **picked), record


def build_intent(cfg: DictConfig, data: EncodedLog, train_counts: np.ndarray) -> CategoryIntent | None:
    """The session-intent re-rank configured in ``rerank`` over the data's categories (None when off)."""
    settings = (cfg.get("rerank") or {}).get("intent")
    if settings is None:
        return None
    members = membership(data.item_categories[1:], len(data.category_names))  # 0 = padding, skipped
    intent_settings = IntentSettings.from_dict(OmegaConf.to_container(settings, resolve=True))
    return CategoryIntent.build(members, train_counts, data.category_names, intent_settings)


class ServedEvaluator:
    """Evaluates what a bundle serves under any list settings: the model's scores in serving's units, the
    session-intent re-rank (when configured) and the list re-rank."""

    def __init__(self, cfg: DictConfig, data: EncodedLog, scorer: ModelScorer, scale: float, counts: np.ndarray,
                 common: dict[str, Any]) -> None:  # fmt: skip
        """``scale``: the model's temperature (logits -> cosine); ``counts`` (N,) training interactions per item;
        ``common``: :func:`twotower.evaluate.evaluate_scorer`'s shared arguments."""
        self.intent = build_intent(cfg, data, counts)
        self.scorer = (
            IntentScorer(scorer, self.intent, scale)
            if self.intent is not None
            else ScaledScorer(scorer, scale)
        )
        self.vectors = scorer.item_vectors.cpu().numpy()  # (N, D) as the bundle holds them
        self.categories, self.n_categories = data.item_categories[1:], len(data.category_names)
        self.counts, self.common = counts, common

    def __call__(self, settings: ListSettings, queries: Any, desc: str = "served") -> dict[str, Any]:
        reranker = None
        if settings.active:
            reranker = ListReranker(settings, self.vectors, self.categories, self.n_categories, self.counts)
        return evaluate_scorer(self.scorer, queries, desc=desc, reranker=reranker, **self.common)


def list_config(cfg: DictConfig) -> tuple[ListSettings, list[str]]:
    """The configured list re-rank (``rerank.list``) and its knobs set to ``auto`` (0 in the settings)."""
    section = (cfg.get("rerank") or {}).get("list") or {}
    list_cfg = dict(
        OmegaConf.to_container(section, resolve=True) if OmegaConf.is_config(section) else section
    )
    auto = [name for name, value in list_cfg.items() if value == "auto"]
    return ListSettings.from_dict({**list_cfg, **dict.fromkeys(auto, 0)}), auto


def served_results(
    evaluator: ServedEvaluator, cfg: DictConfig, val_q: Any, test_q: Any, model_val: dict[str, Any]
) -> dict[str, Any] | None:
    """What the bundle serves, on validation and test, with the list re-rank configured in ``rerank`` (its
    knobs set to ``auto`` picked on validation, :func:`pick_list_settings`); None when no re-rank is on."""
    settings, auto = list_config(cfg)
    if evaluator.intent is None and not settings.active and not auto:
        return None
    intent = evaluator.intent
    out: dict[str, Any] = {"rerank": {"intent": intent.settings.as_dict() if intent is not None else None}}
    if auto:
        grids = (cfg.get("rerank") or {}).get("pick_grid") or {}
        missing = [name for name in auto if name not in grids]
        if missing:
            raise ValueError(f"rerank.list: {missing} set to auto without values in rerank.pick_grid")
        grid = {name: list(grids[name]) for name in auto}
        settings, out["picked_on_validation"] = pick_list_settings(
            settings, grid, lambda s: evaluator(s, val_q, "served val (pick)"), model_val
        )
    out["rerank"]["list"] = settings.as_dict()
    out["val"] = evaluator(settings, val_q, "served val")
    out["test"] = evaluator(settings, test_q, "served test")
    return out
