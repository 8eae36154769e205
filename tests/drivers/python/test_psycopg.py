#!/usr/bin/python3
"""psycopg 3 through PGHOST/PGPORT: SCRAM login, typed parameters, server-side prepared
statements (explicit and automatic), errors, COPY in/out, LISTEN/NOTIFY, cancel, pipeline
mode, executemany and TLS verify-full.  Exits non-zero at the first failed check.
Run with Debian's python3 (python3-psycopg); needs the environment of
tests/integration/run.sh."""

import datetime as dt
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid
from decimal import Decimal

import psycopg
from psycopg import errors, sql
from psycopg.types.json import Jsonb

LIMIT_S = 60


def env(name):
    v = os.environ.get(name)
    if not v:
        print(f"FAIL: {name} is not set (run through tests/integration/run.sh)", file=sys.stderr)
        sys.exit(2)
    return v


HOST, PORT, DB = env("PGHOST"), env("PGPORT"), env("PGDATABASE")
CA_FILE = env("SHUNT_CA_FILE")
SCRAM = dict(host=HOST, port=PORT, dbname=DB, user="shunt_scram", password="scram-secret",
             connect_timeout=10)
TABLE = f"t_psycopg_{os.getpid()}_{random.randrange(10**9)}"
T = sql.Identifier(TABLE)


class Failed(Exception):
    pass


def check(cond, what):
    if not cond:
        raise Failed(what)


def eq(got, want, what):
    if got != want:
        raise Failed(f"{what}: got {got!r}, want {want!r}")


def raises(exc, fn, what):
    try:
        fn()
    except exc as e:
        return e
    raise Failed(f"expected {exc.__name__}: {what}")


class Timeout(Exception):
    pass


class alarm:
    """Raise Timeout in the main thread if the block takes longer than secs."""

    def __init__(self, secs, what):
        self.secs, self.what = secs, what

    def _fire(self, *_):
        raise Timeout(f"timed out after {self.secs} s: {self.what}")

    def __enter__(self):
        self.old = signal.signal(signal.SIGALRM, self._fire)
        signal.alarm(self.secs)

    def __exit__(self, *exc):
        signal.alarm(0)
        signal.signal(signal.SIGALRM, self.old)


conns = []


def connect(**kw):
    c = psycopg.connect(**{**SCRAM, "autocommit": True, **kw})
    conns.append(c)
    return c


def prepared_count(conn, marker):
    """How many statements containing marker the server has prepared in this session."""
    cur = conn.cursor()
    cur.execute("SELECT count(*) FROM pg_prepared_statements WHERE statement LIKE %s",
                (f"%{marker}%",), prepare=False)
    return cur.fetchone()[0]


# --- the steps -------------------------------------------------------------------------

def t_scram(ctx):
    c = ctx["c"] = connect()
    eq(c.execute("SELECT current_user").fetchone()[0], "shunt_scram", "current_user")
    e = raises(psycopg.OperationalError, lambda: psycopg.connect(**{**SCRAM, "password": "wrong"}),
               "login with a wrong password")
    check("password authentication failed" in str(e), f"wrong password message: {e}")


def t_types(ctx):
    c = ctx["c"]
    cur = c.cursor()
    cur.execute(sql.SQL("""CREATE TABLE {} (id int PRIMARY KEY, t text, b bytea, j jsonb,
        ts timestamptz, n numeric, a int[], u uuid, d date, f boolean, z text)""").format(T))
    eq(cur.statusmessage, "CREATE TABLE", "CREATE TABLE status")
    ts = dt.datetime(2024, 2, 29, 12, 34, 56, 789123, tzinfo=dt.timezone.utc)
    row = (1, "ünïcode ☃ 'q'", b"\x00\x01\xfe\xff", Jsonb({"a": [1, None, "x"]}), ts,
           Decimal("12345678901234567890.0123456789"), [3, 1, 2], uuid.UUID(int=12345),
           dt.date(1999, 12, 31), True, None)
    cur.execute(sql.SQL("INSERT INTO {} VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)").format(T), row)
    eq(cur.statusmessage, "INSERT 0 1", "INSERT status")
    eq(cur.rowcount, 1, "INSERT rowcount")
    got = cur.execute(sql.SQL("SELECT * FROM {} WHERE id = %s").format(T), (1,)).fetchone()
    eq(got[0], 1, "int")
    eq(got[1], "ünïcode ☃ 'q'", "text")
    eq(got[2], b"\x00\x01\xfe\xff", "bytea")
    eq(got[3], {"a": [1, None, "x"]}, "jsonb")
    eq(got[4], ts, "timestamptz")
    eq(got[5], Decimal("12345678901234567890.0123456789"), "numeric")
    eq(got[6], [3, 1, 2], "int[]")
    eq(got[7], uuid.UUID(int=12345), "uuid")
    eq(got[8], dt.date(1999, 12, 31), "date")
    eq(got[9], True, "boolean")
    eq(got[10], None, "null")
    eq(cur.execute("SELECT %s::int + %s::int, %s::bigint * 2", (2, 3, 2**62 - 1)).fetchone(),
       (5, 2**63 - 2), "arithmetic")
    # binary parameters and results
    bcur = c.cursor(binary=True)
    eq(bcur.execute("SELECT %b::int * 2, %b::text, %b::bytea", (21, "bin", b"\x00\xff")).fetchone(),
       (42, "bin", b"\x00\xff"), "binary format")
    big = os.urandom(1024 * 1024)
    cur.execute(sql.SQL("INSERT INTO {} (id, b) VALUES (%s, %s)").format(T), (2, big))
    eq(cur.execute(sql.SQL("SELECT b FROM {} WHERE id = 2").format(T)).fetchone()[0], big, "1 MB bytea")


