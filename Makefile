# slashid for Lua - convenience Makefile (the rockspec builds the same).
#
#   make demo       set up, start the local emulator, rotate a key
#   make test       set up, build with -Werror, run every spec
#   make emulator   run the local SlashID emulator in the foreground
#   make install    PREFIX=/usr/local DESTDIR= (module, slashid-rotate, its man page)
#   make test LUA=lua5.1   (lua5.1 lua5.2 lua5.3 lua5.4 luajit)
#
# Variables: LUA (interpreter, lua5.4), LUA_VERSION, LUA_INCDIR, CURL_INCDIR,
# PREFIX, DESTDIR, MANDIR, CFLAGS, WERROR (-Werror; empty to relax),
# ALLOW_REMOVE (1: apt may remove packages that conflict with what a target
# installs; by default nothing is ever removed, see scripts/deps.sh).

# Pick an interpreter with LUA=lua5.1|lua5.2|lua5.3|lua5.4|luajit (or
# LUA_VERSION=5.x); everything else follows from it.
ifdef LUA_VERSION
LUA         ?= lua$(LUA_VERSION)
else
LUA         ?= lua5.4
endif
ifeq ($(LUA),luajit)
LUA_VERSION ?= 5.1
LUA_INCDIR  ?= /usr/include/luajit-2.1
LUA_PKGS     = luajit2 libluajit2-5.1-dev
else
LUA_VERSION ?= $(patsubst lua%,%,$(LUA))
LUA_INCDIR  ?= /usr/include/lua$(LUA_VERSION)
LUA_PKGS     = lua$(LUA_VERSION) $(if $(filter 5.1,$(LUA_VERSION)),liblua5.1-0-dev,liblua$(LUA_VERSION)-dev)
endif
CURL_INCDIR ?= /usr/include/$(shell dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null || echo x86_64-linux-gnu)
PREFIX      ?= /usr/local
DESTDIR     ?=
LUA_LIBDIR  ?= $(PREFIX)/lib/lua/$(LUA_VERSION)
LUA_SHAREDIR?= $(PREFIX)/share/lua/$(LUA_VERSION)
BINDIR      ?= $(PREFIX)/bin
MANDIR      ?= $(PREFIX)/share/man

CC      ?= cc
CFLAGS  ?= -O2 -g
WERROR  ?= -Werror
WARN     = -Wall -Wextra -Wshadow -Wpointer-arith -Wcast-align \
           -Wstrict-prototypes -Wmissing-prototypes -Wformat=2 $(WERROR)
ALL_CFLAGS = $(CFLAGS) $(WARN) -std=gnu99 -fPIC -fvisibility=hidden \
             -I$(LUA_INCDIR) -I$(CURL_INCDIR)
LDFLAGS ?=
LIBS     = -lcurl -lz -lpthread

