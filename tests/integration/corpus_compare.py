"""The whole statement corpus through pgshunt against a reference database.

Every record of tests/corpus/statements.txt with status OK, no $n parameter, no
psql-only syntax and no transaction control of its own is run on two databases that
hold the same rows: through pgshunt (in the phase the caller set) and straight to a
reference database whose table is never migrated.  Each statement runs as
BEGIN; <statement>; ROLLBACK on both sides (a failing statement aborts the
transaction; ROLLBACK anyway), so nothing changes and every statement starts from the
same rows, three times: simple protocol (every result of a multi-statement string),
extended protocol with the unnamed statement (what psycopg's execute(prepare=False)
sends) and with a named prepared statement (execute(prepare=True): Parse, Describe,
Bind/Execute).  Answers are reduced by pganswer.py and must be equal, except:

- the statement's decision in tests/corpus/decisions/<phase>.txt (degraded_<phase>.txt
  with DEGRADED on) is a refusal: pgshunt must answer SQLSTATE 0A000 instead;
- EXPECTED_DIFFERENCES: what docs/ENGINE.md documents as unavoidable, per statement;
- VOLATILE: columns whose value is now()/random()/... , per statement;
- KNOWN_BUGS: differences that are pgshunt bugs, reported, per statement, phase and
  protocol; anything else that differs fails.

usage: corpus_compare.py PHASE DEGRADED(0|1) PROXY_CONNINFO PROXY_DIRECT_CONNINFO REF_CONNINFO
"""
import os
import re
import sys

sys.dont_write_bytecode = True  # no __pycache__ in the tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pganswer  # noqa: E402
import psycopg  # noqa: E402
from psycopg import pq  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
phase, degraded = sys.argv[1], sys.argv[2] == "1"
proxy_dsn, proxy_direct_dsn, ref_dsn = sys.argv[3:6]
label = ("degraded_" if degraded else "") + phase


def expand(sql):  # <<N*text>> stands for text repeated N times
    return re.sub(r"<<(\d+)\*(.*?)>>", lambda m: m.group(2) * int(m.group(1)), sql, flags=re.S)


def records(path):
    """(heads, sql) of every record: "@ " lines, SQL lines, "----"."""
    out, heads, sql = [], None, None
    for line in open(path, encoding="utf-8").read().split("\n"):
        if line == "----":
            if heads is not None:
                out.append((heads, expand("\n".join(sql))))
            heads, sql = None, None
            continue
        if heads is None and (line.startswith("#") or line == "" or line.startswith("%")):
            continue
        if heads is None:
            heads, sql = [], []
        if line.startswith("@ ") and not sql:
            heads.append(line[2:])
        else:
            sql.append(line)
    return out


corpus = records(os.path.join(ROOT, "tests/corpus/statements.txt"))
decisions = {sql: [h.split()[0] for h in heads]
             for heads, sql in records(os.path.join(ROOT, "tests/corpus/decisions", label + ".txt"))}

# Differences docs/ENGINE.md documents as unavoidable: sql -> (labels, check, why).
# check(pgshunt's answers, the reference's) says whether pgshunt gave exactly the
# documented answer; the comparison stays exact for every other statement and label.
def last(answers):
    return answers[-1] if answers else {}


def buffered(n):
    """DEGRADED: 'INSERTs go to buffer only, append-only, no unique check' (SPEC §2,
    docs/ENGINE.md "DEGRADED": INSERT 0 1 and the stored values even for a duplicate
    DO NOTHING): pgshunt says INSERT 0 n where the table said 23505 or skipped rows;
    everything before the Execute (Parse, Describe: RowDescription) must be equal.
    The same for a key proposed twice to DO UPDATE (21000 on the table)."""
    def check(x, y):
        return (len(x) == len(y) and x[:-1] == y[:-1] and last(x).get("tag") == b"INSERT 0 %d" % n
                and "error" not in last(x)
                and (last(y).get("error", [None])[0] in (b"23505", b"21000")
                     or last(y).get("tag", b"").startswith(b"INSERT 0 ")))
    return check


