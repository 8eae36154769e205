"""Statements through pgshunt against the same statements on the original table.

Runs a list of statements (simple protocol, unnamed extended, named prepared) on two
databases holding the same rows: one through pgshunt in the phase the test set, one
straight to PostgreSQL with the table as it was before the migration.  Each answer is
reduced to what a client can see: status, command tag, RowDescription (names, the
table and column each field says it comes from, by name, types, modifiers), the rows
(sorted: a partitioned table returns them in another order), and on error every
field but the source location (SQLSTATE, message, detail, hint, context, schema,
table, constraint).  Any difference fails.

usage: compare.py PROXY_CONNINFO PROXY_DIRECT_CONNINFO REFERENCE_CONNINFO SET [SITE]
  SET: "claim" (cutover and finalized), "cutover" (claim + what only cutover keeps
       as on the table) or "degraded" (new keys only: the buffer checks nothing; and
       no constraint failures: they name the buffer, docs/ENGINE.md)
"""
import os
import sys

sys.dont_write_bytecode = True  # no __pycache__ in the tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pganswer  # noqa: E402  the reduction of answers, shared with corpus_compare.py

proxy_dsn, proxy_direct_dsn, ref_dsn, which = sys.argv[1:5]
S = "cmp-" + (sys.argv[5] if len(sys.argv) > 5 else which)  # the rows' site_id
DAY = "date_trunc('day', now())"

