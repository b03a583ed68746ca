"""`python -m serving --bundle BUNDLE [--state-dir DIR] [--host 127.0.0.1] [--port 8000]` (flags override TWOTOWER_*)."""

from __future__ import annotations

import argparse
import logging

import uvicorn

from serving.app import create_app
from serving.settings import Settings


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m serving", description=__doc__)
    parser.add_argument("--bundle", help="bundle directory (TWOTOWER_BUNDLE)")
    parser.add_argument("--host", help="bind address (TWOTOWER_HOST, default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (TWOTOWER_PORT, default 8000)")
    parser.add_argument("--threads", type=int, help="threads per request (TWOTOWER_THREADS, default 1)")
    parser.add_argument("--state-dir", help="history store directory (TWOTOWER_STATE_DIR, default ./state)")
    parser.add_argument("--nprobe", type=int, help="inverted lists searched per query (TWOTOWER_NPROBE)")
    parser.add_argument("--ef-search", type=int, help="HNSW candidate list per query (TWOTOWER_EF_SEARCH)")
    args = parser.parse_args(argv)
    settings = Settings.from_env(
        bundle=args.bundle, host=args.host, port=args.port, threads=args.threads, state_dir=args.state_dir,
        nprobe=args.nprobe, ef_search=args.ef_search,
    )  # fmt: skip
    if not settings.bundle:
        parser.error("no bundle: pass --bundle or set TWOTOWER_BUNDLE")
    if not settings.loopback and not settings.api_token:
        parser.error(
            f"refusing to listen on {settings.host} without TWOTOWER_API_TOKEN (write endpoints would be open)"
        )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    uvicorn.run(
        create_app(settings), host=settings.host, port=settings.port, log_level="warning", access_log=False
    )


if __name__ == "__main__":
    main()