def names_buffer(x, y):
    """DEGRADED: 'A constraint the buffer copied from the table (CHECK, NOT NULL) fails
    with the table's SQLSTATE and constraint name, but the message names the buffer and
    its failing row shows pgshunt's columns' (docs/ENGINE.md "DEGRADED"; the DETAIL is
    blanked for this statement by VOLATILE anyway).  Equal once the buffer's name is
    read as the table's."""
    def fix(answers):
        out = []
        for a in answers:
            a = dict(a)
            if "error" in a:
                a["error"] = [v.replace(b"ingest_fallback_buffer", b"ingest_idempotency") if v else v
                              for v in a["error"]]
            out.append(a)
        return out
    return fix(x) == y and x != y


def xmax_unnamed(x, y):
    """cutover, finalized, DEGRADED: 'RowDescription of a bare RETURNING xmax names no
    table or column' (docs/ENGINE.md "Key uniqueness": pgshunt answers xmax with the
    function pgshunt.xmax(), the view having no system columns).  Equal once the
    reference's xmax field names none either; values, tag and types as the table's."""
    def fix(answers):
        out = []
        for a in answers:
            a = dict(a)
            if "fields" in a:
                a["fields"] = [(f[0], None) + tuple(f[2:]) if f[1] == ("ingest_idempotency", "xmax") else f
                               for f in a["fields"]]
            out.append(a)
        return out
    return x == fix(y) and x != y


def buffered_as_inserted(*cols):
    """DEGRADED: 'a buffered row is reported as inserted' (docs/ENGINE.md "DEGRADED":
    RETURNING xmax reads 0) where the table updated an existing row.  Equal once the
    reference's columns computed from xmax (cols) read as for an inserted row (f)."""
    def check(x, y):
        def fix(answers):
            out = []
            for a in answers:
                a = dict(a)
                if "rows" in a:
                    a["rows"] = sorted([[b"f" if i in cols else v for i, v in enumerate(r)] for r in a["rows"]])
                out.append(a)
            return out
        return x == fix(y) and x != y
    return check


def refused_in_degraded(x, y):
    """DEGRADED: the drain replays a stored DO UPDATE clause on the table's own name, so
    'an aliased target (INSERT INTO t AS x ... SET c = x.c)' is refused with 0A000
    (docs/ENGINE.md "DEGRADED"), although rules_decide() says buffer_upsert."""
    return any(a.get("error", [None])[0] == b"0A000" for a in x)


def plans_partitions(x, y):
    """EXPLAIN of a read that runs on the partitioned table (renamed to next_table in
    read_next and cutover; the table itself in finalized) shows that table's plan, an
    Append over its partitions (docs/ENGINE.md, "Renaming reads"): the same answers
    but for the plan's lines, and those name the partitions (digits are N here, see
    plan_shape)."""
    def strip(answers):
        return [{k: v for k, v in a.items() if k != "rows"} for a in answers]
    return (strip(x) == strip(y) and not any("error" in a for a in x)
            and any(PARTITION_N.search(v) for a in x for r in a.get("rows", []) for v in r if v))


PARTITION_N = re.compile(rb"ingest_idempotency_next_yNmN")
READS_PARTITIONED = ("read_next", "cutover", "finalized", "degraded_read_next", "degraded_cutover",
                     "degraded_finalized")
DEG = ("degraded_dual_write", "degraded_read_next", "degraded_cutover", "degraded_finalized",
       "degraded_passthrough")
