"""``python -m birdsdao.worker``: runs background upload jobs from the PostgreSQL queue (kb/pg_jobs.py).

Configured like the server (``instance/config.py``, ``BIRDSDAO_*``; it needs ``BIRDSDAO_DATABASE_URL`` and the
same knowledge-base storage as the app servers). Start as many as the cores allow, on any machine; SIGTERM
lets the job under way finish first, and a worker killed outright has its job run again by another one.
"""
from __future__ import annotations

import argparse
import logging
import sys

from . import create_app

log = logging.getLogger("birdsdao.worker")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m birdsdao.worker", description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, help="jobs at once (default: JOBS_CONCURRENCY)")
    args = parser.parse_args(argv)
    # Only what a job needs: the embedder and the KB service. The bundled species KB is the app servers' to
    # build; a worker building it too would only race them.
    app = create_app({"SERVICES": ["embedder", "kb"], "KB_SPECIES_BUILD": "off"})
    config = app.config
    if not config["DATABASE_URL"]:
        print("the worker runs jobs from PostgreSQL: set BIRDSDAO_DATABASE_URL (without a database, uploads "
              "run in the app server's own threads and no worker is needed)", file=sys.stderr)
        return 2
    from .kb.pg_jobs import PgWorker

    with app.app_context():
        from .services import get_service

        kb = get_service("kb")
    worker = PgWorker(config["DATABASE_URL"], kb.run_upload_job,
                      concurrency=args.concurrency or int(config["JOBS_CONCURRENCY"]),
                      heartbeat_s=float(config["JOBS_HEARTBEAT_S"]),
                      stalled_after_s=float(config["JOBS_STALLED_AFTER_S"]),
                      max_attempts=int(config["JOBS_MAX_ATTEMPTS"]), timeout_s=float(config["DATABASE_TIMEOUT_S"]))
    log.info("upload worker started (concurrency %d)", worker.concurrency)
    worker.run_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
