/*
 * pgshunt: start-up, listeners, signals, reload and shutdown.
 */
#include <errno.h>
#include <event2/listener.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <systemd/sd-daemon.h>
#include <time.h>
#include <unistd.h>

#include "conf/conf.h"
#include "proxy/brin.h"
#include "proxy/control.h"
#include "proxy/fleet.h"
#include "proxy/iobuf.h"
#include "proxy/jobs.h"
#include "proxy/log.h"
#include "proxy/metrics.h"
#include "proxy/migrate.h"
#include "proxy/pgshunt.h"
#include "proxy/session.h"
#include "proxy/thresholds.h"
#include "proxy/tls.h"
#include "proxy/workers.h"

#ifndef PGSHUNT_VERSION
#define PGSHUNT_VERSION "0.0.0"
#endif

#define EXIT_CONFIG 2

struct pgshunt shunt;

static struct evconnlistener *tcp_listener;
static struct evconnlistener *unix_listener;
static char unix_path[sizeof(((struct sockaddr_un *)0)->sun_path)];
static struct event *shutdown_timer;

static void usage(FILE *f)
{
	fprintf(f, "pgshunt %s: a PostgreSQL wire-protocol proxy that carries one table through\n"
		   "a live migration.\n\n"
		   "Usage: pgshunt [-d] [-v] CONFIG.ini\n"
		   "  -d, --daemon   detach once listening (start-up errors still reach stderr),\n"
		   "                 then log to syslog; see the pidfile key\n"
		   "  -v, --verbose  log at debug level (overrides log_level)\n"
		   "  -V, --version  print the version and exit\n"
		   "  -h, --help     print this help and exit\n\n"
		   "Signals: SIGHUP reloads the config, SIGTERM shuts down gracefully,\n"
		   "SIGINT stops at once.  Exit status 2: the config was rejected; 1: start-up\n"
		   "failed (address in use, pidfile of a running pgshunt, ...).\n",
		PGSHUNT_VERSION);
}

/* --- the pidfile --- */

static bool pidfile_written;

/* The PID the file names, or 0 when there is no file or no PID in it. */
static pid_t pidfile_read(const char *path)
{
	char buf[32] = "", *end;
	FILE *f = fopen(path, "r");
	long pid;

	if (!f)
		return 0;
	if (!fgets(buf, sizeof(buf), f))
		buf[0] = '\0';
	fclose(f);
	pid = strtol(buf, &end, 10);
	if (end == buf || (*end && *end != '\n') || pid <= 0 || pid > INT_MAX)
		return 0;
	return (pid_t)pid;
}

/*
 * kill(pid, 0) says a process lives; /proc, when it is readable, says whether it is
 * a pgshunt: after a reboot or in a fresh container the PID often belongs to
 * something else, and refusing to start then would need a human.
 */
static bool is_live_pgshunt(pid_t pid)
{
	char path[64], comm[32] = "";
	FILE *f;

	if (pid == getpid() || (kill(pid, 0) < 0 && errno != EPERM))
		return false;
	snprintf(path, sizeof(path), "/proc/%d/comm", (int)pid);
	f = fopen(path, "r");
	if (!f)
		return true;
	if (!fgets(comm, sizeof(comm), f))
		comm[0] = '\0';
	fclose(f);
	return strstr(comm, "pgshunt") != NULL;
}

/* Before anything else: two instances on one pidfile would remove each other's file. */
static bool pidfile_check(const char *path)
{
	pid_t pid = *path ? pidfile_read(path) : 0;

	if (pid == 0)
		return true;
	if (is_live_pgshunt(pid)) {
		fprintf(stderr, "pgshunt: pidfile %s names pgshunt process %d, which is running; "
				"not starting\n", path, (int)pid);
		return false;
	}
	log_info("pidfile %s names process %d, which is gone: replacing it", path, (int)pid);
	return true;
}

