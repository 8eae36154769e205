-- pgshunt migration functions (control schema version 1): MIGRATE PREPARE and the
-- partition upkeep.  Installed after schema.sql, in the same transaction (pgshunt sends
-- both as one simple Query).  Only CREATE OR REPLACE: safe to run again and again.
-- Plain SQL, no psql meta-commands.
--
-- Conventions of every function here:
--   * SET search_path = pg_catalog, pgshunt: nothing the application put in public
--     (an operator, a function, a table) can capture a name used here;
--   * identifiers go through format('%I') / quote_ident / regclass, literals through
--     format('%L'); nothing is concatenated raw into SQL;
--   * relation names in generated SQL are always schema-qualified.
--
-- What migrate_prepare() generates per table (old = the table being migrated):
--   pgshunt.key_lock(p_table oid, k1 <type of key column 1>, ...) RETURNS void
--       pg_advisory_xact_lock(p_table::int4, hashtext(k1::text || chr(31) || k2::text ...))
--       (NULL counts as ''), the per-key lock taken by the writers that insert a key old's
--       unique index does not guard: the finalized claim trigger, the backfill, the
--       drain.  p_table is old's oid.  One function per list of key types, shared by
--       tables with the same key types.
--   pgshunt.put_next(r <old>) / pgshunt.del_next(r <old>)    RETURNS boolean
--   pgshunt.put_old(r <next>) / pgshunt.del_old(r <next>)    RETURNS boolean
--       Overloaded on the row type of their argument: several tables coexist.  They take
--       no key lock: the statement that calls them has already written old's row (or, in
--       cutover, next's row and then old's through them), so old's unique index and row
--       locks order every write of the key, and a lock per row would exhaust the shared
--       lock table on a bulk DELETE (docs/ENGINE.md, "Locks").
--   the claim and buffer views: see prepare_claims() below.

DO $$
BEGIN
    -- No "already exists, skipping" notice for the schema (to the end of the transaction).
    PERFORM pg_catalog.set_config('client_min_messages', 'warning', true);
    PERFORM pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtextextended('pgshunt:install', 0));
END
$$;

CREATE SCHEMA IF NOT EXISTS pgshunt;

-- The text after "USING " of an index's definition (pg_get_indexdef): the access
-- method, the columns, INCLUDE, NULLS NOT DISTINCT, WITH and WHERE, without the index's
-- and the table's names, so it compares equal between old's and next's indexes and can
-- be replayed on another table.  The head is matched exactly, never searched for.
CREATE OR REPLACE FUNCTION pgshunt.index_tail(p_index oid) RETURNS text
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pgshunt
AS $fn$
DECLARE
    v_def    text;
    v_unique boolean;
    v_index  name;
    v_table  text;
    v_head   text;
    v_rest   text;
BEGIN
    SELECT pg_get_indexdef(i.indexrelid), i.indisunique, ic.relname,
           quote_ident(tn.nspname) || '.' || quote_ident(tc.relname)
      INTO v_def, v_unique, v_index, v_table
      FROM pg_index AS i
      JOIN pg_class AS ic ON ic.oid = i.indexrelid
      JOIN pg_class AS tc ON tc.oid = i.indrelid
      JOIN pg_namespace AS tn ON tn.oid = tc.relnamespace
     WHERE i.indexrelid = p_index;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'index with oid % does not exist', p_index
            USING ERRCODE = 'undefined_object';
    END IF;
    v_head := 'CREATE ' || CASE WHEN v_unique THEN 'UNIQUE ' ELSE '' END
              || 'INDEX ' || quote_ident(v_index) || ' ON ';
    IF left(v_def, length(v_head)) = v_head THEN
        v_rest := substr(v_def, length(v_head) + 1);
        -- An index on a partitioned table reads "ON ONLY schema.table".
        IF left(v_rest, 5) = 'ONLY ' THEN
            v_rest := substr(v_rest, 6);
        END IF;
        IF left(v_rest, length(v_table) + 7) = v_table || ' USING ' THEN
            RETURN substr(v_rest, length(v_table) + 8);
        END IF;
    END IF;
    RAISE EXCEPTION 'cannot read the definition of index %: %', v_index, v_def
        USING ERRCODE = 'internal_error';
END
$fn$;

-- tail (from index_tail) with p_column appended to its key columns (before INCLUDE):
-- "btree (a, lower(b))" -> "btree (a, lower(b), p)".  Quotes ('...' and "...") and
-- nested parentheses are skipped.
CREATE OR REPLACE FUNCTION pgshunt.index_tail_add_column(p_tail text, p_column name)
RETURNS text
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pgshunt
AS $fn$
DECLARE
    v_start integer := strpos(p_tail, '(');
    v_len   integer := length(p_tail);
    v_depth integer := 0;
    v_quote text := NULL;
    v_i     integer;
    v_c     text;
