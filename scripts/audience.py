"""Campaign audiences into Parquet: `python scripts/audience.py bundle=B items=[50,181] k=100 out=F.parquet`.

Same as `twotower-audience ...` or `python -m twotower.cli.audience ...` (twotower/cli/audience.py).
"""

from twotower.cli.audience import main

if __name__ == "__main__":
    main()
