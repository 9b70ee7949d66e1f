# slashid for Lua - convenience Makefile (the rockspec builds the same).
#
#   make demo       set up, start the local emulator, rotate a key
#   make test       set up, build with -Werror, run every spec
#   make emulator   run the local SlashID emulator in the foreground
#   make install    PREFIX=/usr/local DESTDIR=
#   make test LUA=lua5.1   (lua5.1 lua5.2 lua5.3 lua5.4 luajit)
#
# Variables: LUA (interpreter, lua5.4), LUA_VERSION, LUA_INCDIR, CURL_INCDIR,
# PREFIX, DESTDIR, CFLAGS, WERROR (-Werror; empty to relax).

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

CC      ?= cc
CFLAGS  ?= -O2 -g
WERROR  ?= -Werror
WARN     = -Wall -Wextra -Wshadow -Wpointer-arith -Wcast-align \
           -Wstrict-prototypes -Wmissing-prototypes -Wformat=2 $(WERROR)
ALL_CFLAGS = $(CFLAGS) $(WARN) -std=gnu99 -fPIC -fvisibility=hidden \
             -I$(LUA_INCDIR) -I$(CURL_INCDIR)
LDFLAGS ?=
LIBS     = -lcurl -lpthread

BUILD   = build/$(notdir $(LUA))
MODULE  = $(BUILD)/slashid/core.so
SOURCES = $(wildcard src/*.c)
OBJECTS = $(patsubst src/%.c,$(BUILD)/obj/%.o,$(SOURCES))
HEADERS = $(wildcard src/*.h)

# Debian packages each target needs (installed only when missing).
BUILD_PKGS  = gcc libc6-dev $(LUA_PKGS) libcurl4-openssl-dev lua-cjson ca-certificates
RUN_PKGS    = python3 openssl
TEST_PKGS   = lua-busted lua-socket

.PHONY: all deps test demo emulator install uninstall clean rockcheck bench

all: $(MODULE)

$(BUILD)/obj/%.o: src/%.c $(HEADERS) | $(BUILD)/obj
	$(CC) $(ALL_CFLAGS) -c -o $@ $<

$(MODULE): $(OBJECTS) | $(BUILD)/slashid
	$(CC) -shared $(LDFLAGS) -o $@ $(OBJECTS) $(LIBS)

$(BUILD)/obj $(BUILD)/slashid:
	mkdir -p $@

deps:
	@sh scripts/deps.sh $(BUILD_PKGS) $(RUN_PKGS) $(TEST_PKGS)

test: deps
	@$(MAKE) --no-print-directory all
	@LUA=$(LUA) BUILD=$(BUILD) sh spec/run.sh

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

uninstall:
	rm -f $(DESTDIR)$(LUA_LIBDIR)/slashid/core.so $(DESTDIR)$(LUA_SHAREDIR)/slashid.lua
	rm -rf $(DESTDIR)$(LUA_SHAREDIR)/slashid

clean:
	rm -rf build

# Build and install with LuaRocks into a temporary tree, then smoke-test
# the installed module from outside the checkout.
rockcheck: deps
	@sh scripts/deps.sh luarocks
	@LUA=$(LUA) LUA_VERSION=$(LUA_VERSION) sh scripts/rockcheck.sh

# Benchmarks (figures, not pass/fail): see bench/run.sh.
bench: deps
	@sh scripts/deps.sh nginx libnginx-mod-http-echo curl lua-socket
	@$(MAKE) --no-print-directory all
	@LUA=$(LUA) BUILD=$(BUILD) sh bench/run.sh
