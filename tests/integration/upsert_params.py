"""ON CONFLICT DO UPDATE with $n parameters in its SET list or WHERE, through pgshunt
against the same statements on the original table (driven by test_upsert_params.sh).

In cutover and finalized such an upsert goes through the claim view, whose trigger
runs the clause (docs/ENGINE.md, "Key uniqueness on a partitioned target"); pgshunt
must hand it the values of the parameters the clause uses.  The same sequence of
statements runs on two databases holding the same rows: through pgshunt (in the
phase the test set) and straight to a reference database whose table was never
migrated.  Every answer is reduced by pganswer.py (status, command tag,
RowDescription, rows, error fields but the source location; a Describe of a
prepared statement also its ParameterDescription) and must be equal; afterwards the
table's rows read through pgshunt (the keys touched, and a digest of the whole table)
must equal the reference's.

What runs, each with parameters in the clause:
  1. DO UPDATE SET col = $n on a key that exists (updated) and on a new key
     (inserted), RETURNING (xmax = 0) AS inserted and columns; a multi-row VALUES;
  2. $n in DO UPDATE's WHERE: true (updated), false (INSERT 0 0, no row), a bare
     untyped `WHERE $n` (boolean);
  3. parameters used only in the clause: undeclared (OID 0, the server infers them
     from SET), declared (text, int4, int8, jsonb), partly declared, numbered before
     the VALUES ones, one used in both VALUES and the clause;
  4. expressions: t.col + $n, $n::jsonb, coalesce($n, t.col) with NULL, with
     EXCLUDED, in a sub-SELECT;
  5. one prepared statement executed several times (libpq, psycopg prepare=True);
     explicit transactions (COMMIT, ROLLBACK); two named portals of two upserts bound
     before either runs and executed the other way round (Bind p1, Bind p2, Bind p3,
     Execute p2, Execute p1, Execute p3), on a raw protocol connection;
  6. values with quotes, backslashes, é and 日本, `*/` and `/*`, `--`, `$1`;
  7. parameters sent in binary format and used in the clause: the types pgshunt writes
     as text (int4, text, psycopg's int, float, bool, date, timestamptz, uuid, numeric, with
     the type declared in the Parse) answer as on the table; one whose type pgshunt
     does not write (interval), or whose type the Parse left to the server (libpq
     without types, a statement prepared without them), is refused through pgshunt:
     SQLSTATE
     0A000, message "pgshunt refuses ..."; the session answers SELECT 1 afterwards
     and the same prepared statement runs with text parameters.  (The reference
     would run those: MODE direct compares them instead.)  A binary parameter used
     only in VALUES (bytea) goes through everywhere in 1.
  8. a duplicate plain INSERT with parameters: 23505 as the table's.

Protocols: libpq's PQsendQueryParams (unnamed statement), PQsendPrepare +
PQsendDescribePrepared + PQsendQueryPrepared (named), psycopg's cursor.execute with
prepare=False and prepare=True (psycopg sends an int as binary for %s; most
statements pass ints with %t, item 7 with %s), and the raw protocol for named portals.

usage: upsert_params.py PROXY_CONNINFO PROXY_DIRECT_CONNINFO REF_CONNINFO PHASE MODE
  PHASE: cutover or finalized (names the rows' site_id and the seed rows touched)
  MODE:  proxy, or direct (PROXY_CONNINFO is a second database never migrated: checks
         this script; binary parameters are compared instead of expected refused)
"""
import datetime
import decimal
import json
import os
import socket
import struct
import uuid
import sys

sys.dont_write_bytecode = True  # no __pycache__ in the tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pganswer  # noqa: E402  the reduction of answers, shared with compare.py
import psycopg  # noqa: E402
from psycopg import pq  # noqa: E402
from psycopg.conninfo import conninfo_to_dict  # noqa: E402
from psycopg.types.json import Jsonb  # noqa: E402

proxy_dsn, proxy_direct_dsn, ref_dsn, phase, mode = sys.argv[1:6]
assert phase in ("cutover", "finalized") and mode in ("proxy", "direct"), sys.argv
S = "upt-" + phase  # the rows' site_id
# Rows of the seed (test_upsert_params.sh) each phase updates: keys present before
# the migration, so in old and next alike.
SEED = {"cutover": [("seed-1", "k1"), ("seed-2", "k2")],
        "finalized": [("seed-3", "k3"), ("seed-4", "k4")]}[phase]