EXPECTED_DIFFERENCES = {
    "INSERT INTO ingest_idempotency (site_id, idempotency_key, request_hash) VALUES ('site-42', 'evt-2024-0001', '\\x0a0b0c'::bytea) ON CONFLICT (site_id, idempotency_key) DO NOTHING RETURNING created_at;":
        (DEG, buffered(1), "('site-42', 'evt-2024-0001') exists: DO NOTHING in DEGRADED returns the buffered row"
                           " (its created_at is now(): only the tag is checked)"),
    "INSERT INTO ingest_idempotency (site_id, idempotency_key, request_hash) VALUES ('a', 'k1', '\\x00'), ('a', 'k2', '\\x01'), ('b', 'k1', '\\x02')":
        (DEG, buffered(3), "('a', 'k1') exists: the buffer has no unique check"),
    "INSERT INTO public.ingest_idempotency OVERRIDING SYSTEM VALUE VALUES ('a', 'b', '')":
        (DEG, buffered(1), "('a', 'b') exists: the buffer has no unique check"),
    "INSERT INTO ingest_idempotency (site_id, idempotency_key, request_hash) VALUES ('s', 'k', '') ON CONFLICT (site_id, idempotency_key) WHERE status <> 'failed' DO NOTHING RETURNING site_id, idempotency_key":
        (DEG, buffered(1), "('s', 'k') exists: DO NOTHING in DEGRADED returns the buffered row"),
    "INSERT INTO ingest_idempotency (site_id, idempotency_key, request_hash) VALUES ('a', 'dup-new', '\\x01'), ('a', 'dup-new', '\\x02') ON CONFLICT (site_id, idempotency_key) DO UPDATE SET request_hash = EXCLUDED.request_hash":
        (DEG, buffered(2), "one key twice: the table says 21000, the buffer checks nothing"),
    "INSERT INTO ingest_idempotency (site_id, idempotency_key, request_hash) VALUES ('a', 'k1', '\\x01'), ('a', 'k1', '\\x02') ON CONFLICT (site_id, idempotency_key) DO UPDATE SET response_code = 7":
        (DEG, buffered(2), "('a', 'k1') exists, twice: the table says 21000, the buffer checks nothing"),
    "INSERT INTO ingest_idempotency (site_id, idempotency_key, request_hash) VALUES ('a', 'k1', '\\x01'), ('a', 'k1', '\\x02') ON CONFLICT (site_id, idempotency_key) DO UPDATE SET status = 'failed' WHERE false":
        (DEG, buffered(2), "('a', 'k1') exists: the table skips both, the buffer checks nothing"),
    "INSERT INTO ingest_idempotency DEFAULT VALUES":
        (DEG, names_buffer, "the NOT NULL error names the buffer (DEGRADED)"),
    "INSERT INTO ingest_idempotency AS t (site_id, idempotency_key, request_hash, status) VALUES ('a', 'b', '\\x00', 'completed') ON CONFLICT (site_id, idempotency_key) DO UPDATE SET status = EXCLUDED.status, response_code = EXCLUDED.response_code WHERE t.status = 'processing' RETURNING t.created_at, (xmax = 0) AS inserted":
        (DEG, refused_in_degraded, "aliased DO UPDATE cannot be buffered"),
    "EXPLAIN SELECT * FROM ingest_idempotency WHERE site_id = 'a'":
        (READS_PARTITIONED, plans_partitions, "the plan of the partitioned table"),
    "EXPLAIN ANALYZE SELECT count(*) FROM ingest_idempotency":
        (READS_PARTITIONED, plans_partitions, "the plan of the partitioned table"),
    "INSERT INTO ingest_idempotency (site_id, idempotency_key, request_hash) VALUES ('a', 'xmax-new', '\\x05') ON CONFLICT (site_id, idempotency_key) DO NOTHING RETURNING xmax":
        (DEG + ("cutover", "finalized"), xmax_unnamed, "xmax through a view: pgshunt.xmax(), a function"),
    "INSERT INTO ingest_idempotency (site_id, idempotency_key, request_hash, status) VALUES ('a', 'k1', '\\x01', 'completed'), ('a', 'xmax-new', '\\x05', 'processing') ON CONFLICT (site_id, idempotency_key) DO UPDATE SET response_code = EXCLUDED.response_code RETURNING idempotency_key, ingest_idempotency.xmax <> '0' AS updated, \"xmax\"::text = pg_current_xact_id()::text AS by_this_transaction":
        (DEG, buffered_as_inserted(1, 2), "('a', 'k1') exists: the table updates it, the buffer reports it inserted"),
}

# Statements whose answer cannot be compared as it is: the value comes from the clock
# or from the physical state of the database, not from the rows.  Each entry blanks
# only what is named, for that statement only, on both sides; the rest of the answer
# (status, tag, RowDescription, row count, other columns, error fields) is compared.
def blank_cols(*cols):
    def f(answers):
        for a in answers:
            if "rows" in a:
                a["rows"] = sorted([[b"<blank>" if i in cols else v for i, v in enumerate(r)]
                                    for r in a["rows"]])
    return f


def blank_detail(answers):
    for a in answers:
        if "error" in a:
            a["error"][3] = b"<blank>"


NUM = re.compile(rb"\d+(\.\d+)?")


def plan_shape(answers):
    for a in answers:
        if "rows" in a:
            a["rows"] = sorted([[NUM.sub(b"N", v) if v is not None else v for v in r] for r in a["rows"]])