def t_prepared(ctx):
    c = connect()  # a fresh session: nothing prepared yet
    cur = c.cursor()
    marker = f"m_explicit_{os.getpid()}"
    eq(prepared_count(c, marker), 0, "prepared before any run")
    for i in range(20):
        cur.execute(f"SELECT %s::int * 2 AS {marker}", (i,), prepare=True)
        eq(cur.fetchone()[0], i * 2, "prepare=True result")
    eq(prepared_count(c, marker), 1, "prepare=True: statements on the server")

    auto = f"m_auto_{os.getpid()}"
    eq(c.prepare_threshold, 5, "default prepare_threshold")
    cur.execute(f"SELECT %s::text AS {auto}", ("x",))
    eq(prepared_count(c, auto), 0, "prepared after one run")
    for i in range(10):
        eq(cur.execute(f"SELECT %s::text AS {auto}", (f"v{i}",)).fetchone()[0], f"v{i}", "auto result")
    eq(prepared_count(c, auto), 1, "auto-prepared after 11 runs")
    # a prepared statement that fails keeps working afterwards
    ins = sql.SQL("INSERT INTO {} (id, t) VALUES (%s, %s)").format(T)
    for i in range(10):
        cur.execute(ins, (100 + i, "prep"), prepare=True)
    e = raises(errors.UniqueViolation, lambda: cur.execute(ins, (100, "dup"), prepare=True), "dup")
    eq(e.sqlstate, "23505", "sqlstate")
    cur.execute(ins, (110, "after"), prepare=True)
    eq(c.execute(sql.SQL("SELECT count(*) FROM {} WHERE t IN ('prep', 'after')").format(T)).fetchone()[0],
       11, "rows inserted by the prepared statement")


def t_errors(ctx):
    c = ctx["c"]
    e = raises(psycopg.errors.UniqueViolation,
               lambda: c.execute(sql.SQL("INSERT INTO {} (id) VALUES (%s)").format(T), (1,)), "duplicate key")
    eq(e.sqlstate, "23505", "duplicate key sqlstate")
    eq(e.diag.constraint_name, f"{TABLE}_pkey", "constraint name")
    e = raises(psycopg.errors.UndefinedTable, lambda: c.execute(f"SELECT * FROM no_such_{TABLE}"), "missing table")
    eq(e.sqlstate, "42P01", "missing table sqlstate")
    e = raises(psycopg.errors.DivisionByZero, lambda: c.execute("SELECT 1 / %s", (0,)), "division by zero")
    eq(e.sqlstate, "22012", "division by zero sqlstate")
    # transactions: an error rolls back the block, a clean one commits
    try:
        with c.transaction():
            c.execute(sql.SQL("INSERT INTO {} (id, t) VALUES (200, 'tx')").format(T))
            c.execute(sql.SQL("INSERT INTO {} (id, t) VALUES (1, 'dup')").format(T))
        raise Failed("the transaction with a duplicate key committed")
    except errors.UniqueViolation:
        pass
    eq(c.execute(sql.SQL("SELECT count(*) FROM {} WHERE id = 200").format(T)).fetchone()[0], 0, "rolled back")
    with c.transaction():
        c.execute(sql.SQL("INSERT INTO {} (id, t) VALUES (201, 'tx')").format(T))
    eq(c.execute(sql.SQL("SELECT count(*) FROM {} WHERE id = 201").format(T)).fetchone()[0], 1, "committed")
    eq(c.execute("SELECT 'alive'").fetchone()[0], "alive", "after errors")