TEXT, INT4, INT8, BYTEA, JSONB = 25, 23, 20, 17, 3802
BIN = 1

INS = ("INSERT INTO ingest_idempotency AS t (site_id, idempotency_key, request_hash) VALUES ($1, $2, $3)"
       " ON CONFLICT (site_id, idempotency_key) DO UPDATE SET ")
RET = " RETURNING site_id, idempotency_key, request_hash, status, t.response_code, response_body, (xmax = 0) AS inserted"
PSY = ("INSERT INTO ingest_idempotency AS t (site_id, idempotency_key, request_hash) VALUES (%s, %s, %s)"
       " ON CONFLICT (site_id, idempotency_key) DO UPDATE SET ")


def enc(v):
    return None if v is None else v if isinstance(v, bytes) else str(v).encode()


class Side(pganswer.Side):
    """One database: libpq-level and psycopg-level statements on one connection."""

    def __init__(self, dsn, catalog_dsn):
        super().__init__(dsn, catalog_dsn)
        self.dsn = dsn

    def results(self):
        pg, out = self.conn.pgconn, []
        while True:
            res = pg.get_result()
            if res is None:
                return out
            out.append(self.reduce(res))

    def reduce(self, res):
        out = super().reduce(res)
        if res.status == pq.ExecStatus.COMMAND_OK and res.nparams:  # Describe of a statement
            out["params"] = [res.param_type(i) for i in range(res.nparams)]
        return out

    def simple(self, sql):
        self.conn.pgconn.send_query(sql.encode())
        return self.results()

    def params(self, sql, values, types=None, formats=None):
        """Parse (unnamed), Bind, Describe, Execute, Sync; types padded with 0 (undeclared)."""
        if types:
            types = list(types) + [0] * (len(values) - len(types))
        self.conn.pgconn.send_query_params(sql.encode(), [enc(v) for v in values], types, formats)
        return self.results()

    def prepare(self, name, sql, types=None):
        """Parse (named), Sync; Describe the statement, Sync."""
        self.conn.pgconn.send_prepare(name.encode(), sql.encode(), types)
        got = self.results()
        self.conn.pgconn.send_describe_prepared(name.encode())
        return got + self.results()

    def execp(self, name, values, formats=None):
        """Bind (unnamed portal of the named statement), Execute, Sync."""
        self.conn.pgconn.send_query_prepared(name.encode(), [enc(v) for v in values], formats)
        return self.results()

    def psy(self, sql, values, prepare):
        """psycopg's cursor.execute: extended protocol, named statement if prepare."""
        cur = self.conn.cursor()
        try:
            cur.execute(sql, values, prepare=prepare)
        except psycopg.Error as e:
            d = e.diag
            return [{"status": "FATAL_ERROR", "tag": b"", "error": [
                d.sqlstate, d.severity_nonlocalized, d.message_primary, d.message_detail,
                d.message_hint, d.context, d.schema_name, d.table_name, d.column_name,
                d.constraint_name]}]
        return [self.reduce(cur.pgresult)]


