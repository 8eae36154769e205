# pgshunt — build, test, demo, benchmark.
#
#   make           build ./pgshunt
#   make check     install what is missing (Debian 12, as root), build, run every test
#   make demo      install what is missing, start a throwaway PostgreSQL and pgshunt, run a workload
#   make bench     the benchmark of docs/BENCHMARKS.md (not a test)
#   make fuzz      run the libFuzzer target on the protocol framing code
#   make asan      build and run the unit tests with AddressSanitizer + UBSan
#   make tsan      run the integration suite on a ThreadSanitizer build (relay threads)
#   make fmt       format the C sources with the pinned .clang-format

CC      ?= cc
PKGS    := libevent_core libevent_extra libevent_pthreads openssl libpq libsystemd
CPPFLAGS += -I. -D_GNU_SOURCE
CFLAGS  ?= -O2 -g
# override: the sanitizer and fuzzer builds pass CFLAGS on the command line, and are
# held to the same warnings.
override CFLAGS += -std=c11 -Wall -Wextra -Werror -Wshadow -Wformat=2 -Wstrict-prototypes \
	   -Wmissing-prototypes -fno-strict-aliasing
PKG_CFLAGS = $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS   = $(shell pkg-config --libs $(PKGS) 2>/dev/null)
LDLIBS  += $(PKG_LIBS) -linih -lpg_query -lcjson
BUILD   ?= build

VERSION := $(shell cat VERSION 2>/dev/null || echo 0.0.0)
CPPFLAGS += -DPGSHUNT_VERSION='"$(VERSION)"'

