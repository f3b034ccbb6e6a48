#!/usr/bin/env python3
"""Records what real clients send (and what a real server answers) and turns it
into seed inputs for the fuzz targets in fuzz_targets/.

Usage: capture_seeds.py HOST PORT PASSWORD OUT_DIR

HOST:PORT is a throwaway PostgreSQL server (plaintext, SCRAM-SHA-256) with a
login role `alice` (password PASSWORD) owning a database `alice`. A recording
relay listens on a free loopback port; psql, psycopg (libpq) and pgjdbc connect
through it and run a few statements; every connection's two byte streams are
cut into the seed formats each target documents and written under
OUT_DIR/<target>/. Run with the test environment's Python (.venv/bin/python),
which has psycopg.

The recordings hold SCRAM nonces and proofs of the throwaway password: in the
scram_exchange seeds they are replaced by the @N/@C/@P placeholders the target
fills in.
"""

import os
import re
import selectors
import socket
import struct
import subprocess
import sys
import tempfile
import threading

DEFAULT_ALLOWED = ",".join([
    "application_name", "client_encoding", "DateStyle", "TimeZone", "IntervalStyle",
    "extra_float_digits", "search_path", "statement_timeout", "lock_timeout",
    "idle_in_transaction_session_timeout", "default_transaction_isolation",
    "default_transaction_read_only", "bytea_output", "lc_monetary", "lc_numeric", "lc_time",
])

SSL_REQUEST = 80877103
GSSENC_REQUEST = 80877104
CANCEL_REQUEST = 80877102


class Relay:
    """Forwards loopback connections to the server and keeps both streams."""

    def __init__(self, host, port):
        self.upstream = (host, port)
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port = self.listener.getsockname()[1]
        self.recordings = []
        self.lock = threading.Lock()
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self):
        while True:
            client, _ = self.listener.accept()
            threading.Thread(target=self.pump, args=(client,), daemon=True).start()

    def pump(self, client):
        server = socket.create_connection(self.upstream)
        streams = {client: bytearray(), server: bytearray()}
        peer = {client: server, server: client}
        sel = selectors.DefaultSelector()
        sel.register(client, selectors.EVENT_READ)
        sel.register(server, selectors.EVENT_READ)
        open_ends = 2
        while open_ends:
            for key, _ in sel.select():
                data = key.fileobj.recv(65536)
                if not data:
                    sel.unregister(key.fileobj)
                    open_ends -= 1
                    try:
                        peer[key.fileobj].shutdown(socket.SHUT_WR)
                    except OSError:
                        pass
                    continue
                streams[key.fileobj].extend(data)
                peer[key.fileobj].sendall(data)
        client.close()
        server.close()
        with self.lock:
            self.recordings.append((bytes(streams[client]), bytes(streams[server])))


def pre_startup_packets(stream):
    """The length-prefixed packets at the start of a client stream, and the rest."""
    packets = []
    at = 0
    while at + 8 <= len(stream):
        (length, code) = struct.unpack(">iI", stream[at:at + 8])
        packets.append(stream[at:at + length])
        at += length
        if code not in (SSL_REQUEST, GSSENC_REQUEST):
            break
    return packets, stream[at:]


def messages(stream):
    out = []
    at = 0
    while at + 5 <= len(stream):
        (length,) = struct.unpack(">i", stream[at + 1:at + 5])
        out.append(stream[at:at + 1 + length])
        at += 1 + length
    return out


def startup_params(packet):
    fields = packet[8:].split(b"\0")
    pairs = []
    for i in range(0, len(fields) - 1, 2):
        if not fields[i]:
            break
        pairs.append((fields[i], fields[i + 1]))
    return pairs


def write(out_dir, target, name, data):
    path = os.path.join(out_dir, target)
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, name), "wb") as f:
        f.write(data)


def scram_template(first, final):
    """The client-final with the nonce, channel binding and proof made placeholders."""
    final = re.sub(rb"r=[^,]*", b"r=@N", final)
    final = re.sub(rb"c=[^,]*", b"c=@C", final)
    final = re.sub(rb"p=[^,]*$", b"p=@P", final)
    return first, final


