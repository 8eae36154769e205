-- pgshunt jobs (control schema version 1): backfill, verify, drain and partition upkeep.
-- Installed by MIGRATE PREPARE after schema.sql and prepare.sql, in the same
-- transaction.  Only CREATE OR REPLACE: safe to run again and again.  Same conventions
-- as prepare.sql (search_path pinned, identifiers through format('%I') / regclass).
--
-- The proxy only schedules, throttles and reports: one call of a *_batch / *_chunk
-- function is one batch, one transaction, which also advances the cursor and the
-- counters in pgshunt.jobs.  A job runs where its session-level advisory lock
-- pg_try_advisory_lock(hashtextextended('pgshunt:job:' || name, 0)) is held (the bigint
-- key space: the two-int space is key_lock's); a runner that dies loses its
-- connection and the lock with it, and another proxy resumes the job from the cursor.
--
-- pgshunt.jobs rows, by name:
--   backfill  state idle|running|paused|done|cancelled; cursor {"after": [key as text],
--             "inserted": n, "rate": rows/s}; rows_done = rows of old read so far.
--   verify    state running|clean|dirty; cursor {"after": [...], "rows_old",
--             "rows_next", "differences", "first": [{"key": [...], "kind": ...}]}.
--   drain     state idle|running|paused; cursor {"drained", "duplicates", "ledgered",
--             "skipped", "updated", "rate"}; rows_done = rows moved out of the buffer.

-- The primary key of p_rel, as SQL fragments over alias t: the column list, the row of
-- the key compared with a text[] parameter $N, the key as text[], and the order.
CREATE OR REPLACE FUNCTION pgshunt.job_key(p_rel regclass, p_param int,
                                           OUT cols text, OUT after text, OUT upto text,
                                           OUT as_text text, OUT ord_desc text, OUT nkeys int)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pgshunt
AS $fn$
BEGIN
    SELECT string_agg(format('t.%I', a.attname), ', ' ORDER BY s.s),
           format('(%s) > (%s)', string_agg(format('t.%I', a.attname), ', ' ORDER BY s.s),
                  string_agg(format('($%s::pg_catalog.text[])[%s]::%s', p_param, s.s + 1,
                                    format_type(a.atttypid, a.atttypmod)), ', ' ORDER BY s.s)),
           format('(%s) <= (%s)', string_agg(format('t.%I', a.attname), ', ' ORDER BY s.s),
                  string_agg(format('($%s::pg_catalog.text[])[%s]::%s', p_param + 1, s.s + 1,
                                    format_type(a.atttypid, a.atttypmod)), ', ' ORDER BY s.s)),
           format('ARRAY[%s]', string_agg(format('t.%I::pg_catalog.text', a.attname), ', ' ORDER BY s.s)),
           string_agg(format('t.%I DESC', a.attname), ', ' ORDER BY s.s),
           count(*)
      INTO cols, after, upto, as_text, ord_desc, nkeys
      FROM pg_index AS i
      JOIN LATERAL generate_series(0, i.indnkeyatts - 1) AS s(s) ON true
      JOIN pg_attribute AS a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[s.s]
     WHERE i.indrelid = p_rel AND i.indisprimary;
    IF nkeys = 0 OR cols IS NULL THEN
        RAISE EXCEPTION 'table % has no primary key: the jobs walk it in key order', p_rel
            USING ERRCODE = 'feature_not_supported';
    END IF;
END
$fn$;

-- Every live column of p_rel but the generated ones, quoted, in column order.
CREATE OR REPLACE FUNCTION pgshunt.job_columns(p_rel regclass, p_prefix text) RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog, pgshunt
AS $fn$
    SELECT string_agg(p_prefix || quote_ident(a.attname), ', ' ORDER BY a.attnum)
      FROM pg_attribute AS a
     WHERE a.attrelid = p_rel AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = '';
$fn$;

-- Take the job's lock on this session and mark this runner, when the job is running and
-- nobody holds it.  The lock outlives the call (session level) and goes with the
-- connection.
CREATE OR REPLACE FUNCTION pgshunt.job_claim(p_name text, p_runner text) RETURNS boolean
LANGUAGE plpgsql
SET search_path = pg_catalog, pgshunt
AS $fn$
DECLARE
    v_key bigint := hashtextextended('pgshunt:job:' || p_name, 0);
BEGIN
    IF NOT pg_try_advisory_lock(v_key) THEN
        RETURN false;
    END IF;
    UPDATE pgshunt.jobs SET runner = p_runner, updated_at = now()
     WHERE name = p_name AND state = 'running';
    IF NOT FOUND THEN
        PERFORM pg_advisory_unlock(v_key);
        RETURN false;
    END IF;
    RETURN true;
END
$fn$;

-- A batch failed: say why in the job's row (the batch itself rolled back).
CREATE OR REPLACE FUNCTION pgshunt.job_failed(p_name text, p_error text) RETURNS void
LANGUAGE sql
SET search_path = pg_catalog, pgshunt
AS $fn$
    UPDATE pgshunt.jobs SET error = p_error, updated_at = now() WHERE name = p_name;
$fn$;

-- A batch went through: its progress into the job's row, in the batch's transaction.
-- p_cursor replaces the cursor, p_rows more rows are done, the state and rows_total
-- become p_state and p_total unless NULL, the error is cleared.  A caller that builds
-- p_cursor from the row's cursor has read it FOR (NO KEY) UPDATE, so that concurrent
-- batches of one job (drainers) add up.
CREATE OR REPLACE FUNCTION pgshunt.job_progress(p_name text, p_cursor jsonb, p_rows bigint,
                                                p_state text DEFAULT NULL, p_total bigint DEFAULT NULL)
RETURNS void
LANGUAGE sql
SET search_path = pg_catalog, pgshunt
AS $fn$
    UPDATE pgshunt.jobs
       SET cursor = p_cursor,
           rows_done = rows_done + p_rows,
           rows_total = coalesce(p_total, rows_total),
           state = coalesce(p_state, state),
           updated_at = clock_timestamp(),
           error = NULL
     WHERE name = p_name;
$fn$;

-- The phase in force, and whether its epoch is the one the proxy pinned for this batch
-- (a batch under another epoch does nothing: its proxy reads the phase and sends it
-- again).  Not locked: a SET PHASE that commits while the batch runs is like one that
-- commits while a client's transaction runs (I8): the batch goes on under the epoch it
-- started in, and its proxy does not acknowledge the new one until the batch has ended.
-- (Locking the row would block pgshunt.set_phase, and the control connection that
-- runs it, behind the batch.)
CREATE OR REPLACE FUNCTION pgshunt.job_phase(p_epoch bigint, OUT phase text, OUT current boolean)
LANGUAGE plpgsql
SET search_path = pg_catalog, pgshunt
AS $fn$
DECLARE
    v_epoch bigint;
BEGIN
    SELECT s.phase, s.epoch INTO phase, v_epoch FROM pgshunt.state AS s;
    current := v_epoch = p_epoch;
END
$fn$;

-- ---------------------------------------------------------------- backfill

-- BACKFILL START|PAUSE|RESUME|CANCEL.  START needs dual_write acknowledged by every
-- live proxy (a lagging proxy would write only old, behind the backfill's cursor).
CREATE OR REPLACE FUNCTION pgshunt.backfill_control(p_old regclass, p_action text, p_by text)
RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pgshunt
AS $fn$
DECLARE
    v_state text;
    v_phase text;
    v_epoch bigint;
    v_lag   text;
    v_total bigint;
BEGIN
    INSERT INTO pgshunt.jobs (name) VALUES ('backfill') ON CONFLICT (name) DO NOTHING;
    SELECT j.state INTO v_state FROM pgshunt.jobs AS j WHERE j.name = 'backfill' FOR UPDATE;
    IF p_action = 'START' THEN
        IF v_state IN ('running', 'paused') THEN
            RAISE EXCEPTION 'the backfill is %: % it, or CANCEL it to start again', v_state,
                CASE v_state WHEN 'running' THEN 'PAUSE' ELSE 'RESUME' END
                USING ERRCODE = 'object_not_in_prerequisite_state';
        END IF;
        SELECT s.phase, s.epoch INTO v_phase, v_epoch FROM pgshunt.state AS s;
        IF v_phase <> 'dual_write' THEN
            RAISE EXCEPTION 'the backfill runs in dual_write only; the phase is %', v_phase
                USING ERRCODE = 'object_not_in_prerequisite_state';
        END IF;
        SELECT string_agg(format('%s (acked %s)', p.proxy_id, coalesce(p.acked_epoch::text, 'nothing')),
                          ', ' ORDER BY p.proxy_id)
          INTO v_lag FROM pgshunt.proxies AS p
         WHERE p.lease_until > now() AND coalesce(p.acked_epoch, 0) < v_epoch;
        IF v_lag IS NOT NULL THEN
            RAISE EXCEPTION 'cannot start the backfill: these proxies have not acknowledged dual_write (epoch %) yet: %',
                v_epoch, v_lag
                USING ERRCODE = 'object_not_in_prerequisite_state';
        END IF;
        PERFORM job_key(p_old, 1);  -- a primary key to walk, or a clear error now
        SELECT CASE WHEN c.reltuples >= 0 THEN c.reltuples::bigint END INTO v_total
          FROM pg_class AS c WHERE c.oid = p_old;
        IF v_total IS NULL THEN
            EXECUTE format('SELECT count(*) FROM %s', p_old) INTO v_total;
        END IF;
        UPDATE pgshunt.jobs SET state = 'running', cursor = NULL, rows_done = 0, rows_total = v_total,
                                started_at = now(), updated_at = now(), runner = NULL, error = NULL
         WHERE name = 'backfill';
        RETURN format('backfill of %s started (about %s rows), by %s', p_old, v_total, p_by);
    ELSIF p_action = 'PAUSE' THEN
        IF v_state <> 'running' THEN
            RAISE EXCEPTION 'the backfill is %, not running', v_state
                USING ERRCODE = 'object_not_in_prerequisite_state';
        END IF;
        UPDATE pgshunt.jobs SET state = 'paused', updated_at = now() WHERE name = 'backfill';
        RETURN 'backfill paused by ' || p_by;
    ELSIF p_action = 'RESUME' THEN
        IF v_state <> 'paused' THEN
            RAISE EXCEPTION 'the backfill is %, not paused', v_state
                USING ERRCODE = 'object_not_in_prerequisite_state';
        END IF;
        UPDATE pgshunt.jobs SET state = 'running', error = NULL, updated_at = now() WHERE name = 'backfill';
        RETURN 'backfill resumed by ' || p_by;
    ELSIF p_action = 'CANCEL' THEN
        UPDATE pgshunt.jobs SET state = 'cancelled', cursor = NULL, rows_done = 0, updated_at = now()
         WHERE name = 'backfill';
        RETURN 'backfill cancelled by ' || p_by;
    END IF;
    RAISE EXCEPTION 'unknown backfill action %', p_action USING ERRCODE = 'invalid_parameter_value';
END
$fn$;

-- One keyset batch: the next p_rows rows of old after the cursor, share-locked (a
-- concurrent UPDATE or DELETE waits, then its mirror corrects next), copied into next
-- unless next has their key already (the mirror wrote it).  Returns the rows read and
-- the job's state afterwards.
CREATE OR REPLACE FUNCTION pgshunt.backfill_batch(p_old regclass, p_next regclass, p_rows int,
                                                  p_epoch bigint,
                                                  OUT rows_read bigint, OUT state text)
LANGUAGE plpgsql
SET search_path = pg_catalog, pgshunt
SET lock_timeout = '5s'    -- bounds how long a batch (and the epoch it pins) can wait
AS $fn$
DECLARE
    j       pgshunt.jobs;
    k       record;
    v_cols  text;
    v_after text[];
    v_last  text[];
    v_ins   bigint;
    v_more  boolean;
    v_phase text;
    v_cur   boolean;
    v_rate  float8;
    v_secs  float8;
BEGIN
    rows_read := 0;
    SELECT * INTO j FROM pgshunt.jobs AS jb WHERE jb.name = 'backfill' FOR UPDATE;
    IF NOT FOUND OR j.state <> 'running' THEN
        state := coalesce(j.state, 'idle');
        RETURN;
    END IF;
    SELECT ph.phase, ph.current INTO v_phase, v_cur FROM job_phase(p_epoch) AS ph;
    IF NOT v_cur THEN
        state := 'stale_epoch';
        RETURN;
    END IF;
    IF v_phase <> 'dual_write' THEN
        -- Outside dual_write next is not kept complete: what is copied now could go stale.
        UPDATE pgshunt.jobs SET state = 'paused', updated_at = now(),
               error = format('paused: the phase is %s; the backfill runs in dual_write only '
                              '(after a step back, CANCEL and START it again)', v_phase)
         WHERE name = 'backfill';
        state := 'paused';
        RETURN;
    END IF;
    k := job_key(p_old, 1);
    v_cols := job_columns(p_old, '');
    IF j.cursor ? 'after' THEN
        v_after := ARRAY(SELECT jsonb_array_elements_text(j.cursor -> 'after'));
    END IF;
    EXECUTE format('WITH src AS (SELECT %s, %s AS pgshunt_key FROM %s AS t %s ORDER BY %s LIMIT $2 FOR SHARE), '
                   'ins AS (INSERT INTO %s (%s) %s SELECT %s FROM src ON CONFLICT DO NOTHING RETURNING 1) '
                   'SELECT (SELECT count(*) FROM src), (SELECT count(*) FROM ins), '
                   '(SELECT pgshunt_key FROM src AS t ORDER BY %s LIMIT 1)',
                   job_columns(p_old, 't.'), k.as_text, p_old,
                   CASE WHEN v_after IS NULL THEN '' ELSE 'WHERE ' || k.after END, k.cols,
                   p_next, v_cols,
                   CASE WHEN EXISTS (SELECT 1 FROM pg_attribute AS a WHERE a.attrelid = p_next
                                       AND a.attnum > 0 AND NOT a.attisdropped AND a.attidentity = 'a')
                        THEN 'OVERRIDING SYSTEM VALUE' ELSE '' END,
                   v_cols, k.ord_desc)
      INTO rows_read, v_ins, v_last
      USING v_after, p_rows;
    -- A short batch is the end unless rows were skipped (deleted while it waited).
    IF rows_read < p_rows THEN
        IF v_last IS NULL THEN
            v_more := false;
        ELSE
            EXECUTE format('SELECT EXISTS (SELECT 1 FROM %s AS t WHERE %s)', p_old, k.after)
              INTO v_more USING v_last;
        END IF;
    ELSE
        v_more := true;
    END IF;
    v_secs := extract(epoch FROM clock_timestamp() - j.updated_at);
    v_rate := CASE WHEN v_secs > 0 THEN rows_read / v_secs END;
    v_rate := CASE WHEN (j.cursor ->> 'rate') IS NULL OR v_rate IS NULL THEN v_rate
                   ELSE 0.7 * (j.cursor ->> 'rate')::float8 + 0.3 * v_rate END;
    state := CASE WHEN v_more THEN 'running' ELSE 'done' END;
    PERFORM job_progress('backfill', jsonb_build_object(
               'after', coalesce(to_jsonb(v_last), j.cursor -> 'after'),
               'inserted', coalesce((j.cursor ->> 'inserted')::bigint, 0) + v_ins,
               'rate', round(coalesce(v_rate, 0)::numeric, 1)),
           rows_read, state, greatest(j.rows_total, j.rows_done + rows_read));
END
$fn$;

-- ---------------------------------------------------------------- verify

CREATE OR REPLACE FUNCTION pgshunt.verify_start(p_old regclass, p_by text) RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pgshunt
AS $fn$
DECLARE
    v_total bigint;
BEGIN
    PERFORM job_key(p_old, 1);
    INSERT INTO pgshunt.jobs (name) VALUES ('verify') ON CONFLICT (name) DO NOTHING;
    IF (SELECT j.state FROM pgshunt.jobs AS j WHERE j.name = 'verify' FOR UPDATE) = 'running' THEN
        RETURN 'running';   -- a VERIFY is under way: wait for its result
    END IF;
    SELECT CASE WHEN c.reltuples >= 0 THEN c.reltuples::bigint END INTO v_total
      FROM pg_class AS c WHERE c.oid = p_old;
    UPDATE pgshunt.jobs
       SET state = 'running', rows_done = 0, rows_total = v_total, started_at = now(),
           updated_at = now(), runner = NULL, error = NULL,
           cursor = jsonb_build_object('after', NULL, 'rows_old', 0, 'rows_next', 0,
                                       'differences', 0, 'first', '[]'::jsonb, 'by', p_by)
     WHERE name = 'verify';
    RETURN 'started';
END
$fn$;

-- One chunk: the next p_rows keys of old after the cursor (and, in the last chunk,
-- everything after them), compared row by row with next in ONE statement, so one
-- snapshot sees both tables (a mirrored write commits in both at once).  Row text is
-- ROW(columns)::text over old's columns, by name, on both sides.
CREATE OR REPLACE FUNCTION pgshunt.verify_chunk(p_old regclass, p_next regclass, p_rows int,
                                                OUT keys bigint, OUT state text)
LANGUAGE plpgsql
SET search_path = pg_catalog, pgshunt
AS $fn$
DECLARE
    j        pgshunt.jobs;
    k        record;
    v_after  text[];
    v_upto   text[];
    v_where  text;
    v_row    text;
    v_join   text;
    v_kcols  text;
    v_o      bigint;
    v_n      bigint;
    v_d      bigint;
    v_first  jsonb;
    v_diffs  bigint;
BEGIN
    keys := 0;
    SELECT * INTO j FROM pgshunt.jobs AS jb WHERE jb.name = 'verify' FOR UPDATE;
    IF NOT FOUND OR j.state <> 'running' THEN
        state := coalesce(j.state, 'idle');
        RETURN;
    END IF;
    k := job_key(p_old, 1);
    IF jsonb_typeof(j.cursor -> 'after') = 'array' THEN
        v_after := ARRAY(SELECT jsonb_array_elements_text(j.cursor -> 'after'));
    END IF;
    -- The chunk's last key in old (NULL: this is the last chunk, open-ended).
    EXECUTE format('SELECT %s FROM %s AS t %s ORDER BY %s OFFSET $3 LIMIT 1', k.as_text, p_old,
                   CASE WHEN v_after IS NULL THEN '' ELSE 'WHERE ' || k.after END, k.cols)
      INTO v_upto USING v_after, NULL::text[], p_rows - 1;
    v_where := concat_ws(' AND ', CASE WHEN v_after IS NOT NULL THEN k.after END,
                         CASE WHEN v_upto IS NOT NULL THEN k.upto END);
    v_where := CASE WHEN v_where = '' THEN '' ELSE 'WHERE ' || v_where END;
    SELECT format('ROW(%s)::text', string_agg(format('t.%I', a.attname), ', ' ORDER BY a.attnum))
      INTO v_row FROM pg_attribute AS a
     WHERE a.attrelid = p_old AND a.attnum > 0 AND NOT a.attisdropped;
    SELECT string_agg(format('o.k%s = n.k%s', o, o), ' AND '),
           string_agg(format('coalesce(o.k%s, n.k%s)', o, o), ', ')
      INTO v_join, v_kcols FROM generate_series(1, k.nkeys) AS o;
    EXECUTE format(
        'WITH o AS (SELECT %1$s, %2$s AS r FROM %3$s AS t %4$s), '
        '     n AS (SELECT %1$s, %2$s AS r FROM %5$s AS t %4$s), '
        '     d AS (SELECT ARRAY[%6$s] AS key, %7$s AS ord, CASE WHEN n.r IS NULL THEN %8$L '
        '                  WHEN o.r IS NULL THEN %9$L ELSE %10$L END AS kind '
        '             FROM o FULL JOIN n ON %11$s WHERE o.r IS DISTINCT FROM n.r) '
        'SELECT (SELECT count(*) FROM o), (SELECT count(*) FROM n), (SELECT count(*) FROM d), '
        '       (SELECT coalesce(jsonb_agg(jsonb_build_object(''key'', x.key, ''kind'', x.kind) ORDER BY x.ord), ''[]'') '
        '          FROM (SELECT * FROM d ORDER BY ord LIMIT 10) AS x)',
        (SELECT string_agg(format('%s AS k%s', c, o), ', ')
           FROM unnest(string_to_array(k.cols, ', ')) WITH ORDINALITY AS u(c, o)),
        v_row, p_old, v_where, p_next,
        (SELECT string_agg(format('coalesce(o.k%s, n.k%s)::pg_catalog.text', o, o), ', ')
           FROM generate_series(1, k.nkeys) AS o),
        'ROW(' || v_kcols || ')', 'missing in next', 'missing in old', 'different', v_join)
      INTO v_o, v_n, v_d, v_first
      USING v_after, v_upto;
    keys := v_o;
    v_diffs := (j.cursor ->> 'differences')::bigint + v_d;
    state := CASE WHEN v_upto IS NOT NULL THEN 'running' WHEN v_diffs > 0 THEN 'dirty' ELSE 'clean' END;
    PERFORM job_progress('verify', jsonb_build_object(
               'after', coalesce(to_jsonb(v_upto), j.cursor -> 'after'),
               'rows_old', (j.cursor ->> 'rows_old')::bigint + v_o,
               'rows_next', (j.cursor ->> 'rows_next')::bigint + v_n,
               'differences', v_diffs,
               'first', (SELECT coalesce(jsonb_agg(e), '[]') FROM (
                            SELECT e FROM jsonb_array_elements(j.cursor -> 'first') AS e
                            UNION ALL SELECT e FROM jsonb_array_elements(v_first) AS e LIMIT 10) AS f),
               'by', j.cursor -> 'by'),
           v_o, state);
END
$fn$;

-- ---------------------------------------------------------------- drain

-- DRAIN START|PAUSE.  The counters survive a pause; START after a pause goes on.
CREATE OR REPLACE FUNCTION pgshunt.drain_control(p_action text, p_by text) RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pgshunt
AS $fn$
BEGIN
    INSERT INTO pgshunt.jobs (name, cursor) VALUES ('drain', '{}') ON CONFLICT (name) DO NOTHING;
    IF p_action = 'START' THEN
        UPDATE pgshunt.jobs SET state = 'running', error = NULL, updated_at = now(),
                                started_at = CASE WHEN state = 'running' THEN started_at ELSE now() END
         WHERE name = 'drain';
        RETURN 'drain started by ' || p_by;
    ELSIF p_action = 'PAUSE' THEN
        UPDATE pgshunt.jobs SET state = 'paused', updated_at = now() WHERE name = 'drain';
        RETURN 'drain paused by ' || p_by;
    END IF;
    RAISE EXCEPTION 'unknown drain action %', p_action USING ERRCODE = 'invalid_parameter_value';
END
$fn$;

-- Rows in a table (the buffer, for SHOW DRAIN).
CREATE OR REPLACE FUNCTION pgshunt.job_count(p_rel regclass) RETURNS bigint
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pgshunt
AS $fn$
DECLARE
    n bigint;
BEGIN
    EXECUTE format('SELECT count(*) FROM %s', p_rel) INTO n;
    RETURN n;
END
$fn$;

-- p_name with '_old' appended to its last identifier: where finalized keeps old.
CREATE OR REPLACE FUNCTION pgshunt.job_old_name(p_name text) RETURNS text
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pgshunt
AS $fn$
    SELECT string_agg(quote_ident(CASE WHEN o = cardinality(parts) THEN p || '_old' ELSE p END), '.' ORDER BY o)
      FROM parse_ident(p_name) AS parts, unnest(parts) WITH ORDINALITY AS u(p, o);
$fn$;

-- One drain batch: p_rows buffered rows claimed in pgshunt_seq order (SKIP LOCKED:
-- several drainers may run), written through the write path of the phase in force
-- and deleted from the buffer, all in this transaction.
--   * every key of the batch is locked first (pgshunt.key_lock, in key order: one lock
--     order for every drainer), then its existence is checked in the authoritative
--     table with a fresh snapshot, which sees what a competitor committed under the lock;
--   * rows whose key is new (the first of their key in the batch) go in set-based: into
--     the primary, then into the mirror (the mirror's row with that key replaced, as
--     the mirror helpers do);
--   * the others, in arrival order: 'none' (plain INSERT) -> the conflicts ledger;
--     'nothing' -> skipped and counted, not ledgered (the client asked for exactly
--     that); 'update' -> its ON CONFLICT clause applied on old (which has the key's
--     unique index), the result mirrored into next; without a clause, or after
--     finalized, or when the clause fails -> the ledger.
-- Phases: passthrough old only; dual_write, read_next old -> next; cutover next -> old;
-- finalized the partitioned table under the table's name only.
CREATE OR REPLACE FUNCTION pgshunt.drain_batch(p_table text, p_next text, p_buffer regclass,
                                               p_keys name[], p_rows int, p_epoch bigint,
                                               OUT claimed bigint, OUT inserted bigint,
                                               OUT duplicates bigint, OUT ledgered bigint,
                                               OUT skipped bigint, OUT updated bigint,
                                               OUT state text)
LANGUAGE plpgsql
SET search_path = pg_catalog, pgshunt
SET lock_timeout = '5s'    -- bounds how long a batch (and the epoch it pins) can wait
AS $fn$
DECLARE
    v_job     pgshunt.jobs;
    v_state   text;
    v_phase   text;
    v_cur     boolean;
    v_old     regclass;   -- the unpartitioned table (its oid keys the key locks)
    v_primary regclass;
    v_mirror  regclass;
    v_cols    text;
    v_dcols   text;
    v_keys    text;
    v_dkeys   text;
    v_match   text;
    v_over    text;
    v_clause  text;
    v_res     jsonb;
    v_alias   name;
    r         record;
BEGIN
    claimed := 0; inserted := 0; duplicates := 0; ledgered := 0; skipped := 0; updated := 0;
    SELECT j.state INTO v_state FROM pgshunt.jobs AS j WHERE j.name = 'drain';
    IF v_state IS DISTINCT FROM 'running' THEN
        state := coalesce(v_state, 'idle');
        RETURN;
    END IF;
    SELECT ph.phase, ph.current INTO v_phase, v_cur FROM job_phase(p_epoch) AS ph;
    IF NOT v_cur THEN
        state := 'stale_epoch';
        RETURN;
    END IF;
    IF v_phase = 'finalized' THEN
        v_old := to_regclass(job_old_name(p_table));
        v_primary := to_regclass(p_table);
    ELSE
        v_old := to_regclass(p_table);
        v_primary := CASE WHEN v_phase = 'cutover' THEN to_regclass(p_next) ELSE v_old END;
        v_mirror := CASE v_phase WHEN 'cutover' THEN v_old WHEN 'passthrough' THEN NULL
                                 ELSE to_regclass(p_next) END;
    END IF;
    IF v_primary IS NULL OR v_old IS NULL THEN
        RAISE EXCEPTION 'drain in phase %: table % or % is missing', v_phase, p_table, p_next
            USING ERRCODE = 'undefined_table';
    END IF;
    v_cols := job_columns(v_old, '');
    v_dcols := job_columns(v_old, 'd.');
    v_keys := (SELECT string_agg(quote_ident(k), ', ' ORDER BY o) FROM unnest(p_keys) WITH ORDINALITY AS u(k, o));
    v_dkeys := (SELECT string_agg('d.' || quote_ident(k), ', ' ORDER BY o) FROM unnest(p_keys) WITH ORDINALITY AS u(k, o));
    v_match := (SELECT string_agg(format('t.%I = d.%I', k, k), ' AND ') FROM unnest(p_keys) AS k);
    v_over := CASE WHEN EXISTS (SELECT 1 FROM pg_attribute AS a WHERE a.attrelid = v_old AND a.attnum > 0
                                  AND NOT a.attisdropped AND a.attidentity = 'a')
                   THEN ' OVERRIDING SYSTEM VALUE' ELSE '' END;

    -- Claim.  pgshunt_first: the first row of its key in this batch.
    IF to_regclass('pg_temp.pgshunt_drain') IS NOT NULL THEN
        DROP TABLE pg_temp.pgshunt_drain;   -- left by a batch that failed inside this call's caller
    END IF;
    EXECUTE format('CREATE TEMP TABLE pgshunt_drain ON COMMIT DROP AS '
                   'SELECT b.*, row_number() OVER (PARTITION BY %s ORDER BY b.pgshunt_seq) = 1 AS pgshunt_first, '
                   'false AS pgshunt_exists FROM (SELECT * FROM %s ORDER BY pgshunt_seq LIMIT $1 '
                   'FOR UPDATE SKIP LOCKED) AS b', v_keys, p_buffer)
      USING p_rows;
    GET DIAGNOSTICS claimed = ROW_COUNT;
    IF claimed = 0 THEN
        state := 'running';
        RETURN;
    END IF;
    -- Every key's lock, in one order, before anything is read or written.
    EXECUTE format('SELECT count(pgshunt.key_lock(%s::oid, %s)) FROM (SELECT DISTINCT %s FROM pgshunt_drain AS d ORDER BY %s) AS d',
                   v_old::oid, v_dkeys, v_dkeys, v_dkeys);
    EXECUTE format('UPDATE pgshunt_drain AS d SET pgshunt_exists = true WHERE EXISTS (SELECT 1 FROM %s AS t WHERE %s)',
                   v_primary, v_match);

    -- New keys, set-based.
    EXECUTE format('INSERT INTO %s (%s)%s SELECT %s FROM pgshunt_drain AS d WHERE d.pgshunt_first AND NOT d.pgshunt_exists ORDER BY d.pgshunt_seq',
                   v_primary, v_cols, v_over, v_dcols);
    GET DIAGNOSTICS inserted = ROW_COUNT;
    IF v_mirror IS NOT NULL AND inserted > 0 THEN
        EXECUTE format('DELETE FROM %s AS t USING pgshunt_drain AS d WHERE d.pgshunt_first AND NOT d.pgshunt_exists AND %s',
                       v_mirror, v_match);
        EXECUTE format('INSERT INTO %s (%s)%s SELECT %s FROM pgshunt_drain AS d WHERE d.pgshunt_first AND NOT d.pgshunt_exists ORDER BY d.pgshunt_seq',
                       v_mirror, v_cols, v_over, v_dcols);
    END IF;

    -- Duplicates (rare): one at a time, in arrival order.
    v_alias := (SELECT c.relname FROM pg_class AS c WHERE c.oid = v_old);
    FOR r IN EXECUTE format('SELECT d.pgshunt_seq, d.pgshunt_conflict, d.pgshunt_conflict_clause, '
                            'jsonb_build_array(%s) AS key, to_jsonb(d) - ARRAY[''pgshunt_seq'', ''pgshunt_at'', '
                            '''pgshunt_conflict'', ''pgshunt_conflict_clause'', ''pgshunt_first'', ''pgshunt_exists''] AS row '
                            'FROM pgshunt_drain AS d WHERE NOT d.pgshunt_first OR d.pgshunt_exists ORDER BY d.pgshunt_seq',
                            v_dkeys) LOOP
        duplicates := duplicates + 1;
        IF r.pgshunt_conflict = 'nothing' THEN
            skipped := skipped + 1;
            CONTINUE;
        END IF;
        v_res := NULL;
        IF r.pgshunt_conflict = 'update' AND r.pgshunt_conflict_clause IS NOT NULL AND v_phase <> 'finalized' THEN
            v_clause := btrim(r.pgshunt_conflict_clause);
            v_clause := CASE WHEN v_clause ~* '^on\s+conflict' THEN v_clause
                             WHEN v_clause ~* '^do\s' THEN format('ON CONFLICT (%s) %s', v_keys, v_clause)
                             ELSE format('ON CONFLICT (%s) DO UPDATE %s', v_keys, v_clause) END;
            BEGIN
                EXECUTE format('INSERT INTO %s AS %I (%s)%s SELECT %s FROM pgshunt_drain AS d WHERE d.pgshunt_seq = $1 %s RETURNING to_jsonb(%I)',
                               v_old, v_alias, v_cols, v_over, v_dcols, v_clause, v_alias)
                  INTO v_res USING r.pgshunt_seq;
                IF v_res IS NULL THEN
                    skipped := skipped + 1;   -- the clause's WHERE kept the row as it was
                    CONTINUE;
                END IF;
                IF v_phase IN ('dual_write', 'read_next', 'cutover') THEN
                    EXECUTE format('SELECT pgshunt.put_next(t) FROM %s AS t WHERE %s', v_old,
                                   (SELECT string_agg(format('t.%I = ($1 ->> %L)::%s', k, k,
                                                             format_type(a.atttypid, a.atttypmod)), ' AND ')
                                      FROM unnest(p_keys) AS k
                                      JOIN pg_attribute AS a ON a.attrelid = v_old AND a.attname = k))
                      USING v_res;
                END IF;
                updated := updated + 1;
                CONTINUE;
            EXCEPTION WHEN OTHERS THEN
                -- A clause that cannot be replayed here: the row goes to the ledger.
                v_res := jsonb_build_object('error', SQLERRM);
            END;
        END IF;
        EXECUTE format('INSERT INTO pgshunt.conflicts (key, buffered_row, existing_row, conflict, resolution) '
                       'SELECT $1, $2, (SELECT to_jsonb(t) FROM %s AS t WHERE %s LIMIT 1), $3, $4',
                       v_primary,
                       (SELECT string_agg(format('t.%I::pg_catalog.text = $1 ->> %s', k, o - 1), ' AND ')
                          FROM unnest(p_keys) WITH ORDINALITY AS u(k, o)))
          USING r.key, r.row, r.pgshunt_conflict,
                CASE WHEN v_res ? 'error' THEN 'ledger (' || (v_res ->> 'error') || ')' ELSE 'ledger' END;
        ledgered := ledgered + 1;
    END LOOP;

    EXECUTE format('DELETE FROM %s AS b USING pgshunt_drain AS d WHERE b.pgshunt_seq = d.pgshunt_seq', p_buffer);
    DROP TABLE pg_temp.pgshunt_drain;
    -- The counters add to what the other drainers committed: the row is read under the
    -- lock the write takes, held to the end of the transaction.
    SELECT * INTO v_job FROM pgshunt.jobs AS jb WHERE jb.name = 'drain' FOR NO KEY UPDATE;
    PERFORM job_progress('drain', jsonb_build_object(
               'drained', coalesce((v_job.cursor ->> 'drained')::bigint, 0) + claimed,
               'inserted', coalesce((v_job.cursor ->> 'inserted')::bigint, 0) + inserted,
               'duplicates', coalesce((v_job.cursor ->> 'duplicates')::bigint, 0) + duplicates,
               'ledgered', coalesce((v_job.cursor ->> 'ledgered')::bigint, 0) + ledgered,
               'skipped', coalesce((v_job.cursor ->> 'skipped')::bigint, 0) + skipped,
               'updated', coalesce((v_job.cursor ->> 'updated')::bigint, 0) + updated,
               'rate', round(coalesce(0.7 * (v_job.cursor ->> 'rate')::numeric, 0)
                             + CASE WHEN (v_job.cursor ->> 'rate') IS NULL THEN 1 ELSE 0.3 END
                               * claimed / greatest(extract(epoch FROM clock_timestamp() - v_job.updated_at), 0.001)::numeric, 1)),
           claimed);
    state := 'running';
END
$fn$;

-- ---------------------------------------------------------------- partitions

-- The partitions of p_parent with their bounds (NULL for a default partition).
CREATE OR REPLACE FUNCTION pgshunt.partitions_list(p_parent regclass)
RETURNS TABLE(part regclass, lo timestamptz, hi timestamptz, est_rows bigint, bytes bigint)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pgshunt
SET timezone = 'UTC'
AS $fn$
    SELECT c.oid::regclass, b.m[1]::timestamptz, b.m[2]::timestamptz,
           greatest(c.reltuples, 0)::bigint, pg_total_relation_size(c.oid)
      FROM pg_inherits AS i JOIN pg_class AS c ON c.oid = i.inhrelid
      LEFT JOIN LATERAL regexp_match(pg_get_expr(c.relpartbound, c.oid),
                                     'FROM \(''([^'']*)''\) TO \(''([^'']*)''\)') AS b(m) ON true
     WHERE i.inhparent = p_parent
     ORDER BY 2 NULLS LAST, 1;
$fn$;

-- PARTITIONS MAINTAIN: make sure the current interval and p_premake more ahead have a
-- partition, then drop the partitions whose upper bound is older than now() -
-- p_retention (NULL: keep all), never the current interval's or a later one.
-- Intervals already covered by a partition are left alone whatever its name (after
-- finalized the partitioned table carries the table's name, its partitions next's);
-- new ones are named as partitions_ensure names them.  Every DDL waits at most
-- p_lock_timeout for its locks and, when it cannot have them, is reported as 'retry'
-- (the next run tries again) instead of queueing the application's statements behind
-- it.  One maintainer at a time: a second one waits (p_wait, the console) or gets a
-- single 'busy' row (the timer: another proxy is doing it).
-- Retention only applies to the authoritative table (p_authoritative: finalized):
-- before, dropping a partition of next would take rows from next that the table
-- still has, and the two would differ.
CREATE OR REPLACE FUNCTION pgshunt.partitions_maintain(p_parent regclass, p_interval text,
                                                       p_premake int, p_retention interval,
                                                       p_lock_timeout text, p_authoritative boolean,
                                                       p_wait boolean)
RETURNS TABLE(action text, partition text, detail text)
LANGUAGE plpgsql
SET search_path = pg_catalog, pgshunt
SET timezone = 'UTC'
SET datestyle = 'ISO, YMD'
AS $fn$
DECLARE
    v_step    interval;
    v_current timestamp;
    v_lo      timestamp;
    v_hi      timestamp;
    v_cutoff  timestamptz;
    v_type    regtype;
    v_fmt     text;
    v_nsp     name;
    v_rel     name;
    v_owner   oid;
    v_name    text;
    r         record;
BEGIN
    IF p_interval IS NULL OR p_interval NOT IN ('day', 'week', 'month') THEN
        RAISE EXCEPTION 'partition interval must be day, week or month, not %',
            coalesce(quote_literal(p_interval), 'NULL') USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_wait THEN
        PERFORM pg_advisory_xact_lock(hashtextextended('pgshunt:job:partitions', 0));
    ELSIF NOT pg_try_advisory_xact_lock(hashtextextended('pgshunt:job:partitions', 0)) THEN
        action := 'busy';
        partition := p_parent::text;
        detail := 'another pgshunt is maintaining the partitions';
        RETURN NEXT;
        RETURN;
    END IF;
    PERFORM pg_advisory_xact_lock(hashtextextended('pgshunt:partitions:' || p_parent::oid, 0));
    PERFORM set_config('lock_timeout', p_lock_timeout, true);
    SELECT n.nspname, c.relname, c.relowner, a.atttypid
      INTO v_nsp, v_rel, v_owner, v_type
      FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace
      JOIN pg_partitioned_table AS pt ON pt.partrelid = c.oid
      JOIN pg_attribute AS a ON a.attrelid = c.oid AND a.attnum = pt.partattrs[0]
     WHERE c.oid = p_parent AND pt.partstrat = 'r' AND pt.partnatts = 1;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'table % is not partitioned by range on one column', p_parent
            USING ERRCODE = 'feature_not_supported';
    END IF;
    v_fmt := CASE v_type WHEN 'timestamptz'::regtype THEN 'YYYY-MM-DD HH24:MI:SS"+00"'
                         WHEN 'timestamp'::regtype THEN 'YYYY-MM-DD HH24:MI:SS'
                         ELSE 'YYYY-MM-DD' END;
    v_step := ('1 ' || p_interval)::interval;
    v_current := date_trunc(p_interval, now() AT TIME ZONE 'UTC');

    -- Premake: the current interval and p_premake more.
    v_lo := v_current;
    WHILE v_lo < v_current + (p_premake + 1) * v_step LOOP
        v_hi := v_lo + v_step;
        IF NOT EXISTS (SELECT 1 FROM partitions_list(p_parent) AS l
                        WHERE l.lo <= v_lo AT TIME ZONE 'UTC' AND l.hi > v_lo AT TIME ZONE 'UTC') THEN
            v_name := v_rel || CASE WHEN p_interval = 'month' THEN to_char(v_lo, '"_y"YYYY"m"MM')
                                    ELSE to_char(v_lo, '"_p"YYYYMMDD') END;
            partition := quote_ident(v_nsp) || '.' || quote_ident(v_name);
            BEGIN
                EXECUTE format('CREATE TABLE %I.%I PARTITION OF %s FOR VALUES FROM (%L) TO (%L)',
                               v_nsp, v_name, p_parent, to_char(v_lo, v_fmt), to_char(v_hi, v_fmt));
                IF (SELECT c.relowner FROM pg_class AS c WHERE c.oid = partition::regclass) <> v_owner THEN
                    EXECUTE format('ALTER TABLE %s OWNER TO %I', partition, pg_get_userbyid(v_owner));
                END IF;
                action := 'create';
                detail := format('[%s, %s)', to_char(v_lo, v_fmt), to_char(v_hi, v_fmt));
            EXCEPTION WHEN lock_not_available THEN
                action := 'retry';
                detail := 'create: ' || SQLERRM;
            END;
            RETURN NEXT;
        END IF;
        v_lo := v_hi;
    END LOOP;
    action := 'premake';
    partition := p_parent::text;
    detail := format('partitions cover %s %s%s ahead of the current one, to %s', p_premake, p_interval,
                     CASE WHEN p_premake = 1 THEN '' ELSE 's' END, to_char(v_lo, v_fmt));
    RETURN NEXT;

    -- Retention: whole partitions older than the cutoff, never the current interval.
    IF p_retention IS NULL THEN
        RETURN;
    END IF;
    IF NOT p_authoritative THEN
        action := 'skip';
        partition := p_parent::text;
        detail := 'partition_retention applies once finalized: before, dropping a partition of '
                  'next would make it differ from the table';
        RETURN NEXT;
        RETURN;
    END IF;
    v_cutoff := least(now() - p_retention, v_current AT TIME ZONE 'UTC');
    FOR r IN SELECT * FROM partitions_list(p_parent) AS l WHERE l.hi IS NOT NULL AND l.hi <= v_cutoff LOOP
        partition := r.part::text;
        BEGIN
            EXECUTE format('DROP TABLE %s', r.part);
            action := 'drop';
            detail := format('[%s, %s), about %s rows, %s', r.lo, r.hi, r.est_rows, pg_size_pretty(r.bytes));
        EXCEPTION WHEN lock_not_available THEN
            action := 'retry';
            detail := 'drop: ' || SQLERRM;
        END;
        RETURN NEXT;
    END LOOP;
END
$fn$;

REVOKE ALL ON FUNCTION pgshunt.job_key(regclass, int), pgshunt.job_columns(regclass, text),
    pgshunt.job_claim(text, text), pgshunt.job_failed(text, text),
    pgshunt.job_progress(text, jsonb, bigint, text, bigint), pgshunt.job_phase(bigint),
    pgshunt.backfill_control(regclass, text, text), pgshunt.backfill_batch(regclass, regclass, int, bigint),
    pgshunt.verify_start(regclass, text), pgshunt.verify_chunk(regclass, regclass, int),
    pgshunt.drain_control(text, text), pgshunt.job_old_name(text), pgshunt.job_count(regclass),
    pgshunt.drain_batch(text, text, regclass, name[], int, bigint),
    pgshunt.partitions_list(regclass),
    pgshunt.partitions_maintain(regclass, text, int, interval, text, boolean, boolean) FROM PUBLIC;
