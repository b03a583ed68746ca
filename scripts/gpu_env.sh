# Sourced by the device-machine scripts: $OUT, the hydra wheels from .whl/ (the CUDA image lacks them), the card.
set -uo pipefail
# The package is not pip-installed there: run from the repository root with `python3 -m twotower.cli.X`
# (the working directory is on sys.path under -m); the root on PYTHONPATH also covers `python3 scripts/X.py`.
export PYTHONPATH="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