/* Written whole under FILE.tmp and renamed, so a reader never sees half a PID. */
static bool pidfile_write(const char *path)
{
	char tmp[PATH_MAX], line[32];
	int fd, n = snprintf(line, sizeof(line), "%d\n", (int)getpid()), e;
	bool ok;

	if (!*path)
		return true;
	if ((size_t)snprintf(tmp, sizeof(tmp), "%s.tmp", path) >= sizeof(tmp)) {
		log_error("pidfile %s: path too long", path);
		return false;
	}
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0644);
	ok = fd >= 0 && write(fd, line, (size_t)n) == n;
	if (fd >= 0 && close(fd) < 0)
		ok = false;
	if (ok && rename(tmp, path) == 0) {
		pidfile_written = true;
		return true;
	}
	e = errno;
	unlink(tmp);
	log_error("cannot write pidfile %s: %s", path, strerror(e));
	return false;
}

/* Only a file that still names us: another instance may have taken it over since. */
static void pidfile_remove(const char *path)
{
	if (pidfile_written && pidfile_read(path) == getpid() && unlink(path) < 0)
		log_warning("cannot remove pidfile %s: %s", path, strerror(errno));
	pidfile_written = false;
}

/* --- -d: detaching --- */

/* The child's end of the pipe the parent waits on; -1 once detached (or never). */
static int detach_fd = -1;

/* The parent's exit status: 0 once the child says it listens, else the child's own. */
static int wait_for_child(pid_t pid, int fd)
{
	char c;
	ssize_t n;
	int status;

	do
		n = read(fd, &c, 1);
	while (n < 0 && errno == EINTR);
	if (n == 1)
		return 0;
	while (waitpid(pid, &status, 0) < 0)
		if (errno != EINTR)
			return 1;
	if (WIFSIGNALED(status))
		fprintf(stderr, "pgshunt: killed by signal %d during start-up\n", WTERMSIG(status));
	return WIFEXITED(status) && WEXITSTATUS(status) ? WEXITSTATUS(status) : 1;
}

/*
 * Fork, and keep the parent until the child listens and has written its pidfile:
 * start-up errors reach the terminal, and the exit status says whether pgshunt runs.
 * The parent leaves with _exit(): its copy of the state is the child's to free.
 */
static void detach_begin(void)
{
	int fds[2];
	pid_t pid;

	if (pipe2(fds, O_CLOEXEC) < 0 || (pid = fork()) < 0) {
		fprintf(stderr, "pgshunt: cannot detach: %s\n", strerror(errno));
		exit(1);
	}
	if (pid > 0) {
		close(fds[1]);
		_exit(wait_for_child(pid, fds[0]));
	}
	close(fds[0]);
	detach_fd = fds[1];
	setsid();
}

/* Start-up went well: let the parent go, and leave the terminal. */
static void detach_finish(void)
{
	int null;

	if (detach_fd < 0)
		return;
	null = open("/dev/null", O_RDWR | O_CLOEXEC);
	if (null >= 0) {
		dup2(null, STDIN_FILENO);
		dup2(null, STDOUT_FILENO);
		dup2(null, STDERR_FILENO);
		if (null > STDERR_FILENO)
			close(null);
	}
	if (write(detach_fd, "r", 1) != 1)
		log_warning("could not tell the starting process that pgshunt runs: %s",
			    strerror(errno));
	close(detach_fd);
	detach_fd = -1;
}

/* --- the service manager: sd_notify() is a no-op without NOTIFY_SOCKET --- */

#define READY_POLL_US 100000 /* phase.known is set by migrate.c, which has no hook */
#define STATUS_POLL_S 1

static struct event *notify_timer;
static bool notified_ready, notified_stopping;
static char last_status[200];