def seeds_from(name, client, server, out_dir):
    packets, typed = pre_startup_packets(client)
    for i, p in enumerate(packets):
        write(out_dir, "startup_packet", f"{name}-{i}", bytes([7]) + p)
    startup = packets[-1] if packets else b""
    if len(startup) >= 8 and struct.unpack(">I", startup[4:8])[0] >> 16 == 3:
        params = startup_params(startup)
        options = dict(params).get(b"options", b"")
        flat = b"\0".join(k + b"\0" + v for k, v in params)
        write(out_dir, "startup_parameters", name,
              options + b"\0" + DEFAULT_ALLOWED.encode() + b"\0" + flat)
    # The server's answers and the client's typed messages: one chunking
    # pattern each, with tracker kinds that count ReadyForQuery.
    if server:
        write(out_dir, "frame_tracker", f"{name}-server", bytes([2, 4, 3, 1, 7, 60]) + server)
    if typed:
        write(out_dir, "frame_tracker", f"{name}-client", bytes([0, 4, 1, 13]) + typed)
    sasl = [m for m in messages(typed) if m[:1] == b"p"]
    if len(sasl) >= 2:
        initial = sasl[0][5:]
        mechanism, rest = initial.split(b"\0", 1)
        first = rest[4:]
        tmpl_first, tmpl_final = scram_template(first, sasl[1][5:])
        user_alice_plain = 0b0000_0000
        write(out_dir, "scram_exchange", f"{name}-template",
              bytes([user_alice_plain]) + mechanism + b"\n" + tmpl_first + b"\n" + tmpl_final)
        # The same client bytes as sent (their proof is for another nonce).
        write(out_dir, "scram_exchange", f"{name}-raw", bytes([0b1001_0000]) + sasl[0] + sasl[1])