claim = [
    (f"INSERT INTO ingest_idempotency (site_id, idempotency_key, request_hash) VALUES ('{S}', 'a', '\\x01') ON CONFLICT (site_id, idempotency_key) DO NOTHING RETURNING site_id, idempotency_key, status, response_code", None),
    (f"INSERT INTO ingest_idempotency (site_id, idempotency_key, request_hash) VALUES ('{S}', 'a', '\\x01') ON CONFLICT (site_id, idempotency_key) DO NOTHING RETURNING site_id, idempotency_key, status, response_code", None),
    (f"INSERT INTO ingest_idempotency (site_id, idempotency_key, request_hash, status) VALUES ('{S}', 'a', '\\x02', 'processing')", None),
    (f"INSERT INTO ingest_idempotency VALUES ('{S}', 'b', '\\x03', 'completed', 200, '{{\"x\": 1}}', {DAY} + interval '1 hour', {DAY} + interval '25 hours') RETURNING *", None),
    (f"INSERT INTO ingest_idempotency AS i (site_id, idempotency_key, request_hash) VALUES ('{S}', 'a', ''), ('{S}', 'c', ''), ('{S}', 'd', '') ON CONFLICT DO NOTHING RETURNING i.idempotency_key", None),
    (f"INSERT INTO ingest_idempotency (site_id, idempotency_key, request_hash) SELECT '{S}', 'g' || g, '\\x00' FROM generate_series(1, 5) AS g RETURNING idempotency_key, request_hash", None),
    (f"INSERT INTO ingest_idempotency (site_id, idempotency_key, request_hash) SELECT '{S}', 'g' || g, '\\x00' FROM generate_series(4, 8) AS g ON CONFLICT (site_id, idempotency_key) DO NOTHING", None),
    (f"INSERT INTO ingest_idempotency (site_id, idempotency_key, request_hash) SELECT '{S}', 'g' || g, '\\x00' FROM generate_series(8, 9) AS g", None),
    ("INSERT INTO ingest_idempotency (site_id, idempotency_key, request_hash) VALUES ($1, $2, $3) ON CONFLICT (site_id, idempotency_key) DO NOTHING RETURNING idempotency_key, status", [S, "p1", b"\x07"]),
    ("INSERT INTO ingest_idempotency (site_id, idempotency_key, request_hash) VALUES ($1, $2, $3) ON CONFLICT (site_id, idempotency_key) DO NOTHING RETURNING idempotency_key, status", [S, "p1", b"\x07"]),
    ("INSERT INTO ingest_idempotency (site_id, idempotency_key, request_hash, status) VALUES ($1, $2, $3, 'processing')", [S, "p1", b"\x08"]),
    ("INSERT INTO ingest_idempotency (site_id, idempotency_key, request_hash, status) VALUES ($1, $2, $3, 'processing')", [S, "p2", b"\x08"]),
    (f"UPDATE ingest_idempotency SET status = 'completed', response_code = 201 WHERE site_id = '{S}' AND idempotency_key IN ('a', 'b') RETURNING idempotency_key, status, response_code", None),
    (f"UPDATE ingest_idempotency SET response_body = '{{\"ok\": true}}' WHERE site_id = '{S}' AND idempotency_key LIKE 'g%'", None),
    ("UPDATE ingest_idempotency SET status = 'failed' WHERE site_id = $1 AND idempotency_key = $2", [S, "p2"]),
    (f"DELETE FROM ingest_idempotency WHERE site_id = '{S}' AND idempotency_key = 'g1' RETURNING idempotency_key, status", None),
    (f"DELETE FROM ingest_idempotency WHERE site_id = '{S}' AND idempotency_key = 'nobody'", None),
    (f"SELECT site_id, idempotency_key, request_hash, status, response_code, response_body FROM ingest_idempotency WHERE site_id = '{S}'", None),
    (f"SELECT i.idempotency_key, i.status FROM ingest_idempotency AS i WHERE i.site_id = '{S}' FOR UPDATE", None),
    ("SELECT count(*), count(DISTINCT site_id) FROM ingest_idempotency", None),
    ("SELECT status, response_code FROM ingest_idempotency WHERE site_id = $1 AND idempotency_key = $2", [S, "a"]),
    # ON CONFLICT DO UPDATE: inserted, updated (EXCLUDED and the alias), skipped by WHERE.
    (f"INSERT INTO ingest_idempotency AS t (site_id, idempotency_key, request_hash, response_code) VALUES ('{S}', 'u1', '\\x01', 1) ON CONFLICT (site_id, idempotency_key) DO UPDATE SET response_code = t.response_code + EXCLUDED.response_code, request_hash = excluded.request_hash WHERE t.status <> 'failed' RETURNING idempotency_key, response_code, request_hash", None),
    (f"INSERT INTO ingest_idempotency AS t (site_id, idempotency_key, request_hash, response_code) VALUES ('{S}', 'u1', '\\x02', 5) ON CONFLICT (site_id, idempotency_key) DO UPDATE SET response_code = t.response_code + EXCLUDED.response_code, request_hash = excluded.request_hash WHERE t.status <> 'failed' RETURNING idempotency_key, response_code, request_hash", None),
    (f"INSERT INTO ingest_idempotency AS t (site_id, idempotency_key, request_hash, response_code) VALUES ('{S}', 'u1', '\\x03', 10), ('{S}', 'u2', '\\x03', 7) ON CONFLICT (site_id, idempotency_key) DO UPDATE SET response_code = t.response_code + EXCLUDED.response_code WHERE t.status <> 'failed' RETURNING idempotency_key, response_code", None),
    (f"UPDATE ingest_idempotency SET status = 'failed' WHERE site_id = '{S}' AND idempotency_key = 'u2'", None),
    (f"INSERT INTO ingest_idempotency AS t (site_id, idempotency_key, request_hash, response_code) VALUES ('{S}', 'u2', '', 1), ('{S}', 'u1', '', 1) ON CONFLICT (site_id, idempotency_key) DO UPDATE SET response_code = t.response_code + EXCLUDED.response_code WHERE t.status <> 'failed' RETURNING idempotency_key, response_code", None),
    (f"INSERT INTO ingest_idempotency (site_id, idempotency_key, request_hash) VALUES ('{S}', 'u1', '\\x09') ON CONFLICT ON CONSTRAINT ingest_idempotency_pkey DO UPDATE SET response_body = coalesce(ingest_idempotency.response_body, '{{}}') || jsonb_build_object('h', Excluded.request_hash), status = 'completed' RETURNING site_id, idempotency_key, request_hash, status, response_code, response_body", None),
    (f"INSERT INTO ingest_idempotency (site_id, idempotency_key, request_hash) VALUES ('{S}', 'u1', '') ON CONFLICT (site_id, idempotency_key) DO UPDATE SET response_code = (SELECT count(*) FROM generate_series(1, length(excluded.site_id)))", None),
    ("INSERT INTO ingest_idempotency (site_id, idempotency_key, request_hash) VALUES ($1, $2, $3) ON CONFLICT (site_id, idempotency_key) DO UPDATE SET request_hash = EXCLUDED.request_hash RETURNING idempotency_key, request_hash", [S, "u3", b"\x05"]),
    # EXCLUDED in a string, a comment, quoted, spaced, as a JSON key: only the real ones are the proposed row.
    (f"INSERT INTO ingest_idempotency AS excluded_t (site_id, idempotency_key, request_hash, status) VALUES ('{S}', 'u3', '\\x06', 'failed') ON CONFLICT (site_id, idempotency_key) DO UPDATE SET response_body = jsonb_build_object('excluded.status', \"excluded\" . status, 'old', excluded_t.status) /* excluded.status */, status = EXCLUDED.status WHERE excluded_t.status <> excluded.status RETURNING idempotency_key, status, response_body", None),
    (f"SELECT idempotency_key, status, response_code, request_hash, response_body FROM ingest_idempotency WHERE site_id = '{S}' AND idempotency_key LIKE 'u%'", None),
]
# In cutover the claim writes old first: a failing row names old as the table would.
# In finalized it names the partition, as PostgreSQL does for any partitioned table.
cutover_only = [
    (f"INSERT INTO public.ingest_idempotency (site_id, idempotency_key, request_hash, status, created_at, expires_at) VALUES ('{S}', 'e', '', 'bogus', {DAY}, {DAY})", None),
    (f"INSERT INTO ingest_idempotency (site_id, idempotency_key, request_hash, created_at, expires_at) VALUES ('{S}', NULL, '', {DAY}, {DAY})", None),
]
degraded = [
    (f"INSERT INTO ingest_idempotency (site_id, idempotency_key, request_hash) VALUES ('{S}', 'a', '\\x01') ON CONFLICT (site_id, idempotency_key) DO NOTHING RETURNING site_id, idempotency_key, status, response_code", None),
    (f"INSERT INTO ingest_idempotency VALUES ('{S}', 'b', '\\x03', 'completed', 200, '{{\"x\": 1}}', {DAY} + interval '1 hour', {DAY} + interval '25 hours') RETURNING *", None),
    (f"INSERT INTO ingest_idempotency AS i (site_id, idempotency_key, request_hash) VALUES ('{S}', 'c', ''), ('{S}', 'd', '') ON CONFLICT DO NOTHING RETURNING i.idempotency_key", None),
    (f"INSERT INTO ingest_idempotency (site_id, idempotency_key, request_hash) SELECT '{S}', 'g' || g, '\\x00' FROM generate_series(1, 5) AS g RETURNING idempotency_key, request_hash", None),
    ("INSERT INTO ingest_idempotency (site_id, idempotency_key, request_hash) VALUES ($1, $2, $3) ON CONFLICT (site_id, idempotency_key) DO NOTHING RETURNING idempotency_key, status", [S, "p1", b"\x07"]),
    ("INSERT INTO ingest_idempotency (site_id, idempotency_key, request_hash, status) VALUES ($1, $2, $3, 'processing')", [S, "p2", b"\x08"]),
    (f"INSERT INTO ingest_idempotency (site_id, idempotency_key, request_hash) VALUES ('{S}', 'u1', '') ON CONFLICT (site_id, idempotency_key) DO UPDATE SET status = EXCLUDED.status RETURNING idempotency_key, status", None),
    ("INSERT INTO ingest_idempotency (site_id, idempotency_key, request_hash) VALUES ($1, $2, $3) ON CONFLICT (site_id, idempotency_key) DO UPDATE SET request_hash = EXCLUDED.request_hash RETURNING idempotency_key, request_hash", [S, "u2", b"\x05"]),
]
stmts = {"claim": claim, "cutover": claim + cutover_only, "degraded": degraded}[which]