class Wire:
    """A raw protocol connection (trust authentication), for what libpq cannot send:
    named portals."""

    def __init__(self, dsn):
        d = conninfo_to_dict(dsn)
        self.sock = socket.create_connection((d.get("host", "127.0.0.1"), int(d.get("port", 5432))), timeout=20)
        body = b"".join(k.encode() + b"\0" + d[k].encode() + b"\0" for k in ("user", "dbname") if k in d)
        body = body.replace(b"dbname\0", b"database\0") + b"client_encoding\0UTF8\0\0"
        self.sock.sendall(struct.pack("!ii", 8 + len(body), 196608) + body)
        for kind, payload in self.until_ready():
            if kind == b"R" and struct.unpack("!i", payload[:4])[0] != 0:
                raise SystemExit(f"raw connection to {dsn}: authentication other than trust")
            if kind == b"E":
                raise SystemExit(f"raw connection to {dsn}: {payload!r}")
        self.out = []

    def read(self, n):
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise SystemExit("raw connection closed by the server")
            buf += chunk
        return buf

    def until_ready(self):
        msgs = []
        while True:
            kind = self.read(1)
            (n,) = struct.unpack("!i", self.read(4))
            msgs.append((kind, self.read(n - 4)))
            if kind == b"Z":
                return msgs

    def msg(self, kind, body):
        self.out.append(kind + struct.pack("!i", 4 + len(body)) + body)

    def parse(self, name, sql, types=()):
        self.msg(b"P", name.encode() + b"\0" + sql.encode() + b"\0" + struct.pack("!h", len(types))
                 + b"".join(struct.pack("!I", t) for t in types))

    def bind(self, portal, stmt, values):  # text parameters, text results
        body = portal.encode() + b"\0" + stmt.encode() + b"\0" + struct.pack("!hh", 0, len(values))
        for v in values:
            body += struct.pack("!i", -1) if v is None else struct.pack("!i", len(enc(v))) + enc(v)
        self.msg(b"B", body + struct.pack("!h", 0))

    def describe_portal(self, portal):
        self.msg(b"D", b"P" + portal.encode() + b"\0")

    def execute(self, portal):
        self.msg(b"E", portal.encode() + b"\0" + struct.pack("!i", 0))

    def sync(self):
        self.msg(b"S", b"")
        self.sock.sendall(b"".join(self.out))
        self.out = []
        return self.until_ready()

    def query(self, sql):
        self.msg(b"Q", sql.encode() + b"\0")
        self.sock.sendall(b"".join(self.out))
        self.out = []
        return self.until_ready()

    def close(self):
        self.sock.sendall(b"X\0\0\0\4")
        self.sock.close()


ERR_CODES = b"CVMDHWstcn"  # pganswer.ERR_FIELDS, as protocol field codes


def reduce_wire(side, msgs):
    """The messages a client sees, in order, reduced like pganswer (no source location,
    table OIDs by name); notices and parameter status left out."""
    out = []
    for kind, p in msgs:
        if kind == b"T":
            (n,), pos, fields = struct.unpack("!h", p[:2]), 2, []
            for _ in range(n):
                end = p.index(b"\0", pos)
                name = p[pos:end]
                table, col, typ, _size, mod, fmt = struct.unpack("!IhIhih", p[end + 1:end + 19])
                fields.append((name, side.column(table, col), typ, mod, fmt))
                pos = end + 19
            out.append(("T", fields))
        elif kind == b"D":
            (n,), pos, row = struct.unpack("!h", p[:2]), 2, []
            for _ in range(n):
                (ln,) = struct.unpack("!i", p[pos:pos + 4])
                pos += 4
                row.append(None if ln < 0 else p[pos:pos + ln])
                pos += max(ln, 0)
            out.append(("D", row))
        elif kind == b"E":
            fields = {}
            for part in p.rstrip(b"\0").split(b"\0"):
                fields[part[:1]] = part[1:]
            out.append(("E", [fields.get(bytes([c])) for c in ERR_CODES]))
        elif kind in (b"C", b"Z"):
            out.append((kind.decode(), p.rstrip(b"\0")))
        elif kind in (b"1", b"2", b"3", b"n", b"s", b"I"):
            out.append((kind.decode(), None))
    return out


proxy = Side(proxy_dsn, proxy_direct_dsn)
ref = Side(ref_dsn, ref_dsn)
steps = []  # (label, what(side) -> answers, where): "both" compared, "refused" through pgshunt only


def step(label, where="both"):
    def add(fn):
        steps.append((label, fn, where))
        return fn
    return add


def upsert(label, clause, values, types=None, formats=None, ret=RET):
    steps.append((label, lambda x: x.params(INS + clause + ret, values, types, formats), "both"))


# Rows of this phase's site that exist before the upserts: e1..e40, status
# processing, response_code 100 + n, response_body {"g": n}.
step("setup: 40 rows (plain INSERT, simple protocol)")(lambda x: x.simple(
    f"INSERT INTO ingest_idempotency (site_id, idempotency_key, request_hash, status, response_code, response_body)"
    f" SELECT '{S}', 'e' || g, '\\x01', 'processing', 100 + g, jsonb_build_object('g', g) FROM generate_series(1, 40) AS g"))

