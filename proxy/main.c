/*
 * pgshunt: start-up, listeners, signals, reload and shutdown.
 */
#include <errno.h>
#include <event2/listener.h>
#include <getopt.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "conf/conf.h"
#include "proxy/control.h"
#include "proxy/iobuf.h"
#include "proxy/log.h"
#include "proxy/metrics.h"
#include "proxy/migrate.h"
#include "proxy/pgshunt.h"
#include "proxy/session.h"
#include "proxy/tls.h"

#ifndef PGSHUNT_VERSION
#define PGSHUNT_VERSION "0.0.0"
#endif

#define EXIT_CONFIG 2
#define PARSE_CACHE_ENTRIES 4096

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
		   "  -d, --daemon   detach from the terminal and log to syslog\n"
		   "  -v, --verbose  log at debug level (overrides log_level)\n"
		   "  -V, --version  print the version and exit\n"
		   "  -h, --help     print this help and exit\n\n"
		   "Signals: SIGHUP reloads the config, SIGTERM shuts down gracefully,\n"
		   "SIGINT stops at once.  Exit status 2: the config was rejected.\n",
		PGSHUNT_VERSION);
}

static void on_accept(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *addr,
		      int len, void *arg)
{
	(void)l;
	(void)arg;
	session_accept(fd, addr, len);
}

static void on_accept_error(struct evconnlistener *l, void *arg)
{
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

bool pgshunt_reload(char *err, size_t errlen)
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

static void on_shutdown_timeout(evutil_socket_t fd, short what, void *arg)
{
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
	log_info("shutting down: no new clients; sessions end at their next idle point");
	close_listeners();
	if (shunt.paused) {
		shunt.paused = false;
		session_resume_all();
	}
	session_shutdown_idle();
	if (!shunt.sessions) {
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
		event_base_loopbreak(shunt.base);
		break;
	}
}

static void close_all_sessions(void)
{
	while (shunt.sessions) {
		struct session *s = shunt.sessions;
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

static int run(void)
{
	struct event *sigs[3];
	const int signums[3] = {SIGHUP, SIGTERM, SIGINT};
	int status = 0;

	for (int i = 0; i < 3; i++) {
		sigs[i] = evsignal_new(shunt.base, signums[i], on_signal, NULL);
		if (sigs[i])
			evsignal_add(sigs[i], NULL);
	}
	control_start();
	migrate_load_phase();
	if (listen_tcp() && listen_unix() && start_metrics()) {
		log_info("pgshunt %s ready; server %s:%d", PGSHUNT_VERSION, shunt.cfg.server_host,
			 shunt.cfg.server_port);
		event_base_dispatch(shunt.base);
	} else {
		status = 1;
	}
	metrics_stop();
	close_listeners();
	close_all_sessions();
	migrate_stop();
	control_stop();
	for (int i = 0; i < 3; i++)
		if (sigs[i])
			event_free(sigs[i]);
	if (shutdown_timer)
		event_free(shutdown_timer);
	return status;
}

int main(int argc, char **argv)
{
	bool daemonize = false, verbose = false;
	char err[1024];

	int arg = parse_args(argc, argv, &daemonize, &verbose);
	shunt.config_path = argv[arg];
	if (!conf_load(shunt.config_path, &shunt.cfg, err, sizeof(err))) {
		fprintf(stderr, "pgshunt: %s\n", err);
		return EXIT_CONFIG;
	}
	log_set_level(verbose ? LOG_LEVEL_DEBUG : shunt.cfg.log_level);
	tls_global_init();
	if (!build_tls(&shunt.cfg, &shunt.client_tls, &shunt.server_tls, err, sizeof(err))) {
		fprintf(stderr, "pgshunt: %s\n", err);
		conf_free(&shunt.cfg);
		return EXIT_CONFIG;
	}
	if (daemonize && daemon(1, 0) < 0) {
		fprintf(stderr, "pgshunt: cannot detach: %s\n", strerror(errno));
		return 1;
	}
	log_use_syslog(daemonize || shunt.cfg.log_syslog);
	signal(SIGPIPE, SIG_IGN);
	shunt.started = time(NULL);
	if (!parser_tables_init(&shunt.tables, shunt.cfg.table, shunt.cfg.next_table,
				shunt.cfg.buffer_table)) {
		fprintf(stderr, "pgshunt: table, next_table or buffer_table is not a [schema.]name\n");
		return EXIT_CONFIG;
	}
	shunt.parse_cache = parser_cache_new(PARSE_CACHE_ENTRIES);
	if (!shunt.parse_cache) {
		fprintf(stderr, "pgshunt: out of memory\n");
		return 1;
	}
	shunt.base = event_base_new();
	if (!shunt.base) {
		log_error("cannot create the event loop");
		return 1;
	}
	int status = run();
	event_base_free(shunt.base);
	SSL_CTX_free(shunt.client_tls);
	SSL_CTX_free(shunt.server_tls);
	conf_free(&shunt.cfg);
	parser_cache_free(shunt.parse_cache);
	iobuf_pool_release();
	log_info("pgshunt stopped");
	return status;
}
