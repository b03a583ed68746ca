#!/usr/bin/env bash
# GPU benchmark (issue: performance), run on a machine with an NVIDIA GPU through the device tool, not in CI.
# 1. batch scoring: exact top-100 over 1M items with torch on the GPU (raw loop and Lightning predict -> Parquet)
# 2. training throughput: ml-100k, fp32, 10 epochs (needs $TWOTOWER_DATA_DIR/ml-100k)
# Needs python3 with torch + pytorch-lightning + pandas/pyarrow; hydra wheels from .whl/ if present.
OUT=${OUT:-runs/gpu_bench}
source "$(dirname "$0")/gpu_env.sh"
timeout 200 python3 -m twotower.cli.gpu_bench --out "$OUT" --users "${USERS:-200000}" 2>&1 | grep -v Warning | tail -25
timeout 150 python3 -m twotower.cli.train experiment=ml100k trainer=gpu trainer.precision=32-true trainer.max_epochs=10 trainer.enable_progress_bar=false \
  logger=csv eval.baselines=[popularity] paths.output_dir="$OUT/ml100k_fp32" 2>&1 | tail -3
python3 - "$OUT" <<'PY'
import json, sys, pathlib
out = pathlib.Path(sys.argv[1])
summary = {"gpu": (out / "gpu.txt").read_text().strip().splitlines()[-1]}
if (out / "gpu_batch.json").exists():
    summary["batch"] = json.loads((out / "gpu_batch.json").read_text())
m = out / "ml100k_fp32" / "metrics.json"
if m.exists():
    m = json.loads(m.read_text())
    summary["train"] = {"precision": m["precision"], "seconds": m["train_seconds"], "epochs": m["epochs_run"],
                        "targets_per_s": round(m["train_targets_per_epoch"] * m["epochs_run"] / m["train_seconds"]),
                        "test_recall@10": round(m["test"]["recall@10"], 4)}
print(json.dumps(summary, indent=1))
(out / "summary.json").write_text(json.dumps(summary, indent=1))
PY