# --- 1. SET col = $n: updated, inserted ---
C1 = "status = $4, response_code = $5"
upsert("1 libpq unnamed, existing key (bytea binary in VALUES)", C1, [S, "e1", b"\x02", "completed", "201"], None, [0, 0, BIN, 0, 0])
upsert("1 libpq unnamed, new key", C1, [S, "n1", b"\x02", "completed", "201"], None, [0, 0, BIN, 0, 0])
upsert("1 libpq unnamed, a seed row", C1, [SEED[0][0], SEED[0][1], "\\x0102", "failed", "502"])
upsert("1 libpq unnamed, WHERE on the row", C1 + " WHERE t.response_code > 0", [S, "e2", "\\x02", "completed", "202"])
for prep in (False, True):
    sql = PSY + "status = %t, response_code = %t" + RET
    steps.append((f"1 psycopg prepare={prep}, existing key", lambda x, sql=sql, p=prep:
                  x.psy(sql, (S, "e3" if not p else "e4", b"\x03", "completed", 203), p), "both"))
    steps.append((f"1 psycopg prepare={prep}, new key", lambda x, sql=sql, p=prep:
                  x.psy(sql, (S, "n2" if not p else "n3", b"\x03", "failed", 503), p), "both"))
    steps.append((f"1 psycopg prepare={prep}, seed row", lambda x, sql=sql, p=prep:
                  x.psy(sql, (SEED[1][0], SEED[1][1], b"\x04", "completed", 204 + p), p), "both"))
step("1 multi-row VALUES, one existing and one new key")(lambda x: x.params(
    "INSERT INTO ingest_idempotency AS t (site_id, idempotency_key, request_hash) VALUES ($1, $2, $3), ($1, $4, $3)"
    " ON CONFLICT (site_id, idempotency_key) DO UPDATE SET response_code = $5, status = $6" + RET,
    [S, "e5", "\\x05", "n4", "205", "completed"]))
upsert("1 RETURNING only the flag", "response_code = $4", [S, "e5", "", "206"], ret=" RETURNING (xmax = 0) AS inserted")
upsert("1 no RETURNING", "response_code = $4", [S, "e5", "", "207"], ret="")

# --- 2. $n in the WHERE ---
C2 = "status = $4 WHERE t.status <> $5"
upsert("2 WHERE true: updated", C2, [S, "e6", "", "failed", "completed"])
upsert("2 WHERE false: INSERT 0 0", C2, [S, "e6", "", "completed", "failed"])
upsert("2 WHERE false, new key: inserted", C2, [S, "n5", "", "completed", "processing"])
upsert("2 bare WHERE $5 (boolean inferred), true", "response_code = $4 WHERE $5", [S, "e7", "", "1", "true"])
upsert("2 bare WHERE $5 (boolean inferred), false", "response_code = $4 WHERE $5", [S, "e7", "", "2", "false"])
upsert("2 WHERE with a parameter of VALUES and one of the clause", "status = 'failed' WHERE t.site_id = $1 AND t.response_code < $4",
       [S, "e8", "", "150"])
for prep in (False, True):
    sql = PSY + "status = %t WHERE t.response_code < %t" + RET
    steps.append((f"2 psycopg prepare={prep}, WHERE true", lambda x, sql=sql, p=prep:
                  x.psy(sql, (S, "e9", b"", "completed" if p else "failed", 1000), p), "both"))
    steps.append((f"2 psycopg prepare={prep}, WHERE false", lambda x, sql=sql, p=prep:
                  x.psy(sql, (S, "e9", b"", "processing", 0), p), "both"))

# --- 3. parameters only in the clause: undeclared, declared ---
C3 = "status = $4, response_code = $5, response_body = $6 WHERE t.status IS DISTINCT FROM $4"
for name, types in (("upt_undeclared", None), ("upt_declared", [TEXT, TEXT, BYTEA, TEXT, INT4, JSONB]),
                    ("upt_partly", [0, TEXT, 0, TEXT]), ("upt_int8", [TEXT, TEXT, BYTEA, TEXT, INT8, JSONB])):
    step(f"3 prepare {name} {types}, Describe")(lambda x, n=name, t=types: x.prepare(n, INS + C3 + RET, t))
    k = {"upt_undeclared": 10, "upt_declared": 11, "upt_partly": 12, "upt_int8": 13}[name]
    step(f"3 execute {name}, existing key")(lambda x, n=name, k=k: x.execp(n, [S, f"e{k}", "\\x0a", "completed", str(k), '{"declared": "%d"}' % k]))
    step(f"3 execute {name}, new key")(lambda x, n=name, k=k: x.execp(n, [S, f"n{k}", "\\x0a", "completed", str(k), '{"n": %d}' % k]))