VOLATILE = {
    # now() is the transaction's start: two transactions never share it.
    "SELECT (SELECT count(*) FROM ingest_idempotency) AS n, now()": blank_cols(1),
    # The failing row of the NOT NULL error shows created_at/expires_at defaults (now()).
    "INSERT INTO ingest_idempotency DEFAULT VALUES": blank_detail,
    # EXPLAIN: costs, row estimates and timings depend on each database's statistics
    # and on the clock; the plan's shape (node kinds, relations, conditions) is compared.
    "EXPLAIN SELECT * FROM ingest_idempotency WHERE site_id = 'a'": plan_shape,
    "EXPLAIN ANALYZE SELECT count(*) FROM ingest_idempotency": plan_shape,
    "EXPLAIN ANALYZE DELETE FROM ingest_idempotency WHERE expires_at < now()": plan_shape,
    "EXPLAIN (ANALYZE, BUFFERS) UPDATE ingest_idempotency SET status = 'x'": plan_shape,
    # The heap's size and the statistics counters are the database's history, not its rows.
    "SELECT pg_relation_size('ingest_idempotency')": blank_cols(0),
    "SELECT * FROM pg_stat_user_tables WHERE relname = 'ingest_idempotency'": blank_cols(0, *range(3, 30)),  # 0: relid, an OID
}

# Real pgshunt bugs found by this test: (label, sql) -> reason.  Listed so the test
# still fails on anything else; remove an entry once the bug is fixed.
KNOWN_BUGS = {}


def bug(labels, sql, reason):
    for lab in labels:
        KNOWN_BUGS[(lab, sql, "*")] = reason




PSQL_ONLY = re.compile(r"^\\|:'?[A-Za-z_]\w*'?", re.M)  # meta-commands, :variables
TXCTL = re.compile(r"^\s*(BEGIN|COMMIT|ROLLBACK|END|START\s+TRANSACTION|SAVEPOINT|RELEASE|ABORT)\b",
                   re.I | re.M)
OTHER_RELS = re.compile(r"ingest_idempotency_next|ingest_fallback_buffer|pgshunt\.", re.I)


def skip_reason(heads, sql):
    status = "OK"
    for h in heads:
        m = re.search(r"\bstatus=(\w+)", h)
        if m:
            status = m.group(1)
    if status != "OK":
        return "status " + status
    if re.search(r"\$\d", re.sub(r"\$(\w*)\$.*?\$\1\$|'(?:[^']|'')*'", "", sql, flags=re.S)):
        return "$n parameters"
    if PSQL_ONLY.search(re.sub(r"'(?:[^']|'')*'|::", "", sql)):
        return "psql-only syntax"
    if any(TXCTL.match(s) for s in sql.split(";")):
        return "transaction control (would end the BEGIN ... ROLLBACK around it)"
    if phase != "passthrough" and OTHER_RELS.search(sql):
        # The reference is never migrated: it has no next_table, buffer or pgshunt schema.
        return "names next_table/buffer (absent from the never-migrated reference)"
    return None


class Side(pganswer.Side):
    def results(self, send):
        """Every result of what send() started, COPY data included, COPY IN refused."""
        pg = self.conn.pgconn
        send(pg)
        got = []
        while True:
            res = pg.get_result()
            if res is None:
                return got
            st = res.status
            if st == pq.ExecStatus.COPY_OUT:
                data = []
                while True:
                    n, buf = pg.get_copy_data(0)
                    if n < 0:
                        break
                    data.append(bytes(buf))
                got.append({"status": "COPY_OUT", "data": sorted(data)})
            elif st == pq.ExecStatus.COPY_IN:
                got.append({"status": "COPY_IN"})
                pg.put_copy_end(b"corpus_compare: no data")
            else:
                got.append(self.reduce(res))

    def run(self, sql, how):
        pg = self.conn.pgconn
        pg.exec_(b"BEGIN")
        try:
            q = sql.encode()
            if how == "simple":
                return self.results(lambda c: c.send_query(q))
            if how == "unnamed":
                return self.results(lambda c: c.send_query_params(q, None))
            self.n += 1
            name = b"corpus%d" % self.n
            got = self.results(lambda c: c.send_prepare(name, q))
            if got and "error" in got[-1]:
                return got
            got += self.results(lambda c: c.send_describe_prepared(name))
            got += self.results(lambda c: c.send_query_prepared(name, None))
            return got
        finally:
            pg.exec_(b"ROLLBACK")
            if how == "named":
                pg.exec_(b"DEALLOCATE ALL")


