"""GPU batch scoring, exact top-k over 1M items: `python scripts/gpu_bench.py [--items N] [--users N] [--out DIR]`.

Same as `twotower-gpu-bench ...` or `python -m twotower.cli.gpu_bench ...` (twotower/cli/gpu_bench.py);
`scripts/gpu_bench.sh` runs it on the GPU machine.
"""

from twotower.cli.gpu_bench import main

if __name__ == "__main__":
    main()
