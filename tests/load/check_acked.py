"""Check a table against what ingest_load.py's clients were told (I1, I2).

Reads the load's report, loads its acknowledged keys into a temporary table on a direct
connection, and counts: acknowledged keys missing from TABLE (lost), keys present more
than once in TABLE (duplicates), the client errors and the lost connections the load
saw.  Prints one line per figure ("name value") and exits 1 when a key was lost or
duplicated, or when --max-errors or --max-disconnects is exceeded.

usage: check_acked.py REPORT.json DIRECT_CONNINFO TABLE [--max-errors N]
                      [--max-disconnects N] [--also TABLE]

--also TABLE counts the acknowledged keys found in a second table (the buffer, while its
rows wait for the drain) as present.
"""
import argparse
import json
import sys

import psycopg
from psycopg import sql


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("report")
    ap.add_argument("dsn")
    ap.add_argument("table")
    ap.add_argument("--also")
    ap.add_argument("--max-errors", type=int, default=0)
    ap.add_argument("--max-disconnects", type=int, default=0)
    args = ap.parse_args()

    with open(args.report) as f:
        report = json.load(f)
    table = sql.SQL(".").join(sql.Identifier(p) for p in args.table.split("."))
    with psycopg.connect(args.dsn) as conn:
        conn.execute("CREATE TEMP TABLE acked (site_id text, idempotency_key text)")
        with conn.cursor().copy("COPY acked FROM STDIN") as copy:
            for site, key in report["acked"]:
                copy.write_row((site, key))
        present = sql.SQL("EXISTS (SELECT 1 FROM {} t WHERE t.site_id = a.site_id "
                          "AND t.idempotency_key = a.idempotency_key)").format(table)
        if args.also:
            also = sql.SQL(".").join(sql.Identifier(p) for p in args.also.split("."))
            present = sql.SQL("({} OR EXISTS (SELECT 1 FROM {} b WHERE b.site_id = a.site_id "
                              "AND b.idempotency_key = a.idempotency_key))").format(present, also)
        lost = conn.execute(sql.SQL("SELECT count(*) FROM acked a WHERE NOT {}").format(
            present)).fetchone()[0]
        dups = conn.execute(sql.SQL(
            "SELECT count(*) FROM (SELECT 1 FROM {} GROUP BY site_id, idempotency_key "
            "HAVING count(*) > 1) d").format(table)).fetchone()[0]
        rows = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(table)).fetchone()[0]
    errs = report["errors"]
    print("acknowledged_inserts %d" % report["acked_count"])
    print("acknowledged_keys %d" % len(report["acked"]))
    print("rows_in_table %d" % rows)
    print("duplicate_keys %d" % dups)
    print("client_errors %d" % len(errs))
    print("rows_lost %d" % lost)
    disc = report.get("disconnects", [])
    print("disconnects %d" % len(disc))
    for e in (errs + disc)[:5]:
        print("  error: %s" % e, file=sys.stderr)
    sys.exit(1 if lost or dups or len(errs) > args.max_errors
             or len(disc) > args.max_disconnects else 0)


if __name__ == "__main__":
    main()