static void status_text(char *buf, size_t len)
{
	if (shunt.shutting_down)
		snprintf(buf, len, "shutting down: %u client(s) left", atomic_load(&shunt.nclients));
	else if (notified_stopping)
		snprintf(buf, len, "stopping at once");
	else if (!shunt.phase.known)
		snprintf(buf, len, "listening; reading the migration phase (control_dsn)");
	else
		snprintf(buf, len, "phase %s, epoch %" PRIu64 ", degraded %s, %u client(s)",
			 phase_name(shunt.phase.phase), shunt.phase.epoch,
			 shunt.phase.degraded ? "on" : "off", atomic_load(&shunt.nclients));
}

/* STATUS= when it changed (at most every STATUS_POLL_S, also while draining at
 * shutdown); with READY=1 the first time the phase is known. */
static void notify_progress(void)
{
	char status[sizeof(last_status)];
	bool ready = !notified_ready && !notified_stopping && shunt.phase.known;

	status_text(status, sizeof(status));
	if (!ready && strcmp(status, last_status) == 0)
		return;
	snprintf(last_status, sizeof(last_status), "%s", status);
	sd_notifyf(0, "%sSTATUS=%s", ready ? "READY=1\n" : "", status);
	if (ready) {
		notified_ready = true;
		log_info("ready: listening, phase %s known", phase_name(shunt.phase.phase));
	}
}

static void on_notify_timer(evutil_socket_t fd, short what, void *arg)
{
	WORLD_HELD();
	struct timeval tv = {0, READY_POLL_US};
	(void)fd;
	(void)what;
	(void)arg;
	notify_progress();
	if (notified_ready)
		tv = (struct timeval){STATUS_POLL_S, 0};
	evtimer_add(notify_timer, &tv);
}

/* Once listening: READY=1 waits for the phase, which control_dsn reads asynchronously. */
static void notify_start(void)
{
	if (!getenv("NOTIFY_SOCKET"))
		return;
	notify_timer = evtimer_new(shunt.base, on_notify_timer, NULL);
	if (notify_timer)
		on_notify_timer(-1, 0, NULL);
	else
		log_error("cannot create the sd_notify timer: READY=1 will not be sent");
}

static void notify_stopping(void)
{
	if (notified_stopping)
		return;
	notified_stopping = true;
	status_text(last_status, sizeof(last_status));
	sd_notifyf(0, "STOPPING=1\nSTATUS=%s", last_status);
}

/* Before a reload: systemd (Type=notify-reload too) wants the monotonic clock with it. */
static void notify_reloading(void)
{
	struct timespec ts;

	if (!notified_ready || notified_stopping)
		return;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	sd_notifyf(0, "RELOADING=1\nMONOTONIC_USEC=%" PRIu64 "\nSTATUS=reloading %s",
		   (uint64_t)ts.tv_sec * 1000000 + (uint64_t)ts.tv_nsec / 1000, shunt.config_path);
}

/* After a reload, applied or rejected: pgshunt serves on either way. */
static void notify_reloaded(void)
{
	if (!notified_ready || notified_stopping)
		return;
	status_text(last_status, sizeof(last_status));
	sd_notifyf(0, "READY=1\nSTATUS=%s", last_status);
}

static void on_accept(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *addr,
		      int len, void *arg)
{
	WORLD_HELD();
	(void)l;
	(void)arg;
	session_accept(fd, addr, len);
}

static void on_accept_error(struct evconnlistener *l, void *arg)
{
	WORLD_HELD();
	(void)l;
	(void)arg;
	/* EMFILE and friends: the listener keeps going; say it once per burst. */
	log_warning("accept failed: %s", strerror(errno));
}

static const unsigned LISTEN_FLAGS = LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE | LEV_OPT_CLOSE_ON_EXEC;