BUILD   = build/$(notdir $(LUA))
MODULE  = $(BUILD)/slashid/core.so
SOURCES = $(wildcard src/*.c)
OBJECTS = $(patsubst src/%.c,$(BUILD)/obj/%.o,$(SOURCES))
HEADERS = $(wildcard src/*.h)

# Debian packages each target needs (installed only when missing, never
# removing a package: scripts/deps.sh).
BUILD_PKGS  = gcc libc6-dev $(LUA_PKGS) libcurl4-openssl-dev zlib1g-dev lua-cjson ca-certificates
RUN_PKGS    = python3 openssl
TEST_PKGS   = lua-busted lua-socket python3-yaml tinyproxy-bin valgrind lua-argparse \
              redis-server redis-tools

.PHONY: all deps test check-hosts check-sweeps demo emulator install uninstall clean rockcheck bench bench-instr bench-journal bench-crash bench-redaction

all: $(MODULE)

$(BUILD)/obj/%.o: src/%.c $(HEADERS) | $(BUILD)/obj
	$(CC) $(ALL_CFLAGS) -c -o $@ $<

$(MODULE): $(OBJECTS) | $(BUILD)/slashid
	$(CC) -shared $(LDFLAGS) -o $@ $(OBJECTS) $(LIBS)

$(BUILD)/obj $(BUILD)/slashid:
	mkdir -p $@

deps:
	@sh scripts/deps.sh --for "make $(MAKECMDGOALS) LUA=$(LUA)" \
	  $(BUILD_PKGS) $(RUN_PKGS) $(TEST_PKGS)

# `make test`: what a contributor runs after each change. Every behaviour
# of the library and the command against the emulator, under $(LUA).
# What is long or needs a foreign host runs in its own target, once in
# .ci/run: check-hosts (OpenResty, the C embedding host, event loops and
# LÖVE: spec 23, 24, 25) and check-sweeps (allocation-failure sweeps in
# a Lua 5.4 host: spec 22).
HOST_SPECS  = spec/23-openresty_spec.lua spec/24-embed_spec.lua spec/25-loops_spec.lua
SWEEP_SPECS = spec/22-alloc_spec.lua
JOBS       ?= 3
TEST_SPECS  = $(filter-out $(HOST_SPECS) $(SWEEP_SPECS),$(sort $(wildcard spec/*_spec.lua)))

test: deps
	@$(MAKE) --no-print-directory all
	@LUA=$(LUA) BUILD=$(BUILD) SPECS="$(TEST_SPECS)" JOBS=$(JOBS) sh spec/run.sh

# (spec 15 again, with cqueues and luv installed: make test skips those
# parts of it, saying why)
check-hosts: deps test-prereqs
	@$(MAKE) --no-print-directory all
	@LUA=$(LUA) BUILD=$(BUILD) SPECS="$(HOST_SPECS) spec/15-pollable_spec.lua" sh spec/run.sh

check-sweeps: deps test-prereqs
	@$(MAKE) --no-print-directory all
	@LUA=$(LUA) BUILD=$(BUILD) SPECS="$(SWEEP_SPECS)" sh spec/run.sh

demo: deps
	@$(MAKE) --no-print-directory all
	@LUA=$(LUA) BUILD=$(BUILD) sh examples/demo.sh

emulator: deps
	python3 emulator/slashid_emulator.py --port $${PORT:-8080} --tls-port $${TLS_PORT:-8443} --print-env

install: $(MODULE)
	install -d $(DESTDIR)$(LUA_LIBDIR)/slashid $(DESTDIR)$(LUA_SHAREDIR)/slashid
	install -m 0755 $(MODULE) $(DESTDIR)$(LUA_LIBDIR)/slashid/core.so
	install -m 0644 lua/slashid.lua $(DESTDIR)$(LUA_SHAREDIR)/slashid.lua
	install -m 0644 lua/slashid/*.lua $(DESTDIR)$(LUA_SHAREDIR)/slashid/
	install -d $(DESTDIR)$(LUA_SHAREDIR)/slashid/cli
	install -m 0644 lua/slashid/cli/*.lua $(DESTDIR)$(LUA_SHAREDIR)/slashid/cli/
	install -d $(DESTDIR)$(BINDIR) && sed '1s|^#!.*|#!/usr/bin/env $(LUA)|' bin/slashid-rotate >$(DESTDIR)$(BINDIR)/slashid-rotate && chmod 0755 $(DESTDIR)$(BINDIR)/slashid-rotate
	install -d $(DESTDIR)$(MANDIR)/man1 && install -m 0644 slashid-rotate.1 $(DESTDIR)$(MANDIR)/man1/slashid-rotate.1

uninstall:
	rm -f $(DESTDIR)$(LUA_LIBDIR)/slashid/core.so $(DESTDIR)$(LUA_SHAREDIR)/slashid.lua
	rm -rf $(DESTDIR)$(LUA_SHAREDIR)/slashid
	rm -f $(DESTDIR)$(BINDIR)/slashid-rotate
	rm -f $(DESTDIR)$(MANDIR)/man1/slashid-rotate.1

clean:
	rm -rf build

# Build and install with LuaRocks into a temporary tree, then smoke-test
# the installed module from outside the checkout.
rockcheck: deps
	@sh scripts/deps.sh luarocks
	@LUA=$(LUA) LUA_VERSION=$(LUA_VERSION) sh scripts/rockcheck.sh

# Benchmarks (figures, not pass/fail): see bench/run.sh. `make bench` runs
# bench/instr.sh too; `make bench-instr` runs only it (instructions per
# call under callgrind: raw libcurl, the Lua-cURLv3 peer, client, module).
BENCH_PKGS = nginx libnginx-mod-http-echo curl lua-socket valgrind strace
bench: deps
	@sh scripts/deps.sh $(BENCH_PKGS)
	@$(MAKE) --no-print-directory all
	@LUA=$(LUA) BUILD=$(BUILD) sh bench/run.sh

# The command's cost of durability (bench/cli_journal.sh): 100,000
# organizations journaled with --save-to vs --no-journal to stdout.
bench-journal: deps
	@sh scripts/deps.sh $(BENCH_PKGS)
	@$(MAKE) --no-print-directory all
	@LUA=$(LUA) BUILD=$(BUILD) sh bench/cli_journal.sh

# kill -9 at 20 random moments of a 1,000-organization run, then --resume
# (bench/crash.sh): what the journal classifies, what --resume finishes.
bench-crash: deps
	@$(MAKE) --no-print-directory all
	@LUA=$(LUA) BUILD=$(BUILD) sh bench/crash.sh

# Redaction's time on hostile answers (bench/redaction.lua): figures.
bench-redaction: all
	@LUA_PATH="lua/?.lua;spec/?.lua;;" LUA_CPATH="$(BUILD)/?.so;;" \
	  sh spec/with-emulator.sh $(LUA) bench/redaction.lua

bench-instr: deps
	@sh scripts/deps.sh $(BENCH_PKGS)
	@$(MAKE) --no-print-directory all
	@LUA=$(LUA) BUILD=$(BUILD) sh bench/instr.sh

# ---- hosts: static archive, C embedding example, OpenResty prerequisites --
#   make libslashid   $(BUILD)/libslashid.a: the C core for static linking
#                     (src/*.c with -DSID_STATIC_LINK; link it with libcurl)
#   make embed        build/lua5.4/embed-host (examples/embed/host.c), a
#                     60 Hz frame-loop host; always against Lua 5.4
#   make test-prereqs what the host specs need whatever LUA is tested:
#                     nginx + its lua module, the module built for LuaJIT
#                     (nginx's lua module embeds luajit2), the embed host,
#                     and the module for Lua 5.4 (spec/22-alloc_spec.lua's
#                     allocator-failure host loads it); lua-cqueues, lua-luv
#                     and LÖVE for the event-loop specs
# Each group below is installed on its own, and only when that removes no
# package (Debian's luajit and luajit2 conflict, for one): a group left out
# is recorded in $(SKIPPED)/NAME with the reason, nothing of it is built,
# and the specs needing it are skipped saying why and how to enable them
# (ALLOW_REMOVE=1); with CI set, it fails the run instead. OPENRESTY before
# LOVE: love takes libluajit2 when it is there, Debian's libluajit otherwise
# (which would then keep luajit2 out).
STATIC_OBJECTS = $(patsubst src/%.c,$(BUILD)/static/%.o,$(SOURCES))
LIBSLASHID     = $(BUILD)/libslashid.a
EMBED_HOST     = build/lua5.4/embed-host
SKIPPED        = build/skipped-packages
OPENRESTY_PKGS = nginx libnginx-mod-http-lua luajit2 libluajit2-5.1-dev
LUA54_PKGS     = lua5.4 liblua5.4-dev
LOVE_PKGS      = love
CQUEUES_PKGS   = lua-cqueues
LUV_PKGS       = lua-luv
AR            ?= ar

.PHONY: libslashid embed test-prereqs

libslashid: $(LIBSLASHID)

$(BUILD)/static/%.o: src/%.c $(HEADERS) | $(BUILD)/static
	$(CC) $(ALL_CFLAGS) -DSID_STATIC_LINK -c -o $@ $<

$(LIBSLASHID): $(STATIC_OBJECTS)
	rm -f $@
	$(AR) rcs $@ $(STATIC_OBJECTS)

$(BUILD)/static:
	mkdir -p $@

embed:
	@$(MAKE) --no-print-directory LUA=lua5.4 LUA_VERSION=5.4 \
	  LUA_INCDIR=/usr/include/lua5.4 $(EMBED_HOST)

# Only meaningful with LUA=lua5.4 (what `make embed` passes).
$(BUILD)/embed-host: examples/embed/host.c $(LIBSLASHID)
	$(CC) $(CFLAGS) $(WARN) -std=gnu99 -I$(LUA_INCDIR) -o $@ \
	  examples/embed/host.c $(LIBSLASHID) $(LDFLAGS) -llua$(LUA_VERSION) $(LIBS) -lm

test-prereqs: deps
	@SKIP_DIR=$(SKIPPED) sh scripts/deps.sh --optional openresty $(OPENRESTY_PKGS)
	@SKIP_DIR=$(SKIPPED) sh scripts/deps.sh --optional lua5.4 $(LUA54_PKGS)
	@SKIP_DIR=$(SKIPPED) sh scripts/deps.sh --optional love $(LOVE_PKGS)
	@SKIP_DIR=$(SKIPPED) sh scripts/deps.sh --optional lua-cqueues $(CQUEUES_PKGS)
	@SKIP_DIR=$(SKIPPED) sh scripts/deps.sh --optional lua-luv $(LUV_PKGS)
	@[ -e $(SKIPPED)/openresty ] || $(MAKE) --no-print-directory LUA=luajit \
	  LUA_VERSION=5.1 LUA_INCDIR=/usr/include/luajit-2.1 all
	@[ -e $(SKIPPED)/lua5.4 ] || { $(MAKE) --no-print-directory embed && \
	  $(MAKE) --no-print-directory LUA=lua5.4 LUA_VERSION=5.4 \
	  LUA_INCDIR=/usr/include/lua5.4 all; }

# ---- examples: each host's recipe in one line, from a fresh clone ---------
#   make example-love       examples/love (LÖVE, headless) against the emulator
#   make example-embed      examples/embed/host.c (the C host) against it
#   make example-openresty  examples/openresty (nginx + lua module): POST /rotate
# Each installs what it lacks (scripts/deps.sh: nothing when all is there),
# builds the module for the host's Lua (LÖVE and nginx embed LuaJIT; the C
# host is Lua 5.4, `make embed`), then examples/run-*.sh starts the bundled
# emulator, runs the example against it with the clone's lua/ and build/ on
# the host's paths, shows the outcome (never a key) and stops all it started.
# luajit2 before love: love then takes libluajit2 rather than Debian's
# libluajit, which would keep luajit2 (and nginx's lua module) out.
EXAMPLE_PKGS = gcc libc6-dev libcurl4-openssl-dev zlib1g-dev lua-cjson ca-certificates python3 openssl
LUAJIT_PKGS  = luajit2 libluajit2-5.1-dev
LUAJIT_MAKE  = $(MAKE) --no-print-directory LUA=luajit LUA_VERSION=5.1 \
               LUA_INCDIR=/usr/include/luajit-2.1 all

.PHONY: example-love example-embed example-openresty

example-love:
	@sh scripts/deps.sh --for "make example-love" $(EXAMPLE_PKGS) $(LUAJIT_PKGS)
	@sh scripts/deps.sh --for "make example-love" $(LOVE_PKGS)
	@$(LUAJIT_MAKE) >/dev/null
	@sh examples/run-love.sh

example-embed:
	@sh scripts/deps.sh --for "make example-embed" $(EXAMPLE_PKGS) $(LUA54_PKGS)
	@$(MAKE) --no-print-directory embed >/dev/null
	@sh examples/run-embed.sh

example-openresty:
	@sh scripts/deps.sh --for "make example-openresty" $(EXAMPLE_PKGS) $(OPENRESTY_PKGS) curl
	@$(LUAJIT_MAKE) >/dev/null
	@sh examples/run-openresty.sh

# ---- gates: sanitizers, valgrind, fuzzing, many states (issue 3) ---------
#   make check-asan      the whole spec suite against the module built with
#                        -fsanitize=address,undefined, runtime preloaded;
#                        fails on any report (spec/asan/run.sh)
#   make check-valgrind  spec/soak/valgrind_soak.lua under memcheck: no
#                        invalid access, no uninitialised use, nothing
#                        definitely lost (spec/soak/valgrind.sh); then no
#                        buffer freed by the module still holds a key
#                        (spec/wipe/run.sh)
#   make fuzz            both libFuzzer harnesses of spec/fuzz/: seed corpora
#                        replayed, then FUZZ_SECONDS (60) of fuzzing each
#   make check-threads   8 threads, a lua_State each, rotating at once;
#                        module and program built with ThreadSanitizer
# Each installs what it needs and builds into its own folder under build/.
SAN_CFLAGS    = -fsanitize=address,undefined -fno-omit-frame-pointer -g -O1
ASAN_BUILD    = build/asan-$(notdir $(LUA))
VALGRIND_BUILD = build/valgrind-$(notdir $(LUA))
FUZZ_BUILD    = build/fuzz
TSAN_BUILD    = build/tsan-lua5.4
FUZZ_SECONDS ?= 60
CLANG        ?= clang
# Debian 12: clang 14; libFuzzer and the sanitizer runtimes of clang are in
# libclang-rt-14-dev (libclang-rt-dev); gcc's ASan/UBSan in libasan8/libubsan1.
ASAN_PKGS     = gcc libasan8 libubsan1
VALGRIND_PKGS = valgrind
CLANG_PKGS    = clang libclang-rt-dev lua5.4 liblua5.4-dev libcurl4-openssl-dev zlib1g-dev lua-cjson
FUZZ_CFLAGS   = -g -O1 -fno-omit-frame-pointer -std=gnu99 -Wall -Wextra \
                -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
                -DSID_STATIC_LINK -DSID_FUZZ_ROOT='"$(CURDIR)"' \
                -Isrc -Ispec/fuzz -I/usr/include/lua5.4 -I$(CURL_INCDIR)
FUZZ_LIBS     = -llua5.4 -lcurl -lz -lm -ldl -lpthread

.PHONY: check-asan check-valgrind fuzz check-threads check-noprereq

# libcurl < 7.80 has no CURLOPT_PREREQFUNCTION: the PUT then takes a fresh
# connection and "sent" comes from the request bytes libcurl reports.
# This builds that path on today's libcurl (-DSID_NO_PREREQ) and runs the
# outcome, retry, op (op:cancel's last look), fault-matrix and proxy specs
# against it.
NOPREREQ_BUILD = build/noprereq-$(notdir $(LUA))
NOPREREQ_SPECS = spec/03-outcomes_spec.lua spec/04-retries_spec.lua \
                 spec/09-op_spec.lua spec/10-faults_spec.lua \
                 spec/13-proxy_spec.lua
check-noprereq: deps
	@$(CC) $(ALL_CFLAGS) -DSID_POLLSET_NONE -fsyntax-only src/pollset.c
	@$(MAKE) --no-print-directory BUILD=$(NOPREREQ_BUILD) \
	  CFLAGS="-O2 -g -DSID_NO_PREREQ" all
	@LUA=$(LUA) BUILD=$(NOPREREQ_BUILD) SPECS="$(NOPREREQ_SPECS)" \
	  SLASHID_SPEC_NO_PREREQ=1 sh spec/run.sh

check-asan: deps test-prereqs
	@sh scripts/deps.sh $(ASAN_PKGS)
	@$(MAKE) --no-print-directory BUILD=$(ASAN_BUILD) CFLAGS="$(SAN_CFLAGS)" \
	  LDFLAGS="-fsanitize=address,undefined" all
	@LUA=$(LUA) BUILD=$(ASAN_BUILD) CC="$(CC)" sh spec/asan/run.sh

check-valgrind: deps
	@sh scripts/deps.sh $(VALGRIND_PKGS)
	@$(MAKE) --no-print-directory BUILD=$(VALGRIND_BUILD) \
	  CFLAGS="-O1 -g -fno-omit-frame-pointer" all $(VALGRIND_BUILD)/wipecheck.so
	@LUA=$(LUA) BUILD=$(VALGRIND_BUILD) sh spec/soak/valgrind.sh
	@LUA=$(LUA) BUILD=$(VALGRIND_BUILD) WIPECHECK=$(VALGRIND_BUILD)/wipecheck.so \
	  sh spec/wipe/run.sh

# Preloaded by spec/wipe/run.sh: counts freed blocks still holding a key.
$(VALGRIND_BUILD)/wipecheck.so: spec/wipe/wipecheck.c
	@mkdir -p $(@D)
	$(CC) -O1 -g -fPIC -shared -Wall -Wextra -o $@ spec/wipe/wipecheck.c -ldl

fuzz: deps
	@sh scripts/deps.sh $(CLANG_PKGS)
	@$(MAKE) --no-print-directory $(FUZZ_BUILD)/fuzz_answer $(FUZZ_BUILD)/fuzz_options
	@BUILD=$(FUZZ_BUILD) FUZZ_SECONDS=$(FUZZ_SECONDS) sh spec/fuzz/run.sh

$(FUZZ_BUILD)/fuzz_answer: spec/fuzz/fuzz_answer.c spec/fuzz/luacov.h $(SOURCES) $(HEADERS)
	@mkdir -p $(@D)
	$(CLANG) $(FUZZ_CFLAGS) -o $@ spec/fuzz/fuzz_answer.c $(SOURCES) $(FUZZ_LIBS)

$(FUZZ_BUILD)/fuzz_options: spec/fuzz/fuzz_options.c spec/fuzz/luacov.h
	@mkdir -p $(@D)
	$(CLANG) $(FUZZ_CFLAGS) -o $@ spec/fuzz/fuzz_options.c $(FUZZ_LIBS)

check-threads: deps
	@sh scripts/deps.sh $(CLANG_PKGS) python3 openssl lua-socket
	@$(MAKE) --no-print-directory LUA=lua5.4 LUA_VERSION=5.4 \
	  LUA_INCDIR=/usr/include/lua5.4 BUILD=$(TSAN_BUILD) CC=$(CLANG) \
	  CFLAGS="-fsanitize=thread -g -O1 -fno-omit-frame-pointer" \
	  LDFLAGS=-fsanitize=thread all $(TSAN_BUILD)/threads
	@LUA=lua5.4 BUILD=$(CURDIR)/$(TSAN_BUILD) BIN=$(TSAN_BUILD)/threads \
	  sh spec/threads/run.sh

$(TSAN_BUILD)/threads: spec/threads/threads.c
	@mkdir -p $(@D)
	$(CLANG) -fsanitize=thread -g -O1 $(WARN) -std=gnu99 -I/usr/include/lua5.4 \
	  -o $@ spec/threads/threads.c -llua5.4 -lpthread -ldl -lm

# Soak (issue 3): SOAK_N rotations (100000) by one client against a fresh
# local emulator; Lua memory and RSS every SOAK_N/10 calls, then a verdict
# line (fails on a failed rotation or on growth past SOAK_MAX_LUA_KB /
# SOAK_MAX_RSS_KB). The short one, for CI: make soak SOAK_N=3000.
.PHONY: soak
SOAK_N ?= 100000
soak: deps
	@$(MAKE) --no-print-directory all
	@SOAK_N=$(SOAK_N) LUA_PATH="lua/?.lua;;" LUA_CPATH="$(BUILD)/?.so;;" \
	  LUA_PATH_5_2="lua/?.lua;;" LUA_CPATH_5_2="$(BUILD)/?.so;;" \
	  LUA_PATH_5_3="lua/?.lua;;" LUA_CPATH_5_3="$(BUILD)/?.so;;" \
	  LUA_PATH_5_4="lua/?.lua;;" LUA_CPATH_5_4="$(BUILD)/?.so;;" \
	  sh spec/with-emulator.sh $(LUA) bench/soak.lua

# ---- the reference ----------------------------------------------------------
# `make doc`: the LDoc reference (config.ld) in build/doc; open
# build/doc/index.html. The module slashid with every option and return
# value, the op, the command's module slashid.cli, and the README as a
# topic. Fails on any LDoc warning, on a link into the README that no
# heading answers, and when docs/options.ld.lua no longer says what the
# rules of lua/slashid/options.lua say (regenerate it:
# lua5.4 docs/make-options-ld.lua > docs/options.ld.lua). Debian's ldoc runs
# under lua5.2 or lua5.1 (lua-any); lua-discount renders the Markdown.
DOC_PKGS = lua-ldoc lua-discount lua5.1 lua5.4
DOC_NOISE = -e '^reading configuration from config.ld$$' -e '^found master module' \
            -e '^\*\*\*closing section from master module\*\*\*$$' -e '^output written to '

.PHONY: doc
doc:
	@sh scripts/deps.sh $(DOC_PKGS)
	@lua5.4 docs/make-options-ld.lua --check docs/options.ld.lua
	@rm -rf build/doc && mkdir -p build
	@status=0; ldoc --fatalwarnings . >build/doc.log 2>&1 || status=$$?; \
	  grep -v $(DOC_NOISE) build/doc.log >build/doc.warnings || true; \
	  cat build/doc.warnings; \
	  if [ $$status -ne 0 ] || [ -s build/doc.warnings ]; then \
	    echo "make doc: LDoc warned ($$(wc -l <build/doc.warnings) lines above, exit $$status)" >&2; \
	    exit 1; \
	  fi
	@for a in $$(grep -oh 'README\.md\.html#[^"]*' build/doc/modules/*.html | sed 's/.*#//' | sort -u); do \
	  grep -q "id=\"$$a\"" build/doc/topics/README.md.html || \
	    { echo "make doc: no README heading answers the link #$$a" >&2; exit 1; }; \
	done
	@echo "make doc: build/doc/index.html, 0 warnings"
