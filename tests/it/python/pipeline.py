"""Pipeline mode with psycopg's async pipeline(): many statements sent before any result.

Results of every size around the 8 KiB and 16 KiB record boundaries come back in order;
an error inside a pipeline is reported at its sync (what was queued after it is skipped),
and the session goes on. Prints {"results", "sizes_ok", "error", "after"}.
"""

import psycopg

import pgw

SIZES = [1, 100, 8000, 8180, 8192, 8200, 16000, 16384, 16400, 40000, 100_000]


async def main():
    conn = await pgw.connect()

    async def queued():
        cursors = []
        async with conn.pipeline() as p:
            for i, size in enumerate(SIZES):
                cur = conn.cursor()
                await cur.execute("SELECT %s::int, repeat('p', %s)", (i, size))
                cursors.append(cur)
            await p.sync()
            return [await cur.fetchone() for cur in cursors]

    rows = await pgw.step("a pipeline of queries", queued())
    sizes_ok = [r[0] for r in rows] == list(range(len(SIZES))) and [
        len(r[1]) for r in rows
    ] == SIZES

    async def failing():
        try:
            async with conn.pipeline():
                await conn.execute("SELECT 1 / 0")
                await conn.execute("SELECT 2")
        except psycopg.errors.DivisionByZero as e:
            return e.sqlstate
        return None

    error = await pgw.step("a failing pipeline", failing())
    after = (await (await conn.execute("SELECT 3")).fetchone())[0]
    await conn.close()
    return {
        "results": len(rows),
        "sizes_ok": sizes_ok,
        "error": error,
        "after": after,
    }


if __name__ == "__main__":
    pgw.run(main)