static bool listen_tcp(void)
{
	const struct pgshunt_config *cfg = &shunt.cfg;
	struct sockaddr_storage ss;
	int sslen = sizeof(ss);
	char spec[300];

	if (!cfg->listen_addr[0])
		return true;
	if (strcmp(cfg->listen_addr, "*") == 0)
		snprintf(spec, sizeof(spec), "0.0.0.0:%d", cfg->listen_port);
	else if (strchr(cfg->listen_addr, ':'))
		snprintf(spec, sizeof(spec), "[%s]:%d", cfg->listen_addr, cfg->listen_port);
	else
		snprintf(spec, sizeof(spec), "%s:%d", cfg->listen_addr, cfg->listen_port);
	if (evutil_parse_sockaddr_port(spec, (struct sockaddr *)&ss, &sslen) < 0) {
		log_error("listen_addr \"%s\" is not an IP address", cfg->listen_addr);
		return false;
	}
	tcp_listener = evconnlistener_new_bind(shunt.base, on_accept, NULL, LISTEN_FLAGS, 128,
					       (struct sockaddr *)&ss, sslen);
	if (!tcp_listener) {
		log_error("cannot listen on %s: %s", spec, strerror(errno));
		return false;
	}
	evconnlistener_set_error_cb(tcp_listener, on_accept_error);
	log_info("listening on %s", spec);
	return true;
}

static bool listen_unix(void)
{
	const struct pgshunt_config *cfg = &shunt.cfg;
	struct sockaddr_un sun = {.sun_family = AF_UNIX};

	if (!cfg->unix_socket_dir[0])
		return true;
	if ((size_t)snprintf(sun.sun_path, sizeof(sun.sun_path), "%s/.s.PGSQL.%d",
			     cfg->unix_socket_dir, cfg->listen_port) >= sizeof(sun.sun_path)) {
		log_error("unix_socket_dir \"%s\" is too long for a socket path", cfg->unix_socket_dir);
		return false;
	}
	/* A socket file left by a crashed pgshunt would make bind() fail. */
	unlink(sun.sun_path);
	unix_listener = evconnlistener_new_bind(shunt.base, on_accept, NULL,
						LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC, 128,
						(struct sockaddr *)&sun, sizeof(sun));
	if (!unix_listener) {
		log_error("cannot listen on %s: %s", sun.sun_path, strerror(errno));
		return false;
	}
	chmod(sun.sun_path, 0777);
	evconnlistener_set_error_cb(unix_listener, on_accept_error);
	snprintf(unix_path, sizeof(unix_path), "%s", sun.sun_path);
	log_info("listening on %s", sun.sun_path);
	return true;
}

static void close_listeners(void)
{
	if (tcp_listener)
		evconnlistener_free(tcp_listener);
	if (unix_listener)
		evconnlistener_free(unix_listener);
	tcp_listener = unix_listener = NULL;
	if (unix_path[0])
		unlink(unix_path);
	unix_path[0] = '\0';
}

static bool build_tls(const struct pgshunt_config *cfg, SSL_CTX **client, SSL_CTX **server,
		      char *err, size_t errlen)
{
	*client = tls_client_side_ctx(cfg, err, errlen);
	if (!*client && err[0])
		return false;
	*server = tls_server_side_ctx(cfg, err, errlen);
	if (!*server && err[0]) {
		SSL_CTX_free(*client);
		*client = NULL;
		return false;
	}
	return true;
}

static void report_restart_needed(const struct conf_key *key, void *arg)
{
	(void)arg;
	log_warning("reload: %s changed but needs a restart; keeping the running value", key->name);
}

static bool reload_config(char *err, size_t errlen)
{
	struct pgshunt_config fresh;
	SSL_CTX *client, *server;

	if (!conf_load(shunt.config_path, &fresh, err, errlen)) {
		log_error("reload rejected: %s", err);
		return false;
	}
	if (!build_tls(&fresh, &client, &server, err, errlen)) {
		log_error("reload rejected: %s", err);
		conf_free(&fresh);
		return false;
	}
	conf_apply_reload(&shunt.cfg, &fresh, report_restart_needed, NULL);
	conf_free(&fresh);
	/* Live TLS connections keep a reference to the context they were made with. */
	SSL_CTX_free(shunt.client_tls);
	SSL_CTX_free(shunt.server_tls);
	shunt.client_tls = client;
	shunt.server_tls = server;
	log_set_level(shunt.cfg.log_level);
	log_info("configuration reloaded from %s", shunt.config_path);
	return true;
}

