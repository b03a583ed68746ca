#!/usr/bin/env bash
# GPU check for the training side, run on a machine with an NVIDIA GPU (the device tool), not in CI.
# Needs: python3 with torch + pytorch-lightning (the CUDA image has them), hydra wheels in .whl/ (optional),
# ml-100k files under $TWOTOWER_DATA_DIR/ml-100k. Writes everything under $OUT (default runs/gpu_check).
OUT=${OUT:-runs/gpu_check}
source "$(dirname "$0")/gpu_env.sh"
python3 -c "import torch, pytorch_lightning as pl; print('torch', torch.__version__, 'lightning', pl.__version__, 'cuda', torch.cuda.is_available())" | tee -a "$OUT/gpu.txt"
# 1. the tiny end-to-end tests on the GPU (trainer.accelerator=auto picks it)
python3 -m pytest -q -p no:cacheprovider tests/test_train_e2e.py -k "tiny or csv" 2>&1 | tail -3 | tee "$OUT/tests.txt"
# 2. the ml100k experiment on the GPU, bf16 mixed precision and fp32
for precision in bf16-mixed 32-true; do
  python3 -m twotower.cli.train experiment=ml100k trainer=gpu trainer.precision=$precision \
    trainer.enable_progress_bar=false logger=csv paths.output_dir="$OUT/ml100k_$precision" 2>&1 | tail -8
done
python3 - "$OUT" <<'PY'
import json, sys, pathlib
out = pathlib.Path(sys.argv[1])
rows = {}
for p in sorted(out.glob("ml100k_*/metrics.json")):
    m = json.loads(p.read_text())
    targets = m["train_targets_per_epoch"] * m["epochs_run"]
    rows[p.parent.name] = {"train_seconds": m["train_seconds"], "epochs": m["epochs_run"],
                           "targets_per_s": round(targets / m["train_seconds"]),
                           **{k: round(m["test"][k], 4) for k in ("recall@10", "ndcg@10", "recall@100")}}
print(json.dumps(rows, indent=1))
(out / "summary.json").write_text(json.dumps(rows, indent=1))
PY