def run_clients(port, password):
    env = dict(os.environ, PGPASSWORD=password)
    conninfo = f"host=127.0.0.1 port={port} user=alice dbname=alice"
    sql = ("select 1; begin; select * from generate_series(1, 3) g; "
           "select 1/0; rollback; copy (select 'x') to stdout;")
    runs = {
        "psql-disable": f"{conninfo} sslmode=disable gssencmode=disable "
                        "options='-c statement_timeout=5s -c search_path=a\\ b' "
                        "application_name=seed",
        "psql-prefer": f"{conninfo} sslmode=prefer gssencmode=prefer",
    }
    for name, dsn in runs.items():
        subprocess.run(["psql", "-X", "-q", dsn, "-c", sql], env=env,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    psycopg = (
        "import psycopg, threading, sys\n"
        "dsn = sys.argv[1]\n"
        "with psycopg.connect(dsn, options='-c lock_timeout=1s') as c:\n"
        "    c.execute('select %s::text, %s::int', ('a', 1)).fetchall()\n"
        "    with c.transaction():\n"
        "        c.execute('create temp table t (x int)')\n"
        "        c.execute('insert into t values (1), (2)')\n"
        "    c.execute('listen ch'); c.execute(\"notify ch, 'hi'\")\n"
        "    threading.Timer(0.5, c.cancel_safe).start()\n"
        "    try:\n"
        "        c.execute('select pg_sleep(5)')\n"
        "    except psycopg.errors.QueryCanceled:\n"
        "        pass\n"
    )
    subprocess.run([sys.executable, "-c", psycopg, f"{conninfo} sslmode=disable password={password}"], env=dict(env, PGTZ="UTC"),
                   check=True)
    java = (
        "import java.sql.*; import java.util.Properties;\n"
        "public class Seed { public static void main(String[] a) throws Exception {\n"
        "  Properties p = new Properties(); p.setProperty(\"user\", \"alice\");\n"
        "  p.setProperty(\"password\", a[1]); p.setProperty(\"sslmode\", \"disable\");\n"
        "  try (Connection c = DriverManager.getConnection(a[0], p)) {\n"
        "    try (Statement s = c.createStatement()) { s.execute(\"show transaction_read_only\"); }\n"
        "    try (PreparedStatement ps = c.prepareStatement(\"select ?::int + 1\")) {\n"
        "      for (int i = 0; i < 6; i++) { ps.setInt(1, i); ps.executeQuery().close(); }\n"
        "    }\n"
        "    c.setAutoCommit(false);\n"
        "    try (Statement s = c.createStatement()) { s.execute(\"select 1\"); }\n"
        "    c.commit();\n"
        "  }\n"
        "}}\n"
    )
    with tempfile.TemporaryDirectory() as d:
        src = os.path.join(d, "Seed.java")
        with open(src, "w") as f:
            f.write(java)
        subprocess.run(["java", "-cp", "/usr/share/java/postgresql.jar", src,
                        f"jdbc:postgresql://127.0.0.1:{port}/alice", password],
                       check=True)
    return ["psql-disable", "psql-prefer", "psycopg", "psycopg-cancel", "pgjdbc"]


def main():
    host, port, password, out_dir = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    relay = Relay(host, port)
    run_clients(relay.port, password)
    # Connections close asynchronously; give the relay threads a moment.
    threading.Event().wait(1.0)
    with relay.lock:
        recordings = list(relay.recordings)
    for i, (client, server) in enumerate(recordings):
        kind = client_kind(client)
        seeds_from(f"{kind}-{i}", client, server, out_dir)
    handmade(out_dir)
    print(f"{len(recordings)} connections recorded")


def frame(tag, body):
    return tag + struct.pack(">i", len(body) + 4) + body


def handmade(out_dir):
    """Edge cases no well-behaved client sends."""
    pkt = lambda body: struct.pack(">i", len(body) + 4) + body
    startup = {
        "gssenc": pkt(struct.pack(">I", GSSENC_REQUEST)),
        "ssl-trailing": pkt(struct.pack(">I", SSL_REQUEST) + b"\0"),
        "cancel-3.2-key": pkt(struct.pack(">Ii", CANCEL_REQUEST, 4242) + bytes(range(32))),
        "cancel-key-too-long": pkt(struct.pack(">Ii", CANCEL_REQUEST, 1) + b"k" * 257),
        "startup-3.2": pkt(struct.pack(">I", (3 << 16) | 2) + b"user\0u\0_pq_.x\0y\0\0"),
        "startup-unterminated": pkt(struct.pack(">I", 3 << 16) + b"user\0u\0"),
        "startup-not-utf8": pkt(struct.pack(">I", 3 << 16) + b"user\0\xff\0\0"),
        "length-negative": struct.pack(">iI", -1, SSL_REQUEST),
        "length-max": struct.pack(">iI", 10000, 3 << 16) + b"user\0",
        "ssl-then-plaintext": pkt(struct.pack(">I", SSL_REQUEST)) + pkt(struct.pack(">I", 3 << 16) + b"\0"),
    }
    for name, data in startup.items():
        write(out_dir, "startup_packet", f"hand-{name}", bytes([3]) + data)
    stream = (frame(b"C", b"SELECT 1\0") + frame(b"Z", b"T") + frame(b"D", bytes(300))
              + frame(b"Z", b"I") + frame(b"Z", b"") + frame(b"Z", b"II") + frame(b"N", b"x\0")
              + frame(b"X", b""))
    write(out_dir, "frame_tracker", "hand-ready-for-query", bytes([1, 3, 2, 0, 1]) + stream)
    write(out_dir, "frame_tracker", "hand-short-length",
          bytes([2, 0, 1, 5]) + frame(b"Z", b"I") + b"Z\0\0\0\x03")
    write(out_dir, "frame_tracker", "hand-huge-length",
          bytes([0, 5, 1, 63]) + b"d\x7f\xff\xff\xff" + bytes(64))
    scram = {
        # flags: bit 0 TLS, bits 1-2 user (alice, ghost, sidecar), bit 3 loopback peer,
        # bit 4 raw, bits 5-7 read chunk size.
        "plus-over-tls": (0b0110_0001, b"SCRAM-SHA-256-PLUS\np=tls-server-end-point,,n=,r=abc\nc=@C,r=@N,p=@P"),
        "downgrade-y-over-tls": (0b0000_0001, b"SCRAM-SHA-256\ny,,n=,r=abc\nc=@C,r=@N,p=@P"),
        "plus-without-tls": (0b0000_0000, b"SCRAM-SHA-256-PLUS\np=tls-server-end-point,,n=,r=abc\nc=@C,r=@N,p=@P"),
        "unknown-user": (0b0000_0010, b"SCRAM-SHA-256\nn,,n=,r=abc\nc=@C,r=@N,p=@P"),
        "trust-from-outside": (0b0000_0100, b"SCRAM-SHA-256\nn,,n=,r=abc\nc=@C,r=@N,p=@P"),
        "trust-from-loopback": (0b0000_1100, b""),
        "wrong-proof": (0b0000_0000, b"SCRAM-SHA-256\nn,,n=,r=abc\nc=@C,r=@N,p=AAAA"),
        "extensions": (0b0000_0000, b"SCRAM-SHA-256\nn,,n=,r=abc,x=y\nc=@C,r=@N,x=1,p=@P"),
        "raw-bad-length": (0b1001_0000, b"p\0\0\0\x02"),
        "raw-wrong-type": (0b1001_0000, frame(b"Q", b"select 1\0")),
    }
    for name, (flags, data) in scram.items():
        write(out_dir, "scram_exchange", f"hand-{name}", bytes([flags]) + data)
    allowed = DEFAULT_ALLOWED.encode()
    params = {
        "escapes": (rb"-c search_path=a\ b\\c -cstatement_timeout=1 --lock-timeout=2", b""),
        "role": (b"", b"user\0u\0role\0postgres"),
        "options-role": (b"-c role=postgres", b"options\0-c role=postgres"),
        "trailing-backslash": (b"-c a=b\\", b"options\0-c search_path=b\\"),
        "switch": (b"-F -B 100", b"options\0-F"),
        "no-value": (b"-c", b"options\0-c statement_timeout"),
        "pq-and-replication": (b"", b"_pq_.x\0y\0replication\0database\0database\0d"),
        "twice": (b"", b"options\0-c lock_timeout=1\0options\0--statement-timeout=2"),
        "whitespace-kinds": (b"-c\x0bsearch_path=x\x0c-c\rlock_timeout=1\t", b""),
    }
    for name, (options, rest) in params.items():
        write(out_dir, "startup_parameters", f"hand-{name}", options + b"\0" + allowed + b"\0" + rest)
    # Configuration files: [secret slot, line to insert it before, text] (see config_loader.rs).
    here = os.path.dirname(os.path.abspath(__file__))
    with open(os.path.join(here, "..", "config", "pgwarden.example.toml"), "rb") as f:
        example = f.read()
    base = (b'[listen]\nrequire_tls = false\nallow = ["127.0.0.1"]\n[[users]]\nname = "u"\n'
            b'auth = "trust"\ntrust_from = ["127.0.0.1"]\n[[routes]]\ndatabase = "db"\n'
            b'users = ["u"]\ncredentials = "pg"\n'
            b'upstream = { host = "127.0.0.1", tls = "disable", allow_insecure_auth = true }\n'
            b'[credentials.pg]\nsource = "postgres"\nadmin_user = "admin"\n')
    configs = {
        "example-verifier": (0, 255, example),
        "example-approle": (2, 255, example),
        "example-vault-token-env": (21, 0, example),
        "base-admin-password": (4, 255, base),
        "base-unterminated": (7, 255, base),
        "base-unquoted": (6, 3, base),
        "base-in-listen": (3, 3, base),
        "base-verifier-shape": (8, 4, base),
        "base-listen-override": (10, 0, base),
        "base-vault-auth-override": (15, 0, base),
        "empty": (0, 0, b""),
    }
    for name, (slot, line, text) in configs.items():
        write(out_dir, "config_loader", name, bytes([slot, line]) + text)


def client_kind(stream):
    """psql, psycopg or pgjdbc, from the startup packet's parameters."""
    _, startup = None, pre_startup_packets(stream)[0]
    params = dict(startup_params(startup[-1])) if startup else {}
    app = params.get(b"application_name", b"")
    if app.startswith(b"PostgreSQL JDBC") or b"extra_float_digits" in params:
        return "pgjdbc"
    if app == b"psql" or app == b"seed":
        return "psql"
    if startup and struct.unpack(">I", startup[-1][4:8])[0] == CANCEL_REQUEST:
        return "cancel"
    return "libpq"


if __name__ == "__main__":
    main()