BEGIN
    IF v_start = 0 THEN
        RAISE EXCEPTION 'no column list in index definition "%"', p_tail
            USING ERRCODE = 'internal_error';
    END IF;
    v_i := v_start;
    WHILE v_i <= v_len LOOP
        v_c := substr(p_tail, v_i, 1);
        IF v_quote IS NOT NULL THEN
            IF v_c = v_quote THEN
                IF substr(p_tail, v_i + 1, 1) = v_quote THEN
                    v_i := v_i + 1;          -- doubled quote inside the quotes
                ELSE
                    v_quote := NULL;
                END IF;
            END IF;
        ELSIF v_c IN ('''', '"') THEN
            v_quote := v_c;
        ELSIF v_c = '(' THEN
            v_depth := v_depth + 1;
        ELSIF v_c = ')' THEN
            v_depth := v_depth - 1;
            IF v_depth = 0 THEN
                RETURN left(p_tail, v_i - 1) || ', ' || quote_ident(p_column)
                       || substr(p_tail, v_i);
            END IF;
        END IF;
        v_i := v_i + 1;
    END LOOP;
    RAISE EXCEPTION 'unbalanced column list in index definition "%"', p_tail
        USING ERRCODE = 'internal_error';
END
$fn$;

-- Give p_to the owner of p_from and p_from's table privileges (the application's roles
-- read next after the switch and write it through the mirror helpers, which run with
-- their privileges).  Roles that may INSERT into p_from also get USAGE on the sequences
-- p_to owns (the buffer's pgshunt_seq).  Returns a line for the report.
CREATE OR REPLACE FUNCTION pgshunt.copy_owner_acl(p_from regclass, p_to regclass) RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pgshunt
AS $fn$
DECLARE
    v_owner   oid;
    v_to_q    text;
    v_grants  integer := 0;
    r         record;
    s         record;
BEGIN
    SELECT c.relowner INTO v_owner FROM pg_class AS c WHERE c.oid = p_from;
    SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname) INTO v_to_q
      FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace
     WHERE c.oid = p_to;
    IF (SELECT c.relowner FROM pg_class AS c WHERE c.oid = p_to) <> v_owner THEN
        EXECUTE format('ALTER TABLE %s OWNER TO %I', v_to_q, pg_get_userbyid(v_owner));
    END IF;
    FOR r IN
        SELECT a.grantee, a.privilege_type, a.is_grantable
          FROM pg_class AS c, aclexplode(c.relacl) AS a
         WHERE c.oid = p_from AND a.grantee <> c.relowner
         ORDER BY a.grantee, a.privilege_type
    LOOP
        EXECUTE format('GRANT %s ON TABLE %s TO %s%s', r.privilege_type, v_to_q,
                       CASE WHEN r.grantee = 0 THEN 'PUBLIC'
                            ELSE quote_ident(pg_get_userbyid(r.grantee)) END,
                       CASE WHEN r.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END);
        v_grants := v_grants + 1;
        IF r.privilege_type = 'INSERT' THEN
            FOR s IN
                SELECT quote_ident(sn.nspname) || '.' || quote_ident(sc.relname) AS q
                  FROM pg_depend AS d
                  JOIN pg_class AS sc ON sc.oid = d.objid AND sc.relkind = 'S'
                  JOIN pg_namespace AS sn ON sn.oid = sc.relnamespace
                 WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass
                   AND d.refobjid = p_to AND d.deptype IN ('a', 'i')
            LOOP
                EXECUTE format('GRANT USAGE ON SEQUENCE %s TO %s', s.q,
                               CASE WHEN r.grantee = 0 THEN 'PUBLIC'
                                    ELSE quote_ident(pg_get_userbyid(r.grantee)) END);
            END LOOP;
        END IF;
    END LOOP;
    RETURN format('owner %I, %s privilege%s copied', pg_get_userbyid(v_owner), v_grants,
                  CASE WHEN v_grants = 1 THEN '' ELSE 's' END);
END
$fn$;

-- A table name as next_table and buffer_table give it, [schema.]table parsed as SQL
-- identifiers (quoted or not), split into its schema (p_default_schema when
-- unqualified) and its table.  Anything else fails with invalid_name, the message
-- saying which name (p_what: 'next table', 'buffer table') was wrong.
CREATE OR REPLACE FUNCTION pgshunt.split_name(p_name text, p_default_schema name, p_what text,
                                              OUT nsp name, OUT rel name)
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pgshunt
AS $fn$
DECLARE
    v_parts text[] := parse_ident(p_name);
BEGIN
    -- Checked as text: assigned to a name, a longer identifier would be cut silently.
    IF EXISTS (SELECT FROM unnest(v_parts) AS p WHERE octet_length(p) > 63) THEN
        RAISE EXCEPTION '% name % is longer than 63 bytes', p_what, quote_literal(p_name)
            USING ERRCODE = 'name_too_long';
    END IF;
    IF cardinality(v_parts) = 1 THEN
        nsp := p_default_schema;
        rel := v_parts[1];
    ELSIF cardinality(v_parts) = 2 THEN
        nsp := v_parts[1];
        rel := v_parts[2];
    ELSE
        RAISE EXCEPTION '% name % is not [schema.]table', p_what, quote_literal(p_name)
            USING ERRCODE = 'invalid_name';
    END IF;
END
$fn$;

-- Make sure p_next (range-partitioned on one timestamptz, timestamp or date column) has a
-- partition for every p_interval ('day', 'week' or 'month') from the one containing
-- p_from (NULL: now()) to the one containing now(), plus p_premake more ahead.
-- Intervals are cut in UTC (weeks start on Monday).  Partitions are named
-- <next>_pYYYYMMDD (day, week: the first day) or <next>_yYYYYmMM (month), in next's
-- schema, owned by next's owner.  No default partition is ever made: a row outside every
-- partition fails.  Returns how many partitions it created.  Creating a partition takes
-- an ACCESS EXCLUSIVE lock on p_next: a caller running beside live traffic should SET
-- lock_timeout first.
CREATE OR REPLACE FUNCTION pgshunt.partitions_ensure(p_next regclass, p_interval text,
                                                     p_from timestamptz, p_premake int)
RETURNS int
LANGUAGE plpgsql
SET search_path = pg_catalog, pgshunt
SET timezone = 'UTC'        -- bounds read back by pg_get_expr print as they are written
SET datestyle = 'ISO, YMD'
AS $fn$
DECLARE
    v_nsp     name;
    v_nspoid  oid;
    v_rel     name;
    v_owner   oid;
    v_kind    "char";
    v_strat   "char";
    v_natts   int2;
    v_attnum  int2;
    v_type    regtype;
    v_step    interval;
    v_lo      timestamp;
    v_hi      timestamp;
    v_stop    timestamp;
    v_from    timestamptz := coalesce(p_from, now());
    v_name    text;
    v_fmt     text;
    v_found   oid;
    v_bound   text;
    v_created integer := 0;
BEGIN
    IF p_interval IS NULL OR p_interval NOT IN ('day', 'week', 'month') THEN
        RAISE EXCEPTION 'partition interval must be day, week or month, not %',
            coalesce(quote_literal(p_interval), 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_premake IS NULL OR p_premake < 0 THEN
        RAISE EXCEPTION 'partitions premade ahead must be 0 or more, not %',
            coalesce(p_premake::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF NOT isfinite(v_from) THEN
        RAISE EXCEPTION 'cannot make partitions from %', v_from
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT n.nspname, n.oid, c.relname, c.relowner, c.relkind
      INTO v_nsp, v_nspoid, v_rel, v_owner, v_kind
      FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace
     WHERE c.oid = p_next;
    SELECT pt.partstrat, pt.partnatts, pt.partattrs[0]
      INTO v_strat, v_natts, v_attnum
      FROM pg_partitioned_table AS pt WHERE pt.partrelid = p_next;
    IF v_kind IS DISTINCT FROM 'p' OR v_strat <> 'r' OR v_natts <> 1 OR v_attnum = 0 THEN
        RAISE EXCEPTION 'table %.% is not partitioned by range on one column',
            quote_ident(v_nsp), quote_ident(v_rel)
            USING ERRCODE = 'feature_not_supported';
    END IF;
    SELECT a.atttypid INTO v_type FROM pg_attribute AS a
     WHERE a.attrelid = p_next AND a.attnum = v_attnum;
    IF v_type NOT IN ('timestamptz'::regtype, 'timestamp'::regtype, 'date'::regtype) THEN
        RAISE EXCEPTION 'table %.% is partitioned on a column of type %, not timestamptz, timestamp or date',
            quote_ident(v_nsp), quote_ident(v_rel), v_type
            USING ERRCODE = 'feature_not_supported';
    END IF;

    -- One maker per table at a time (MIGRATE PREPARE and the upkeep job).
    PERFORM pg_advisory_xact_lock(hashtextextended('pgshunt:partitions:' || p_next::oid, 0));

    v_step := ('1 ' || p_interval)::interval;
    v_fmt := CASE v_type WHEN 'timestamptz'::regtype THEN 'YYYY-MM-DD HH24:MI:SS"+00"'
                         WHEN 'timestamp'::regtype THEN 'YYYY-MM-DD HH24:MI:SS'
                         ELSE 'YYYY-MM-DD' END;
    v_lo := date_trunc(p_interval, v_from AT TIME ZONE 'UTC');
    v_stop := date_trunc(p_interval, now() AT TIME ZONE 'UTC') + (p_premake + 1) * v_step;
    WHILE v_lo < v_stop LOOP
        v_hi := v_lo + v_step;
        v_name := v_rel || CASE WHEN p_interval = 'month' THEN to_char(v_lo, '"_y"YYYY"m"MM')
                                ELSE to_char(v_lo, '"_p"YYYYMMDD') END;
        v_bound := format('FOR VALUES FROM (%L) TO (%L)', to_char(v_lo, v_fmt), to_char(v_hi, v_fmt));
        IF octet_length(v_name) > 63 THEN
            RAISE EXCEPTION 'partition name "%" is longer than 63 bytes', v_name
                USING ERRCODE = 'name_too_long',
                      HINT = 'Give the partitioned table a shorter name.';
        END IF;
        SELECT c.oid INTO v_found FROM pg_class AS c
         WHERE c.relnamespace = v_nspoid AND c.relname = v_name;
        IF FOUND THEN
            IF NOT EXISTS (SELECT 1 FROM pg_inherits AS i
                            WHERE i.inhrelid = v_found AND i.inhparent = p_next) THEN
                RAISE EXCEPTION 'relation %.% exists and is not a partition of %.%',
                    quote_ident(v_nsp), quote_ident(v_name), quote_ident(v_nsp), quote_ident(v_rel)
                    USING ERRCODE = 'duplicate_table';
            END IF;
            IF (SELECT pg_get_expr(c.relpartbound, c.oid) FROM pg_class AS c WHERE c.oid = v_found)
               IS DISTINCT FROM v_bound THEN
                RAISE EXCEPTION 'partition %.% of %.% exists with other bounds than %', quote_ident(v_nsp),
                    quote_ident(v_name), quote_ident(v_nsp), quote_ident(v_rel), v_bound
                    USING ERRCODE = 'invalid_object_definition',
                          HINT = 'Was partition_interval changed?  It must stay what it was at MIGRATE PREPARE.';
            END IF;
        ELSE
            EXECUTE format('CREATE TABLE IF NOT EXISTS %I.%I PARTITION OF %I.%I %s',
                           v_nsp, v_name, v_nsp, v_rel, v_bound);
            IF (SELECT c.relowner FROM pg_class AS c
                 WHERE c.relnamespace = v_nspoid AND c.relname = v_name) <> v_owner THEN
                EXECUTE format('ALTER TABLE %I.%I OWNER TO %I', v_nsp, v_name,
                               pg_get_userbyid(v_owner));
            END IF;
            v_created := v_created + 1;
        END IF;
        v_lo := v_hi;
    END LOOP;
    RETURN v_created;
END
$fn$;

-- The write paths that do not go through the table itself, for migrate_prepare: per
-- table (old = p_table, rel = old's name),
--   pgshunt.<rel>_claim, <rel>_claim_nothing              cutover: next first, old mirrored
--   pgshunt.<rel>_claim_final, <rel>_claim_nothing_final  finalized: next only
--       views over next exposing old's live columns in old's order, with old's column
--       defaults, whose INSTEAD OF INSERT trigger decides key uniqueness (a plain INSERT
--       fails with old's 23505, DO NOTHING skips the row); docs/ENGINE.md, "Key
--       uniqueness on a partitioned target", says why each step is there.
--   pgshunt.<rel>_claims (bucket int PRIMARY KEY), UNLOGGED: one row per hash bucket of
--       the key (2^20 of them), upserted by every finalized claim: under REPEATABLE READ
--       the upsert fails with 40001 when a competitor claimed a key of the bucket after
--       the transaction's snapshot, which no query of next could see.
--   pgshunt.<rel>_buffer, <rel>_buffer_nothing, <rel>_buffer_upsert   DEGRADED: views
--       over the buffer with the same columns; the first is auto-updatable
--       (pgshunt_conflict takes its default, 'none'), the others write 'nothing' or
--       'update' (with the clause, pgshunt.conflict_clause()) through an INSTEAD rule
--       (an auto-updatable view cannot set a column it does not show).
-- The views name their relations by OID (a view's query is stored parsed), so they
-- survive the rename at finalized; the finalized trigger function names next by the
-- name it has after the rename and refuses to run before it.
-- The SET list, WHERE and alias of the client's INSERT ... ON CONFLICT DO UPDATE, which
-- pgshunt writes into the statement it sends as a comment /*pgshunt:upsert:HEX*/ (the
-- three, joined by chr(31), in the client's encoding, as hex): a trigger has no other
-- way to learn them, and the comment travels with the statement in both protocols.
-- One clause must be in the query being run: the engine sends no other, but the same
-- comment may stand twice (a SQL-level PREPARE and its EXECUTE in one query string).
-- The clause's parameters stand there as chr(30) n chr(30): before each Execute pgshunt
-- sets pgshunt.upsert_args to "n:type oid:hex value" (or "-" for NULL), comma-separated,
-- from the client's Bind, and each becomes a literal, cast to the type the client
-- declared for it (none: an untyped literal, typed by its place, as the parameter was).
CREATE OR REPLACE FUNCTION pgshunt.upsert_clause() RETURNS text[]
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pgshunt
AS $fn$
DECLARE
    v_hex    text[];
    v_clause text[];
    v_lit    text;
    r        record;
BEGIN
    SELECT array_agg(DISTINCT m[1]) INTO v_hex
      FROM regexp_matches(current_query(), '/\*pgshunt:upsert:([0-9a-f]*)\*/', 'g') AS m;
    IF cardinality(v_hex) IS DISTINCT FROM 1 THEN
        RAISE EXCEPTION 'pgshunt: ON CONFLICT DO UPDATE through a claim view needs the statement pgshunt sent (% clauses found)',
            coalesce(cardinality(v_hex), 0)
            USING ERRCODE = 'feature_not_supported';
    END IF;
    v_clause := string_to_array(convert_from(decode(v_hex[1], 'hex'), pg_client_encoding()), chr(31));
    IF strpos(v_clause[2] || v_clause[3], chr(30)) = 0 THEN
        RETURN v_clause;
    END IF;
    FOR r IN SELECT split_part(a, ':', 1) AS n, split_part(a, ':', 2)::oid AS typ,
                    split_part(a, ':', 3) AS val
               FROM unnest(string_to_array(current_setting('pgshunt.upsert_args', true), ',')) AS a LOOP
        v_lit := CASE WHEN r.val = '-' THEN 'NULL'
                      ELSE quote_literal(convert_from(decode(r.val, 'hex'), pg_client_encoding())) END;
        IF r.typ <> 0 THEN
            v_lit := format('%s::%s', v_lit, r.typ::regtype);
        END IF;
        v_clause[2] := replace(v_clause[2], chr(30) || r.n || chr(30), v_lit);
        v_clause[3] := replace(v_clause[3], chr(30) || r.n || chr(30), v_lit);
    END LOOP;
    IF strpos(v_clause[2] || v_clause[3], chr(30)) > 0 THEN
        RAISE EXCEPTION 'pgshunt: the parameters of ON CONFLICT DO UPDATE''s clause were not passed (run the statement through pgshunt''s extended protocol)'
            USING ERRCODE = 'feature_not_supported';
    END IF;
    RETURN v_clause;
END
$fn$;

-- ON CONFLICT DO UPDATE may not touch a row twice in one statement: PostgreSQL fails
-- with 21000 when a second proposed row meets the row the same command inserted or
-- updated.  The claim's trigger sees one row at a time, so the statement's keys are
-- kept (md5 of the key's text, comma-separated) in pgshunt.upsert_keys, which a
-- statement-level trigger of the upsert views empties before each statement.
CREATE OR REPLACE FUNCTION pgshunt.upsert_statement() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pgshunt
AS $fn$
BEGIN
    PERFORM set_config('pgshunt.upsert_keys', '', true);
    RETURN NULL;
END
$fn$;

-- Raises 21000 as PostgreSQL does when this statement already wrote the key.
CREATE OR REPLACE FUNCTION pgshunt.upsert_check(p_key text) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pgshunt
AS $fn$
BEGIN
    IF strpos(coalesce(current_setting('pgshunt.upsert_keys', true), ''), md5(p_key)) > 0 THEN
        RAISE EXCEPTION 'ON CONFLICT DO UPDATE command cannot affect row a second time'
            USING ERRCODE = 'cardinality_violation',
                  HINT = 'Ensure that no rows proposed for insertion within the same command have duplicate constrained values.';
    END IF;
END
$fn$;

-- The key was inserted or updated by this statement.  The list is a setting, copied
-- whole at each call: it stops growing at 1024 keys (33 bytes each) so that a bulk
-- upsert stays linear; a key proposed twice past the first 1024 of one statement is
-- updated twice instead of failing with 21000.
CREATE OR REPLACE FUNCTION pgshunt.upsert_touch(p_key text) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pgshunt
AS $fn$
DECLARE
    v_keys text := coalesce(current_setting('pgshunt.upsert_keys', true), '');
BEGIN
    IF length(v_keys) >= 1024 * 33 THEN
        RETURN;
    END IF;
    PERFORM set_config('pgshunt.upsert_keys', v_keys || md5(p_key) || ',', true);
END
$fn$;

-- DEGRADED: the ON CONFLICT ... DO UPDATE clause of the client's INSERT, as written,
-- for the buffer's pgshunt_conflict_clause (the drain replays it).  pgshunt sends it as
-- /*pgshunt:conflict:HEX*/ in place of the clause, for the same reason as above.
CREATE OR REPLACE FUNCTION pgshunt.conflict_clause() RETURNS text
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pgshunt
AS $fn$
DECLARE
    v_hex text[];
BEGIN
    SELECT array_agg(DISTINCT m[1]) INTO v_hex
      FROM regexp_matches(current_query(), '/\*pgshunt:conflict:([0-9a-f]*)\*/', 'g') AS m;
    IF cardinality(v_hex) IS DISTINCT FROM 1 THEN
        RAISE EXCEPTION 'pgshunt: ON CONFLICT DO UPDATE into the buffer needs the statement pgshunt sent (% clauses found)',
            coalesce(cardinality(v_hex), 0)
            USING ERRCODE = 'feature_not_supported';
    END IF;
    RETURN convert_from(decode(v_hex[1], 'hex'), pg_client_encoding());
END
$fn$;

CREATE OR REPLACE FUNCTION pgshunt.prepare_claims(p_table regclass, p_next regclass,
                                                  p_buffer regclass, p_key_columns name[],
                                                  p_key_idx oid)
RETURNS TABLE(step text, detail text)
LANGUAGE plpgsql
SET search_path = pg_catalog, pgshunt
AS $fn$
DECLARE
    v_old_nsp   name;
    v_rel       name;
    v_old_q     text;
    v_next_q    text;
    v_final_q   text;
    v_buf_q     text;
    v_pk        name;
    v_viewcols  text;   -- every live column, in old's order
    v_cols      text;   -- the ones that take a value (not generated)
    v_newvals   text;   -- NEW.<col> for those
    v_retcols   text;   -- buffer.<col> for every view column
    v_defaults  text;   -- ALTER COLUMN ... SET DEFAULT list for the views
    v_key_q     text;
    v_key_txt   text;   -- the key as key_lock hashes it
    v_key_args  text;
    v_key_where text;
    v_key_vals  text;
    v_ovr_old   text;
    v_ovr_next  text;
    v_raise     text;
    v_key_dyn   text;   -- the key's equality for the upsert's UPDATE, %1$s = the alias
    v_set_new   text;   -- SELECT v_row.<col>, ... INTO NEW
    v_upsert_c  text;
    v_upsert_f  text;
    v_body_cut  text;
    v_body_fin  text;
    v_src       text;
    v_view      text;
    v_done      boolean;
    r           record;
BEGIN
    SELECT n.nspname, c.relname INTO v_old_nsp, v_rel
      FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace WHERE c.oid = p_table;
    v_old_q := quote_ident(v_old_nsp) || '.' || quote_ident(v_rel);
    SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname),
           quote_ident(n.nspname) || '.' || quote_ident(v_rel)
      INTO v_next_q, v_final_q
      FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace WHERE c.oid = p_next;
    SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname) INTO v_buf_q
      FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace WHERE c.oid = p_buffer;
    SELECT c.relname INTO v_pk FROM pg_class AS c WHERE c.oid = p_key_idx;
    IF octet_length(v_rel) + 20 > 63 THEN
        RAISE EXCEPTION 'table name "%" is too long for pgshunt''s views (at most 43 bytes)', v_rel
            USING ERRCODE = 'name_too_long';
    END IF;

    SELECT string_agg(quote_ident(a.attname), ', ' ORDER BY a.attnum),
           string_agg(quote_ident(a.attname), ', ' ORDER BY a.attnum) FILTER (WHERE a.attgenerated = ''),
           string_agg(format('NEW.%I', a.attname), ', ' ORDER BY a.attnum) FILTER (WHERE a.attgenerated = ''),
           string_agg(format('b.%I', a.attname), ', ' ORDER BY a.attnum),
           string_agg(format('ALTER COLUMN %I SET DEFAULT %s', a.attname,
                             CASE WHEN a.attidentity <> ''
                                  THEN format('nextval(%L::regclass)', pg_get_serial_sequence(v_old_q, a.attname))
                                  ELSE pg_get_expr(d.adbin, d.adrelid) END), ', ' ORDER BY a.attnum)
               FILTER (WHERE a.attgenerated = '' AND (d.adbin IS NOT NULL OR a.attidentity <> ''))
      INTO v_viewcols, v_cols, v_newvals, v_retcols, v_defaults
      FROM pg_attribute AS a
      LEFT JOIN pg_attrdef AS d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
     WHERE a.attrelid = p_table AND a.attnum > 0 AND NOT a.attisdropped;
    v_ovr_old := CASE WHEN EXISTS (SELECT 1 FROM pg_attribute AS a WHERE a.attrelid = p_table
                                     AND a.attnum > 0 AND NOT a.attisdropped AND a.attidentity = 'a')
                      THEN ' OVERRIDING SYSTEM VALUE' ELSE '' END;
    v_ovr_next := CASE WHEN EXISTS (SELECT 1 FROM pg_attribute AS a WHERE a.attrelid = p_next
                                      AND a.attnum > 0 AND NOT a.attisdropped AND a.attidentity = 'a')
                       THEN ' OVERRIDING SYSTEM VALUE' ELSE '' END;
    -- The key: as the index names it in 23505's DETAIL, hashed as key_lock hashes it.
    SELECT string_agg(quote_ident(k), ', ' ORDER BY o),
           string_agg(format('coalesce(NEW.%I::pg_catalog.text, %L)', k, ''), ' || pg_catalog.chr(31) || ' ORDER BY o),
           string_agg(format('NEW.%I', k), ', ' ORDER BY o),
           string_agg(format('NEW.%I::pg_catalog.text', k), ', ' ORDER BY o)
      INTO v_key_q, v_key_txt, v_key_args, v_key_vals
      FROM unnest(p_key_columns) WITH ORDINALITY AS u(k, o);
    -- The key's equality operators are those of old's key index, schema-qualified.
    SELECT string_agg(format('t.%I OPERATOR(%I.%s) NEW.%I', a.attname, opn.nspname, op.oprname, a.attname), ' AND ')
      INTO v_key_where
      FROM pg_index AS i
      JOIN LATERAL generate_subscripts(i.indkey::int2[], 1) AS s(s) ON true
      JOIN pg_attribute AS a ON a.attrelid = p_table AND a.attnum = (i.indkey::int2[])[s.s]
      JOIN pg_opclass AS opc ON opc.oid = (i.indclass::oid[])[s.s]
      JOIN pg_amop AS amop ON amop.amopfamily = opc.opcfamily AND amop.amopstrategy = 3
                          AND amop.amoplefttype = opc.opcintype AND amop.amoprighttype = opc.opcintype
      JOIN pg_operator AS op ON op.oid = amop.amopopr
      JOIN pg_namespace AS opn ON opn.oid = op.oprnamespace
     WHERE i.indexrelid = p_key_idx AND s.s < i.indnkeyatts;

    SELECT string_agg('%1$s.' || replace(quote_ident(a.attname), '%', '%%') || ' OPERATOR('
                      || replace(quote_ident(opn.nspname), '%', '%%') || '.' || op.oprname || ') ($1).'
                      || replace(quote_ident(a.attname), '%', '%%'), ' AND ')
      INTO v_key_dyn
      FROM pg_index AS i
      JOIN LATERAL generate_subscripts(i.indkey::int2[], 1) AS s(s) ON true
      JOIN pg_attribute AS a ON a.attrelid = p_table AND a.attnum = (i.indkey::int2[])[s.s]
      JOIN pg_opclass AS opc ON opc.oid = (i.indclass::oid[])[s.s]
      JOIN pg_amop AS amop ON amop.amopfamily = opc.opcfamily AND amop.amopstrategy = 3
                          AND amop.amoplefttype = opc.opcintype AND amop.amoprighttype = opc.opcintype
      JOIN pg_operator AS op ON op.oid = amop.amopopr
      JOIN pg_namespace AS opn ON opn.oid = op.oprnamespace
     WHERE i.indexrelid = p_key_idx AND s.s < i.indnkeyatts;
    SELECT 'SELECT ' || string_agg(format('v_row.%I', a.attname), ', ' ORDER BY a.attnum) || ' INTO NEW;'
      INTO v_set_new
      FROM pg_attribute AS a WHERE a.attrelid = p_table AND a.attnum > 0 AND NOT a.attisdropped;
    -- ON CONFLICT DO UPDATE: the application's SET list and WHERE, with its alias for the
    -- table, come in the statement's text (pgshunt.upsert_clause()); the existing row is
    -- updated with them, EXCLUDED being the proposed row ($1).  Updated: the row is the
    -- answer (RETURNING sees it, the tag counts it); WHERE false: skipped.
    -- Before each RETURN NEW the trigger records the row's xmax as the table would show
    -- it, for the application's RETURNING xmax (pgshunt.xmax(true)): 0 for a row
    -- inserted; for a row updated, the id of the (sub)transaction that locked and updated
    -- it, which is the xmin of the version the UPDATE wrote (pg_current_xact_id() would
    -- be the top-level id, wrong under a SAVEPOINT).
    v_upsert_c := format(E'v_clause := pgshunt.upsert_clause();\n'
                         '            PERFORM pgshunt.upsert_check(%s);\n'
                         '            EXECUTE pg_catalog.format(%L, v_clause[1], v_clause[2], v_clause[3])\n'
                         '                INTO v_row USING NEW;\n'
                         '            GET DIAGNOSTICS v_n = ROW_COUNT;\n'
                         '            IF v_n = 0 THEN\n                RETURN NULL;\n            END IF;\n'
                         '            %s\n'
                         '            PERFORM pgshunt.upsert_touch(%s);\n'
                         '            PERFORM pg_catalog.set_config(''pgshunt.claim_xmax'', v_row.xmin::pg_catalog.text, true);\n'
                         '            RETURN NEW;',
                         v_key_txt,
                         'UPDATE ' || replace(v_next_q, '%', '%%') || ' AS %1$s SET %2$s WHERE ' || v_key_dyn
                         || ' AND (%3$s) RETURNING %1$s.*, %1$s.xmin, pgshunt.put_old(%1$s)', v_set_new,
                         v_key_txt);
    v_upsert_f := format(E'v_clause := pgshunt.upsert_clause();\n'
                         '        PERFORM pgshunt.upsert_check(%s);\n'
                         '        EXECUTE pg_catalog.format(%L, v_clause[1], v_clause[2], v_clause[3])\n'
                         '            INTO v_row USING NEW;\n'
                         '        GET DIAGNOSTICS v_n = ROW_COUNT;\n'
                         '        IF v_n > 0 THEN\n            %s\n'
                         '            PERFORM pgshunt.upsert_touch(%s);\n'
                         '            PERFORM pg_catalog.set_config(''pgshunt.claim_xmax'', v_row.xmin::pg_catalog.text, true);\n'
                         '            RETURN NEW;\n        END IF;',
                         v_key_txt,
                         'UPDATE ' || replace(v_final_q, '%', '%%') || ' AS %1$s SET %2$s WHERE ' || v_key_dyn
                         || ' AND (%3$s) RETURNING %1$s.*, %1$s.xmin', v_set_new, v_key_txt);
    -- What PostgreSQL says for a duplicate in old's key index (I3).
    v_raise := format(E'IF TG_ARGV[0] <> %L THEN\n        RETURN NULL;\n    END IF;\n'
                      '    RAISE EXCEPTION USING ERRCODE = %L, MESSAGE = %L,\n'
                      '        DETAIL = pg_catalog.format(%L, pg_catalog.concat_ws(%L, %s)),\n'
                      '        CONSTRAINT = %L, TABLE = %L, SCHEMA = %L;',
                      'error', 'unique_violation',
                      format('duplicate key value violates unique constraint "%s"', v_pk),
                      format('Key (%s)=(%%s) already exists.', v_key_q), ', ', v_key_vals,
                      v_pk, v_rel, v_old_nsp);
    -- cutover: old still has its unique key and every writer of the fleet writes old, so
    -- old's index decides; ON CONFLICT waits for an uncommitted insert of the key and
    -- raises 40001 under REPEATABLE READ when the winner is invisible to the snapshot.
    v_body_cut := format(E'\nDECLARE\n    v_clause text[];\n    v_row record;\n    v_n bigint;\nBEGIN\n'
                         '    INSERT INTO %s (%s)%s VALUES (%s) ON CONFLICT (%s) DO NOTHING;\n'
                         '    IF NOT FOUND THEN\n        IF TG_ARGV[0] = %L THEN\n            %s\n        END IF;\n        %s\n    END IF;\n'
                         '    INSERT INTO %s (%s)%s VALUES (%s) RETURNING %s INTO NEW;\n'
                         '    IF TG_ARGV[0] = %L THEN\n        PERFORM pgshunt.upsert_touch(%s);\n    END IF;\n'
                         '    PERFORM pg_catalog.set_config(''pgshunt.claim_xmax'', ''0'', true);\n'
                         '    RETURN NEW;\nEND\n',
                         v_old_q, v_cols, v_ovr_old, v_newvals, v_key_q, 'upsert', v_upsert_c, v_raise,
                         v_next_q, v_cols, v_ovr_next, v_newvals, v_viewcols, 'upsert', v_key_txt);
    -- finalized: next alone.  The key lock orders claims (and the jobs) of one key; the
    -- bucket upsert leaves a trace a REPEATABLE READ claim trips on (40001); FOR KEY
    -- SHARE, with this query's own snapshot, waits for an uncommitted delete of the key.
    v_body_fin := format(E'\nDECLARE\n    v_clause text[];\n    v_row record;\n    v_n bigint;\nBEGIN\n'
                         '    IF pg_catalog.to_regclass(%L) IS DISTINCT FROM %s::pg_catalog.oid THEN\n'
                         '        RAISE EXCEPTION USING ERRCODE = %L,\n'
                         '            MESSAGE = %L;\n    END IF;\n'
                         '    PERFORM pgshunt.key_lock(%s::pg_catalog.oid, %s);\n'
                         '    INSERT INTO pgshunt.%I AS c (bucket) VALUES (pg_catalog.hashtext(%s) & 1048575)\n'
                         '        ON CONFLICT (bucket) DO UPDATE SET bucket = excluded.bucket;\n'
                         '    IF TG_ARGV[0] = %L THEN\n        %s\n    END IF;\n'
                         '    PERFORM FROM %s AS t WHERE %s FOR KEY SHARE;\n'
                         '    IF FOUND THEN\n        %s\n    END IF;\n'
                         '    INSERT INTO %s (%s)%s VALUES (%s) RETURNING %s INTO NEW;\n'
                         '    IF TG_ARGV[0] = %L THEN\n        PERFORM pgshunt.upsert_touch(%s);\n    END IF;\n'
                         '    PERFORM pg_catalog.set_config(''pgshunt.claim_xmax'', ''0'', true);\n'
                         '    RETURN NEW;\nEND\n',
                         v_final_q, p_next::oid, 'object_not_in_prerequisite_state',
                         format('pgshunt: %s is not renamed to %s yet (phase finalized needs the rename)', v_next_q, v_final_q),
                         p_table::oid, v_key_args, v_rel || '_claims', v_key_txt, 'upsert', v_upsert_f,
                         v_final_q, v_key_where, v_raise,
                         v_final_q, v_cols, v_ovr_next, v_newvals, v_viewcols, 'upsert', v_key_txt);

    -- Unchanged since the last run: nothing to do (the bodies depend on every input).
    SELECT p.prosrc INTO v_src FROM pg_proc AS p
     WHERE p.oid = to_regprocedure(format('pgshunt.%I()', v_rel || '_claim_final'));
    v_done := v_src IS NOT DISTINCT FROM v_body_fin
              AND to_regclass(format('pgshunt.%I', v_rel || '_buffer_nothing')) IS NOT NULL
              AND to_regclass(format('pgshunt.%I', v_rel || '_claim_upsert_final')) IS NOT NULL
              AND to_regclass(format('pgshunt.%I', v_rel || '_buffer_upsert')) IS NOT NULL
              AND EXISTS (SELECT 1 FROM pg_proc AS p
                           WHERE p.oid = to_regprocedure(format('pgshunt.%I()', v_rel || '_claim'))
                             AND p.prosrc = v_body_cut);
    IF NOT v_done THEN
        EXECUTE format('CREATE UNLOGGED TABLE IF NOT EXISTS pgshunt.%I (bucket int PRIMARY KEY)', v_rel || '_claims');
        -- Any writer of the table claims through it; its rows carry no data.
        EXECUTE format('GRANT SELECT, INSERT, UPDATE ON pgshunt.%I TO PUBLIC', v_rel || '_claims');
        FOR r IN SELECT * FROM (VALUES (v_rel || '_claim', v_body_cut), (v_rel || '_claim_final', v_body_fin)) AS f(name, body) LOOP
            -- Key lookups planned once per connection, maybe while next was empty.
            EXECUTE format('CREATE OR REPLACE FUNCTION pgshunt.%I() RETURNS trigger LANGUAGE plpgsql VOLATILE '
                           'SET search_path = pg_catalog, pgshunt SET enable_seqscan = off AS %L', r.name, r.body);
            EXECUTE format('COMMENT ON FUNCTION pgshunt.%I() IS %L', r.name,
                           format('pgshunt (generated by migrate_prepare): INSTEAD OF INSERT trigger of the claim views of %s', v_old_q));
        END LOOP;
    END IF;
    FOR r IN SELECT * FROM (VALUES
                 ('_claim', v_next_q, v_rel || '_claim', 'error'),
                 ('_claim_nothing', v_next_q, v_rel || '_claim', 'nothing'),
                 ('_claim_final', v_next_q, v_rel || '_claim_final', 'error'),
                 ('_claim_nothing_final', v_next_q, v_rel || '_claim_final', 'nothing'),
                 ('_claim_upsert', v_next_q, v_rel || '_claim', 'upsert'),
                 ('_claim_upsert_final', v_next_q, v_rel || '_claim_final', 'upsert'),
                 ('_buffer', v_buf_q, NULL, NULL),
                 ('_buffer_nothing', v_buf_q, NULL, 'nothing'),
                 ('_buffer_upsert', v_buf_q, NULL, 'update')) AS f(suffix, base, fn, arg) LOOP
        v_view := format('pgshunt.%I', v_rel || r.suffix);
        IF v_done THEN
            step := 'exists';
            detail := format('view %s over %s', v_view, r.base);
            RETURN NEXT;
            CONTINUE;
        END IF;
        EXECUTE format('CREATE OR REPLACE VIEW %s AS SELECT %s FROM %s', v_view, v_viewcols, r.base);
        IF v_defaults IS NOT NULL THEN
            EXECUTE format('ALTER VIEW %s %s', v_view, v_defaults);
        END IF;
        IF r.fn IS NOT NULL THEN
            EXECUTE format('CREATE OR REPLACE TRIGGER claim INSTEAD OF INSERT ON %s FOR EACH ROW '
                           'EXECUTE FUNCTION pgshunt.%I(%L)', v_view, r.fn, r.arg);
            IF r.arg = 'upsert' THEN
                EXECUTE format('CREATE OR REPLACE TRIGGER upsert_statement BEFORE INSERT ON %s '
                               'FOR EACH STATEMENT EXECUTE FUNCTION pgshunt.upsert_statement()', v_view);
            END IF;
        ELSIF r.arg IS NOT NULL THEN
            EXECUTE format('CREATE OR REPLACE RULE buffer AS ON INSERT TO %s DO INSTEAD '
                           'INSERT INTO %s AS b (pgshunt_conflict, pgshunt_conflict_clause, %s) '
                           'VALUES (%L, %s, %s) RETURNING %s',
                           v_view, v_buf_q, v_cols, r.arg,
                           CASE WHEN r.arg = 'update' THEN 'pgshunt.conflict_clause()' ELSE 'NULL' END,
                           v_newvals, v_retcols);
        END IF;
        PERFORM copy_owner_acl(p_table, v_view::regclass);
        EXECUTE format('COMMENT ON VIEW %s IS %L', v_view,
                       format('pgshunt: INSERTs into %s are rewritten to this view (docs/ENGINE.md)', v_old_q));
        step := 'create_view';
        detail := format('view %s over %s', v_view, r.base);
        RETURN NEXT;
    END LOOP;
END
$fn$;

-- MIGRATE PREPARE: check p_table, then build next (partitioned), its partitions, the
-- buffer and the mirror helpers, one row per step; 'exists' for what is already there.
-- All in the caller's transaction; running it again changes nothing but the partitions
-- that time made due.  p_next and p_buffer may be schema-qualified (parsed as SQL
-- identifiers); unqualified, they go in p_table's schema.
-- Costs and consequences to know:
--   * min(partition column) is read from old: a full scan when no index leads with it;
--   * carrying a foreign key to next takes SHARE ROW EXCLUSIVE on the referenced table;
--   * next's defaults use old's sequences (serial and identity alike) and old's rows
--     types are in the helpers' signatures: before old is dropped (finalized), the
--     sequences must be re-owned (ALTER SEQUENCE ... OWNED BY next.col) and the helpers
--     dropped, or DROP TABLE fails on the dependencies;
--   * the helpers delete by key alone, so each call probes every partition's primary key
--     (the row may have moved partitions): many small partitions cost on every write.
CREATE OR REPLACE FUNCTION pgshunt.migrate_prepare(p_table regclass, p_next text, p_buffer text,
                                                   p_partition_column name, p_interval text,
                                                   p_premake int, p_key_columns name[])
RETURNS TABLE(step text, detail text)
LANGUAGE plpgsql
SET search_path = pg_catalog, pgshunt
AS $fn$
DECLARE
    c_like     constant text := 'INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING GENERATED '
                                'INCLUDING STORAGE INCLUDING COMMENTS INCLUDING COMPRESSION';
    v_old_nsp  name;
    v_old_rel  name;
    v_old_kind "char";
    v_old_q    text;
    v_next_nsp name;
    v_next_rel name;
    v_next_q   text;
    v_next     oid;
    v_buf_nsp  name;
    v_buf_rel  name;
    v_buf_q    text;
    v_buf      oid;
    v_p_att    int2;
    v_p_type   regtype;
    v_p_nn     boolean;
    v_p_gen    "char";
    v_n        integer;
    v_key      name;
    v_att      int2;
    v_nn       boolean;
    v_key_atts int2[] := '{}';
    v_key_idx  oid;
    v_key_q    text;
    v_pk_q     text;
    v_pk_cols  name[];
    v_from     timestamptz;
    v_bad      boolean;
    v_text     text;
    v_tail     text;
    v_iname    text;
    v_created  integer;
    v_cols     text;
    v_vals     text;
    v_where    text;
    v_lockargs text;
    v_types    text;
    v_params   text;
    v_nkeys    integer;
    v_override text;
    v_ucols    text;
    v_uvals    text;
    v_sig      text;
    v_src      text;
    v_config   text;
    v_want     text;
    v_proc     oid;
    r          record;
BEGIN
    -- One MIGRATE PREPARE at a time (a bigint key: the two-int space is the per-row locks').
    PERFORM pg_advisory_xact_lock(hashtextextended('pgshunt:prepare', 0));

    -- ---------------------------------------------------------------- checks
    IF p_table IS NULL OR p_next IS NULL OR p_buffer IS NULL OR p_partition_column IS NULL
       OR p_key_columns IS NULL OR cardinality(p_key_columns) = 0 THEN
        RAISE EXCEPTION 'migrate_prepare: table, next, buffer, partition column and key columns are all required'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_interval IS NULL OR p_interval NOT IN ('day', 'week', 'month') THEN
        RAISE EXCEPTION 'partition interval must be day, week or month, not %',
            coalesce(quote_literal(p_interval), 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_premake IS NULL OR p_premake < 0 THEN
        RAISE EXCEPTION 'partitions premade ahead must be 0 or more, not %',
            coalesce(p_premake::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF (SELECT count(DISTINCT k) FROM unnest(p_key_columns) AS k) <> cardinality(p_key_columns)
       OR array_position(p_key_columns, NULL) IS NOT NULL THEN
        RAISE EXCEPTION 'key columns % name a column twice or NULL', p_key_columns
            USING ERRCODE = 'invalid_parameter_value';
    END IF;

    SELECT n.nspname, c.relname, c.relkind INTO v_old_nsp, v_old_rel, v_old_kind
      FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace
     WHERE c.oid = p_table;
    v_old_q := quote_ident(v_old_nsp) || '.' || quote_ident(v_old_rel);
    IF v_old_kind = 'p' THEN
        RAISE EXCEPTION 'table % is partitioned already', v_old_q
            USING ERRCODE = 'feature_not_supported';
    ELSIF v_old_kind <> 'r' THEN
        RAISE EXCEPTION '% is not an ordinary table (relkind %)', v_old_q, v_old_kind
            USING ERRCODE = 'feature_not_supported';
    END IF;

    -- The partition column: present, a time type, not generated.
    SELECT a.attnum, a.atttypid, a.attnotnull, a.attgenerated
      INTO v_p_att, v_p_type, v_p_nn, v_p_gen
      FROM pg_attribute AS a
     WHERE a.attrelid = p_table AND a.attname = p_partition_column
       AND a.attnum > 0 AND NOT a.attisdropped;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'table % has no column "%" (the partition column)', v_old_q, p_partition_column
            USING ERRCODE = 'undefined_column';
    END IF;
    IF v_p_type NOT IN ('timestamptz'::regtype, 'timestamp'::regtype, 'date'::regtype) THEN
        RAISE EXCEPTION 'partition column "%" of table % is of type %, not timestamptz, timestamp or date',
            p_partition_column, v_old_q, v_p_type
            USING ERRCODE = 'feature_not_supported';
    END IF;
    IF v_p_gen <> '' THEN
        RAISE EXCEPTION 'partition column "%" of table % is a generated column', p_partition_column, v_old_q
            USING ERRCODE = 'feature_not_supported';
    END IF;

    -- The key columns: present (in the order given, which is the order of key_lock's
    -- arguments).
    FOREACH v_key IN ARRAY p_key_columns LOOP
        SELECT a.attnum, a.attnotnull INTO v_att, v_nn
          FROM pg_attribute AS a
         WHERE a.attrelid = p_table AND a.attname = v_key AND a.attnum > 0 AND NOT a.attisdropped;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'table % has no column "%" (a key column)', v_old_q, v_key
                USING ERRCODE = 'undefined_column';
        END IF;
        v_key_atts := v_key_atts || v_att;
    END LOOP;
    v_key_q := (SELECT string_agg(quote_ident(k), ', ' ORDER BY o) FROM unnest(p_key_columns) WITH ORDINALITY AS u(k, o));
    -- next's primary key: the key columns, then the partition column unless it is one.
    v_pk_cols := CASE WHEN p_partition_column = ANY (p_key_columns) THEN p_key_columns
                      ELSE p_key_columns || p_partition_column END;
    v_pk_q := (SELECT string_agg(quote_ident(k), ', ' ORDER BY o) FROM unnest(v_pk_cols) WITH ORDINALITY AS u(k, o));

    -- A primary key or a valid unique index on exactly the key columns (in any order,
    -- no expression, no predicate): old's own uniqueness, which the partitioned next
    -- cannot have.  The primary key first.
    SELECT i.indexrelid INTO v_key_idx
      FROM pg_index AS i
     WHERE i.indrelid = p_table AND i.indisunique AND i.indisvalid AND i.indisready
       AND i.indpred IS NULL AND i.indexprs IS NULL
       AND i.indnkeyatts = cardinality(v_key_atts)
       AND (SELECT array_agg(x ORDER BY x) FROM unnest((i.indkey::int2[])[0:i.indnkeyatts - 1]) AS x)
         = (SELECT array_agg(x ORDER BY x) FROM unnest(v_key_atts) AS x)
     ORDER BY i.indisprimary DESC, i.indnatts, i.indexrelid
     LIMIT 1;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'table % has no primary key or unique index on exactly (%)', v_old_q, v_key_q
            USING ERRCODE = 'feature_not_supported',
                  HINT = 'key_columns must be the table''s idempotency key, unique on its own.';
    END IF;

    -- NULLs: next's primary key (key + partition column) makes those columns NOT NULL,
    -- and a NULL partition column has no partition.  Rows with NULLs there could never be
    -- copied; a nullable column without such rows works, but a NULL written later fails
    -- (loudly) on next.
    IF NOT v_p_nn THEN
        EXECUTE format('SELECT EXISTS (SELECT 1 FROM %s WHERE %I IS NULL)', v_old_q, p_partition_column)
           INTO v_bad;
        IF v_bad THEN
            RAISE EXCEPTION 'table % has rows with a NULL "%" (the partition column): no partition can hold them',
                v_old_q, p_partition_column
                USING ERRCODE = 'feature_not_supported',
                      HINT = 'Fill them in and SET NOT NULL on the column.';
        END IF;
        RAISE WARNING 'partition column "%" of table % allows NULL: a NULL written during the migration fails on the partitioned table',
            p_partition_column, v_old_q;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_attribute AS a
                WHERE a.attrelid = p_table AND a.attnum = ANY (v_key_atts) AND NOT a.attnotnull) THEN
        EXECUTE format('SELECT EXISTS (SELECT 1 FROM %s WHERE %s)', v_old_q,
                       (SELECT string_agg(format('%I IS NULL', k), ' OR ') FROM unnest(p_key_columns) AS k))
           INTO v_bad;
        IF v_bad THEN
            RAISE EXCEPTION 'table % has rows with a NULL key column (%)', v_old_q, v_key_q
                USING ERRCODE = 'feature_not_supported';
        END IF;
        RAISE WARNING 'a key column of table % allows NULL: a NULL written during the migration fails on the partitioned table',
            v_old_q;
    END IF;

    -- The buffer's own columns must not clash with the table's.
    SELECT a.attname INTO v_key FROM pg_attribute AS a
     WHERE a.attrelid = p_table AND a.attnum > 0 AND NOT a.attisdropped
       AND a.attname IN ('pgshunt_seq', 'pgshunt_at', 'pgshunt_conflict', 'pgshunt_conflict_clause')
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'table % has a column "%", a name the buffer table uses', v_old_q, v_key
            USING ERRCODE = 'feature_not_supported';
    END IF;

    -- Names of next and buffer: SQL identifiers, schema-qualified or in old's schema.
    SELECT n.nsp, n.rel INTO v_next_nsp, v_next_rel FROM split_name(p_next, v_old_nsp, 'next table') AS n;
    SELECT n.nsp, n.rel INTO v_buf_nsp, v_buf_rel FROM split_name(p_buffer, v_old_nsp, 'buffer table') AS n;
    -- Partitions are named <next>_pYYYYMMDD: 10 bytes more, within the 63 of a name.
    IF octet_length(v_next_rel) > 53 THEN
        RAISE EXCEPTION 'next table name % is longer than 53 bytes (its partitions add 10 to it, and a name has at most 63)',
            quote_literal(v_next_rel)
            USING ERRCODE = 'name_too_long';
    END IF;
    v_next_q := quote_ident(v_next_nsp) || '.' || quote_ident(v_next_rel);
    v_buf_q := quote_ident(v_buf_nsp) || '.' || quote_ident(v_buf_rel);
    IF NOT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = v_next_nsp) THEN
        RAISE EXCEPTION 'schema "%" of next table % does not exist', v_next_nsp, v_next_q
            USING ERRCODE = 'invalid_schema_name';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = v_buf_nsp) THEN
        RAISE EXCEPTION 'schema "%" of buffer table % does not exist', v_buf_nsp, v_buf_q
            USING ERRCODE = 'invalid_schema_name';
    END IF;
    IF v_next_q = v_old_q OR v_buf_q = v_old_q OR v_buf_q = v_next_q THEN
        RAISE EXCEPTION 'table %, next table % and buffer table % must be three different tables',
            v_old_q, v_next_q, v_buf_q
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT c.oid INTO v_next FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace
     WHERE n.nspname = v_next_nsp AND c.relname = v_next_rel;
    SELECT c.oid INTO v_buf FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace
     WHERE n.nspname = v_buf_nsp AND c.relname = v_buf_rel;

    -- An existing next must be what this function would have made: range-partitioned on
    -- the partition column alone, the same columns (name, type, generated), no default
    -- partition.
    IF v_next IS NOT NULL THEN
        IF NOT EXISTS (
            SELECT 1 FROM pg_class AS c
              JOIN pg_partitioned_table AS pt ON pt.partrelid = c.oid
              JOIN pg_attribute AS a ON a.attrelid = c.oid AND a.attnum = pt.partattrs[0]
             WHERE c.oid = v_next AND c.relkind = 'p' AND pt.partstrat = 'r'
               AND pt.partnatts = 1 AND a.attname = p_partition_column) THEN
            RAISE EXCEPTION 'next table % exists but is not partitioned by range on "%"',
                v_next_q, p_partition_column
                USING ERRCODE = 'feature_not_supported',
                      HINT = 'Drop it or set next_table to another name.';
        END IF;
        SELECT coalesce(o.attname, x.attname) AS attname INTO v_key
          FROM (SELECT a.attname, format_type(a.atttypid, a.atttypmod) AS t, a.attgenerated
                  FROM pg_attribute AS a
                 WHERE a.attrelid = p_table AND a.attnum > 0 AND NOT a.attisdropped) AS o
          FULL JOIN
               (SELECT a.attname, format_type(a.atttypid, a.atttypmod) AS t, a.attgenerated
                  FROM pg_attribute AS a
                 WHERE a.attrelid = v_next AND a.attnum > 0 AND NOT a.attisdropped) AS x
            ON x.attname = o.attname AND x.t = o.t AND x.attgenerated = o.attgenerated
         WHERE o.attname IS NULL OR x.attname IS NULL
         LIMIT 1;
        IF FOUND THEN
            RAISE EXCEPTION 'next table % exists but its column "%" does not match table %',
                v_next_q, v_key, v_old_q
                USING ERRCODE = 'feature_not_supported',
                      HINT = 'Drop it or set next_table to another name.';
        END IF;
        IF (SELECT pt.partdefid FROM pg_partitioned_table AS pt WHERE pt.partrelid = v_next) <> 0 THEN
            RAISE EXCEPTION 'next table % has a default partition', v_next_q
                USING ERRCODE = 'feature_not_supported',
                      DETAIL = 'A row outside every partition must fail, not land in a default partition.';
        END IF;
    END IF;

    -- An existing buffer must have pgshunt's columns and every column of the table.
    IF v_buf IS NOT NULL THEN
        IF (SELECT c.relkind FROM pg_class AS c WHERE c.oid = v_buf) <> 'r' THEN
            RAISE EXCEPTION 'buffer table % exists but is not an ordinary table', v_buf_q
                USING ERRCODE = 'feature_not_supported';
        END IF;
        SELECT o.attname INTO v_key
          FROM (SELECT a.attname, format_type(a.atttypid, a.atttypmod) AS t
                  FROM pg_attribute AS a
                 WHERE a.attrelid = p_table AND a.attnum > 0 AND NOT a.attisdropped
                UNION ALL
                SELECT * FROM (VALUES ('pgshunt_seq'::name, 'bigint'), ('pgshunt_at', 'timestamp with time zone'),
                                      ('pgshunt_conflict', 'text'), ('pgshunt_conflict_clause', 'text')) AS v) AS o
         WHERE NOT EXISTS (SELECT 1 FROM pg_attribute AS a
                            WHERE a.attrelid = v_buf AND a.attname = o.attname AND a.attnum > 0
                              AND NOT a.attisdropped AND format_type(a.atttypid, a.atttypmod) = o.t)
         LIMIT 1;
        IF FOUND THEN
            RAISE EXCEPTION 'buffer table % exists but has no column "%" as table % needs', v_buf_q, v_key, v_old_q
                USING ERRCODE = 'feature_not_supported',
                      HINT = 'Drop it or set buffer_table to another name.';
        END IF;
    END IF;

    -- Where the partitions start: the oldest row (UTC for timestamp and date columns).
    EXECUTE format('SELECT %s FROM %s',
                   CASE v_p_type WHEN 'timestamptz'::regtype THEN format('min(%I)', p_partition_column)
                                 WHEN 'timestamp'::regtype THEN format('min(%I) AT TIME ZONE ''UTC''', p_partition_column)
                                 ELSE format('min(%I)::timestamp AT TIME ZONE ''UTC''', p_partition_column) END,
                   v_old_q)
       INTO v_from;
    IF v_from IS NOT NULL AND NOT isfinite(v_from) THEN
        RAISE EXCEPTION 'table % has a row with "%" = %: no partition can hold it', v_old_q, p_partition_column, v_from
            USING ERRCODE = 'feature_not_supported';
    END IF;

    -- ---------------------------------------------------------------- next
    IF v_next IS NULL THEN
        -- Not INCLUDING INDEXES: old's unique indexes lack the partition column, which a
        -- unique index on a partitioned table must include ("unique constraint on
        -- partitioned table must include all partitioning columns").  Not INCLUDING
        -- IDENTITY: that would make a new sequence; identity columns get old's sequence
        -- as their default below, as serial columns do through INCLUDING DEFAULTS.
        EXECUTE format('CREATE TABLE %s (LIKE %s %s INCLUDING STATISTICS) PARTITION BY RANGE (%I)',
                       v_next_q, v_old_q, c_like, p_partition_column);
        v_next := (SELECT c.oid FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace
                    WHERE n.nspname = v_next_nsp AND c.relname = v_next_rel);
        FOR r IN SELECT a.attname, pg_get_serial_sequence(v_old_q, a.attname) AS seq
                   FROM pg_attribute AS a
                  WHERE a.attrelid = p_table AND a.attnum > 0 AND NOT a.attisdropped AND a.attidentity <> ''
                  ORDER BY a.attnum LOOP
            EXECUTE format('ALTER TABLE %s ALTER COLUMN %I SET DEFAULT nextval(%L::regclass)',
                           v_next_q, r.attname, r.seq);
        END LOOP;
        v_text := copy_owner_acl(p_table, v_next);
        step := 'create_table';
        detail := format('%s partitioned by range (%I) (%s)', v_next_q, p_partition_column, v_text);
        RETURN NEXT;
    ELSE
        step := 'exists';
        detail := format('%s partitioned by range (%I)', v_next_q, p_partition_column);
        RETURN NEXT;
    END IF;

    -- Primary key: key columns + partition column.
    SELECT c.relname INTO v_iname
      FROM pg_index AS i JOIN pg_class AS c ON c.oid = i.indexrelid
     WHERE i.indrelid = v_next AND i.indisunique AND i.indpred IS NULL AND i.indexprs IS NULL
       AND i.indnkeyatts = cardinality(v_pk_cols)
       AND (SELECT array_agg(a.attname ORDER BY a.attname) FROM pg_attribute AS a
             WHERE a.attrelid = v_next AND a.attnum = ANY ((i.indkey::int2[])[0:i.indnkeyatts - 1]))
         = (SELECT array_agg(k ORDER BY k) FROM unnest(v_pk_cols) AS k)
     ORDER BY i.indisprimary DESC
     LIMIT 1;
    IF FOUND THEN
        step := 'exists';
        detail := format('unique index %I on %s (%s)', v_iname, v_next_q, v_pk_q);
        RETURN NEXT;
    ELSE
        EXECUTE format('ALTER TABLE %s ADD PRIMARY KEY (%s)', v_next_q, v_pk_q);
        step := 'create_constraint';
        detail := format('primary key on %s (%s)', v_next_q, v_pk_q);
        RETURN NEXT;
    END IF;

    -- Every other index of old, the unique ones extended with the partition column.
    FOR r IN
        SELECT i.indexrelid, c.relname, i.indisunique, i.indisvalid, i.indisexclusion,
               i.indnatts, i.indnkeyatts, i.indpred IS NULL AND i.indexprs IS NULL AS plain,
               v_p_att = ANY ((i.indkey::int2[])[0:i.indnkeyatts - 1]) AS has_p,
               (SELECT array_agg(x ORDER BY x) FROM unnest((i.indkey::int2[])[0:i.indnkeyatts - 1]) AS x)
                 = (SELECT array_agg(x ORDER BY x) FROM unnest(v_key_atts) AS x) AS on_key
          FROM pg_index AS i JOIN pg_class AS c ON c.oid = i.indexrelid
         WHERE i.indrelid = p_table
         ORDER BY c.relname
    LOOP
        IF r.indexrelid = v_key_idx
           OR (r.indisunique AND r.plain AND r.on_key AND r.indnatts = r.indnkeyatts) THEN
            CONTINUE;   -- the key's uniqueness: next's primary key stands for it
        END IF;
        IF NOT r.indisvalid THEN
            step := 'skip';
            detail := format('index %I on %s is not valid (a failed CREATE INDEX CONCURRENTLY?): not carried to %s',
                             r.relname, v_old_q, v_next_q);
            RETURN NEXT;
            CONTINUE;
        END IF;
        IF r.indisexclusion THEN
            step := 'skip';
            detail := format('index %I on %s backs an exclusion constraint, which PostgreSQL 15 cannot have on a partitioned table: not carried to %s',
                             r.relname, v_old_q, v_next_q);
            RETURN NEXT;
            CONTINUE;
        END IF;
        v_tail := index_tail(r.indexrelid);
        IF r.indisunique AND NOT r.has_p THEN
            v_tail := index_tail_add_column(v_tail, p_partition_column);
        END IF;
        SELECT c.relname INTO v_iname
          FROM pg_index AS i JOIN pg_class AS c ON c.oid = i.indexrelid
         WHERE i.indrelid = v_next AND i.indisunique = r.indisunique
           AND index_tail(i.indexrelid) = v_tail
         LIMIT 1;
        IF FOUND THEN
            step := 'exists';
            detail := format('%sindex %I on %s USING %s', CASE WHEN r.indisunique THEN 'unique ' ELSE '' END,
                             v_iname, v_next_q, v_tail);
            RETURN NEXT;
            CONTINUE;
        END IF;
        -- Named after old's index, with old's name swapped for next's where it appears.
        v_iname := CASE WHEN strpos(r.relname, v_old_rel) > 0
                        THEN overlay(r.relname PLACING v_next_rel FROM strpos(r.relname, v_old_rel) FOR length(v_old_rel))
                        ELSE v_next_rel || '_' || r.relname END;
        IF octet_length(v_iname) > 63 OR EXISTS (
               SELECT 1 FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace
                WHERE n.nspname = v_next_nsp AND c.relname = v_iname) THEN
            -- Too long or taken: let PostgreSQL choose a free name.
            EXECUTE format('CREATE %sINDEX ON %s USING %s',
                           CASE WHEN r.indisunique THEN 'UNIQUE ' ELSE '' END, v_next_q, v_tail);
            v_iname := (SELECT c.relname FROM pg_index AS i JOIN pg_class AS c ON c.oid = i.indexrelid
                         WHERE i.indrelid = v_next ORDER BY i.indexrelid DESC LIMIT 1);
        ELSE
            EXECUTE format('CREATE %sINDEX %I ON %s USING %s',
                           CASE WHEN r.indisunique THEN 'UNIQUE ' ELSE '' END, v_iname, v_next_q, v_tail);
        END IF;
        step := 'create_index';
        detail := format('%sindex %I on %s USING %s (from %I)', CASE WHEN r.indisunique THEN 'unique ' ELSE '' END,
                         v_iname, v_next_q, v_tail, r.relname);
        RETURN NEXT;
    END LOOP;

    -- Foreign keys from old to other tables (one to old itself would tie next to old).
    FOR r IN
        SELECT co.conname, co.confrelid, pg_get_constraintdef(co.oid) AS def
          FROM pg_constraint AS co
         WHERE co.conrelid = p_table AND co.contype = 'f'
         ORDER BY co.conname
    LOOP
        IF r.confrelid = p_table THEN
            step := 'skip';
            detail := format('foreign key %I of %s references the table itself: not carried to %s',
                             r.conname, v_old_q, v_next_q);
        ELSIF EXISTS (SELECT 1 FROM pg_constraint AS co
                       WHERE co.conrelid = v_next AND co.contype = 'f' AND co.conname = r.conname) THEN
            step := 'exists';
            detail := format('foreign key %I on %s', r.conname, v_next_q);
        ELSE
            EXECUTE format('ALTER TABLE %s ADD CONSTRAINT %I %s', v_next_q, r.conname, r.def);
            step := 'create_constraint';
            detail := format('foreign key %I on %s: %s', r.conname, v_next_q, r.def);
        END IF;
        RETURN NEXT;
    END LOOP;

    -- ---------------------------------------------------------------- partitions
    v_created := partitions_ensure(v_next, p_interval, v_from, p_premake);
    SELECT count(*) INTO v_n FROM pg_inherits AS i WHERE i.inhparent = v_next;
    step := CASE WHEN v_created > 0 THEN 'create_partitions' ELSE 'exists' END;
    detail := format('%s partition%s of %s by %s (%s made now), from the %s containing %s to %s more after the current one',
                     v_n, CASE WHEN v_n = 1 THEN '' ELSE 's' END, v_next_q, p_interval, v_created,
                     p_interval, coalesce(to_char(v_from AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS"+00"'), 'now'),
                     p_premake);
    RETURN NEXT;

    -- ---------------------------------------------------------------- buffer
    IF v_buf IS NULL THEN
        EXECUTE format('CREATE TABLE %s ('
                       'pgshunt_seq bigserial PRIMARY KEY, '
                       'pgshunt_at timestamptz NOT NULL DEFAULT clock_timestamp(), '
                       'pgshunt_conflict text NOT NULL DEFAULT %L '
                       'CONSTRAINT pgshunt_conflict_check CHECK (pgshunt_conflict IN (%L, %L, %L)), '
                       'pgshunt_conflict_clause text, '
                       'LIKE %s %s)',
                       v_buf_q, 'none', 'none', 'nothing', 'update', v_old_q, c_like);
        v_buf := (SELECT c.oid FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace
                   WHERE n.nspname = v_buf_nsp AND c.relname = v_buf_rel);
        FOR r IN SELECT a.attname, pg_get_serial_sequence(v_old_q, a.attname) AS seq
                   FROM pg_attribute AS a
                  WHERE a.attrelid = p_table AND a.attnum > 0 AND NOT a.attisdropped AND a.attidentity <> ''
                  ORDER BY a.attnum LOOP
            EXECUTE format('ALTER TABLE %s ALTER COLUMN %I SET DEFAULT nextval(%L::regclass)',
                           v_buf_q, r.attname, r.seq);
        END LOOP;
        EXECUTE format('COMMENT ON TABLE %s IS %L', v_buf_q,
                       format('pgshunt: writes to %s held while degraded, drained in pgshunt_seq order', v_old_q));
        v_text := copy_owner_acl(p_table, v_buf);
        step := 'create_table';
        detail := format('buffer %s (%s)', v_buf_q, v_text);
        RETURN NEXT;
    ELSE
        step := 'exists';
        detail := format('buffer %s', v_buf_q);
        RETURN NEXT;
    END IF;

    -- ---------------------------------------------------------------- mirror helpers
    -- Every live column but the generated ones (next and old compute those themselves),
    -- by name: the row types of old and next have the same column names, and old's
    -- dropped columns are absent from both the list and next.
    SELECT string_agg(quote_ident(a.attname), ', ' ORDER BY a.attnum),
           string_agg(format('($1).%I', a.attname), ', ' ORDER BY a.attnum),
           -- old's GENERATED ALWAYS identity columns can only be inserted (OVERRIDING):
           -- an UPDATE leaves them as they are, the key's row keeps its id.
           string_agg(quote_ident(a.attname), ', ' ORDER BY a.attnum) FILTER (WHERE a.attidentity <> 'a'),
           string_agg(format('($1).%I', a.attname), ', ' ORDER BY a.attnum) FILTER (WHERE a.attidentity <> 'a')
      INTO v_cols, v_vals, v_ucols, v_uvals
      FROM pg_attribute AS a
     WHERE a.attrelid = p_table AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = '';
    v_override := CASE WHEN EXISTS (SELECT 1 FROM pg_attribute AS a
                                     WHERE a.attrelid = p_table AND a.attnum > 0 AND NOT a.attisdropped
                                       AND a.attidentity = 'a')
                       THEN ' OVERRIDING SYSTEM VALUE' ELSE '' END;
    -- The key's equality operators are those of old's key index (by opclass), named with
    -- their schema: the search path cannot pick another "=".
    SELECT string_agg(format('t.%I OPERATOR(%I.%s) ($1).%I', k.k, opn.nspname, op.oprname, k.k), ' AND ' ORDER BY k.o),
           string_agg(format('($1).%I', k.k), ', ' ORDER BY k.o),
           string_agg(format_type(a.atttypid, NULL), ', ' ORDER BY k.o),
           string_agg(format('k%s %s', k.o, format_type(a.atttypid, NULL)), ', ' ORDER BY k.o),
           count(*)
      INTO v_where, v_lockargs, v_types, v_params, v_nkeys
      FROM unnest(p_key_columns) WITH ORDINALITY AS k(k, o)
      JOIN pg_attribute AS a ON a.attrelid = p_table AND a.attname = k.k
      JOIN pg_index AS i ON i.indexrelid = v_key_idx
      JOIN LATERAL generate_subscripts(i.indkey::int2[], 1) AS s(s) ON (i.indkey::int2[])[s.s] = a.attnum
      JOIN pg_opclass AS opc ON opc.oid = (i.indclass::oid[])[s.s]
      JOIN pg_amop AS amop ON amop.amopfamily = opc.opcfamily AND amop.amopstrategy = 3
                          AND amop.amoplefttype = opc.opcintype AND amop.amoprighttype = opc.opcintype
      JOIN pg_operator AS op ON op.oid = amop.amopopr
      JOIN pg_namespace AS opn ON opn.oid = op.oprnamespace;
    IF v_nkeys <> cardinality(p_key_columns) THEN
        RAISE EXCEPTION 'cannot find the equality operators of the key index of %', v_old_q
            USING ERRCODE = 'internal_error';
    END IF;

    FOR r IN
        SELECT * FROM (VALUES
            -- name, argument type, body
            (1, 'key_lock', 'oid, ' || v_types,
             format(E'\nBEGIN\n    PERFORM pg_catalog.pg_advisory_xact_lock(p_table::pg_catalog.int4, pg_catalog.hashtext(%s));\nEND\n',
                    (SELECT string_agg(format('coalesce(k%s::pg_catalog.text, %L)', o, ''), ' || pg_catalog.chr(31) || ' ORDER BY o)
                       FROM generate_series(1, cardinality(p_key_columns)) AS o)),
             'p_table oid, ' || v_params,
             'void', 'the per-key transaction lock: pg_advisory_xact_lock(p_table::int4, hashtext(key values as text joined by chr(31)))'),
            -- An UPDATE when the key is there (not DELETE + INSERT): a concurrent writer of
            -- the row waiting on it follows the update instead of finding it gone (a
            -- lost update while proxies in read_next and cutover write the same key).
            (2, 'put_next', v_old_q,
             format(E'\nBEGIN\n    UPDATE %s AS t SET (%s) = ROW(%s) WHERE %s;\n    IF NOT FOUND THEN\n        INSERT INTO %s (%s) VALUES (%s);\n    END IF;\n    RETURN true;\nEND\n',
                    v_next_q, v_cols, v_vals, v_where, v_next_q, v_cols, v_vals),
             'r ' || v_old_q, 'boolean', format('mirror a row of %s into %s (updates the row with its key, or inserts it)', v_old_q, v_next_q)),
            (3, 'del_next', v_old_q,
             format(E'\nBEGIN\n    DELETE FROM %s AS t WHERE %s;\n    RETURN true;\nEND\n',
                    v_next_q, v_where),
             'r ' || v_old_q, 'boolean', format('delete from %s the row with the key of a row of %s', v_next_q, v_old_q)),
            (4, 'put_old', v_next_q,
             format(E'\nBEGIN\n    UPDATE %s AS t SET (%s) = ROW(%s) WHERE %s;\n    IF NOT FOUND THEN\n        INSERT INTO %s (%s)%s VALUES (%s);\n    END IF;\n    RETURN true;\nEND\n',
                    v_old_q, v_ucols, v_uvals, v_where, v_old_q, v_cols, v_override, v_vals),
             'r ' || v_next_q, 'boolean', format('mirror a row of %s into %s (updates the row with its key, or inserts it)', v_next_q, v_old_q)),
            (5, 'del_old', v_next_q,
             format(E'\nBEGIN\n    DELETE FROM %s AS t WHERE %s;\n    RETURN true;\nEND\n',
                    v_old_q, v_where),
             'r ' || v_next_q, 'boolean', format('delete from %s the row with the key of a row of %s', v_old_q, v_next_q))
        ) AS f(ord, name, argtypes, body, args, rettype, comment)
        ORDER BY ord
    LOOP
        v_sig := format('pgshunt.%I(%s)', r.name, r.argtypes);
        v_proc := to_regprocedure(v_sig);
        -- The mirror helpers plan their key lookups once per connection; a plan made
        -- while next's partitions were still empty would scan them whole ever after.
        v_config := CASE WHEN r.name = 'key_lock' THEN '' ELSE ' SET enable_seqscan = off' END;
        SELECT p.prosrc || coalesce(array_to_string(p.proconfig, ','), '') INTO v_src
          FROM pg_proc AS p WHERE p.oid = v_proc;
        v_want := r.body || 'search_path=pg_catalog, pgshunt'
                  || CASE WHEN v_config = '' THEN '' ELSE ',enable_seqscan=off' END;
        IF v_proc IS NOT NULL AND v_src = v_want THEN
            step := 'exists';
            detail := 'function ' || v_sig;
            RETURN NEXT;
            CONTINUE;
        END IF;
        EXECUTE format('CREATE OR REPLACE FUNCTION pgshunt.%I(%s) RETURNS %s LANGUAGE plpgsql VOLATILE '
                       'SET search_path = pg_catalog, pgshunt%s AS %L',
                       r.name, r.args, r.rettype, v_config, r.body);
        EXECUTE format('COMMENT ON FUNCTION %s IS %L', v_sig, 'pgshunt (generated by migrate_prepare): ' || r.comment);
        step := CASE WHEN v_proc IS NULL THEN 'create_function' ELSE 'replace_function' END;
        detail := 'function ' || v_sig;
        RETURN NEXT;
    END LOOP;

    -- ---------------------------------------------------------------- claim and buffer views
    RETURN QUERY SELECT * FROM prepare_claims(p_table, v_next::regclass, v_buf::regclass, p_key_columns, v_key_idx);
    RETURN;
END
$fn$;

REVOKE ALL ON FUNCTION pgshunt.index_tail(oid) FROM PUBLIC;
REVOKE ALL ON FUNCTION pgshunt.index_tail_add_column(text, name) FROM PUBLIC;
REVOKE ALL ON FUNCTION pgshunt.copy_owner_acl(regclass, regclass) FROM PUBLIC;
REVOKE ALL ON FUNCTION pgshunt.split_name(text, name, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION pgshunt.partitions_ensure(regclass, text, timestamptz, int) FROM PUBLIC;
REVOKE ALL ON FUNCTION pgshunt.prepare_claims(regclass, regclass, regclass, name[], oid) FROM PUBLIC;
REVOKE ALL ON FUNCTION pgshunt.migrate_prepare(regclass, text, text, name, text, int, name[]) FROM PUBLIC;
