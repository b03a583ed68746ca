"""The cold-start table: `python scripts/cold_start.py features=RUN_A plain=RUN_B --out F.json` (twotower/cli)."""

from twotower.cli.cold_start import main

if __name__ == "__main__":
    main()
