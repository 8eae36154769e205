-- pgshunt control schema, version 2.
--
-- Installed by pgshunt over its control connection (embedded in the binary by
-- proxy/sql/embed.sh, sent together with prepare.sql as one simple Query, hence one
-- implicit transaction).  Idempotent: safe to run again and again, also by several
-- proxies at once (the advisory lock below serialises them).  Plain SQL only: no psql
-- meta-commands, no BEGIN/COMMIT (the caller owns the transaction; with psql use -1).
--
-- Versioning: pgshunt.schema_version holds the version this script brought the schema
-- to.  A later version of this file keeps every CREATE ... IF NOT EXISTS as it is and
-- adds its changes in the migration block at the end, guarded by
-- "IF v < N THEN ... END IF" (ALTER TABLE ... ADD COLUMN IF NOT EXISTS and the like),
-- then raises the version.  Never edit a released step.

-- One installer at a time (a bigint key: the two-int key space is the per-row locks'),
-- held to the end of the transaction.  Then refuse to run over a schema a newer pgshunt
-- installed (this script would replace its functions with older ones); checked first so
-- nothing below runs.
DO $$
DECLARE
    v integer;
BEGIN
    -- Quiet the "already exists, skipping" notices of a re-run (to the end of the
    -- transaction; outside one, to the end of this statement only).
    PERFORM pg_catalog.set_config('client_min_messages', 'warning', true);
    PERFORM pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtextextended('pgshunt:install', 0));
    IF pg_catalog.to_regclass('pgshunt.schema_version') IS NOT NULL THEN
        EXECUTE 'SELECT max(version) FROM pgshunt.schema_version' INTO v;
        IF v > 2 THEN
            RAISE EXCEPTION 'pgshunt control schema is at version %, newer than this pgshunt''s (2)', v
                USING ERRCODE = 'object_not_in_prerequisite_state',
                      HINT = 'Upgrade this pgshunt: an older binary must not downgrade the schema.';
        END IF;
    END IF;
END
$$;

CREATE SCHEMA IF NOT EXISTS pgshunt;
COMMENT ON SCHEMA pgshunt IS 'pgshunt control schema (version in pgshunt.schema_version)';

-- The application's roles call the mirror helpers (pgshunt.put_next & co.) from their
-- own statements: they need USAGE on the schema.  Tables and control functions below
-- are not granted to PUBLIC.
GRANT USAGE ON SCHEMA pgshunt TO PUBLIC;

CREATE TABLE IF NOT EXISTS pgshunt.schema_version (
    singleton    boolean     PRIMARY KEY DEFAULT true CHECK (singleton),
    version      integer     NOT NULL,
    installed_at timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);
INSERT INTO pgshunt.schema_version (version) VALUES (1) ON CONFLICT (singleton) DO NOTHING;

-- The phase in force, fleet-wide.  Exactly one row: the primary key on a column that
-- can only be true allows at most one, the triggers below refuse DELETE and TRUNCATE.
CREATE TABLE IF NOT EXISTS pgshunt.state (
    singleton   boolean     PRIMARY KEY DEFAULT true CHECK (singleton),
    phase       text        NOT NULL DEFAULT 'passthrough'
                CHECK (phase IN ('passthrough', 'dual_write', 'read_next', 'cutover', 'finalized')),
    epoch       bigint      NOT NULL DEFAULT 1,
    degraded    boolean     NOT NULL DEFAULT false,
    table_name  text,
    next_name   text,
    buffer_name text,
    changed_at  timestamptz,
    changed_by  text
);
INSERT INTO pgshunt.state DEFAULT VALUES ON CONFLICT (singleton) DO NOTHING;

CREATE OR REPLACE FUNCTION pgshunt.state_keep_row() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pgshunt
AS $$
BEGIN
    RAISE EXCEPTION 'pgshunt.state must keep exactly one row'
        USING ERRCODE = 'integrity_constraint_violation',
              HINT = 'Change the phase with pgshunt.set_phase().';
END
$$;
REVOKE ALL ON FUNCTION pgshunt.state_keep_row() FROM PUBLIC;

