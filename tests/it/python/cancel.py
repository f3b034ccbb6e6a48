"""conn.cancel_safe(): libpq 17+'s cancel API (PQcancelBlocking) over the session's own TLS.

The cancel connection does SSLRequest, TLS (verify-full), CancelRequest, and then waits
for the server to close; a close without TLS close_notify makes it fail ("SSL error:
unexpected eof while reading") even though the query was cancelled.

A query waits on an advisory lock held by a second connection (pg_locks shows the wait to
any role, unlike pg_stat_activity's wait_event), is cancelled with cancel_safe(), and the
session goes on. The argument may ask for `max_protocol_version=3.2`. Prints
{"protocol", "cancel", "query", "after", "tls"}.
"""

import asyncio

import psycopg

import pgw

LOCK = 4242


async def wait_until_waiting(watcher, pid):
    while True:
        cur = await watcher.execute(
            "SELECT count(*) FROM pg_locks "
            "WHERE locktype = 'advisory' AND NOT granted AND pid = %s",
            (pid,),
        )
        if (await cur.fetchone())[0] == 1:
            return
        await asyncio.sleep(0.1)


async def main():
    conn = await pgw.connect()
    watcher = await pgw.connect()
    await watcher.execute("SELECT pg_advisory_lock(%s)", (LOCK,))
    pid = conn.info.backend_pid

    async def blocked():
        try:
            await conn.execute("SELECT pg_advisory_lock(%s)", (LOCK,))
            return "finished"
        except psycopg.errors.QueryCanceled:
            return "cancelled"

    query = asyncio.create_task(blocked())
    await pgw.step("the query waiting on the lock", wait_until_waiting(watcher, pid))
    try:
        await pgw.step("cancel_safe", conn.cancel_safe(timeout=pgw.STEP_SECONDS))
        cancel = "ok"
    except psycopg.OperationalError as e:
        cancel = f"{type(e).__name__}: {e}"
    outcome = await pgw.step("the cancelled query", query)

    # The session goes on. PostgreSQL signals a cancelled backend and then its process
    # group, so on a loaded machine a stray second SIGINT can cancel the next statement.
    try:
        after = (await (await conn.execute("SELECT 1")).fetchone())[0]
    except psycopg.errors.QueryCanceled:
        after = (await (await conn.execute("SELECT 1")).fetchone())[0]
    result = {
        "protocol": conn.pgconn.full_protocol_version,
        "cancel": cancel,
        "query": outcome,
        "after": after,
        "tls": bool(conn.pgconn.ssl_in_use),
    }
    await watcher.close()
    await conn.close()
    return result


if __name__ == "__main__":
    pgw.run(main)
