"""COPY both ways with psycopg's async copy(): rows in, the same rows out, byte for byte.

1500 rows of up to 9 KB (about 7 MB) go in with COPY FROM STDIN; the server's digest of
what it stored and the bytes of COPY TO STDOUT are compared with what the client sent.
Prints {"rows", "bytes_out", "out_matches", "server_md5", "client_md5"}.
"""

import hashlib

import pgw

ROWS = [(i, f"r{i}-" + "y" * (i * 37 % 9000)) for i in range(1500)]


async def main():
    conn = await pgw.connect()
    await conn.execute("CREATE TEMP TABLE copied (id int, body text)")
    cur = conn.cursor()

    async def copy_in():
        async with cur.copy("COPY copied (id, body) FROM STDIN") as copy:
            for row in ROWS:
                await copy.write_row(row)

    await pgw.step("COPY FROM STDIN", copy_in())
    await cur.execute(
        "SELECT md5(string_agg(id || ':' || body, ',' ORDER BY id)) FROM copied"
    )
    server_md5 = (await cur.fetchone())[0]
    client_md5 = hashlib.md5(
        ",".join(f"{i}:{body}" for i, body in ROWS).encode()
    ).hexdigest()

    async def copy_out():
        out = bytearray()
        async with cur.copy("COPY (SELECT id, body FROM copied ORDER BY id) TO STDOUT") as copy:
            async for data in copy:
                out += data
        return bytes(out)

    out = await pgw.step("COPY TO STDOUT", copy_out())
    expected = "".join(f"{i}\t{body}\n" for i, body in ROWS).encode()
    await conn.close()
    return {
        "rows": len(ROWS),
        "bytes_out": len(out),
        "out_matches": out == expected,
        "server_md5": server_md5,
        "client_md5": client_md5,
    }


if __name__ == "__main__":
    pgw.run(main)