-- The two triggers, each created unless pgshunt.state has a trigger of its name.
DO $$
DECLARE
    t record;
BEGIN
    FOR t IN SELECT * FROM (VALUES ('state_keep_row', 'DELETE', 'ROW'),
                                   ('state_keep_row_truncate', 'TRUNCATE', 'STATEMENT'))
                             AS v(name, event, level) LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_trigger
                       WHERE tgrelid = 'pgshunt.state'::pg_catalog.regclass
                         AND tgname = t.name) THEN
            EXECUTE pg_catalog.format('CREATE TRIGGER %I BEFORE %s ON pgshunt.state '
                                      'FOR EACH %s EXECUTE FUNCTION pgshunt.state_keep_row()',
                                      t.name, t.event, t.level);
        END IF;
    END LOOP;
END
$$;

-- Every phase change, in order.
CREATE TABLE IF NOT EXISTS pgshunt.phase_log (
    id         bigserial   PRIMARY KEY,
    at         timestamptz NOT NULL DEFAULT now(),
    from_phase text,
    to_phase   text        NOT NULL,
    epoch      bigint      NOT NULL,
    degraded   boolean     NOT NULL,
    forced     boolean     NOT NULL DEFAULT false,
    by         text,
    note       text
);

-- The fleet: one row per running pgshunt, kept alive by its heartbeat.
CREATE TABLE IF NOT EXISTS pgshunt.proxies (
    proxy_id      text        PRIMARY KEY,
    host          text,
    pid           integer,
    version       text,
    started_at    timestamptz NOT NULL DEFAULT now(),
    heartbeat_at  timestamptz NOT NULL DEFAULT now(),
    lease_until   timestamptz,
    acked_epoch   bigint,
    inflight      integer,
    insert_p99_ms double precision
);

-- Background jobs (backfill, verify, drain, partitions): progress and resumable cursor.
CREATE TABLE IF NOT EXISTS pgshunt.jobs (
    name       text        PRIMARY KEY,
    state      text        NOT NULL DEFAULT 'idle',
    cursor     jsonb,
    rows_done  bigint      NOT NULL DEFAULT 0,
    rows_total bigint,
    started_at timestamptz,
    updated_at timestamptz NOT NULL DEFAULT now(),
    runner     text,
    error      text
);

-- The ledger of potential double-billing found by the drain: a buffered row whose key
-- already exists in the table it is drained into.
CREATE TABLE IF NOT EXISTS pgshunt.conflicts (
    id           bigserial   PRIMARY KEY,
    at           timestamptz NOT NULL DEFAULT now(),
    key          jsonb       NOT NULL,
    buffered_row jsonb,
    existing_row jsonb,
    conflict     text        NOT NULL,
    resolution   text
);
CREATE INDEX IF NOT EXISTS conflicts_at_idx ON pgshunt.conflicts (at);

REVOKE ALL ON pgshunt.schema_version, pgshunt.state, pgshunt.phase_log, pgshunt.proxies,
    pgshunt.jobs, pgshunt.conflicts FROM PUBLIC;

-- Change the phase and/or the degraded flag.  Every call is a change: the epoch goes up
-- by one (so every session re-pins), a phase_log row is written, and
-- pg_notify('pgshunt_phase', '{"phase": ..., "epoch": ..., "degraded": ...}') is sent
-- (delivered at commit).  NULL p_phase or p_degraded keeps the current value.  No
-- precondition is checked here: the proxy does that before calling.  Concurrent callers
-- are serialised by the row lock on the state row.
CREATE OR REPLACE FUNCTION pgshunt.set_phase(p_phase text, p_degraded boolean, p_forced boolean,
                                             p_by text, p_note text)
RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pgshunt
AS $$
DECLARE
    v_from  text;
    v_phase text;
    v_deg   boolean;
    v_epoch bigint;