bool pgshunt_reload(char *err, size_t errlen)
{
	bool ok;

	notify_reloading();
	ok = reload_config(err, errlen);
	notify_reloaded();
	return ok;
}

static void on_shutdown_timeout(evutil_socket_t fd, short what, void *arg)
{
	WORLD_HELD();
	(void)fd;
	(void)what;
	(void)arg;
	log_warning("shutdown_timeout reached: closing the remaining sessions");
	event_base_loopbreak(shunt.base);
}

void pgshunt_shutdown(void)
{
	if (shunt.shutting_down)
		return;
	shunt.shutting_down = true;
	notify_stopping();
	log_info("shutting down: no new clients; sessions end at their next idle point");
	close_listeners();
	if (shunt.paused) {
		shunt.paused = false;
		session_resume_all();
	}
	session_shutdown_idle();
	if (atomic_load(&shunt.nsessions) == 0) {
		event_base_loopbreak(shunt.base);
		return;
	}
	struct timeval tv = {shunt.cfg.shutdown_timeout, 0};
	shutdown_timer = evtimer_new(shunt.base, on_shutdown_timeout, NULL);
	if (shutdown_timer)
		evtimer_add(shutdown_timer, &tv);
}

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
	WORLD_HELD();
	char err[512];
	(void)what;
	(void)arg;
	switch (sig) {
	case SIGHUP:
		log_info("SIGHUP: reloading %s", shunt.config_path);
		if (!pgshunt_reload(err, sizeof(err)))
			log_error("SIGHUP reload failed; the running configuration stays");
		break;
	case SIGTERM:
		pgshunt_shutdown();
		break;
	case SIGINT:
		log_info("SIGINT: stopping at once");
		notify_stopping();
		event_base_loopbreak(shunt.base);
		break;
	}
}

static void close_all_sessions(void)
{
	struct session *s;
	while ((s = session_first())) {
		session_fatal(s, "57P01", "terminating connection: pgshunt is stopping");
		session_reap(s);
	}
}

