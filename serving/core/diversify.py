"""The list re-rank: diversity (MMR), a per-category cap, calibration (Steck 2018) and exploration slots.

The model and the session-intent re-rank score items one by one; what a person sees is a list. This stage
picks the ``k`` items of that list from an over-fetched candidate set (the best ``depth`` by score), greedily,
one slot at a time. Item ``i`` joining the chosen set ``S`` is worth

    (1 - c) * s_i - c * KL(p || q~(S + i)) - d * R * max_{j in S} sim(i, j)

with ``s`` the served score (cosine, plus the intent boost) and ``R`` its range over the candidates
(``s_max - s_min``). ``d`` = ``diversity`` is maximal marginal relevance (Carbonell & Goldstein 1998) on the
item vectors as the served ranking sees them: ``sim(i, j) = (cos(v_i, v_j) + cos(m_i, m_j)) / 2``, the item
vectors' cosine and their category memberships' (plain ``cos(v_i, v_j)`` in a catalog without categories).
Scaling by ``R`` makes the knob mean the same on any score scale: at ``d = 1`` an item identical to one above
it loses the whole spread of the candidates' scores. ``c`` = ``calibrate``: ``p`` is the category mix of the
user's history, ``q`` the list's, ``q~ = (1 - a) q + a p`` with ``a`` = 0.01 (Steck, "Calibrated
recommendations", RecSys 2018); an item spreads weight 1 / |its categories| over its categories. Items whose
categories already hold ``max_per_category`` of the list are skipped. ``explore`` reserves
``ceil(explore * k)`` slots for items from outside the user's usual categories or from the long tail, drawn
from the candidates by a seeded generator with probability ``softmax(s / EXPLORE_TEMPERATURE)``, and placed
at evenly spaced positions of the list (marked, so a client can tell).

The greedy order decides which items make the list; they are shown best score first (what the user most
likely wants stays on top; the order of picking only says what the list lacked). Every knob at 0 (the cap at
0) switches itself off, and all off is the plain top-k by score: the exact twin
(:func:`rerank_list` is then not called at all). The same function serves online requests, batch scoring and
the training-time evaluation of what a bundle serves. No torch.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

import numpy as np

from serving.core.listsettings import ListSettings

CALIBRATION_ALPHA = 0.01  # Steck's smoothing of the list's mix toward the user's, so KL stays finite
EXPLORE_TEMPERATURE = 0.1  # in cosine units: exploration prefers the better-scored of its candidates
USUAL_SHARE = 0.1  # a category holding at least this share of the user's history is one of their usual
HEAD_SHARE = 0.8  # the popular head: the most-interacted items holding this share of training interactions


@dataclass
class Candidates:
    """One request's candidates, best score first: what the re-rank chooses from."""

    scores: np.ndarray  # (M,) float32 served scores
    vectors: np.ndarray  # (M, E) float32 similarity_vectors: what diversity compares
    members: np.ndarray | None  # (M, C) bool category membership; None: the catalog has no categories
    head: np.ndarray  # (M,) bool: in the popular head


@dataclass
class Chosen:
    """The re-rank's answer: positions into the candidates, in list order, and which are exploration."""

    order: np.ndarray  # (L,) int64 candidate positions, L <= k
    explored: np.ndarray  # (L,) bool


def category_weights(members: np.ndarray) -> np.ndarray:
    """(M, C) bool membership -> (M, C) float64 p(category | item): 1 / |categories| on each (0 without)."""
    counts = members.sum(1, keepdims=True)  # (M, 1)
    return members / np.maximum(counts, 1)


def history_mix(members: np.ndarray) -> np.ndarray:
    """(H, C) membership of a history's items -> (C,) its category mix p(c | u) (zeros for no categories)."""
    total = category_weights(members).sum(0)  # (C,)
    return total / total.sum() if total.sum() > 0 else total


def kl_divergence(p: np.ndarray, q: np.ndarray, alpha: float = CALIBRATION_ALPHA) -> np.ndarray:
    """KL(p || (1 - alpha) q + alpha p) over the last axis: p (C,), q (..., C) -> (...,); 0 where p is 0."""
    smooth = (1.0 - alpha) * q + alpha * p  # (..., C)
    safe = np.where(p > 0, p, 1.0)
    terms = np.where(p > 0, p * np.log(safe / np.where(p > 0, smooth, 1.0)), 0.0)
    return terms.sum(-1)


