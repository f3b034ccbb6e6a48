"""What every psycopg test script shares: a hard watchdog, the connection, one JSON result.

The Rust tests in tests/it/ run these scripts with the test venv's python. Connection
parameters come from libpq's own environment variables (PGHOST, PGPORT, PGUSER, PGDATABASE,
PGSSLMODE, PGSSLROOTCERT, PGPASSWORD), set by the Rust side in the child's environment only;
extra conninfo (e.g. `sslnegotiation=direct`) comes as the first argument. A script never
prints a password.

Every script ends in one of two ways: one JSON object on stdout and exit status 0, or a
message on stderr and a non-zero status. A hang is never an option: `run` arms a watchdog in
a thread of its own (faulthandler) that dumps every stack and kills the process, even when
the event loop itself is stuck in a blocking libpq call.
"""

import asyncio
import faulthandler
import json
import os
import sys

import psycopg

# Whole-script limit. Each step has its own, shorter asyncio timeout; this one catches
# anything that blocks the event loop itself.
WATCHDOG_SECONDS = 150
# One step (a query, a COPY, a cancel) on a loaded two-core machine.
STEP_SECONDS = 60


def conninfo(extra=""):
    """The connection string: the environment does the rest."""
    if len(sys.argv) > 1:
        extra = f"{sys.argv[1]} {extra}"
    return extra.strip()


async def connect(extra="", **kwargs):
    kwargs.setdefault("autocommit", True)
    return await asyncio.wait_for(
        psycopg.AsyncConnection.connect(conninfo(extra), **kwargs), STEP_SECONDS
    )


async def step(what, awaitable, seconds=STEP_SECONDS):
    """Awaits one step; a step that takes too long fails the script, saying which."""
    try:
        return await asyncio.wait_for(awaitable, seconds)
    except TimeoutError:
        raise SystemExit(f"watchdog: {what} did not finish within {seconds} s") from None


def run(main):
    """Runs `main()` (a coroutine function returning a dict) under the watchdog, prints its
    JSON and exits at once: a connection left stuck by what the script found (a stalled
    read) must not hang the interpreter's teardown."""
    faulthandler.dump_traceback_later(WATCHDOG_SECONDS, exit=True)
    result = asyncio.run(main())
    print(json.dumps(result), flush=True)
    sys.stderr.flush()
    os._exit(0)
