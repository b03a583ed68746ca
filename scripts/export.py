"""Export a training run as a serving bundle: `python scripts/export.py run_dir=RUN out=BUNDLE index=hnsw`.

Same as `twotower-export ...` or `python -m twotower.cli.export ...` (twotower/cli/export.py).
"""

from twotower.cli.export import main

if __name__ == "__main__":
    main()
