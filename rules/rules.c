#include "rules/rules.h"

#include <stddef.h>

const char *rule_action_name(enum rule_action action)
{
	static const char *const names[RULE__COUNT] = {"forward", "mirror", "rename",
						       "refuse",  "claim",  "buffer"};
	return action < RULE__COUNT ? names[action] : "?";
}

const struct rel_ref *rules_write_target(const struct stmt_info *st)
{
	for (uint32_t i = 0; i < st->nrefs; i++)
		if (st->refs[i].is_target)
			return &st->refs[i];
	return NULL;
}

static struct rule_decision refuse(const char *reason)
{
	return (struct rule_decision){.action = RULE_REFUSE, .reason = reason};
}

static struct rule_decision forward(void)
{
	return (struct rule_decision){.action = RULE_FORWARD};
}

static bool is_write_kind(enum stmt_kind kind)
{
	switch (kind) {
	case STMT_INSERT:
	case STMT_INSERT_SELECT:
	case STMT_UPDATE:
	case STMT_DELETE:
	case STMT_MERGE:
	case STMT_COPY_FROM:
	case STMT_TRUNCATE:
	case STMT_DDL:
		return true;
	default:
		return false;
	}
}

/* Statements that change only what they target: the mirror can follow their rows. */
static struct rule_decision mirror_write(const struct stmt_info *st)
{
	if (st->writable_cte)
		return refuse("a data-modifying WITH clause cannot be mirrored");
	if (st->sets_key_columns)
		return refuse("an UPDATE that changes key or partition columns cannot be mirrored");
	enum stmt_kind kind = st->kind == STMT_PREPARE ? st->inner : st->kind;
	const char *fn = kind == STMT_DELETE ? "pgshunt.del_next" : "pgshunt.put_next";
	return (struct rule_decision){.action = RULE_MIRROR, .mirror_fn = fn};
}

/*
 * The statements no mirroring phase can carry into both tables: the refusal, or for a
 * MERGE into another table (which only reads the table), `reading`.
 */
static struct rule_decision unmirrorable(enum stmt_kind kind, const struct rel_ref *target,
					 struct rule_decision reading)
{
	switch (kind) {
	case STMT_MERGE:
		return target ? refuse("MERGE into the table cannot be mirrored (it has no RETURNING "
				       "in PostgreSQL 15)")
			      : reading;
	case STMT_COPY_FROM:
		return refuse("COPY into the table cannot be mirrored");
	case STMT_TRUNCATE:
		return refuse("TRUNCATE would empty one table only");
	case STMT_DDL:
		return refuse("DDL on the table would change one table only");
	default:
		return refuse("pgshunt does not know how to mirror this statement");
	}
}

/* dual_write and read_next write old first and mirror into next in the same statement. */
static struct rule_decision decide_dual_write(const struct stmt_info *st)
{
	const struct rel_ref *target = rules_write_target(st);
	if (target && target->role != REL_OLD)
		return refuse("next_table and buffer_table are written by pgshunt only");
	if (st->writable_cte && st->writes)
		return refuse("a data-modifying WITH clause cannot be mirrored");
	switch (st->kind) {
	case STMT_COPY_TO:
		/* COPY (DELETE ... RETURNING ...) TO writes, and nothing mirrors it. */
		return st->writes ? refuse("COPY of a data-modifying query cannot be mirrored")
				  : forward();
	case STMT_SELECT:
	case STMT_SELECT_LOCKING:
	case STMT_DEALLOCATE:
	case STMT_EXECUTE:
		return forward();
	case STMT_EXPLAIN:
		/* EXPLAIN ANALYZE runs the statement: a write would go unmirrored. */
		return is_write_kind(st->inner) ? refuse("EXPLAIN of a write is not mirrored")
						: forward();
	case STMT_INSERT:
	case STMT_INSERT_SELECT:
	case STMT_UPDATE:
	case STMT_DELETE:
	case STMT_PREPARE:
		break;
	default:
		return unmirrorable(st->kind, target, forward());
	}
	if (st->kind == STMT_PREPARE) {
		if (!is_write_kind(st->inner))
			return forward();
		if ((st->inner == STMT_MERGE && target) || st->inner == STMT_COPY_FROM ||
		    st->inner == STMT_TRUNCATE || st->inner == STMT_DDL)
			return refuse("the prepared statement cannot be mirrored");
		if (st->inner == STMT_MERGE)
			return forward();
	}
	return target ? mirror_write(st) : forward();
}

/* The statement reads the table (and writes none of the configured relations). */
static bool reads_table(const struct stmt_info *st)
{
	if (rules_write_target(st))
		return false;
	for (uint32_t i = 0; i < st->nrefs; i++)
		if (st->refs[i].role == REL_OLD)
			return true;
	return false;
}