static int parse_args(int argc, char **argv, bool *daemonize, bool *verbose)
{
	static const struct option opts[] = {
		{"daemon", no_argument, NULL, 'd'},  {"verbose", no_argument, NULL, 'v'},
		{"version", no_argument, NULL, 'V'}, {"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0},
	};
	int c;
	while ((c = getopt_long(argc, argv, "dvVh", opts, NULL)) != -1) {
		switch (c) {
		case 'd':
			*daemonize = true;
			break;
		case 'v':
			*verbose = true;
			break;
		case 'V':
			printf("pgshunt %s\n", PGSHUNT_VERSION);
			exit(0);
		case 'h':
			usage(stdout);
			exit(0);
		default:
			usage(stderr);
			exit(EXIT_CONFIG);
		}
	}
	if (optind != argc - 1) {
		usage(stderr);
		exit(EXIT_CONFIG);
	}
	return optind;
}

/* After the listeners: a port named by both keys is reported against metrics_addr. */
static bool start_metrics(void)
{
	char err[512];

	if (metrics_start(err, sizeof(err)))
		return true;
	log_error("%s", err);
	return false;
}

/* Listening, pidfile written: from here on pgshunt serves, detached with -d. */
static bool start_up(void)
{
	if (!listen_tcp() || !listen_unix() || !start_metrics())
		return false;
	if (!pidfile_write(shunt.cfg.pidfile))
		return false;
	log_info("pgshunt %s ready; server %s:%d", PGSHUNT_VERSION, shunt.cfg.server_host,
		 shunt.cfg.server_port);
	detach_finish();
	log_startup_stderr(false);
	notify_start();
	return true;
}

static bool start_workers(void)
{
	char err[256];

	if (workers_start(shunt.cfg.worker_threads, err, sizeof(err)))
		return true;
	log_error("%s", err);
	return false;
}

static int run(void)
{
	struct event *sigs[3];
	const int signums[3] = {SIGHUP, SIGTERM, SIGINT};
	int status = 0;

	if (!start_workers())
		return 1;
	/* Outside callbacks too, the main thread holds the world while it works. */
	world_enter();
	for (int i = 0; i < 3; i++) {
		sigs[i] = evsignal_new(shunt.base, signums[i], on_signal, NULL);
		if (sigs[i])
			evsignal_add(sigs[i], NULL);
	}
	control_start();
	migrate_load_phase();
	fleet_start();
	thresholds_start();
	jobs_start();
	bool up = start_up();
	world_leave();
	if (up)
		event_base_dispatch(shunt.base);
	else
		status = 1;
	workers_stop();
	world_enter();
	notify_stopping();
	metrics_stop();
	close_listeners();
	close_all_sessions();
	brin_stop();
	thresholds_stop();
	jobs_stop();
	fleet_stop();
	control_drain(1000);
	migrate_stop();
	control_stop();
	for (int i = 0; i < 3; i++)
		if (sigs[i])
			event_free(sigs[i]);
	if (shutdown_timer)
		event_free(shutdown_timer);
	if (notify_timer)
		event_free(notify_timer);
	world_leave();
	workers_free();
	return status;
}

/* Everything that the files can get wrong is found before any fork, on stderr. */
static void load_config(const char *path, bool verbose)
{
	char err[1024];

	shunt.config_path = path;
	if (!conf_load(shunt.config_path, &shunt.cfg, err, sizeof(err))) {
		fprintf(stderr, "pgshunt: %s\n", err);
		exit(EXIT_CONFIG);
	}
	log_set_level(verbose ? LOG_LEVEL_DEBUG : shunt.cfg.log_level);
	tls_global_init();
	if (!build_tls(&shunt.cfg, &shunt.client_tls, &shunt.server_tls, err, sizeof(err))) {
		fprintf(stderr, "pgshunt: %s\n", err);
		conf_free(&shunt.cfg);
		exit(EXIT_CONFIG);
	}
	if (!parser_tables_init(&shunt.tables, shunt.cfg.table, shunt.cfg.next_table,
				shunt.cfg.buffer_table)) {
		fprintf(stderr, "pgshunt: table, next_table or buffer_table is not a [schema.]name\n");
		exit(EXIT_CONFIG);
	}
}

int main(int argc, char **argv)
{
	bool daemonize = false, verbose = false;

	int arg = parse_args(argc, argv, &daemonize, &verbose);
	load_config(argv[arg], verbose);
	if (!pidfile_check(shunt.cfg.pidfile))
		return 1;
	if (daemonize)
		detach_begin();
	log_use_syslog(daemonize || shunt.cfg.log_syslog);
	log_startup_stderr(true);
	signal(SIGPIPE, SIG_IGN);
	shunt.started = time(NULL);
	shunt.parse_cache = parser_cache_new(PARSE_CACHE_ENTRIES);
	parse_cache_here = shunt.parse_cache;
	shunt.base = shunt.parse_cache ? event_base_new() : NULL;
	if (!shunt.base) {
		log_error("out of memory: cannot create the parse cache or the event loop");
		return 1;
	}
	int status = run();
	pidfile_remove(shunt.cfg.pidfile);
	event_base_free(shunt.base);
	SSL_CTX_free(shunt.client_tls);
	SSL_CTX_free(shunt.server_tls);
	conf_free(&shunt.cfg);
	parser_cache_free(shunt.parse_cache);
	iobuf_pool_release();
	log_info("pgshunt stopped");
	return status;
}
