"""Train, evaluate beside baselines, write OUT/metrics.json: `python scripts/train.py experiment=ml100k paths.output_dir=OUT`."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from twotower.config import CONFIG_DIR  # noqa: E402
from twotower.train import format_summary, train  # noqa: E402


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
def main(cfg: DictConfig) -> float:
    result = train(cfg)
    print(format_summary(result["metrics"]))
    print(f"metrics: {result['output_dir']}/metrics.json")
    return float(result["metrics"]["val"]["ndcg@10"])  # for sweepers (e.g. Optuna) to maximise


if __name__ == "__main__":
    main()
