"""A connection with the argument's conninfo (e.g. `sslnegotiation=direct`), reporting
whether it worked rather than failing: a refusal is a result here. Prints {"connected",
"error", "tls", "protocol", "one"}.
"""

import psycopg

import pgw


async def main():
    try:
        conn = await pgw.connect()
    except psycopg.OperationalError as e:
        return {"connected": False, "error": str(e)}
    one = (await (await conn.execute("SELECT 1")).fetchone())[0]
    result = {
        "connected": True,
        "error": None,
        "tls": bool(conn.pgconn.ssl_in_use),
        "protocol": conn.pgconn.full_protocol_version,
        "one": one,
    }
    await conn.close()
    return result


if __name__ == "__main__":
    pgw.run(main)
