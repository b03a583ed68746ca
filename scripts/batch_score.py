"""Top-k for every user into Parquet: `python scripts/batch_score.py bundle=BUNDLE k=100 out=FILE.parquet`."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import hydra  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from serving.batch import BatchScorer, load_users, score_to_parquet  # noqa: E402
from serving.recommender import Recommender  # noqa: E402
from twotower.config import CONFIG_DIR  # noqa: E402


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="batch_score")
def main(cfg: DictConfig) -> None:
    rec = Recommender.load(cfg.bundle, threads=cfg.threads or os.cpu_count() or 1)
    rec.set_search(**{k: v for k, v in OmegaConf.to_container(cfg.index_params).items() if v is not None})
    users, histories = load_users(
        rec, users_file=cfg.users, histories_file=cfg.histories, state_dir=cfg.state_dir
    )
    scorer = BatchScorer(rec, k=cfg.k, overfetch=cfg.overfetch, exclude_seen=cfg.exclude_seen)
    summary = score_to_parquet(scorer, users, histories, cfg.out, chunk_size=cfg.chunk_size,
                               num_shards=cfg.num_shards, shard=cfg.shard, progress=cfg.progress)  # fmt: skip
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