BEGIN
    SELECT s.phase INTO v_from FROM pgshunt.state AS s FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'pgshunt.state has no row' USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    UPDATE pgshunt.state AS s
       SET phase      = coalesce(p_phase, s.phase),
           degraded   = coalesce(p_degraded, s.degraded),
           epoch      = s.epoch + 1,
           changed_at = now(),
           changed_by = p_by
    RETURNING s.phase, s.degraded, s.epoch INTO v_phase, v_deg, v_epoch;
    INSERT INTO pgshunt.phase_log (from_phase, to_phase, epoch, degraded, forced, by, note)
    VALUES (v_from, v_phase, v_epoch, v_deg, coalesce(p_forced, false), p_by, p_note);
    PERFORM pg_notify('pgshunt_phase',
                      json_build_object('phase', v_phase, 'epoch', v_epoch,
                                        'degraded', v_deg)::text);
    RETURN v_epoch;
END
$$;
REVOKE ALL ON FUNCTION pgshunt.set_phase(text, boolean, boolean, text, text) FROM PUBLIC;

-- The fleet-wide hold of SET PHASE finalized (version 2 adds pgshunt.state.hold_until).
-- While hold_until is in the future every proxy holds new transactions' statements on the
-- table, so the rename can take its lock; the time limit frees the fleet by itself if the
-- proxy that set it dies.  p_seconds > 0 sets it, anything else ends it.  Like set_phase()
-- it bumps the epoch (the fleet acknowledges the hold like a phase), logs and notifies.
CREATE OR REPLACE FUNCTION pgshunt.set_hold(p_seconds integer, p_by text)
RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pgshunt
AS $$
DECLARE
    v_phase text;
    v_deg   boolean;
    v_epoch bigint;
BEGIN
    UPDATE pgshunt.state AS s
       SET hold_until = CASE WHEN p_seconds > 0
                             THEN clock_timestamp() + make_interval(secs => p_seconds) END,
           epoch      = s.epoch + 1,
           changed_at = now(),
           changed_by = p_by
    RETURNING s.phase, s.degraded, s.epoch INTO v_phase, v_deg, v_epoch;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'pgshunt.state has no row' USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    INSERT INTO pgshunt.phase_log (from_phase, to_phase, epoch, degraded, forced, by, note)
    VALUES (v_phase, v_phase, v_epoch, v_deg, false, p_by,
            CASE WHEN p_seconds > 0 THEN format('hold on (at most %s s)', p_seconds)
                 ELSE 'hold released' END);
    PERFORM pg_notify('pgshunt_phase',
                      json_build_object('phase', v_phase, 'epoch', v_epoch,
                                        'degraded', v_deg, 'hold', p_seconds > 0)::text);
    RETURN v_epoch;
END
$$;
REVOKE ALL ON FUNCTION pgshunt.set_hold(integer, text) FROM PUBLIC;

-- The rename of SET PHASE finalized, and the phase change with it, in the caller's one
-- transaction so the names and the phase can never disagree: <table> becomes
-- <table>_old (kept, same schema), <next> takes <table>'s name, phase finalized, hold
-- ended.  Index, constraint and sequence names stay as they are.  lock_timeout (ms)
-- bounds the wait for each table's lock: a 55P03 aborts the whole transaction and the
-- caller retries.  Refuses (55000) unless the phase is cutover under a hold that still
-- has p_margin_ms to run (once it lapses, proxies serve cutover again, naming next).
CREATE OR REPLACE FUNCTION pgshunt.finalize(p_table text, p_next text, p_lock_timeout_ms integer,
                                            p_margin_ms integer, p_by text)
RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pgshunt
AS $$
DECLARE
    v_phase text;
    v_hold  timestamptz;
    v_old   oid := pg_catalog.to_regclass(p_table);
    v_next  oid := pg_catalog.to_regclass(p_next);
    v_nsp   name;
    v_name  name;
    v_nname name;
