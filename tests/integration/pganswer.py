"""What a client can see of an answer, reduced so that two databases can be compared.

Shared by compare.py and corpus_compare.py.  An answer is reduced to: status, command
tag, RowDescription (names, the table and column each field says it comes from, by
name -- OIDs differ between databases --, types, modifiers, formats), the rows (sorted:
a partitioned table returns them in another order), and on error every field but the
source location (SQLSTATE, severity, message, detail, hint, context, schema, table,
column, constraint).
"""
import psycopg
from psycopg import pq

ERR_FIELDS = [pq.DiagnosticField.SQLSTATE, pq.DiagnosticField.SEVERITY_NONLOCALIZED,
              pq.DiagnosticField.MESSAGE_PRIMARY, pq.DiagnosticField.MESSAGE_DETAIL,
              pq.DiagnosticField.MESSAGE_HINT, pq.DiagnosticField.CONTEXT,
              pq.DiagnosticField.SCHEMA_NAME, pq.DiagnosticField.TABLE_NAME,
              pq.DiagnosticField.COLUMN_NAME, pq.DiagnosticField.CONSTRAINT_NAME]


class Side:
    """One database as a client sees it: conn (autocommit) to run statements, cat to
    read the catalog (table OIDs of RowDescription to names)."""

    def __init__(self, dsn, catalog_dsn):
        self.conn = psycopg.connect(dsn, autocommit=True)
        self.cat = psycopg.connect(catalog_dsn, autocommit=True)
        self.n = 0

    def column(self, table, col):
        if table == 0:
            return None
        row = self.cat.execute(
            "SELECT c.relname, a.attname FROM pg_class c LEFT JOIN pg_attribute a ON"
            " a.attrelid = c.oid AND a.attnum = %s WHERE c.oid = %s", (col, table)).fetchone()
        return row if row else ("oid %d?" % table, None)

    def reduce(self, res):
        out = {"status": pq.ExecStatus(res.status).name, "tag": res.command_status}
        if res.status == pq.ExecStatus.FATAL_ERROR:
            out["error"] = [res.error_field(f) for f in ERR_FIELDS]
            return out
        out["fields"] = [(res.fname(i), self.column(res.ftable(i), res.ftablecol(i)),
                          res.ftype(i), res.fmod(i), res.fformat(i)) for i in range(res.nfields)]
        out["rows"] = sorted([res.get_value(r, c) for c in range(res.nfields)]
                             for r in range(res.ntuples))
        return out
