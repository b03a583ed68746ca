"""Train, evaluate beside baselines, write OUT/metrics.json: `twotower-train experiment=ml100k paths.output_dir=OUT`."""

from __future__ import annotations

from omegaconf import DictConfig

from twotower.callbacks import CheckpointNotFoundError, NonFiniteLossError
from twotower.cli._hydra import hydra_app
from twotower.train import format_summary, train


@hydra_app("train")
def main(cfg: DictConfig) -> float:
    try:
        result = train(cfg)
    except (CheckpointNotFoundError, NonFiniteLossError) as error:  # expected: the message says it all
        raise SystemExit(f"error: {error}") from None
    print(format_summary(result["metrics"]))
    print(f"metrics: {result['output_dir']}/metrics.json")
    return float(result["metrics"]["val"]["ndcg@10"])  # for sweepers (e.g. Optuna) to maximise


if __name__ == "__main__":
    main()
