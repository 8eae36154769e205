"""Duplicate-key storms through pgshunt (driven by test_storm.sh).

16 clients insert the same keys at the same moment, with a plain INSERT, ON CONFLICT
DO NOTHING and ON CONFLICT DO UPDATE, in the phase the console has set.  Asserted:
exactly one winner per key (one success for plain inserts, the others 23505; one
RETURNING row for DO NOTHING), every DO UPDATE applied, one row per key in the table,
and in the mirroring phases next_table holding the same rows, identical.

usage: storm.py APP_CONNINFO DIRECT_CONNINFO PHASE
"""
import sys
import threading

import psycopg

CLIENTS = 16
KEYS = 40

app, direct, phase = sys.argv[1], sys.argv[2], sys.argv[3]
site = "storm-" + phase


def run_clients(work):
    """Start CLIENTS threads on their own connections and release them together."""
    barrier = threading.Barrier(CLIENTS)
    results = [None] * CLIENTS
    errors = []

    def client(i):
        try:
            with psycopg.connect(app, autocommit=True) as conn:
                barrier.wait(timeout=30)
                results[i] = work(conn, i)
        except Exception as e:  # reported below: a storm must not lose a client
            errors.append(repr(e))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    return results


def storm_plain(conn, i):
    wins, dups = 0, 0
    for k in range(KEYS):
        try:
            conn.execute(
                "INSERT INTO ingest_idempotency (site_id, idempotency_key, request_hash, status)"
                " VALUES (%s, %s, %s, 'processing')", (site, f"plain-{k}", bytes([i])))
            wins += 1
        except psycopg.errors.UniqueViolation as e:
            assert e.sqlstate == "23505", e.sqlstate
            dups += 1
    return wins, dups


def storm_nothing(conn, i):
    wins = 0
    for k in range(KEYS):
        cur = conn.execute(
            "INSERT INTO ingest_idempotency (site_id, idempotency_key, request_hash)"
            " VALUES (%s, %s, %s) ON CONFLICT (site_id, idempotency_key) DO NOTHING"
            " RETURNING created_at", (site, f"nothing-{k}", bytes([i])))
        rows = cur.fetchall()
        assert cur.rowcount == len(rows) and len(rows) <= 1, (cur.rowcount, rows)
        wins += len(rows)
    return wins


def storm_update(conn, i):
    for k in range(KEYS):
        cur = conn.execute(
            "INSERT INTO ingest_idempotency AS t (site_id, idempotency_key, request_hash, response_code)"
            " VALUES (%s, %s, %s, 1) ON CONFLICT (site_id, idempotency_key)"
            " DO UPDATE SET response_code = t.response_code + 1 RETURNING response_code",
            (site, f"update-{k}", bytes([i])))
        assert cur.rowcount == 1
    return KEYS


plain = run_clients(storm_plain)
assert sum(w for w, _ in plain) == KEYS, f"plain INSERT winners: {plain}"
assert sum(d for _, d in plain) == KEYS * (CLIENTS - 1), f"plain INSERT 23505s: {plain}"
nothing = run_clients(storm_nothing)
assert sum(nothing) == KEYS, f"DO NOTHING winners: {sum(nothing)} for {KEYS} keys"
run_clients(storm_update)

with psycopg.connect(direct, autocommit=True) as db:
    per_key = db.execute(
        "SELECT count(*), count(DISTINCT idempotency_key) FROM ingest_idempotency"
        " WHERE site_id = %s", (site,)).fetchone()
    assert per_key == (3 * KEYS, 3 * KEYS), f"rows and keys in the table: {per_key}"
    applied = db.execute(
        "SELECT min(response_code), max(response_code) FROM ingest_idempotency"
        " WHERE site_id = %s AND idempotency_key LIKE 'update-%%'", (site,)).fetchone()
    assert applied == (CLIENTS, CLIENTS), f"DO UPDATE applied {applied}, want {CLIENTS} each"
    if phase != "passthrough":
        differ = db.execute(
            "SELECT count(*) FROM ingest_idempotency o FULL JOIN ingest_idempotency_next n"
            " USING (site_id, idempotency_key) WHERE coalesce(o.site_id, n.site_id) = %s"
            " AND (o IS NULL OR n IS NULL OR row(o.*)::text <> row(n.*)::text)",
            (site,)).fetchone()[0]
        assert differ == 0, f"{differ} keys differ between the table and next_table"
print(f"storm {phase}: {CLIENTS} clients x {KEYS} keys x 3 kinds: one winner per key")
