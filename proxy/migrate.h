/*
 * The console commands that move the table: SHOW PHASE, SET PHASE, DEGRADED,
 * MIGRATE PREPARE, and the loading of the phase from the control schema.
 *
 * They talk to the database over the control connection (control.h) and answer the
 * console asynchronously (admin_deferred_done()).
 */
#ifndef PGSHUNT_MIGRATE_H
#define PGSHUNT_MIGRATE_H

#include <stdbool.h>

struct session;
struct admin_result;

/* Read the phase from pgshunt.state now, and again whenever the answer was lost. */
void migrate_load_phase(void);
void migrate_stop(void);

/* A console session is going away: drop what would have answered it. */
void migrate_session_gone(struct session *s);

bool migrate_cmd_show_phase(struct session *s, struct admin_result *r, const char *args);
bool migrate_cmd_set_phase(struct session *s, struct admin_result *r, const char *args);
bool migrate_cmd_degraded(struct session *s, struct admin_result *r, const char *args);
bool migrate_cmd_prepare(struct session *s, struct admin_result *r, const char *args);
bool migrate_cmd_preflight(struct session *s, struct admin_result *r, const char *args);

/*
 * DEGRADED ON|OFF without a console (auto-DEGRADED): the very path of the console
 * command, preconditions and fleet acknowledgements included.  by goes to
 * pgshunt.phase_log (a static string); done gets NULL sqlstate on success, else the
 * error.  False, and done is not called, when another change is in progress.
 */
typedef void (*migrate_done_cb)(const char *sqlstate, const char *msg);
bool migrate_set_degraded(bool on, const char *by, migrate_done_cb done)
	__attribute__((warn_unused_result));

extern const char *const migrate_phase_columns[];
extern const char *const migrate_prepare_columns[];
extern const char *const migrate_preflight_columns[];

#endif