SQL3 = ("INSERT INTO ingest_idempotency AS t (site_id, idempotency_key, request_hash) VALUES ($2, $3, $4)"
        " ON CONFLICT (site_id, idempotency_key) DO UPDATE SET status = $1" + RET)
step("3 prepare: the clause's parameter numbered before VALUES's, Describe")(lambda x: x.prepare("upt_first", SQL3))
step("3 execute: the clause's parameter numbered before VALUES's")(lambda x: x.execp("upt_first", ["failed", S, "e14", "\\x0e"]))
step("3 unnamed: the clause's parameter numbered before VALUES's, declared text")(lambda x: x.params(SQL3, ["completed", S, "e14", "\\x0e"], [TEXT]))
step("3 prepare: a parameter of VALUES used in the clause too, Describe")(lambda x: x.prepare(
    "upt_both", INS + "request_hash = $3, status = $4" + RET))
step("3 execute: a parameter of VALUES used in the clause too")(lambda x: x.execp("upt_both", [S, "e15", "\\x0a0b", "failed"]))
upsert("3 unnamed, declared int4 only for the clause's", "response_code = $4", [S, "e16", "", "316"], [0, 0, 0, INT4])
upsert("3 unnamed, declared jsonb", "response_body = $4", [S, "e16", "", '{"j": [1, 2]}'], [0, 0, 0, JSONB])

# --- 4. expressions ---
upsert("4 t.response_code + $4", "response_code = t.response_code + $4", [S, "e17", "", "5"])
upsert("4 $4::jsonb", "response_body = $4::jsonb", [S, "e18", "", '{"a": [1, "two"]}'])
upsert("4 coalesce($4, t.status) with NULL", "status = coalesce($4, t.status)", [S, "e19", "", None])
# The SET list breaks the table's CHECK: the error names the table (not next's
# partition, which the claim's UPDATE writes), as on the table.  On a seed row: its
# timestamps, in the failing row the DETAIL shows, are the same in both databases.
upsert("4 a CHECK the SET list breaks", "status = $4", [SEED[0][0], SEED[0][1], "", "bogus"])
upsert("4 a NOT NULL the SET list breaks", "request_hash = $4", [SEED[0][0], SEED[0][1], "", None], [0, 0, 0, BYTEA])
upsert("4 coalesce($4, t.status) with a value", "status = coalesce($4, t.status)", [S, "e20", "", "failed"])
upsert("4 coalesce($4, t.status) with NULL declared text", "status = coalesce($4, t.status)", [S, "e20", "", None], [0, 0, 0, TEXT])
step("4 with EXCLUDED")(lambda x: x.params(
    "INSERT INTO ingest_idempotency AS t (site_id, idempotency_key, request_hash, response_code) VALUES ($1, $2, $3, $4)"
    " ON CONFLICT (site_id, idempotency_key) DO UPDATE SET response_code = t.response_code + EXCLUDED.response_code * $5,"
    " response_body = coalesce(t.response_body, '{}') || jsonb_build_object('note', $6::text, 'h', EXCLUDED.request_hash)"
    " WHERE EXCLUDED.response_code <> $5" + RET, [S, "e21", "\\x15", "3", "10", "excl"]))
upsert("4 in a sub-SELECT", "response_code = (SELECT max(g) FROM generate_series(1, $4) AS g)", [S, "e22", "", "9"])
upsert("4 $4 twice, cast and bare", "response_body = jsonb_build_object('a', $4::text, 'b', length($4))", [S, "e22", "", "twice"])
for prep in (False, True):
    steps.append((f"4 psycopg prepare={prep}, Jsonb (declared jsonb, text)", lambda x, p=prep: x.psy(
        PSY + "response_body = %s, response_code = t.response_code + %t" + RET,
        (S, "e23", b"", Jsonb({"psy": "é", "p": p}), 1), p), "both"))
    steps.append((f"4 psycopg prepare={prep}, coalesce with None", lambda x, p=prep: x.psy(
        PSY + "status = coalesce(%s, t.status)" + RET, (S, "e24", b"", None), p), "both"))