def head_mask(counts: np.ndarray, share: float = HEAD_SHARE) -> np.ndarray:
    """(N,) training counts -> (N,) bool: the most-interacted items that together hold ``share`` of them."""
    counts = np.asarray(counts, dtype=np.float64)
    order = np.argsort(-counts, kind="stable")
    cumulative = np.cumsum(counts[order])
    total = cumulative[-1] if len(cumulative) else 0.0
    head = np.zeros(len(counts), dtype=bool)
    if total > 0:
        size = int(np.searchsorted(cumulative, share * total)) + 1  # the item crossing the share is head
        head[order[:size]] = True
    return head


def request_seed(*parts: object) -> int:
    """A seed that is the same for the same request in every process (no Python ``hash``)."""
    return zlib.crc32(repr(parts).encode()) & 0x7FFFFFFF


def explore_slots(explore: float, k: int) -> int:
    """Slots reserved for exploration: ``ceil(explore * k)``, any share above 0 giving at least one."""
    return min(k, math.ceil(explore * k - 1e-9)) if explore > 0 else 0


def rerank_list(
    candidates: Candidates,
    k: int,
    settings: ListSettings,
    mix: np.ndarray | None = None,
    rng: np.random.Generator | None = None,
) -> Chosen:
    """Choose and order up to ``k`` of the candidates (see the module docstring).

    ``mix`` (C,): the user's history category mix (calibration's target, and what "usual categories" means
    for exploration); ``rng``: exploration's generator (seed it per request to reproduce an answer).
    """
    m = len(candidates.scores)
    k = min(k, m)
    members = candidates.members
    if mix is None or members is None or not mix.any():
        mix = None  # nothing to calibrate to, no usual categories
    allowed = np.ones(m, dtype=bool)
    if not settings.explore:
        chosen = _by_score(candidates, _greedy(candidates, k, settings, mix, allowed))
        return Chosen(chosen, np.zeros(len(chosen), dtype=bool))
    reserved = _explore(candidates, k, settings, mix, rng)
    allowed[reserved] = False
    chosen = _by_score(candidates, _greedy(candidates, k - len(reserved), settings, mix, allowed))
    return _interleave(chosen, reserved, k)


def _by_score(candidates: Candidates, chosen: np.ndarray) -> np.ndarray:
    """The chosen items best score first: the knobs decide what is in the list, the scores its order."""
    return chosen[np.argsort(-candidates.scores[chosen], kind="stable")]


def _greedy(
    candidates: Candidates, slots: int, settings: ListSettings, mix: np.ndarray | None, allowed: np.ndarray
) -> np.ndarray:
    """The greedy choice of ``slots`` items (MMR, calibration and cap in one objective), in order.

    Written for few numpy calls per step (it runs on the request path): chosen and capped candidates get an
    infinite penalty instead of a mask, and the objective's constant parts are computed once. Calibration
    needs only the categories the history has (``p > 0``), and only ``sum_c p_c log q~_c`` of the KL: its
    ``sum_c p_c log p_c`` is the same for every candidate."""
    members = candidates.members
    d = settings.diversity
    c = settings.calibrate if mix is not None and members is not None else 0.0
    cap = settings.max_per_category if members is not None else 0
    if not c and not cap:
        return _mmr(candidates, slots, d, allowed)
    relevance = (1.0 - c) * candidates.scores.astype(np.float64)  # (M,) -inf once chosen, capped or reserved
    relevance[~allowed] = -np.inf
    d = d * _spread(candidates.scores)  # the similarity's weight in score units
    penalty = np.zeros(len(relevance))  # (M,) d * max similarity to the chosen
    value = np.empty(len(relevance))
    if c:
        held = np.flatnonzero(mix > 0)  # (P,) the history's categories
        p = mix[held].astype(np.float32)  # (P,)
        weights = category_weights(members)[:, held].astype(np.float32)  # (M, P)
        mix_sum = np.zeros(len(held), np.float32)
        floor, mixed = CALIBRATION_ALPHA * p, np.empty(weights.shape, np.float32)
    per_category = np.zeros(members.shape[1], np.int64) if cap else None  # (C,)
    out: list[int] = []
    for step in range(slots):
        np.subtract(relevance, penalty, out=value)
        if c:  # value += c * sum_c p_c log q~_c for the list with each candidate added
            np.add(mix_sum, weights, out=mixed)
            mixed *= (1.0 - CALIBRATION_ALPHA) / (step + 1)
            mixed += floor
            np.log(mixed, out=mixed)
            value += c * (mixed @ p)
        best = int(value.argmax())  # ties: the better-scored (earlier) candidate
        if value[best] == -np.inf:
            break
        out.append(best)
        relevance[best] = -np.inf
        if d:
            scaled = d * (candidates.vectors @ candidates.vectors[best])  # (M,)
            if step:
                np.maximum(penalty, scaled, out=penalty)
            else:  # the first choice: a negative similarity is a (small) bonus, as in MMR
                penalty = scaled
        if c:
            mix_sum += weights[best]
        if cap:
            per_category += members[best]
            if (per_category[members[best]] >= cap).any():
                relevance[(members & (per_category >= cap)).any(1)] = -np.inf
    return np.asarray(out, dtype=np.int64)


