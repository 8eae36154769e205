"""Duplicate-key storms through pgshunt (driven by test_storm.sh).

16 clients insert the same keys at the same moment, with a plain INSERT, ON CONFLICT
DO NOTHING and ON CONFLICT DO UPDATE, in the phase the console has set.  Asserted:
exactly one winner per key (one success for plain inserts, the others 23505; one
RETURNING row for DO NOTHING), every DO UPDATE applied, one row per key in the table,
and in the mirroring phases next_table holding the same rows, identical.

cutover and finalized serve DO UPDATE through the claim view (every one applied) and
add a storm of REPEATABLE READ transactions, whose snapshot is taken before the competitors commit:
each gets its row, INSERT 0 0, or 40001, and still one row per key.  In finalized the
table's name is the partitioned table's.  PHASE "degraded" (DEGRADED on, any phase):
every insert is acknowledged with its row, and the buffer holds each one with its
conflict mode (and DO UPDATE's clause); nothing reaches the table.

PHASE "mixed" (the console in cutover): half the clients go through pgshunt, the
other half straight to PostgreSQL with the SQL a proxy still in read_next sends (old
first, mirrored with put_next), as during the switch from read_next to cutover: one
winner per key across both, every DO UPDATE applied (a deadlock between the two lock
orders is retried, as PostgreSQL reports it), the two tables identical.

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
            # "mixed": odd clients are a proxy still in read_next, straight to the server.
            with psycopg.connect(direct if mixed and i % 2 else app, autocommit=True) as conn:
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


# What a proxy in read_next sends for the two inserts (docs/ENGINE.md, "Mirroring").
READ_NEXT_MIRROR = " RETURNING pgshunt.put_next(ingest_idempotency)"


def storm_plain(conn, i):
    wins, dups = 0, 0
    tail = READ_NEXT_MIRROR if mixed and i % 2 else ""
    for k in range(KEYS):
        try:
            conn.execute(
                "INSERT INTO ingest_idempotency (site_id, idempotency_key, request_hash, status)"
                " VALUES (%s, %s, %s, 'processing')" + tail, (site, f"plain-{k}", bytes([i])))
            wins += 1
        except psycopg.errors.UniqueViolation as e:
            assert e.sqlstate == "23505", e.sqlstate
            dups += 1
    return wins, dups


def storm_nothing(conn, i):
    wins = 0
    tail = ", pgshunt.put_next(ingest_idempotency)" if mixed and i % 2 else ""
    for k in range(KEYS):
        cur = conn.execute(
            "INSERT INTO ingest_idempotency (site_id, idempotency_key, request_hash)"
            " VALUES (%s, %s, %s) ON CONFLICT (site_id, idempotency_key) DO NOTHING"
            " RETURNING created_at" + tail, (site, f"nothing-{k}", bytes([i])))
        rows = cur.fetchall()
        assert cur.rowcount == len(rows) and len(rows) <= 1, (cur.rowcount, rows)
        wins += len(rows)
    return wins


def storm_update(conn, i):
    # Unaliased: DEGRADED buffers the clause for the drain, which replays it on the
    # table's own name.
    tail = ", pgshunt.put_next(ingest_idempotency)" if mixed and i % 2 else ""
    for k in range(KEYS):
        # Across the switch a key's row is locked old then next by one side, next then
        # old by the other: PostgreSQL detects the deadlock, the application retries.
        for attempt in range(50):
            try:
                cur = conn.execute(
                    "INSERT INTO ingest_idempotency (site_id, idempotency_key, request_hash, response_code)"
                    " VALUES (%s, %s, %s, 1) ON CONFLICT (site_id, idempotency_key)"
                    " DO UPDATE SET response_code = ingest_idempotency.response_code + 1"
                    " RETURNING response_code" + tail,
                    (site, f"update-{k}", bytes([i])))
                break
            except psycopg.errors.DeadlockDetected:
                assert mixed, "deadlock outside the switch"
        assert cur.rowcount == 1, (cur.rowcount, k)
    return KEYS


def storm_rr(conn, i):
    """One REPEATABLE READ transaction per key, its snapshot taken before the storm."""
    got = {"row": 0, "skipped": 0, "40001": 0}
    for k in range(KEYS):
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        conn.execute("SELECT count(*) FROM ingest_idempotency WHERE site_id = %s", (site,))
        try:
            cur = conn.execute(
                "INSERT INTO ingest_idempotency (site_id, idempotency_key, request_hash)"
                " VALUES (%s, %s, %s) ON CONFLICT (site_id, idempotency_key) DO NOTHING"
                " RETURNING created_at", (site, f"rr-{k}", bytes([i])))
            got["row" if cur.fetchall() else "skipped"] += 1
            conn.execute("COMMIT")
        except psycopg.errors.SerializationFailure:
            got["40001"] += 1
            conn.execute("ROLLBACK")
    return got


degraded = phase == "degraded"
mixed = phase == "mixed"
plain = run_clients(storm_plain)
nothing = run_clients(storm_nothing)
run_clients(storm_update)
rr = run_clients(storm_rr) if phase in ("cutover", "finalized") else []

if degraded:
    # No unique check in the buffer (SPEC 2): every insert is acknowledged.
    assert sum(w for w, _ in plain) == KEYS * CLIENTS, f"buffered plain INSERTs: {plain}"
    assert sum(nothing) == KEYS * CLIENTS, f"buffered DO NOTHING rows: {sum(nothing)}"
    with psycopg.connect(direct, autocommit=True) as db:
        modes = dict(db.execute(
            "SELECT pgshunt_conflict, count(*) FROM ingest_fallback_buffer WHERE site_id = %s"
            " GROUP BY 1", (site,)).fetchall())
        assert modes == {"none": KEYS * CLIENTS, "nothing": KEYS * CLIENTS,
                         "update": KEYS * CLIENTS}, modes
        clauses = db.execute(
            "SELECT DISTINCT pgshunt_conflict_clause FROM ingest_fallback_buffer"
            " WHERE site_id = %s AND pgshunt_conflict = 'update'", (site,)).fetchall()
        assert clauses == [("ON CONFLICT (site_id, idempotency_key)"
                            " DO UPDATE SET response_code = ingest_idempotency.response_code + 1",)], clauses
        in_table = db.execute("SELECT count(*) FROM ingest_idempotency WHERE site_id = %s",
                              (site,)).fetchone()[0]
        assert in_table == 0, f"{in_table} rows reached the table in DEGRADED"
    print(f"storm degraded: {CLIENTS} clients x {KEYS} keys x 3 kinds: all buffered")
    sys.exit(0)

assert sum(w for w, _ in plain) == KEYS, f"plain INSERT winners: {plain}"
assert sum(d for _, d in plain) == KEYS * (CLIENTS - 1), f"plain INSERT 23505s: {plain}"
assert sum(nothing) == KEYS, f"DO NOTHING winners: {sum(nothing)} for {KEYS} keys"
if rr:
    rows = sum(r["row"] for r in rr)
    assert rows == KEYS, f"REPEATABLE READ winners: {rows} for {KEYS} keys ({rr})"
    assert sum(sum(r.values()) for r in rr) == KEYS * CLIENTS, rr

kinds = 3
kinds += 1 if rr else 0
with psycopg.connect(direct, autocommit=True) as db:
    per_key = db.execute(
        "SELECT count(*), count(DISTINCT idempotency_key) FROM ingest_idempotency"
        " WHERE site_id = %s", (site,)).fetchone()
    assert per_key == (kinds * KEYS, kinds * KEYS), f"rows and keys in the table: {per_key}"
    applied = db.execute(
        "SELECT min(response_code), max(response_code) FROM ingest_idempotency"
        " WHERE site_id = %s AND idempotency_key LIKE 'update-%%'", (site,)).fetchone()
    assert applied == (CLIENTS, CLIENTS), f"DO UPDATE applied {applied}, want {CLIENTS} each"
    if phase not in ("passthrough", "finalized"):
        differ = db.execute(
            "SELECT count(*) FROM ingest_idempotency o FULL JOIN ingest_idempotency_next n"
            " USING (site_id, idempotency_key) WHERE coalesce(o.site_id, n.site_id) = %s"
            " AND (o IS NULL OR n IS NULL OR row(o.*)::text <> row(n.*)::text)",
            (site,)).fetchone()[0]
        assert differ == 0, f"{differ} keys differ between the table and next_table"
rr_note = ""
if rr:
    rr_note = " (REPEATABLE READ: %d rows, %d skipped, %d 40001)" % tuple(
        sum(r[x] for r in rr) for x in ("row", "skipped", "40001"))
print(f"storm {phase}: {CLIENTS} clients x {KEYS} keys x {kinds} kinds: one winner per key{rr_note}")