# --- 5. one prepared statement, several executions; transactions; named portals ---
C5 = "status = $4, response_code = coalesce(t.response_code, 0) + $5 WHERE t.status <> $6"
step("5 prepare upt_many, Describe")(lambda x: x.prepare("upt_many", INS + C5 + RET))
for i, vals in enumerate([["e25", "completed", "1", "failed"], ["e25", "failed", "2", "completed"],
                          ["e25", "processing", "3", "failed"], ["n25", "completed", "4", "failed"],
                          ["n25", "failed", "5", "processing"], ["e26", "completed", "6", "failed"]]):
    step(f"5 execute upt_many #{i + 1} {vals}")(lambda x, v=vals: x.execp("upt_many", [S, v[0], "\\x19", v[1], v[2], v[3]]))
for i, vals in enumerate([("e27", "completed", 1), ("e28", "failed", 2), ("n27", "completed", 3), ("e27", "failed", 4)]):
    steps.append((f"5 psycopg prepare=True #{i + 1} {vals}", lambda x, v=vals: x.psy(
        PSY + "status = %t, response_code = %t WHERE t.status <> %t" + RET,
        (S, v[0], b"\x1b", v[1], v[2], "failed"), True), "both"))
step("5 BEGIN; two upserts; ROLLBACK")(lambda x: x.simple("BEGIN") + x.params(INS + C1 + RET, [S, "e29", "", "failed", "529"])
                                        + x.params(INS + C1 + RET, [S, "n29", "", "failed", "529"]) + x.simple("ROLLBACK"))
step("5 BEGIN; two upserts; COMMIT")(lambda x: x.simple("BEGIN") + x.params(INS + C1 + RET, [S, "e30", "", "failed", "530"])
                                      + x.params(INS + C5 + RET, [S, "e30", "", "completed", "1", "completed"]) + x.simple("COMMIT"))
step("5 rows after the transactions")(lambda x: x.simple(
    f"SELECT idempotency_key, status, response_code FROM ingest_idempotency WHERE site_id = '{S}' AND idempotency_key IN ('e29', 'n29', 'e30')"))


@step("5 named portals in a transaction: Bind p1, p2, p3, Execute p2, p1, p3")
def portals(x):
    w = Wire(x.dsn)
    got = reduce_wire(x, w.query("BEGIN"))
    w.parse("upt_s1", INS + C1 + RET)
    w.parse("upt_s2", INS + "response_code = t.response_code + $4, response_body = $5::jsonb WHERE t.status <> $6" + RET)
    w.bind("upt_p1", "upt_s1", [S, "e31", "\\x1f", "completed", "311"])
    w.bind("upt_p2", "upt_s2", [S, "e32", "\\x20", "1000", '{"portal": 2}', "failed"])
    w.bind("upt_p3", "upt_s1", [S, "e32", "\\x20", "failed", "313"])
    w.describe_portal("upt_p1")
    w.describe_portal("upt_p2")
    w.execute("upt_p2")
    w.execute("upt_p1")
    w.execute("upt_p3")
    got += reduce_wire(x, w.sync())
    got += reduce_wire(x, w.query(f"SELECT idempotency_key, status, response_code, response_body FROM ingest_idempotency"
                                  f" WHERE site_id = '{S}' AND idempotency_key IN ('e31', 'e32') ORDER BY 1"))
    got += reduce_wire(x, w.query("COMMIT"))
    w.close()
    return got


# --- 6. values that look like SQL, quotes, backslashes, non-ASCII ---
STRINGS = ["it's", "back\\slash \\x41 \\\\", "é 日本", "a */ b /* c", "-- not a comment", "$1 $4 ?", '"quoted"',
           "*/ SELECT 1; /*", "');DROP TABLE ingest_idempotency;--"]
for i, s in enumerate(STRINGS):
    upsert(f"6 libpq {s!r}", "response_body = jsonb_build_object('m*/', $4::text) /* it's */", [S, f"e{33 + i % 4}", "", s])
    steps.append((f"6 psycopg prepare={bool(i % 2)} {s!r}", lambda x, s=s, i=i: x.psy(
        PSY + "response_body = jsonb_build_object('m', %t::text, 'n', %t)" + RET, (S, f"s{i}", b"", s, i), bool(i % 2)), "both"))
upsert("6 jsonb text with all of them, undeclared", "response_body = $4",
       [S, "e37", "", json.dumps(STRINGS, ensure_ascii=False)])
