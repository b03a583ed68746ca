"""Train, evaluate beside baselines, write OUT/metrics.json: `twotower-train experiment=ml100k paths.output_dir=OUT`."""

from __future__ import annotations

import os

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from twotower.callbacks import CheckpointNotFoundError, NonFiniteLossError
from twotower.cli._hydra import hydra_app
from twotower.config_check import ConfigError
from twotower.distributed import RankMismatchError
from twotower.train import format_summary, train

EXPECTED_ERRORS = (CheckpointNotFoundError, ConfigError, NonFiniteLossError, RankMismatchError)


def share_rank_zero_output_dir(cfg: DictConfig) -> None:
    """Lightning's DDP launcher re-runs this command for ranks 1.. with ``hydra.run.dir`` set to rank 0's
    directory; ``paths.output_dir`` (a timestamp by default) would resolve anew, so it follows the run dir.
    Under torchrun each rank's run dir is its own output dir already: nothing changes."""
    if os.environ.get("LOCAL_RANK", "0") != "0" and HydraConfig.initialized():
        cfg.paths.output_dir = HydraConfig.get().runtime.output_dir


@hydra_app("train")
def main(cfg: DictConfig) -> float | None:
    share_rank_zero_output_dir(cfg)
    try:
        result = train(cfg)
    except EXPECTED_ERRORS as error:  # the message says it all
        raise SystemExit(f"error: {error}") from None
    if result["metrics"] is None:  # a DDP rank other than 0: rank 0 evaluates and reports
        return None
    print(format_summary(result["metrics"]))
    print(f"metrics: {result['output_dir']}/metrics.json")
    return float(result["metrics"]["val"]["ndcg@10"])  # for sweepers (e.g. Optuna) to maximise


if __name__ == "__main__":
    main()