BEGIN
    SELECT s.phase, s.hold_until INTO v_phase, v_hold FROM pgshunt.state AS s FOR UPDATE;
    IF v_phase IS DISTINCT FROM 'cutover' THEN
        RAISE EXCEPTION 'the phase is %, not cutover', v_phase
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    IF v_hold IS NULL OR v_hold < clock_timestamp() + make_interval(secs => p_margin_ms / 1000.0) THEN
        RAISE EXCEPTION 'the fleet-wide hold is not in force (or about to lapse)'
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    IF v_old IS NULL OR v_next IS NULL THEN
        RAISE EXCEPTION 'table % or next_table % does not exist', p_table, p_next
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    SELECT n.nspname, c.relname INTO v_nsp, v_name
      FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = v_old;
    SELECT c.relname INTO v_nname FROM pg_class c WHERE c.oid = v_next;
    -- PostgreSQL would truncate a longer name, maybe onto another table's.
    IF octet_length(v_name || '_old') > 63 THEN
        RAISE EXCEPTION 'the name %_old is longer than 63 bytes', v_name
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    IF pg_catalog.to_regclass(format('%I.%I', v_nsp, v_name || '_old')) IS NOT NULL THEN
        RAISE EXCEPTION '%.% already exists: the old table cannot take that name',
                        quote_ident(v_nsp), quote_ident(v_name || '_old')
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    PERFORM set_config('lock_timeout', p_lock_timeout_ms || 'ms', true);
    EXECUTE format('ALTER TABLE %s RENAME TO %I', v_old::regclass, v_name || '_old');
    -- A next_table in another schema moves into the table's first.
    IF (SELECT relnamespace FROM pg_class WHERE oid = v_next)
       <> (SELECT relnamespace FROM pg_class WHERE oid = v_old) THEN
        EXECUTE format('ALTER TABLE %s SET SCHEMA %I', v_next::regclass, v_nsp);
    END IF;
    EXECUTE format('ALTER TABLE %s RENAME TO %I', v_next::regclass, v_name);
    PERFORM set_config('lock_timeout', '0', true);
    UPDATE pgshunt.state SET hold_until = NULL;
    RETURN pgshunt.set_phase('finalized', NULL, false, p_by,
                             format('%s renamed to %s, %s to %s', p_table, v_name || '_old',
                                    v_nname, v_name));
END
$$;
REVOKE ALL ON FUNCTION pgshunt.finalize(text, text, integer, integer, text) FROM PUBLIC;

-- The system column xmax of the row an INSERT through one of pgshunt's views wrote, for
-- the application's RETURNING: a view has no system columns (42703), so the engine
-- writes pgshunt.xmax(true) for the claim views and pgshunt.xmax(false) for the buffer
-- views in its place.  Named xmax so that `RETURNING xmax` keeps its column name (and
-- its type, xid).  The claim trigger records, before it returns each row, what the
-- table would show (pgshunt.claim_xmax, local to the transaction): 0 for a row
-- inserted, for a row ON CONFLICT DO UPDATE updated the id of the (sub)transaction
-- that wrote it.  A buffered row is reported as inserted.  Nothing recorded means claim
-- triggers older than this function (MIGRATE PREPARE makes them again): an error, not a
-- made-up 0.
CREATE OR REPLACE FUNCTION pgshunt.xmax(p_claim boolean) RETURNS xid
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pgshunt
AS $$
DECLARE
    v text;
BEGIN
    IF NOT p_claim THEN
        RETURN '0'::xid;
    END IF;
    v := current_setting('pgshunt.claim_xmax', true);
    IF v IS NULL OR v = '' THEN
        RAISE EXCEPTION 'pgshunt: the claim trigger recorded no xmax for the row'
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Run MIGRATE PREPARE: it makes the claim triggers of this pgshunt.';
    END IF;
    RETURN v::xid;
END
$$;

-- Migrations between schema versions go here, each guarded by the version it needs.
DO $$
DECLARE
    v integer;
BEGIN
    SELECT version INTO v FROM pgshunt.schema_version FOR UPDATE;
    -- Version 1 is what the statements above create.
    IF v < 2 THEN
        -- The fleet-wide hold of SET PHASE finalized (pgshunt.set_hold()).
        ALTER TABLE pgshunt.state ADD COLUMN IF NOT EXISTS hold_until timestamptz;
        v := 2;
    END IF;
    UPDATE pgshunt.schema_version SET version = v, updated_at = now() WHERE version <> v;
END
$$;
