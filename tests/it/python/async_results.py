"""Large results read through libpq's asynchronous API (psycopg's AsyncConnection).

libpq's async API reads one TLS record per PQconsumeInput call into an input buffer that
may have as little as 8 KiB free. A libpq without the fix for it (Debian's 15.18; the
18.6 in psycopg's binary wheel drains OpenSSL's pending bytes) leaves the rest of a record
carrying more plaintext than that decrypted inside OpenSSL, where the socket wait never
sees it: the client waits forever for bytes it already has, mid-result, with the backend
idle. A proxy that sends 16 KiB records hits that within a few hundred of the queries
below; PostgreSQL itself (8 KiB records) never does.

Phase 1 sweeps results of rows from 100 bytes to 8 KiB (so libpq's 16 KiB buffer is never
enlarged) and totals of 20 to 70 KB, which puts the end of a result at every offset of a
record. Phase 2 is the shape first reported: executemany of random rows, then a SELECT of
them. Every query has its own stall limit; the first stall ends the run and is reported.

Run with PSYCOPG_IMPL=python to use the system's libpq (15) instead of the one psycopg's
binary wheel bundles (18). Prints {"impl", "libpq", "queries", "rows", "stalled"}.
"""

import asyncio
import random

import psycopg

import pgw

# A result that takes this long is stuck, not slow: each is at most a few hundred KB.
STALL_SECONDS = 45


async def timed(conn, sql, params=None):
    """The rows of one query, or None if it stalled."""
    cur = conn.cursor()
    try:
        await asyncio.wait_for(cur.execute(sql, params), STALL_SECONDS)
    except TimeoutError:
        return None
    return await cur.fetchall()


async def sweep(conn, counts):
    for width in range(100, 8000, 37):
        for total in (20_000, 40_000, 70_000):
            n = total // (width + 11) + 1
            rows = await timed(
                conn,
                "SELECT repeat('x', %s) FROM generate_series(1, %s)",
                (width, n),
            )
            counts["queries"] += 1
            if rows is None:
                return {"phase": "sweep", "width": width, "rows": n}
            assert len(rows) == n and all(len(r[0]) == width for r in rows), (width, n)
            counts["rows"] += n
    return None


async def executemany_then_select(conn, counts):
    await conn.execute("CREATE TEMP TABLE stall_check (id int PRIMARY KEY, payload text)")
    for seed in range(40):
        rng = random.Random(seed)
        rows = [(i, "r" * rng.randint(1, 6000)) for i in range(rng.randint(5, 80))]
        async with conn.cursor() as cur:
            await asyncio.wait_for(
                cur.executemany("INSERT INTO stall_check VALUES (%s, %s)", rows),
                pgw.STEP_SECONDS,
            )
        got = await timed(conn, "SELECT id, payload FROM stall_check ORDER BY id")
        counts["queries"] += 1
        if got is None:
            return {"phase": "executemany", "seed": seed, "rows": len(rows)}
        assert got == rows, seed
        counts["rows"] += len(rows)
        await conn.execute("TRUNCATE stall_check")
    return None


async def main():
    conn = await pgw.connect()
    counts = {"queries": 0, "rows": 0}
    stalled = await sweep(conn, counts)
    if stalled is None:
        stalled = await executemany_then_select(conn, counts)
    if stalled is None:
        await conn.close()
    return {
        "impl": psycopg.pq.__impl__,
        "libpq": psycopg.pq.version(),
        "stalled": stalled,
        **counts,
    }


if __name__ == "__main__":
    pgw.run(main)
