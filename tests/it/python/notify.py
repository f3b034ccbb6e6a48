"""LISTEN/NOTIFY between two sessions, read with psycopg's async notifies().

The payload is large (7000 bytes, near PostgreSQL's 8000-byte limit) and the sender's pid
must be the real backend pid that the sending session was given. Prints {"channel",
"payload_ok", "payload_len", "sender_pid", "talker_pid"}.
"""

import pgw

CHANNEL = "pgwarden_test"
PAYLOAD = "".join(chr(ord("a") + i % 26) for i in range(7000))


async def first_notification(listener):
    async for n in listener.notifies(timeout=pgw.STEP_SECONDS, stop_after=1):
        return n
    raise SystemExit("no notification arrived")


async def main():
    listener = await pgw.connect()
    talker = await pgw.connect()
    await listener.execute(f"LISTEN {CHANNEL}")
    await talker.execute("SELECT pg_notify(%s, %s)", (CHANNEL, PAYLOAD))
    n = await pgw.step("the notification", first_notification(listener))
    result = {
        "channel": n.channel,
        "payload_ok": n.payload == PAYLOAD,
        "payload_len": len(n.payload),
        "sender_pid": n.pid,
        "talker_pid": talker.info.backend_pid,
    }
    await talker.close()
    await listener.close()
    return result


if __name__ == "__main__":
    pgw.run(main)
