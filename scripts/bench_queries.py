"""The cost of searches in a request's history: `python scripts/bench_queries.py BUNDLE --out F.json` (twotower/cli)."""

from twotower.cli.bench_queries import main

if __name__ == "__main__":
    main()
