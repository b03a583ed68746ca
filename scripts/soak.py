"""Load and soak: `python scripts/soak.py BUNDLE --out DIR [--seconds 60] [--connections 8] [--write-share 0.1]`.

Same as `twotower-soak ...` or `python -m twotower.cli.soak ...` (twotower/cli/soak.py).
"""

from twotower.cli.soak import main

if __name__ == "__main__":
    main()