static bool is_insert(enum stmt_kind kind)
{
	return kind == STMT_INSERT || kind == STMT_INSERT_SELECT;
}

static struct rule_decision read_decision(bool final, const struct stmt_info *st)
{
	return final || !reads_table(st) ? forward() : (struct rule_decision){.action = RULE_RENAME};
}

static const char *claim_view(bool final, enum conflict_action conflict)
{
	switch (conflict) {
	case CONFLICT_NOTHING:
		return final ? "claim_nothing_final" : "claim_nothing";
	case CONFLICT_UPDATE:
		return final ? "claim_upsert_final" : "claim_upsert";
	default:
		return final ? "claim_final" : "claim";
	}
}

/*
 * cutover writes next first and mirrors into old; finalized writes the partitioned
 * table alone, under the table's own name.  INSERTs go through a claim view, whose
 * trigger keeps the key unique (next's primary key includes the partition column).
 */
static struct rule_decision decide_next_first(bool final, const struct stmt_info *st)
{
	const struct rel_ref *target = rules_write_target(st);
	if (target && target->role != REL_OLD)
		return refuse("next_table and buffer_table are written by pgshunt only");
	if (st->writable_cte && st->writes)
		return refuse("a data-modifying WITH clause cannot be mirrored");
	enum stmt_kind kind = st->kind == STMT_PREPARE ? st->inner : st->kind;
	switch (kind) {
	case STMT_COPY_TO:
		return st->writes ? refuse("COPY of a data-modifying query cannot be mirrored")
				  : read_decision(final, st);
	case STMT_SELECT:
	case STMT_SELECT_LOCKING:
		/* Writes lock next's row first now, so locking reads go there too. */
		return read_decision(final, st);
	case STMT_DEALLOCATE:
	case STMT_EXECUTE:
		return forward();
	case STMT_EXPLAIN:
		return is_write_kind(st->inner) ? refuse("EXPLAIN of a write is not mirrored")
						: read_decision(final, st);
	case STMT_INSERT:
	case STMT_INSERT_SELECT:
		if (!target)
			return read_decision(final, st);
		if (st->conflict == CONFLICT_UPDATE && st->sets_key_columns)
			return refuse("an ON CONFLICT DO UPDATE that changes key or partition columns "
				      "cannot be mirrored");
		return (struct rule_decision){.action = RULE_CLAIM,
					      .view = claim_view(final, st->conflict),
					      .to_next = !final};
	case STMT_UPDATE:
	case STMT_DELETE:
		if (!target)
			return read_decision(final, st);
		if (st->sets_key_columns)
			return refuse("an UPDATE that changes key or partition columns cannot be "
				      "mirrored");
		if (final)
			return forward();
		return (struct rule_decision){.action = RULE_MIRROR,
					      .mirror_fn = kind == STMT_DELETE ? "pgshunt.del_old"
									      : "pgshunt.put_old",
					      .to_next = true};
	default:
		return unmirrorable(kind, target, read_decision(final, st));
	}
}

static struct rule_decision decide_phase(enum phase phase, const struct stmt_info *st)
{
	switch (phase) {
	case PHASE_PASSTHROUGH:
		return forward();
	case PHASE_DUAL_WRITE:
		return decide_dual_write(st);
	case PHASE_READ_NEXT: {
		/*
		 * Writes as in dual_write (old first, mirrored); reads come from next.  A
		 * locking read stays on old: writes lock old's row before next's, and a read
		 * that locked next's row first could deadlock with them.
		 */
		struct rule_decision d = decide_dual_write(st);
		if (d.action == RULE_FORWARD && reads_table(st) && st->kind != STMT_SELECT_LOCKING &&
		    !(st->kind == STMT_PREPARE && st->inner == STMT_SELECT_LOCKING))
			d.action = RULE_RENAME;
		return d;
	}
	case PHASE_CUTOVER:
		return decide_next_first(false, st);
	case PHASE_FINALIZED:
		return decide_next_first(true, st);
	default:
		return refuse("this phase is not built in this version");
	}
}

/*
 * DEGRADED: an INSERT into the table goes to the buffer (append-only, no unique check,
 * its conflict clause recorded for the drain); everything else follows the phase.
 */
static struct rule_decision decide_degraded(enum phase phase, const struct stmt_info *st)
{
	const struct rel_ref *target = rules_write_target(st);
	enum stmt_kind kind = st->kind == STMT_PREPARE ? st->inner : st->kind;
	if (!is_insert(kind) || !target || target->role != REL_OLD)
		return decide_phase(phase, st);
	if (st->writable_cte)
		return refuse("a data-modifying WITH clause cannot be buffered");
	if (st->conflict == CONFLICT_UPDATE && st->sets_key_columns)
		return refuse("an ON CONFLICT DO UPDATE that changes key or partition columns "
			      "cannot be buffered");
	return (struct rule_decision){
		.action = RULE_BUFFER,
		.view = st->conflict == CONFLICT_NOTHING  ? "buffer_nothing"
			: st->conflict == CONFLICT_UPDATE ? "buffer_upsert"
							  : "buffer",
		.to_next = phase == PHASE_READ_NEXT || phase == PHASE_CUTOVER};
}

