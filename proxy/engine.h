/*
 * The statement engine inside a session: pins the phase per transaction (I8), finds
 * the statements that touch the configured tables (parser.h), has rules.h decide, and
 * carries the decision out: rewritten Query and Parse messages, re-prepared named
 * statements, refusals, and the answers' transforms (the extra mirror column dropped).
 *
 * Statements that do not pass the byte prefilter are forwarded untouched (I6); a
 * session that never touches the table never allocates engine state.
 */
#ifndef PGSHUNT_ENGINE_H
#define PGSHUNT_ENGINE_H

#include <stdbool.h>
#include <stdint.h>

#include "parser/parser.h"
#include "proxy/phase.h"
#include "proxy/respq.h"
#include "rules/rules.h"

struct session;
struct engine;

/* How a request's answers are changed on the way to the client. */
enum xform {
	XF_NONE = 0,
	XF_DROP_LAST,  /* RowDescription and DataRows lose their last column */
	XF_DROP_ROWS,  /* RowDescription (NoData for a Describe) and DataRows are dropped */
	XF_SWALLOW,    /* everything up to and including CommandComplete is dropped */
	XF_MAP_OIDS,   /* a read pointed at next: RowDescription names the table instead */
	XF_DROP_LAST_MAP, /* XF_DROP_LAST on a write pointed at next (cutover), mapped too */
	XF_VIEW,       /* an INSERT into a claim or buffer view: RowDescription names the
			  table instead of the view, and errors lose the trigger's CONTEXT */
	XF_REFUSED,    /* a refusal's DO block: its error loses the block's CONTEXT */
};

/*
 * Handle one whole client request message of an active session: it is forwarded (as
 * is or rewritten), or answered, with its FIFO entries queued.  False when the session
 * was closed.
 */
bool engine_client_message(struct session *s, char type, const uint8_t *msg, uint32_t total);

/*
 * A server message for the request at the FIFO's head (head may be NULL): true when
 * the message goes on, possibly replaced by *out (then *out_len > 0); *drop set when
 * it must not reach the client at all.  The session skips the call for a head that is
 * forwarded as it is, not timed, with no transform (most answers).
 */
bool engine_server_message(struct session *s, struct respq_entry *head, char type,
			   const uint8_t *msg, uint32_t total, bool *drop);

/*
 * True when this request must wait: it would touch the table while the phase is not
 * known (at start, or after the lease on it was lost).  The session parks until
 * session_resume_all().
 */
bool engine_must_hold(const struct session *s, char type, const uint8_t *msg, uint32_t total);

/* True when the head's answers are transformed, so DataRows must arrive whole. */
bool engine_needs_whole(const struct respq_entry *head);

void engine_free(struct session *s);

/*
 * The text the server runs for one statement (st, parsed from query, a whole
 * single-statement string) in this phase, as a Parse sends it: rules_decide()'s
 * decision (in *d, with the session's own refusals) carried out, and the transform
 * of its answers.  NULL with *reason when refused.  Also what the unit tests check.
 */
char *engine_statement_text(enum phase phase, bool degraded, const char *query,
			    const struct stmt_info *st, struct rule_decision *d, uint8_t *xform,
			    const char **reason);

/*
 * Read (again) the claim and buffer views' OIDs and columns, mapped to the table the
 * configured name resolves to now: at start, after MIGRATE PREPARE and at every phase
 * change (the rename at finalized moves the name to the partitioned table).
 */
void engine_views_load(void);

#endif
