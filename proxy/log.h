/*
 * Logging: one line per event, logfmt on stderr (or syslog when log_syslog = on).
 * Debug lines cost one comparison when debug is off: the macros test the level
 * before any formatting happens.  Never pass a password or SCRAM material.
 */
#ifndef PGSHUNT_LOG_H
#define PGSHUNT_LOG_H

#include <stdbool.h>

#include "conf/conf.h"

extern enum log_level log_current_level;

void log_set_level(enum log_level level);
void log_use_syslog(bool on);
/* While on, errors and warnings also go to stderr when logging to syslog: start-up
 * failures must reach the terminal (or the service manager) that started pgshunt. */
void log_startup_stderr(bool on);
void log_write(enum log_level level, const char *prefix, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

#define log_enabled(lvl) ((lvl) <= log_current_level)

#define log_error(...)   log_write(LOG_LEVEL_ERROR, NULL, __VA_ARGS__)
#define log_warning(...) log_write(LOG_LEVEL_WARNING, NULL, __VA_ARGS__)
#define log_info(...)                                                                              \
	do {                                                                                       \
		if (log_enabled(LOG_LEVEL_INFO))                                                   \
			log_write(LOG_LEVEL_INFO, NULL, __VA_ARGS__);                              \
	} while (0)
#define log_debug(...)                                                                             \
	do {                                                                                       \
		if (log_enabled(LOG_LEVEL_DEBUG))                                                  \
			log_write(LOG_LEVEL_DEBUG, NULL, __VA_ARGS__);                             \
	} while (0)

/* Session-scoped variants: prefix is the session's "C-<id> user@db addr" tag. */
#define slog(lvl, prefix, ...)                                                                     \
	do {                                                                                       \
		if (log_enabled(lvl))                                                              \
			log_write(lvl, prefix, __VA_ARGS__);                                       \
	} while (0)

#endif
