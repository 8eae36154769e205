#include "proxy/log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <syslog.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

enum log_level log_current_level = LOG_LEVEL_INFO;
static bool use_syslog;
static bool startup_stderr;

void log_set_level(enum log_level level)
{
	log_current_level = level;
}

void log_use_syslog(bool on)
{
	if (on && !use_syslog)
		openlog("pgshunt", LOG_PID | LOG_NDELAY, LOG_DAEMON);
	else if (!on && use_syslog)
		closelog();
	use_syslog = on;
}

void log_startup_stderr(bool on)
{
	startup_stderr = on;
}

static int syslog_priority(enum log_level level)
{
	switch (level) {
	case LOG_LEVEL_ERROR:
		return LOG_ERR;
	case LOG_LEVEL_WARNING:
		return LOG_WARNING;
	case LOG_LEVEL_INFO:
		return LOG_INFO;
	default:
		return LOG_DEBUG;
	}
}

/*
 * logfmt: ts=... level=... [session=...] msg="...".  The message is quoted with
 * '"' and '\' escaped so a log shipper can split fields without guessing.
 */
static void write_logfmt(enum log_level level, const char *prefix, const char *msg)
{
	char quoted[2100], ts[40];
	size_t o = 0;

	for (const char *p = msg; *p && o < sizeof(quoted) - 3; p++) {
		if (*p == '"' || *p == '\\')
			quoted[o++] = '\\';
		quoted[o++] = (*p == '\n') ? ' ' : *p;
	}
	quoted[o] = '\0';

	struct timeval tv;
	struct tm tm;
	gettimeofday(&tv, NULL);
	gmtime_r(&tv.tv_sec, &tm);
	strftime(ts, sizeof(ts), "%Y-%m-%dT%H:%M:%S", &tm);
	fprintf(stderr, "ts=%s.%03dZ level=%s pid=%d%s%s%s msg=\"%s\"\n", ts,
		(int)(tv.tv_usec / 1000), conf_log_level_name(level), (int)getpid(),
		prefix ? " session=\"" : "", prefix ? prefix : "", prefix ? "\"" : "", quoted);
}

void log_write(enum log_level level, const char *prefix, const char *fmt, ...)
{
	char msg[1024];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (use_syslog) {
		syslog(syslog_priority(level), "%s%s%s", prefix ? prefix : "", prefix ? ": " : "", msg);
		/* Whoever started pgshunt sees why start-up failed, not only syslog. */
		if (!startup_stderr || level > LOG_LEVEL_WARNING)
			return;
	}
	write_logfmt(level, prefix, msg);
}