def t_copy(ctx):
    c = ctx["c"]
    cur = c.cursor()
    n = 5000
    with cur.copy(sql.SQL("COPY {} (id, t) FROM STDIN").format(T)) as copy:
        for i in range(n):
            copy.write_row((10000 + i, f"copy\t{i}\n"))
    eq(cur.rowcount, n, "COPY FROM rowcount")
    eq(c.execute(sql.SQL("SELECT count(*) FROM {} WHERE id >= 10000").format(T)).fetchone()[0], n, "rows copied in")
    with cur.copy(sql.SQL("COPY (SELECT id, t FROM {} WHERE id >= 10000 ORDER BY id) TO STDOUT").format(T)) as copy:
        copy.set_types(["int4", "text"])
        rows = list(copy.rows())
    eq(len(rows), n, "rows copied out")
    eq(rows[0], (10000, "copy\t0\n"), "first row copied out")
    eq(rows[-1], (10000 + n - 1, f"copy\t{n - 1}\n"), "last row copied out")
    eq(cur.rowcount, n, "COPY TO rowcount")
    # binary COPY both ways
    with cur.copy(sql.SQL("COPY {} (id, b) FROM STDIN (FORMAT BINARY)").format(T)) as copy:
        copy.set_types(["int4", "bytea"])
        for i in range(100):
            copy.write_row((20000 + i, bytes([i]) * i))
    with cur.copy(sql.SQL("COPY (SELECT id, b FROM {} WHERE id >= 20000 ORDER BY id) TO STDOUT (FORMAT BINARY)")
                  .format(T)) as copy:
        copy.set_types(["int4", "bytea"])
        rows = list(copy.rows())
    eq(len(rows), 100, "binary rows")
    eq(rows[99], (20099, bytes([99]) * 99), "binary row")
    eq(c.execute("SELECT 1").fetchone()[0], 1, "after COPY")


def t_notify(ctx):
    c = ctx["c"]
    listener = connect()
    channel = f"ch_psycopg_{os.getpid()}"
    listener.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
    pid = c.execute("SELECT pg_backend_pid()").fetchone()[0]
    c.execute("SELECT pg_notify(%s, %s)", (channel, "payload ☃"))
    c.execute(sql.SQL("NOTIFY {}, 'second'").format(sql.Identifier(channel)))
    got = []
    with alarm(10, "waiting for the notifications"):
        for n in listener.notifies():
            got.append(n)
            if len(got) == 2:
                break
    eq([(n.channel, n.payload, n.pid) for n in got],
       [(channel, "payload ☃", pid), (channel, "second", pid)], "notifications")


def t_cancel(ctx):
    c = connect()
    timer = threading.Timer(0.5, c.cancel)
    t0 = time.monotonic()
    timer.start()
    try:
        e = raises(psycopg.errors.QueryCanceled, lambda: c.execute("SELECT pg_sleep(30)"), "pg_sleep(30)")
    finally:
        timer.cancel()
    eq(e.sqlstate, "57014", "cancel sqlstate")
    check(time.monotonic() - t0 < 10, "the cancel took too long")
    eq(c.execute("SELECT 'after cancel'").fetchone()[0], "after cancel", "after cancel")


def t_pipeline(ctx):
    c = ctx["c"]
    cur = c.cursor()
    ins = sql.SQL("INSERT INTO {} (id, t) VALUES (%s, %s)").format(T)
    with c.pipeline() as p:
        for i in range(500):
            cur.execute(ins, (30000 + i, f"pipe {i}"))
        sel = c.cursor()
        sel.execute(sql.SQL("SELECT count(*) FROM {} WHERE id >= 30000 AND id < 31000").format(T))
        p.sync()
        eq(sel.fetchone()[0], 500, "count inside the pipeline")
    eq(c.execute(sql.SQL("SELECT count(*), sum(id) FROM {} WHERE id >= 30000 AND id < 31000").format(T)).fetchone(),
       (500, 500 * 30000 + 124750), "rows inserted in pipeline mode")
    # an error in a pipelined transaction rolls it back
    try:
        with c.pipeline(), c.transaction():
            for i in range(10):
                cur.execute(ins, (31000 + i, "pipe tx"))
            cur.execute(ins, (30000, "dup"))
            cur.execute(ins, (31100, "never"))
        raise Failed("a pipelined transaction with a duplicate key did not fail")
    except errors.UniqueViolation:
        pass
    eq(c.execute(sql.SQL("SELECT count(*) FROM {} WHERE id >= 31000 AND id < 32000").format(T)).fetchone()[0], 0,
       "the failed pipelined transaction left rows")


