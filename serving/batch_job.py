"""The batch-scoring job around :class:`serving.batch.BatchScorer`: who to score, in chunks, into Parquet, in
bounded memory, resumable and shardable. No torch.

Users are cut into chunks (in a fixed order); shard ``s`` of ``n`` takes chunks ``s, s + n, ...``. Each chunk
is scored and written as ``OUT.parts/chunk-NNNNNN.parquet`` (temp file + rename: a chunk is on disk whole or
not at all). A re-run skips chunks already on disk; the parts are then streamed into ``OUT``
(``user_id, rank, item_id, score``; the model version in the file metadata) and removed.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from serving.batch import SCHEMA, BatchScorer
from serving.core.history import History
from serving.historylog import read_history_log
from serving.recommender import Recommender

log = logging.getLogger(__name__)


def load_users(
    rec: Recommender,
    users_file: str | None = None,
    histories_file: str | None = None,
    state_dir: str | None = None,
) -> tuple[list[str], list[History]]:
    """Who to score and their histories: a raw log file, a history store, or the bundle's histories.

    ``users_file`` (one id per line) restricts and orders the users; an id without a history gets the
    popularity fallback."""
    if histories_file:
        frame = read_history_log(histories_file)
        table: dict[str, History] = {}
        for user, group in frame.groupby("user_id", sort=False):
            dwell = group["dwell_s"].tolist() if "dwell_s" in group else None
            table[user] = rec.resolve(
                group["item_id"].tolist(),
                group["event"].tolist() if "event" in group else None,
                None if dwell is None else [None if d != d else d for d in dwell],  # NaN: unknown
                group["ts"].tolist() if "ts" in group else None,
            ).history
    elif state_dir:
        from serving.privacy import key_scheme, pseudonym_key, user_key
        from serving.settings import Settings
        from serving.store import SQLiteHistoryStore

        store = SQLiteHistoryStore(state_dir, max_events=rec.max_len + 1)
        key = pseudonym_key(state_dir, Settings.from_env().pseudonym_key, create=False)
        if store.key_scheme not in (None, key_scheme(key)):  # ids given here must map to the stored keys
            raise ValueError(
                f"{state_dir}: user keys are {store.key_scheme}, TWOTOWER_PSEUDONYM_KEY gives {key_scheme(key)}"
            )
        ids = _read_ids(users_file) if users_file else [  # without a users file: the stored keys themselves
            r[0] for r in store.db.execute("SELECT user_key FROM users ORDER BY user_key")]  # fmt: skip
        keys = [user_key(key, u) for u in ids] if users_file else ids
        table = {u: rec.resolve(*store.history_columns(k)).history for u, k in zip(ids, keys, strict=True)}
    else:
        table = rec.histories
    users = _read_ids(users_file) if users_file else sorted(table)
    empty = History.build(np.zeros(0, np.int64))
    return users, [table.get(u, empty) for u in users]


def without_erased(
    users: Sequence[str], histories: Sequence[History], erasures: str, configured_key: str = ""
) -> tuple[list[str], list[History]]:
    """Leave out users a serving store's erasure log names (``erasure_key(user_key(id))``): for batch scores
    and audiences read from the bundle's or a log's histories, which were written before the erasure (and
    the bundle's users table, which still holds the erased profiles). ``erasures``: the service's state dir
    (SQLite; its pseudonym key file or ``configured_key`` maps ids onto the log) or its ``redis://`` URL
    (then ``configured_key``, the service's ``TWOTOWER_PSEUDONYM_KEY``)."""
    from serving.privacy import erasure_key, pseudonym_key, user_key
    from serving.redisstore import is_redis_url

    if is_redis_url(erasures):
        from serving.redisstore import RedisHistoryStore

        if not configured_key:
            raise ValueError(f"erasures={erasures}: set TWOTOWER_PSEUDONYM_KEY to the service's key (or off)")
        erased = set(RedisHistoryStore(erasures, max_events=1).erased_since(0.0))
        key = pseudonym_key("", configured_key, create=False)
    else:
        from serving.store import DB_FILE, SQLiteHistoryStore

        if not (Path(erasures) / DB_FILE).is_file():
            raise FileNotFoundError(f"erasures={erasures}: no history store there ({DB_FILE} not found)")
        erased = set(SQLiteHistoryStore(erasures, max_events=1).erased_since(0.0))
        key = pseudonym_key(erasures, configured_key, create=False)
    keep = [i for i, u in enumerate(users) if erasure_key(user_key(key, u)) not in erased]
    if len(keep) < len(users):
        log.info("left out %d erased users (erasure log of %s)", len(users) - len(keep), erasures)
    return [users[i] for i in keep], [histories[i] for i in keep]


def honour_erasures(
    users: Sequence[str],
    histories: Sequence[History],
    erasures: str | None,
    from_store: bool,
    configured_key: str,
) -> tuple[list[str], list[History]]:
    """The users a batch job may score: without those the erasure log names. ``erasures``: a state dir, a
    ``redis://`` URL, or ``auto`` (the service's own: ``TWOTOWER_STORE`` when it is Redis, else
    ``TWOTOWER_STATE_DIR`` when a store is there). With none, a warning when the histories come from the bundle
    or a log (a store's own histories hold no erased user: only those back with new events, whose profile
    :func:`profiles_for` leaves out)."""
    if erasures == "auto":
        erasures = _service_store()
    if erasures:
        return without_erased(users, histories, erasures, configured_key)
    if not from_store:
        log.warning(
            "no erasure log given: users erased since these histories were written are scored too; "
            "set erasures=STATE_DIR (or redis://...) or TWOTOWER_STATE_DIR to leave them out"
        )
    return list(users), list(histories)


def _service_store() -> str | None:
    """The service's store as the environment names it, if there is one to read."""
    from serving.redisstore import is_redis_url
    from serving.store import DB_FILE

    url = os.environ.get("TWOTOWER_STORE", "").strip()
    if is_redis_url(url):
        return url
    state = os.environ.get("TWOTOWER_STATE_DIR", "").strip()
    return state if state and (Path(state) / DB_FILE).is_file() else None


def profiles_for(
    rec: Recommender, users: Sequence[str], state_dir: str | None, configured_key: str = ""
) -> dict:
    """The bundle's user features without those of users a store's erasure log names (erased, then back with
    new events: their history is theirs again, their old profile is not), for :class:`BatchScorer`."""
    table = rec.user_features
    if not table or not state_dir:
        return table
    from serving.privacy import pseudonym_key, user_key
    from serving.store import SQLiteHistoryStore

    store = SQLiteHistoryStore(state_dir, max_events=1)
    key = pseudonym_key(state_dir, configured_key, create=False)
    erased = {u for u in users if u in table and store.is_erased(user_key(key, u))}
    return {u: f for u, f in table.items() if u not in erased} if erased else table


def _read_ids(path: str) -> list[str]:
    with open(path) as handle:
        return [line.strip() for line in handle if line.strip()]


def chunks_of(
    n_users: int, chunk_size: int, num_shards: int = 1, shard: int = 0
) -> Iterator[tuple[int, slice]]:
    """(chunk number, user slice) of this shard."""
    if not 0 <= shard < num_shards:
        raise ValueError(f"shard must be in [0, {num_shards}), got {shard}")
    for number, begin in enumerate(range(0, n_users, chunk_size)):
        if number % num_shards == shard:
            yield number, slice(begin, min(begin + chunk_size, n_users))


def score_to_parquet(
    scorer: BatchScorer, users: Sequence[str], histories: Sequence[History], out: str | Path,
    chunk_size: int = 4096, num_shards: int = 1, shard: int = 0, progress: bool = True,
) -> dict:  # fmt: skip
    """Write the top-k of ``users`` (this shard's chunks) to ``out``; resumes from finished chunks."""
    out = Path(out)
    parts = out.with_name(out.name + ".parts")
    parts.mkdir(parents=True, exist_ok=True)
    meta = {"model_version": scorer.rec.model_version, "k": scorer.k, "users": len(users), "chunk_size": chunk_size,
            "num_shards": num_shards, "shard": shard}  # fmt: skip
    plan = parts / "plan.json"
    if plan.exists() and json.loads(plan.read_text()) != meta:
        raise ValueError(
            f"{parts}: left by a different job {json.loads(plan.read_text())}; remove it to restart"
        )
    plan.write_text(json.dumps(meta))
    todo = list(chunks_of(len(users), chunk_size, num_shards, shard))
    done = skipped = 0
    bar = _progress(len(todo), progress)
    for number, block in todo:
        path = parts / f"chunk-{number:06d}.parquet"
        if path.exists():
            skipped += 1
        else:
            table = scorer.table(users[block], histories[block])
            tmp = path.with_suffix(".tmp")
            pq.write_table(table, tmp)
            os.replace(tmp, path)  # atomic: a chunk is whole or absent
            done += 1
        bar.update(1)
    bar.close()
    rows = _merge(sorted(parts.glob("chunk-*.parquet")), out, {"model_version": scorer.rec.model_version,
                  "k": str(scorer.k), "shard": f"{shard}/{num_shards}"})  # fmt: skip
    shutil.rmtree(parts)
    return {**meta, "chunks_written": done, "chunks_resumed": skipped, "rows": rows, "out": str(out)}


def _merge(paths: list[Path], out: Path, metadata: dict[str, str]) -> int:
    """Stream chunk files into one Parquet file (one chunk in memory at a time)."""
    schema = SCHEMA.with_metadata({f"twotower.{k}": v for k, v in metadata.items()})
    rows = 0
    tmp = out.with_name(out.name + ".tmp")
    with pq.ParquetWriter(tmp, schema) as writer:
        for path in paths:
            table = pq.read_table(path).cast(schema)
            writer.write_table(table)
            rows += table.num_rows
    os.replace(tmp, out)
    return rows


def _progress(total: int, enabled: bool):
    try:
        from tqdm import tqdm

        return tqdm(total=total, unit="chunk", disable=not enabled)
    except ImportError:  # the serving image has no tqdm: log instead
        return _LogProgress(total)


class _LogProgress:
    def __init__(self, total: int) -> None:
        self.total, self.n = total, 0

    def update(self, n: int) -> None:
        self.n += n
        log.info("chunk %d/%d", self.n, self.total)

    def close(self) -> None:
        pass