def _mmr(candidates: Candidates, slots: int, d: float, allowed: np.ndarray) -> np.ndarray:
    """:func:`_greedy` with diversity alone (the common knob), in four numpy calls per step."""
    value = candidates.scores.astype(np.float32)  # (M,) relevance; -inf once unavailable
    d = d * _spread(candidates.scores)  # the similarity's weight in score units
    if not allowed.all():
        value[~allowed] = -np.inf
    scaled = d * candidates.vectors  # (M, E): a product with it is d * similarity
    # (M,) d * max similarity to the chosen (filled at the first choice: -inf never reaches ``current``)
    closest = np.full(len(value), -np.inf if d else 0.0, dtype=np.float32)
    current = value.copy()
    out: list[int] = []
    for step in range(slots):
        if step:
            np.subtract(value, closest, out=current)
        best = int(current.argmax())  # ties: the better-scored (earlier) candidate
        if current[best] == -np.inf:
            break
        out.append(best)
        value[best] = -np.inf
        if d:
            np.maximum(closest, scaled @ candidates.vectors[best], out=closest)
    return np.asarray(out, dtype=np.int64)


def _spread(scores: np.ndarray) -> float:
    """The candidates' score range (what a full similarity costs at ``diversity = 1``)."""
    return float(scores.max() - scores.min()) if len(scores) > 1 else 0.0


def similarity_vectors(vectors: np.ndarray, members: np.ndarray | None) -> np.ndarray:
    """(N, D) item vectors and (N, C) membership -> (N, D + C) float32 vectors whose inner product is the
    re-rank's ``sim``: the average of the vectors' cosine and the memberships' (just the cosine without)."""
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    if members is None:
        return np.ascontiguousarray(unit, dtype=np.float32)
    m = members.astype(np.float32)
    m /= np.maximum(np.linalg.norm(m, axis=1, keepdims=True), 1e-12)
    return np.ascontiguousarray(np.hstack([unit, m]) / np.sqrt(2.0), dtype=np.float32)


def _explore(
    candidates: Candidates,
    k: int,
    settings: ListSettings,
    mix: np.ndarray | None,
    rng: np.random.Generator | None,
) -> np.ndarray:
    """Positions of the exploration picks: drawn without replacement among the candidates outside the
    user's usual categories or the popular head, the better-scored more often."""
    slots = explore_slots(settings.explore, k)
    eligible = ~candidates.head
    if mix is not None and candidates.members is not None:
        usual = mix >= USUAL_SHARE  # (C,)
        eligible |= ~(candidates.members & usual).any(1)
    pool = np.flatnonzero(eligible)
    if not slots or not len(pool):
        return np.zeros(0, np.int64)
    rng = rng if rng is not None else np.random.default_rng(0)
    logits = candidates.scores[pool].astype(np.float64) / EXPLORE_TEMPERATURE
    p = np.exp(logits - logits.max())
    return rng.choice(pool, size=min(slots, len(pool)), replace=False, p=p / p.sum()).astype(np.int64)


def _interleave(chosen: np.ndarray, reserved: np.ndarray, k: int) -> Chosen:
    """The greedy items in order with the exploration picks at evenly spaced positions."""
    total = min(k, len(chosen) + len(reserved))
    n = len(reserved)
    spots = {(j + 1) * total // (n + 1) for j in range(n)} if n else set()
    order, explored = [], []
    greedy, extra = iter(chosen.tolist()), iter(reserved.tolist())
    for position in range(total):
        source = extra if position in spots else greedy
        item = next(source, None)
        if item is None:  # the other source fills what this one lacks
            item = next(greedy if source is extra else extra)
            source = greedy if source is extra else extra
        order.append(item)
        explored.append(source is extra)
    return Chosen(np.asarray(order, dtype=np.int64), np.asarray(explored, dtype=bool))
