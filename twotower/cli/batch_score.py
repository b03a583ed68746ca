"""Top-k for every user into Parquet: `twotower-batch-score bundle=BUNDLE k=100 out=FILE.parquet`.

Serving side: imports no torch (the bundle's ONNX user tower and FAISS index do the work).
"""

from __future__ import annotations

import json
import os

from omegaconf import DictConfig, OmegaConf

from serving.batch import BatchScorer
from serving.batch_job import honour_erasures, load_users, profiles_for, score_to_parquet
from serving.recommender import Recommender
from serving.settings import Settings
from twotower.cli._hydra import hydra_app


@hydra_app("batch_score")
def main(cfg: DictConfig) -> None:
    rec = Recommender.load(cfg.bundle, threads=cfg.threads or os.cpu_count() or 1)
    rec.set_search(**{k: v for k, v in OmegaConf.to_container(cfg.index_params).items() if v is not None})
    users, histories = load_users(
        rec, users_file=cfg.users, histories_file=cfg.histories, state_dir=cfg.state_dir
    )
    key = Settings.from_env().pseudonym_key
    from_store = bool(cfg.state_dir) and not cfg.histories  # load_users reads a log first
    users, histories = honour_erasures(users, histories, cfg.erasures, from_store, key)
    profiles = profiles_for(rec, users, cfg.state_dir if from_store else None, key)
    overrides = OmegaConf.to_container(cfg.get("ranking") or {})
    ranking = rec.ranking.with_overrides(**overrides)
    scorer = BatchScorer(rec, k=cfg.k, overfetch=cfg.overfetch, exclude_seen=cfg.exclude_seen, ranking=ranking,
                         profiles=profiles)  # fmt: skip
    summary = score_to_parquet(scorer, users, histories, cfg.out, chunk_size=cfg.chunk_size,
                               num_shards=cfg.num_shards, shard=cfg.shard, progress=cfg.progress)  # fmt: skip
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
