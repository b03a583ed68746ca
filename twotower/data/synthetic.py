"""A seeded synthetic interaction log with the structure real logs have.

- items belong to categories (topics) and have Zipf popularity;
- users hold a sparse mixture of topics (latent taste) and browse in sessions;
- within a session they stay on a topic and often follow item-to-item chains (the sequential signal);
  the topic drifts between sessions;
- event types and dwell carry signal: purchases and long dwell follow taste, short "view" events are often
  noise (a popular item shown anywhere), so a model that reads them can discount the noise.

The sparse regime of shops (a few events per user, dates without times) is a matter of two knobs:
``length_dist="uniform"`` draws each user's length evenly from ``min_events..max_events``, and
``time_granularity_s=86400`` floors timestamps to the day, writing a user's same-day events in a random order
(a coarse clock keeps no order among them). Their defaults leave the output as it always was.

Searches (``search_prob > 0``, off by default): before an item event, with that probability, the user types a
query of one or two words of the item's topic, the item's own name word with probability ``search_name_prob``
and a noise word with probability one half, as a search row (no item) shortly before the item. The signal is
built in here by construction; only a real log can say what searches are worth. Its randomness comes from a
separate stream, so the item events are the same with or without searches.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from twotower.data.schema import CATEGORIES, DWELL, EVENT, ITEM, QUERY, TIME, TITLE, USER, LoadReport, RawLog

EVENT_TYPES = ("view", "click", "add_to_cart", "purchase")


@dataclass
class SyntheticConfig:
    n_users: int = 2000
    n_items: int = 1000
    n_categories: int = 20
    mean_events: float = 40.0
    min_events: int = 5
    max_events: int = 300
    zipf_exponent: float = 1.0
    taste_concentration: float = 0.15  # Dirichlet alpha: small = few favourite topics
    session_length: float = 6.0  # mean events per session
    chain_prob: float = 0.45  # next item is the successor of the previous one in its topic
    noise_prob: float = 0.2  # a popular off-taste item, shown as a short "view"
    secondary_category_prob: float = 0.2
    start_time: float = 1_700_000_000.0
    length_dist: str = "geometric"  # or "uniform": min_events..max_events, each as likely
    time_granularity_s: float | None = None  # floor timestamps to this step (86400: dates only)
    search_prob: float = 0.0  # P(a search precedes an item event); 0 = no search rows (the default)
    search_name_prob: float = 0.3  # P(the query names the item itself, beside its topic words)
    seed: int = 0
    name: str = "synthetic"


def generate(cfg: SyntheticConfig | None = None, **overrides) -> RawLog:
    """Generate events (user, item, ts, event, dwell_s) and an item table (item, categories, title)."""
    cfg = cfg or SyntheticConfig()
    for key, value in overrides.items():
        if not hasattr(cfg, key):
            raise TypeError(f"generate() got an unknown setting {key!r}")
        setattr(cfg, key, value)
    rng = np.random.default_rng(cfg.seed)
    n_items, n_topics = cfg.n_items, cfg.n_categories

    topic = rng.integers(0, n_topics, size=n_items)
    popularity = 1.0 / np.arange(1, n_items + 1) ** cfg.zipf_exponent
    popularity = popularity[rng.permutation(n_items)]
    global_cdf = np.cumsum(popularity) / popularity.sum()
    members = [np.flatnonzero(topic == t) for t in range(n_topics)]
    members = [m if len(m) else np.array([rng.integers(n_items)]) for m in members]
    topic_cdf = [np.cumsum(popularity[m]) / popularity[m].sum() for m in members]
    position = np.empty(n_items, dtype=np.int64)  # index of the item inside its topic's chain
    for m in members:
        position[m] = np.arange(len(m))

    lengths = _lengths(rng, cfg)
    rows_user, rows_item, rows_ts, rows_event, rows_dwell = [], [], [], [], []
    for u in range(cfg.n_users):
        n = int(lengths[u])
        taste = rng.dirichlet(np.full(n_topics, cfg.taste_concentration))
        # Everything random for this user is drawn up front; the loop only carries the sequence state.
        new_session = rng.random(n) < 1.0 / cfg.session_length
        new_session[0] = True
        gaps = np.where(new_session, rng.exponential(2 * 86400, n), rng.exponential(90.0, n))
        ts = cfg.start_time + rng.uniform(0, 60 * 86400) + np.cumsum(gaps)
        session_topic = rng.choice(n_topics, size=int(new_session.sum()), p=taste)[np.cumsum(new_session) - 1]
        noise = rng.random(n) < cfg.noise_prob
        pick, chain, kind_u, dwell_z = rng.random(n), rng.random(n), rng.random(n), rng.normal(size=n)
        items = np.empty(n, dtype=np.int64)
        previous = -1
        for j in range(n):
            if noise[j]:
                items[j] = min(int(np.searchsorted(global_cdf, pick[j])), n_items - 1)
                continue
            current = session_topic[j]
            m = members[current]
            if (
                previous >= 0
                and not new_session[j]
                and topic[previous] == current
                and chain[j] < cfg.chain_prob
            ):
                items[j] = m[(position[previous] + 1) % len(m)]
            else:
                items[j] = m[min(int(np.searchsorted(topic_cdf[current], pick[j])), len(m) - 1)]
            previous = items[j]
        affinity = taste[topic[items]]
        kinds = (kind_u[:, None] > np.cumsum(_event_probs(affinity), axis=1)[:, :-1]).sum(axis=1)
        kinds[noise] = 0
        dwell = np.where(
            noise,
            np.exp(np.log(3.0) + 0.6 * dwell_z),
            np.exp(np.log(20.0 + 100.0 * affinity) + 0.5 * dwell_z),
        )
        rows_user.append(np.full(n, u))
        rows_item.append(items)
        rows_ts.append(ts)
        rows_event.append(kinds)
        rows_dwell.append(dwell)

    event_names = np.asarray(EVENT_TYPES, dtype=object)
    rows_user, rows_item = np.concatenate(rows_user), np.concatenate(rows_item)
    rows_ts, rows_dwell = np.concatenate(rows_ts), np.concatenate(rows_dwell)
    rows_event = event_names[np.concatenate(rows_event)]
    rows_ts = np.round(np.asarray(rows_ts))
    if cfg.time_granularity_s:
        rows_ts, order = coarsen_time(rows_user, rows_ts, cfg.time_granularity_s, rng)
        rows_user, rows_item, rows_ts = rows_user[order], rows_item[order], rows_ts[order]
        rows_event, rows_dwell = rows_event[order], rows_dwell[order]
    events = pd.DataFrame(
        {
            USER: np.char.add("u", rows_user.astype(str)).astype(object),
            ITEM: np.char.add("i", rows_item.astype(str)).astype(object),
            TIME: rows_ts,
            EVENT: rows_event,
            DWELL: np.round(rows_dwell, 1),
        }
    )
    secondary = np.where(
        rng.random(n_items) < cfg.secondary_category_prob, rng.integers(0, n_topics, n_items), -1
    )
    items = pd.DataFrame(
        {
            ITEM: [f"i{i}" for i in range(n_items)],
            CATEGORIES: [
                [f"cat{topic[i]}"]
                + ([f"cat{secondary[i]}"] if secondary[i] >= 0 and secondary[i] != topic[i] else [])
                for i in range(n_items)
            ],
            TITLE: [f"Item {i}" for i in range(n_items)],
        }
    )
    if cfg.search_prob > 0:
        events = pd.concat([events, _searches(events, topic, cfg)], ignore_index=True)
    return RawLog(events=events, items=items, name=cfg.name, report=LoadReport(rows_read=len(events)))


TOPIC_WORDS = 6  # words per topic
NOISE_WORDS = 200


def _searches(events: pd.DataFrame, topic: np.ndarray, cfg: SyntheticConfig) -> pd.DataFrame:
    """Search rows (user, ts, query; no item) before a ``search_prob`` share of the item events."""
    rng = np.random.default_rng((cfg.seed, 20))  # a stream of its own: the item events do not change
    n = len(events)
    chosen = np.flatnonzero(rng.random(n) < cfg.search_prob)
    items = events[ITEM].to_numpy()[chosen]
    item_idx = np.array([int(i[1:]) for i in items], dtype=np.int64)
    users = events[USER].to_numpy()[chosen]
    ts = events[TIME].to_numpy()[chosen]
    first_word = rng.integers(0, TOPIC_WORDS, len(chosen))
    second = rng.random(len(chosen)) < 0.5
    second_word = rng.integers(0, TOPIC_WORDS, len(chosen))
    named = rng.random(len(chosen)) < cfg.search_name_prob
    noisy = rng.random(len(chosen)) < 0.5
    noise_word = rng.integers(0, NOISE_WORDS, len(chosen))
    queries = []
    for j, item in enumerate(item_idx):
        t = topic[item]
        words = [f"topic{t}word{first_word[j]}"]
        if second[j]:
            words.append(f"topic{t}word{second_word[j]}")
        if named[j]:
            words.append(f"name{item}")
        if noisy[j]:
            words.insert(int(rng.integers(0, len(words) + 1)), f"noise{noise_word[j]}")
        queries.append(" ".join(words))
    step = cfg.time_granularity_s or 1.0
    return pd.DataFrame(
        {USER: users, ITEM: None, TIME: ts - step, EVENT: None, DWELL: np.nan, QUERY: queries}
    )


def _lengths(rng: np.random.Generator, cfg: SyntheticConfig) -> np.ndarray:
    """(U,) events per user: geometric around ``mean_events`` (clipped), or uniform on the bounds."""
    if cfg.length_dist == "geometric":
        drawn = rng.geometric(1.0 / cfg.mean_events, size=cfg.n_users)
        return np.clip(drawn, cfg.min_events, cfg.max_events)
    if cfg.length_dist == "uniform":
        return rng.integers(cfg.min_events, cfg.max_events + 1, size=cfg.n_users)
    raise ValueError(f"length_dist must be 'geometric' or 'uniform', not {cfg.length_dist!r}")


def coarsen_time(
    users: np.ndarray, ts: np.ndarray, step: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Floor (E,) timestamps to multiples of ``step``; returns them and an (E,) row order that keeps users and
    coarse times in place but shuffles the rows of a user sharing a coarse time (their order is lost)."""
    floored = np.floor(ts / step) * step
    order = np.lexsort((rng.random(len(ts)), floored, users))
    return floored, order


def _event_probs(affinity: np.ndarray) -> np.ndarray:
    """(n, 4) P(view, click, add_to_cart, purchase), rising towards purchase with the user's topic affinity."""
    a = np.clip(affinity, 0.0, 1.0)[:, None]
    probs = np.array([0.35, 0.45, 0.12, 0.08]) + a * np.array([-0.25, -0.1, 0.1, 0.25])
    return probs / probs.sum(axis=1, keepdims=True)
