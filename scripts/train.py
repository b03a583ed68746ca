"""Train, evaluate beside baselines, write OUT/metrics.json: `python scripts/train.py experiment=ml100k paths.output_dir=OUT`.

Same as `twotower-train ...` or `python -m twotower.cli.train ...` (twotower/cli/train.py).
"""

from twotower.cli.train import main

if __name__ == "__main__":
    main()