class Side(pganswer.Side):
    def run(self, sql, params):
        pg = self.conn.pgconn
        if params is None:
            return [("simple", self.reduce(pg.exec_(sql.encode())))]
        self.n += 1
        name = b"cmp%d" % self.n
        enc = [p if isinstance(p, bytes) else p.encode() for p in params]
        fmts = [1 if isinstance(p, bytes) else 0 for p in params]
        got = [("unnamed", self.reduce(pg.exec_params(sql.encode(), enc, None, fmts)))]
        got.append(("prepare", self.reduce(pg.prepare(name, sql.encode()))))
        got.append(("describe", self.reduce(pg.describe_prepared(name))))
        if which != "degraded":  # the same key twice: the buffer checks nothing
            got.append(("named", self.reduce(pg.exec_prepared(name, enc, fmts))))
        return got


proxy = Side(proxy_dsn, proxy_direct_dsn)
ref = Side(ref_dsn, ref_dsn)
bad = 0
for sql, params in stmts:
    a, b = proxy.run(sql, params), ref.run(sql, params)
    for (how, x), (_, y) in zip(a, b):
        if x != y:
            bad += 1
            print(f"DIFFERS ({how}): {sql}\n  pgshunt:  {x}\n  original: {y}", file=sys.stderr)
if bad:
    sys.exit(f"{bad} answers differ from the original table's")
print(f"compare {which} ({S}): {len(stmts)} statements, answers identical to the original table's")
