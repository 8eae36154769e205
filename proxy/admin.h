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

struct session;
struct admin_result;

struct admin_cmd {
	const char *words;            /* e.g. "SHOW CLIENTS": matched case-insensitively */
	const char *const *columns;   /* result columns, NULL when it returns no rows */
	bool (*run)(struct session *s, struct admin_result *r, const char *args);
	const char *help;             /* one line for SHOW HELP */
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

#endif
