# Sourced by the device-machine scripts: $OUT, the hydra wheels from .whl/ (the CUDA image lacks them), the card.
# `make gpu-wheels` downloads them into .whl/ here (carry .whl with the run when git ignores it).
set -uo pipefail
# The package is not pip-installed there: run from the repository root with `python3 -m twotower.cli.X`
# (the working directory is on sys.path under -m); the root on PYTHONPATH also covers `python3 scripts/X.py`.
export PYTHONPATH="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$OUT"
if ! python3 -c "import hydra, omegaconf" >/dev/null 2>&1; then
  if ls .whl/*.whl >/dev/null 2>&1; then
    # only what the image lacks, from .whl/ alone (the machine reaches no index); pip picks the wheels that fit
    python3 -m pip install -q --no-index --find-links .whl --no-deps --no-compile --no-cache-dir --target /tmp/site \
      hydra-core omegaconf antlr4-python3-runtime
    export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
  else
    echo "hydra-core/omegaconf missing and no .whl/ wheels: run 'make gpu-wheels' first" >&2
  fi
fi
export PYTHONUNBUFFERED=1
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
else
  echo "no nvidia-smi: $(python3 -c 'import platform; print(platform.processor() or platform.machine())') CPU" | tee "$OUT/gpu.txt"
fi