upsert("6 new key with them", "status = $4", [S, "n-日本-*/-'", "", "completed"])
step("6 rows after")(lambda x: x.params(
    "SELECT idempotency_key, response_body FROM ingest_idempotency WHERE site_id = $1 AND (idempotency_key LIKE 's%' OR idempotency_key LIKE 'n-%' OR idempotency_key IN ('e33', 'e34', 'e35', 'e36', 'e37'))", [S]))

# --- 7. binary parameters used in the clause: written as text by pgshunt ---
BIN_CASES = [
    ("7 libpq unnamed, int4 binary in SET", lambda x: x.params(INS + "response_code = $4" + RET, [S, "e38", "", struct.pack("!i", 701)], [0, 0, 0, INT4], [0, 0, 0, BIN])),
    ("7 libpq unnamed, text binary in WHERE", lambda x: x.params(INS + "status = 'failed' WHERE t.status <> $4" + RET, [S, "e38", "", b"completed"], [0, 0, 0, TEXT], [0, 0, 0, BIN])),
    ("7 psycopg %b text", lambda x: x.psy(PSY + "status = %b" + RET, (S, "e38", b"", "failed"), False)),
    ("7 psycopg %s int (psycopg's default: binary)", lambda x: x.psy(PSY + "response_code = %s" + RET, (S, "e38", b"", 702), False)),
    ("7 psycopg prepare=True %s int", lambda x: x.psy(PSY + "response_code = %s" + RET, (S, "e38", b"", 703), True)),
    ("7 psycopg %s float, bool, date, timestamptz, uuid",
     lambda x: x.psy(PSY + "response_code = t.response_code + %s::int, status = CASE WHEN %s THEN 'failed' ELSE t.status END,"
                     " response_body = jsonb_build_object('d', %s, 'ts', %s, 'u', %s, 'neg', %s, 'big', %s, 'huge', %s, 'dec', %b, 'tiny', %b)" + RET,
                     (S, "e38", b"", 2.75, True, datetime.date(1999, 12, 31),
                      datetime.datetime(2024, 2, 29, 23, 59, 58, 123456, tzinfo=datetime.timezone.utc),
                      uuid.UUID("12345678-9abc-def0-1234-56789abcdef0"), -5, 2 ** 40, -2 ** 70,
                      decimal.Decimal("-123456.789000"), decimal.Decimal("0.000001")), False)),
]
REFUSED_CASES = [
    ("7 libpq unnamed, bytea binary in VALUES and the clause, type left to the server", lambda x: x.params(INS + "request_hash = $3" + RET, [S, "e38", b"\x07\x07"], None, [0, 0, BIN])),
    ("7 named statement prepared without types, int4 binary", lambda x: x.execp("upt_bin", [S, "e38", "", struct.pack("!i", 704)], [0, 0, 0, BIN])),
    ("7 libpq binary int4, type left to the server", lambda x: x.params(INS + "response_code = $4" + RET, [S, "e38", "", struct.pack("!i", 706)], None, [0, 0, 0, BIN])),
    ("7 libpq binary interval", lambda x: x.params(INS + "expires_at = t.expires_at + $4" + RET, [S, "e38", "", struct.pack("!qii", 3600000000, 0, 0)], [0, 0, 0, 1186], [0, 0, 0, BIN])),
]
step("7 prepare upt_bin, Describe")(lambda x: x.prepare("upt_bin", INS + "response_code = $4" + RET))
for label, fn in BIN_CASES:
    steps.append((label, fn, "both"))
for label, fn in REFUSED_CASES:
    steps.append((label, fn, "refused" if mode == "proxy" else "both"))
step("7 upt_bin with a text parameter after the refusals")(lambda x: x.execp("upt_bin", [S, "e38", "", "705"]))
upsert("7 binary only in VALUES, text in the clause", "status = $4", [S, "e39", b"\x27", "failed"], None, [0, 0, BIN, 0])

# --- 8. sanity: a duplicate plain INSERT ---
DUP = "INSERT INTO ingest_idempotency (site_id, idempotency_key, request_hash) VALUES ($1, $2, $3)"
step("8 duplicate plain INSERT, libpq")(lambda x: x.params(DUP, [S, "e1", "\\x01"]))
steps.append(("8 duplicate plain INSERT, psycopg prepare=True",
              lambda x: x.psy(DUP.replace("$1", "%s").replace("$2", "%s").replace("$3", "%s"), (S, "e2", b""), True), "both"))