# Every source but main.c goes into a static library that the tests link against.
LIB_SRCS := $(filter-out proxy/main.c, $(wildcard proxy/*.c conf/*.c parser/*.c rules/*.c))
LIB_OBJS := $(LIB_SRCS:%.c=$(BUILD)/%.o)
MAIN_OBJ := $(BUILD)/proxy/main.o
LIB      := $(BUILD)/libpgshunt.a

# The SQL pgshunt installs, compiled in as C strings (proxy/sql.h).
SQL_SRCS := proxy/sql/schema.sql proxy/sql/prepare.sql proxy/sql/jobs.sql
LIB_OBJS += $(BUILD)/gen/sql.o

UNIT_SRCS  := $(wildcard tests/unit/test_*.c)
UNIT_BINS  := $(UNIT_SRCS:tests/unit/%.c=$(BUILD)/tests/%)

# Integration programs in C (libpq, raw sockets) that tests/integration/run.sh drives.
INTEG_SRCS := $(wildcard tests/integration/*.c)
INTEG_BINS := $(INTEG_SRCS:tests/integration/%.c=$(BUILD)/tests/integration/%)

.PHONY: all check unit integration demo bench fuzz fuzz-smoke asan tsan deps fmt clean install deb

all: pgshunt

pgshunt: $(MAIN_OBJ) $(LIB)
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(LIB): $(LIB_OBJS)
	@rm -f $@
	ar rcs $@ $^

$(BUILD)/gen/sql.c: $(SQL_SRCS) proxy/sql/embed.sh
	@mkdir -p $(dir $@)
	sh proxy/sql/embed.sh $(SQL_SRCS) > $@

$(BUILD)/gen/sql.o: $(BUILD)/gen/sql.c
	$(CC) $(CPPFLAGS) $(CFLAGS) -c -o $@ $<

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(PKG_CFLAGS) $(CFLAGS) -MMD -MP -c -o $@ $<

$(BUILD)/tests/%: tests/unit/%.c $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(PKG_CFLAGS) $(CFLAGS) -Wno-missing-prototypes -o $@ $< $(LIB) \
		$(LDLIBS) -lcmocka

$(BUILD)/tests/integration/%: tests/integration/%.c
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(PKG_CFLAGS) $(CFLAGS) -Wno-missing-prototypes -o $@ $< \
		$(PKG_LIBS) -lcmocka

-include $(LIB_OBJS:.o=.d) $(MAIN_OBJ:.o=.d)

# --- dependencies (Debian 12, as root; a no-op when everything is there) ---
deps:
	@sh tests/install-deps.sh

# --- tests ---
# The integration suite drives the AddressSanitizer + UBSan build of pgshunt: run.sh
# fails on any sanitizer report in its log, leaks included (checked at a clean exit).
check: deps
	$(MAKE) all unit
	$(MAKE) asan
	$(MAKE) fuzz-smoke
	$(MAKE) integration PGSHUNT_BIN=build/asan/pgshunt-asan

unit: $(UNIT_BINS)
	@sh tests/run-unit.sh $(UNIT_BINS)

PGSHUNT_BIN ?= ./pgshunt
integration: pgshunt $(INTEG_BINS)
	@PGSHUNT_BIN=$(PGSHUNT_BIN) bash tests/integration/run.sh

asan:
	$(MAKE) BUILD=build/asan CC=clang \
		CFLAGS="-O1 -g -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer" \
		LDFLAGS="-fsanitize=address,undefined" build/asan/pgshunt-asan unit-asan

$(BUILD)/pgshunt-asan: $(MAIN_OBJ) $(LIB)
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $^ $(LDLIBS)

# Not in check (the suite takes as long again): any data race between the relay threads
# and the main thread is reported, and a report fails the run (ThreadSanitizer's exit
# status).
tsan: deps
	$(MAKE) BUILD=build/tsan CC=clang CFLAGS="-O1 -g -fsanitize=thread -fno-omit-frame-pointer" \
		LDFLAGS="-fsanitize=thread" build/tsan/pgshunt-tsan
	$(MAKE) integration PGSHUNT_BIN=build/tsan/pgshunt-tsan

$(BUILD)/pgshunt-tsan: $(MAIN_OBJ) $(LIB)
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $^ $(LDLIBS)

unit-asan: $(UNIT_BINS)
	@sh tests/run-unit.sh $(UNIT_BINS)

# --- fuzzing (clang's libFuzzer) ---
FUZZ_BUILD := build/fuzz
fuzz-build:
	$(MAKE) BUILD=$(FUZZ_BUILD) CC=clang \
		CFLAGS="-O1 -g -fsanitize=fuzzer-no-link,address,undefined -fno-omit-frame-pointer" \
		$(FUZZ_BUILD)/libpgshunt.a
	clang $(CPPFLAGS) $(PKG_CFLAGS) -O1 -g -fsanitize=fuzzer,address,undefined \
		-o $(FUZZ_BUILD)/fuzz_proto tests/fuzz/fuzz_proto.c $(FUZZ_BUILD)/libpgshunt.a $(LDLIBS)
	clang $(CPPFLAGS) $(PKG_CFLAGS) -O1 -g -fsanitize=fuzzer,address,undefined \
		-o $(FUZZ_BUILD)/fuzz_parser tests/fuzz/fuzz_parser.c $(FUZZ_BUILD)/libpgshunt.a $(LDLIBS)

# Open-ended: FUZZ_TARGET=fuzz_parser for the statement parser (default: the framing).
FUZZ_TARGET ?= fuzz_proto
fuzz: fuzz-build
	@mkdir -p tests/fuzz/corpus-work
	$(FUZZ_BUILD)/$(FUZZ_TARGET) -max_len=4096 -rss_limit_mb=1024 tests/fuzz/corpus-work \
		$(if $(filter fuzz_parser,$(FUZZ_TARGET)),tests/fuzz/corpus-parser,tests/fuzz/corpus)

# New inputs go to a scratch folder so the committed seed corpus stays as it is.
fuzz-smoke: fuzz-build
	@rm -rf $(FUZZ_BUILD)/smoke-corpus && mkdir -p $(FUZZ_BUILD)/smoke-corpus
	$(FUZZ_BUILD)/fuzz_proto -runs=2000000 -max_len=4096 $(FUZZ_BUILD)/smoke-corpus tests/fuzz/corpus
	@rm -rf $(FUZZ_BUILD)/smoke-parser && mkdir -p $(FUZZ_BUILD)/smoke-parser
	$(FUZZ_BUILD)/fuzz_parser -runs=20000 -max_len=4096 -rss_limit_mb=1024 \
		-dict=tests/fuzz/parser.dict $(FUZZ_BUILD)/smoke-parser tests/fuzz/corpus-parser

# --- demo and benchmark ---
demo: deps pgshunt
	@bash tests/demo.sh

bench: deps pgshunt $(BUILD)/parser_bench
	@bash bench/bench.sh
	@echo "## P3: parser CPU per table-touching statement"
	@$(BUILD)/parser_bench
	@bash bench/p4.sh
	@bash bench/p567.sh
	@bash bench/p8.sh

$(BUILD)/parser_bench: bench/parser_bench.c $(LIB)
	$(CC) $(CPPFLAGS) -O2 -o $@ $< $(LIB) $(LDLIBS)

# --- installation and the Debian package ---
# `make install` installs under PREFIX (default /usr/local), staged under DESTDIR.
# The Debian package (packaging/debian/rules) runs it with PREFIX=/usr and adds
# /etc/pgshunt/pgshunt.ini itself; nothing here writes to /etc.
PREFIX  ?= /usr/local
BINDIR  ?= $(PREFIX)/bin
MANDIR  ?= $(PREFIX)/share/man
DOCDIR  ?= $(PREFIX)/share/doc/pgshunt
INSTALL ?= install

install: pgshunt
	$(INSTALL) -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(MANDIR)/man1 $(DESTDIR)$(MANDIR)/man5 \
		$(DESTDIR)$(DOCDIR)
	$(INSTALL) -m 0755 pgshunt $(DESTDIR)$(BINDIR)/pgshunt
	$(INSTALL) -m 0644 docs/man/pgshunt.1 $(DESTDIR)$(MANDIR)/man1/pgshunt.1
	$(INSTALL) -m 0644 docs/man/pgshunt.ini.5 $(DESTDIR)$(MANDIR)/man5/pgshunt.ini.5
	$(INSTALL) -m 0644 conf/pgshunt.ini $(DESTDIR)$(DOCDIR)/pgshunt.ini.sample

# The .deb (and its -dbgsym) in build/deb/; needs dpkg-dev and debhelper.
deb:
	@bash packaging/build-deb.sh

fmt:
	clang-format -i proxy/*.[ch] conf/*.[ch] parser/*.c parser/scan.h parser/walk.h rules/*.[ch] \
		tests/unit/*.c tests/fuzz/*.c bench/parser_bench.c

clean:
	rm -rf build pgshunt

# The version is compiled into main.o and metrics.o (pgshunt_build_info).
$(BUILD)/proxy/main.o $(BUILD)/proxy/metrics.o $(BUILD)/proxy/fleet.o: VERSION