/*
 * What a partitioned table under the statement's names cannot answer as the heap table
 * did: NULL when nothing.
 */
static const char *partitioned_refusal(const struct stmt_info *st)
{
	/* ctid = '(0,1)' matches a row in every partition: a DELETE ... WHERE ctid IN
	 * (SELECT ctid ...) would remove rows it did not select. */
	if (st->uses_ctid)
		return "ctid is not unique across the partitions of the partitioned table";
	if (st->kind == STMT_COPY_TO && st->copy_relation && st->copy_legacy)
		return "COPY of the table with pre-9.0 options (BINARY before the name, USING "
		       "DELIMITERS) cannot be rewritten as COPY (SELECT ...) for the partitioned "
		       "table; write them in WITH (FORMAT binary, DELIMITER ...)";
	return NULL;
}

/*
 * What the rename to next_table cannot carry (it would change the answer, or the rows
 * written): NULL when nothing.
 */
static const char *rename_refusal(const struct stmt_info *st)
{
	const struct rel_ref *target = rules_write_target(st);
	/* Mentions written db.schema.table are left as written (PostgreSQL answers for
	 * them); a write there would change the table alone. */
	if (target && target->has_catalog)
		return "a write to a catalog-qualified name (db.schema.table) is not rewritten "
		       "for next_table";
	return partitioned_refusal(st);
}

/* finalized: ONLY on the table, or COPY name TO of it. */
static bool needs_whole(const struct stmt_info *st)
{
	for (uint32_t i = 0; i < st->nrefs; i++)
		if (st->refs[i].role == REL_OLD &&
		    (st->refs[i].only || (st->kind == STMT_COPY_TO && st->copy_relation)))
			return true;
	return false;
}

/*
 * An INSERT pointed at a claim or buffer view: RETURNING cannot read the row's system
 * columns there (a view has none: 42703).  The engine answers xmax (pgshunt.xmax());
 * the others are refused with the reason rather than failing as a missing column.
 */
static const char *sysref_refusal(const struct stmt_info *st)
{
	static const char *const why[SYSCOL__COUNT] = {
	    [SYSCOL_XMIN] = "RETURNING xmin cannot be answered through pgshunt's view of the "
			    "table (a view has no system columns; only xmax is answered)",
	    [SYSCOL_CMIN] = "RETURNING cmin cannot be answered through pgshunt's view of the "
			    "table (a view has no system columns; only xmax is answered)",
	    [SYSCOL_CMAX] = "RETURNING cmax cannot be answered through pgshunt's view of the "
			    "table (a view has no system columns; only xmax is answered)",
	    [SYSCOL_CTID] = "RETURNING ctid cannot be answered through pgshunt's view of the "
			    "table (a view has no system columns; only xmax is answered)",
	    [SYSCOL_TABLEOID] = "RETURNING tableoid cannot be answered through pgshunt's view "
				"of the table (a view has no system columns; only xmax is "
				"answered)",
	};
	_Static_assert(PARSER_MAX_SYSREFS == 8, "the reason below says 8");
	if (st->nsysrefs > PARSER_MAX_SYSREFS)
		return "RETURNING names system columns more than 8 times (pgshunt rewrites at "
		       "most 8 through its view of the table)";
	for (uint32_t i = 0; i < st->nsysrefs; i++)
		if (st->sysrefs[i].column != SYSCOL_XMAX && st->sysrefs[i].column < SYSCOL__COUNT)
			return why[st->sysrefs[i].column];
	return NULL;
}

struct rule_decision rules_decide(enum phase phase, bool degraded, const struct stmt_info *st)
{
	if (!st->touches || (phase == PHASE_PASSTHROUGH && !degraded))
		return forward();
	struct rule_decision d = degraded ? decide_degraded(phase, st) : decide_phase(phase, st);
	if (d.action == RULE_REFUSE)
		return d;
	const char *why = NULL;
	if (d.action == RULE_CLAIM || d.action == RULE_BUFFER)
		why = sysref_refusal(st);
	if (why)
		return refuse(why);
	if (phase == PHASE_FINALIZED) {
		/* The table's own name reads and writes the partitioned table now. */
		why = partitioned_refusal(st);
		d.whole = needs_whole(st);
	} else if (d.action == RULE_RENAME || d.to_next) {
		why = rename_refusal(st);
	}
	return why ? refuse(why) : d;
}

const char *rules_unservable(enum phase phase, bool degraded)
{
	(void)degraded;
	return phase < PHASE__COUNT ? NULL : "unknown phase";
}