# The rows this phase touched, read back through pgshunt.
ROWS = ("SELECT site_id, idempotency_key, request_hash, status, response_code, response_body,"
        " expires_at - created_at AS ttl FROM ingest_idempotency WHERE site_id = $1 OR (site_id, idempotency_key) IN (($2, $3), ($4, $5))")
step("rows touched, read through pgshunt")(lambda x: x.params(ROWS, [S, SEED[0][0], SEED[0][1], SEED[1][0], SEED[1][1]]))
step("the whole table: count and a digest")(lambda x: x.simple(
    "SELECT count(*), md5(string_agg(concat_ws('|', site_id, idempotency_key, request_hash, status, response_code, response_body,"
    " CASE WHEN site_id LIKE 'seed-%' THEN created_at::text ELSE (expires_at - created_at)::text END), ',' ORDER BY site_id, idempotency_key))"
    " FROM ingest_idempotency"))


def text(v):
    return v.decode() if isinstance(v, bytes) else v


def error_of(a):
    """(SQLSTATE, message) of an answer that is an error, else None."""
    e = a.get("error") if isinstance(a, dict) else (a[1] if a[0] == "E" else None)
    return (text(e[0]), text(e[2])) if e else None


def short(answers):
    """One line for a step's answers: an error as SQLSTATE and message, else the tag."""
    def one(a):
        if isinstance(a, dict) and "exception" in a:
            return a["exception"]
        e = error_of(a)
        if e:
            return f"ERROR {e[0]}: {e[1]}"
        if isinstance(a, tuple):  # raw protocol
            return a[0] + (f" {text(a[1])}" if a[0] in ("C", "Z") else "")
        return f"{a['status']} {text(a['tag'])}".strip()
    return "; ".join(one(a) for a in answers)


def run(fn, side):
    try:
        return fn(side)
    except Exception as e:  # a broken connection, a timeout: the step differs
        return [{"exception": f"{type(e).__name__}: {e}"}]


# The first differences are printed in full, the others in one line each, those where
# pgshunt answered with the same error grouped in one line; UPT_ALL=1 prints all in full.
FULL = 1000 if os.environ.get("UPT_ALL") else 2
bad, refusals, shown, grouped = 0, [], 0, {}
for label, fn, where in steps:
    if where == "refused":
        got = run(fn, proxy)
        e = error_of(got[0]) if len(got) == 1 and "exception" not in got[0] else None
        if not (e and e[0] == "0A000" and e[1].startswith("pgshunt refuses")):
            bad += 1
            print(f"NOT REFUSED [{phase}] {label}: {short(got)}", file=sys.stderr)
        after = run(lambda x: x.params("SELECT 1", []), proxy)
        if [a.get("rows") for a in after] != [[[b"1"]]]:
            bad += 1
            print(f"UNUSABLE [{phase}] after {label}: SELECT 1 answered {short(after)}", file=sys.stderr)
        continue
    a, b = run(fn, proxy), run(fn, ref)
    if a == b:
        continue
    bad += 1
    refusals += [e[1] for e in map(error_of, a) if e and e[0] == "0A000"]
    if shown < FULL:
        print(f"DIFFERS [{phase}] {label}\n  pgshunt:  {a}\n  original: {b}", file=sys.stderr)
    elif any(error_of(x) for x in a) and not any(error_of(x) for x in b):
        grouped.setdefault(short(a), []).append(label)
    else:
        print(f"DIFFERS [{phase}] {label}: pgshunt {short(a)[:200]} | original {short(b)[:200]}", file=sys.stderr)
    shown += 1
for answer, labels in grouped.items():
    print(f"DIFFERS [{phase}] {len(labels)} more steps where pgshunt answered {answer[:300]} (the original table"
          f" did not fail): {', '.join(labels)}", file=sys.stderr)

if bad:
    why = f"; pgshunt answered 0A000 {len(refusals)} times, e.g. \"{refusals[0]}\"" if refusals else ""
    sys.exit(f"upsert_params {phase}: {bad} of {len(steps)} steps differ from the original table's{why}")
print(f"upsert_params {phase} ({S}, {mode}): {len(steps)} steps, answers and rows identical to the original table's")