ONLY = re.compile(os.environ["CORPUS_ONLY"]) if os.environ.get("CORPUS_ONLY") else None  # a regex, to debug
# Every statement named in the lists above must be in the corpus (a stale entry would
# silently stop applying).
_all = {sql for _, sql in corpus}
for _d in (EXPECTED_DIFFERENCES, VOLATILE, {k[1]: 1 for k in KNOWN_BUGS}):
    for _k in _d:
        assert _k in _all, "not in the corpus: %r" % _k

def brief(a, b):
    """An answer, short: rows only as a count and the first one the other side lacks."""
    out = []
    for i, r in enumerate(a):
        r = dict(r)
        if "rows" in r:
            other = b[i].get("rows", []) if i < len(b) else []
            extra = [row for row in r["rows"] if row not in other]
            r["rows"] = "%d rows%s" % (len(r["rows"]), ", first not on the other side: %.300s" % extra[0] if extra else "")
        if "data" in r:
            r["data"] = "%d lines" % len(r["data"])
        out.append(r)
    return str(out)[:2000]


TRACE = os.environ.get("CORPUS_TRACE") == "1"  # each statement before it runs, to find a hang
proxy = Side(proxy_dsn, proxy_direct_dsn)
ref = Side(ref_dsn, ref_dsn)
skipped, run, bad, refused, known, expected = {}, 0, 0, 0, 0, 0
seen_known = set()
for heads, sql in corpus:
    why = skip_reason(heads, sql)
    if why:
        skipped[why] = skipped.get(why, 0) + 1
        continue
    if ONLY and not ONLY.search(sql):
        continue
    run += 1
    dec = decisions.get(sql)
    for how in ("simple", "unnamed", "named"):
        if TRACE:
            print(f"[{label}] ({how}) {sql[:120]!r}", file=sys.stderr, flush=True)
        x = proxy.run(sql, how)
        # A string of several statements cannot be one extended-protocol statement:
        # PostgreSQL answers 42601 at Parse before running anything, so through pgshunt
        # either that same answer or the phase's refusal (0A000) is right.
        multi_ext = dec and len(dec) > 1 and how != "simple"
        if multi_ext:
            y = ref.run(sql, how)
            errs = [a["error"][0] for a in x if "error" in a]
            if x == y or b"0A000" in errs:
                refused += b"0A000" in errs
                continue
            msg = "neither PostgreSQL's answer nor 0A000"
        elif dec and "refuse" in dec:
            errs = [a["error"] for a in x if "error" in a]
            # pgshunt's refusal: 0A000 naming pgshunt, and no CONTEXT (the DO block
            # that raises it in simple protocol is pgshunt's, not the client's).
            if any(e[0] == b"0A000" and b"pgshunt refuses" in (e[2] or b"") and e[5] is None
                   for e in errs):
                refused += 1
                continue
            msg = "not refused with 0A000, pgshunt's message, no CONTEXT (decision: %s)" % " ".join(dec)
            y = None
        else:
            y = ref.run(sql, how)
            if sql in VOLATILE:
                VOLATILE[sql](x), VOLATILE[sql](y)
            exp = EXPECTED_DIFFERENCES.get(sql)
            if exp and label in exp[0] and exp[1](x, y):
                expected += 1
                continue
            if x == y:
                continue
            msg = "differs"
        kb = KNOWN_BUGS.get((label, sql, how)) or KNOWN_BUGS.get((label, sql, "*"))
        if kb:
            known += 1
            seen_known.add(sql)
            print(f"known bug ({label}, {how}): {sql[:100]!r}: {kb}", file=sys.stderr)
            continue
        bad += 1
        print(f"DIFFERS [{label}] ({how}) {msg}: {sql}\n  pgshunt:  {brief(x, y)}\n"
              f"  original: {brief(y, x)}\n", file=sys.stderr)

print(f"corpus {label}: {run} statements x 3 protocols (simple, unnamed extended, named prepared):"
      f" {3 * run - bad - known} answers as expected ({refused} of them refusals, 0A000;"
      f" {expected} documented differences),"
      f" {known} known bugs, {bad} unexpected")
for why, n in sorted(skipped.items()):
    print(f"  skipped {n}: {why}")
for (lab, sql, _), reason in KNOWN_BUGS.items():
    if lab == label and sql not in seen_known and (not ONLY or ONLY.search(sql)):
        print(f"  note: known bug no longer seen in {label} (fixed? remove it): {sql!r}")
if bad:
    sys.exit(f"corpus {label}: {bad} answers differ from the original table's")
