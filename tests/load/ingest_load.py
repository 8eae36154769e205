"""A steady ingest load that remembers what it was told, for the demo and the
migration tests.

Each client is a thread with its own connection (psycopg 3: extended protocol, and
named prepared statements after a few executions, so a phase switch meets statements
prepared under the previous phase).  A client loops over the application's round trip:

  claim    INSERT ... ON CONFLICT (site_id, idempotency_key) DO NOTHING RETURNING created_at
           on a new key, or on a key already claimed (a retry, as a real client sends
           after a timeout): a returned row means "first time".
  read     SELECT the stored outcome of the key.
  record   UPDATE the key's status to completed.
  legacy   now and then, the older code path: a plain INSERT of a new key, and of a
           claimed key, which must fail with 23505 (unique_violation), except while
           DEGRADED is on (the buffer has no unique check: SPEC §2).

What the clients saw is written to OUT (JSON) when the load stops: every key whose
insert was acknowledged, every unexpected error (a client error), and every lost connection.  The caller then
checks the table against it: each acknowledged key present exactly once (I1, I2).

The load runs until the file STOP exists (or --seconds pass).  Progress goes to stderr
every few seconds.

usage: ingest_load.py --dsn CONNINFO [--dsn CONNINFO ...] --out FILE
                      [--clients N] [--stop FILE] [--seconds S] [--site PREFIX]
"""
import argparse
import json
import os
import random
import sys
import threading
import time

import psycopg
from psycopg import errors

CLAIM = ("INSERT INTO ingest_idempotency (site_id, idempotency_key, request_hash) "
         "VALUES (%s, %s, %s) ON CONFLICT (site_id, idempotency_key) DO NOTHING "
         "RETURNING created_at")
READ = ("SELECT status, response_code, response_body, request_hash FROM ingest_idempotency "
        "WHERE site_id = %s AND idempotency_key = %s")
RECORD = ("UPDATE ingest_idempotency SET status = 'completed', response_code = %s, "
          "response_body = %s WHERE site_id = %s AND idempotency_key = %s")
LEGACY = ("INSERT INTO ingest_idempotency (site_id, idempotency_key, request_hash, status) "
          "VALUES (%s, %s, %s, 'processing')")

# A server or proxy that goes away ends a connection; the client reconnects, as an
# application's pool would.  Those are counted apart ("disconnects"), so that a test
# that kills a proxy can tell them from errors of statements on a live connection.
RETRYABLE = (psycopg.OperationalError,)


class Client(threading.Thread):
    def __init__(self, n, dsn, site, stop):
        super().__init__(daemon=True)
        self.n, self.dsn, self.site, self.stop = n, dsn, site, stop
        self.acked = []          # (site, key) whose insert succeeded
        self.claimed = []        # keys this client may retry
        self.errors = []         # unexpected errors, as strings
        self.disconnects = []    # connections lost or refused, as strings
        self.dup_expected = 0    # 23505 for a retried plain insert: the right answer
        self.round_trips = 0
        self.seq = 0

    def key(self):
        self.seq += 1
        return "%s-c%d-%d" % (self.site, self.n, self.seq)

    def round_trip(self, conn):
        site = "site-%d" % random.randint(1, 50)
        retry = self.claimed and random.random() < 0.3
        if retry:
            site, key = random.choice(self.claimed)
        else:
            key = self.key()
        row = conn.execute(CLAIM, (site, key, key.encode())).fetchone()
        if row is not None:
            self.acked.append((site, key))
            self.claimed.append((site, key))
            if len(self.claimed) > 200:
                self.claimed.pop(0)
        conn.execute(READ, (site, key)).fetchall()
        conn.execute(RECORD, (200, json.dumps({"ok": True}), site, key))
        if random.random() < 0.05:
            fresh = self.key()
            conn.execute(LEGACY, (site, fresh, b"legacy"))
            self.acked.append((site, fresh))
            self.claimed.append((site, fresh))
            old_site, old_key = random.choice(self.claimed)
            try:
                conn.execute(LEGACY, (old_site, old_key, b"legacy"))
                # Accepted: only right while DEGRADED buffers it; the drain decides.
                self.acked.append((old_site, old_key))
            except errors.UniqueViolation:
                self.dup_expected += 1
        self.round_trips += 1

    def run(self):
        conn = None
        while not self.stop.is_set():
            try:
                if conn is None:
                    conn = psycopg.connect(self.dsn, autocommit=True, connect_timeout=10)
                self.round_trip(conn)
            except RETRYABLE as e:
                self.disconnects.append("%s: %s" % (type(e).__name__, str(e).strip()))
                if conn is not None:
                    conn.close()
                conn = None
                time.sleep(0.2)
            except psycopg.Error as e:
                self.errors.append("%s %s: %s" % (type(e).__name__, e.sqlstate,
                                                  str(e).strip()))
        if conn is not None:
            conn.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dsn", action="append", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--stop")
    ap.add_argument("--seconds", type=float)
    ap.add_argument("--site", default="load")
    args = ap.parse_args()

    stop = threading.Event()
    clients = [Client(i, args.dsn[i % len(args.dsn)], args.site, stop)
               for i in range(args.clients)]
    for c in clients:
        c.start()
    started = time.time()
    last = started
    while True:
        time.sleep(0.2)
        if args.stop and os.path.exists(args.stop):
            break
        if args.seconds and time.time() - started >= args.seconds:
            break
        if time.time() - last >= 5:
            last = time.time()
            print("load: %d round trips, %d inserts acknowledged, %d client errors, "
                  "%d disconnects" %
                  (sum(c.round_trips for c in clients), sum(len(c.acked) for c in clients),
                   sum(len(c.errors) for c in clients), sum(len(c.disconnects) for c in clients)),
                  file=sys.stderr, flush=True)
    stop.set()
    for c in clients:
        c.join(timeout=60)
    report = {
        "seconds": round(time.time() - started, 1),
        "round_trips": sum(c.round_trips for c in clients),
        "acked": sorted({k for c in clients for k in c.acked}),
        "acked_count": sum(len(c.acked) for c in clients),
        "expected_duplicates": sum(c.dup_expected for c in clients),
        "errors": [e for c in clients for e in c.errors],
        "disconnects": [e for c in clients for e in c.disconnects],
    }
    with open(args.out, "w") as f:
        json.dump(report, f)
    print("load: stopped after %.1f s: %d round trips, %d inserts acknowledged "
          "(%d distinct keys), %d client errors, %d disconnects" %
          (report["seconds"], report["round_trips"], report["acked_count"],
           len(report["acked"]), len(report["errors"]), len(report["disconnects"])), file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