def t_executemany(ctx):
    c = ctx["c"]
    cur = c.cursor()
    cur.executemany(sql.SQL("INSERT INTO {} (id, t) VALUES (%s, %s)").format(T),
                    [(40000 + i, f"many {i}") for i in range(300)])
    eq(cur.rowcount, 300, "executemany rowcount")
    eq(c.execute(sql.SQL("SELECT count(*) FROM {} WHERE t LIKE 'many %%'").format(T)).fetchone()[0], 300,
       "rows inserted by executemany")
    cur.executemany(sql.SQL("INSERT INTO {} (id, t) VALUES (%s, %s) RETURNING id").format(T),
                    [(50000 + i, "ret") for i in range(5)], returning=True)
    ids = []
    while True:
        ids.append(cur.fetchone()[0])
        if not cur.nextset():
            break
    eq(ids, [50000 + i for i in range(5)], "executemany RETURNING")


def t_tls(ctx):
    c = connect(host="localhost", sslmode="verify-full", sslrootcert=CA_FILE)
    check(c.pgconn.ssl_in_use, "the verify-full connection does not use TLS")
    eq(c.execute("SELECT current_user, %s::int", (7,)).fetchone(), ("shunt_scram", 7), "query over TLS")
    with tempfile.TemporaryDirectory() as d:
        subprocess.run(["openssl", "req", "-x509", "-new", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                        "-subj", "/CN=wrong CA", "-keyout", f"{d}/ca.key", "-out", f"{d}/ca.crt"],
                       check=True, capture_output=True)
        e = raises(psycopg.OperationalError,
                   lambda: psycopg.connect(**{**SCRAM, "host": "localhost", "sslmode": "verify-full",
                                              "sslrootcert": f"{d}/ca.crt"}), "TLS with a wrong CA")
        check("certificate verify failed" in str(e), f"wrong CA message: {e}")
    c2 = connect(sslmode="disable")
    check(not c2.pgconn.ssl_in_use, "sslmode=disable uses TLS")
    eq(c2.execute("SELECT 1").fetchone()[0], 1, "query without TLS")


STEPS = [
    ("SCRAM login (and a wrong password)", t_scram),
    ("parameters with types", t_types),
    ("server-side prepared statements (prepare=True and automatic)", t_prepared),
    ("errors and transactions", t_errors),
    ("COPY in and out", t_copy),
    ("LISTEN/NOTIFY", t_notify),
    ("conn.cancel() of pg_sleep", t_cancel),
    ("pipeline mode", t_pipeline),
    ("executemany", t_executemany),
    ("TLS verify-full", t_tls),
]


def cleanup():
    for c in conns:
        try:
            c.close()
        except Exception:
            pass
    try:
        with psycopg.connect(**SCRAM, autocommit=True) as c:
            c.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(T))
    except Exception as e:
        print(f"warning: cleanup failed: {e}", file=sys.stderr)


def main():
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    def hung():
        print(f"FAIL: test_psycopg: still running after {LIMIT_S + 30} s", file=sys.stderr, flush=True)
        os._exit(1)

    watchdog = threading.Timer(LIMIT_S + 30, hung)
    watchdog.daemon = True
    watchdog.start()
    deadline = time.monotonic() + LIMIT_S
    ctx = {}
    rc = 0
    try:
        for title, fn in STEPS:
            if time.monotonic() > deadline:
                raise Failed(f"over the {LIMIT_S} s limit")
            t0 = time.monotonic()
            try:
                fn(ctx)
            except Exception as e:
                print(f"FAIL: test_psycopg: {title}: {type(e).__name__}: {e}", file=sys.stderr)
                if not isinstance(e, Failed):
                    traceback.print_exc()
                rc = 1
                break
            print(f"ok - {title} ({(time.monotonic() - t0) * 1000:.0f} ms)", flush=True)
    finally:
        cleanup()
    if rc == 0:
        print("test_psycopg: all ok")
    return rc


if __name__ == "__main__":
    sys.exit(main())
