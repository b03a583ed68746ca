"""Training + evaluation throughput: `twotower-bench-train experiment=NAME out=DIR [training overrides]`
(conf/bench_train.yaml); writes DIR/bench_train.json. `profile_steps=N`: torch.profiler over N training steps instead
(DIR/profile.txt); `profile_fit_steps=N` / `profile_eval_batches=N`: the benchmark's own fit steps and evaluation
batches profiled beside it (DIR/fit_profile.txt, DIR/eval_profile.txt)."""

from __future__ import annotations

import json
from pathlib import Path

from omegaconf import DictConfig

from twotower.benchmarks.profiling import FitProfile, profile_training
from twotower.benchmarks.train import run_bench_train
from twotower.cli._hydra import hydra_app


@hydra_app("bench_train")
def main(cfg: DictConfig) -> None:
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.profile_steps:  # where a training step's time goes, instead of the benchmark
        table = profile_training(cfg, steps=cfg.profile_steps)
        (out / "profile.txt").write_text(table)
        print(table)
        print(f"wrote {out / 'profile.txt'}")
        return
    fit = (
        FitProfile(start=cfg.profile_fit_start, steps=cfg.profile_fit_steps)
        if cfg.profile_fit_steps
        else None
    )
    result = run_bench_train(cfg, eval_users=cfg.eval_users, callbacks=(fit,) if fit else (),
                             profile_eval_batches=cfg.profile_eval_batches)  # fmt: skip
    for name, text in (
        ("fit_profile", fit.text if fit else None),
        ("eval_profile", result.pop("eval_profile", None)),
    ):
        if text is not None:
            (out / f"{name}.txt").write_text(text)
            print(f"wrote {out / name}.txt")
    (out / "bench_train.json").write_text(json.dumps(result, indent=2))
    ev = result["eval"]
    print(f"{result['device']}: {result['train_targets_per_s']:,.0f} targets/s, epoch {result['epoch_seconds']:.2f} s,"
          f" validation {result['validation_seconds']:.2f} s; eval torch {ev['torch']['users_per_s']:,.0f} users/s,"
          f" numpy {ev['numpy']['users_per_s']:,.0f} users/s, metrics agree: {result['eval_agree']}")  # fmt: skip
    print(f"wrote {out / 'bench_train.json'}")
    if not result["eval_agree"]:
        raise SystemExit(f"error: the rankers' metrics differ in {result['eval_differing_keys']}")


if __name__ == "__main__":
    main()
