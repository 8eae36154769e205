/*
 * The admin console: `psql -h HOST -p PORT -U ADMIN pgshunt`.
 *
 * A client that logs in to admin_database (after the server itself has
 * authenticated the user, who must be listed in admin_users) talks to pgshunt, not
 * to PostgreSQL.  Commands come from one table, SHOW views are written from their
 * column lists; both the simple and the extended protocol are answered.
 */
#ifndef PGSHUNT_ADMIN_H
#define PGSHUNT_ADMIN_H

#include <stdbool.h>
#include <stddef.h>

#include "proxy/pktbuf.h"

struct session;

/* What a command writes its answer into. */
struct admin_result {
	struct pktbuf *out; /* DataRows and errors go here */
	uint32_t rows;
	char tag[64];
	bool failed;   /* an ErrorResponse was written */
	bool deferred; /* answered later through admin_deferred_done() */
};

void admin_res_row(struct admin_result *r, size_t n, const char *const *values);
void admin_res_error(struct admin_result *r, const char *sqlstate, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

struct admin_cmd {
	const char *words;            /* e.g. "SHOW CLIENTS": matched case-insensitively */
	const char *const *columns;   /* result columns, NULL when it returns no rows */
	bool (*run)(struct session *s, struct admin_result *r, const char *args);
	const char *help;             /* one line for SHOW HELP */
	bool takes_args;              /* words may be followed by arguments */
};

/* Find the command a statement names; *args points past its words (trimmed). */
const struct admin_cmd *admin_lookup(const char *stmt, const char **args);

/* The whole command table, for SHOW HELP and the tests. */
size_t admin_command_count(void);
const struct admin_cmd *admin_command_at(size_t i);

bool admin_begin(struct session *s) __attribute__((warn_unused_result));
/* Answer what the client sent; false when the session was closed. */
bool admin_process(struct session *s);
void admin_free(struct session *s);

/*
 * Finish a command that set r->deferred: tag for its CommandComplete, or NULL with
 * sqlstate and msg for its error.  Rows it returns are written before this call with
 * admin_row().  Reaps the session: the caller must not touch s afterwards.
 */
void admin_deferred_done(struct session *s, const char *tag, const char *sqlstate,
			 const char *msg);
void admin_row(struct session *s, size_t n, const char *const *values);

#endif
