rockspec_format = "3.0"
package = "slashid"
version = "0.1.0-1"
source = {
  url = "git+https://github.com/slashid-lua/slashid-lua.git",
  tag = "v0.1.0",
}
description = {
  summary = "Rotate a SlashID organization's API key from Lua, safely",
  detailed = [[
A Lua C module over libcurl for PUT /organizations/api-keys. Every call
says whether the key was rotated, not rotated, or might have been; nothing
the server may have acted on is ever retried; new keys can be saved
atomically (mode 0600) before the call returns.
]],
  homepage = "https://github.com/slashid-lua/slashid-lua",
  license = "MIT",
  labels = { "slashid", "curl", "security" },
}
dependencies = {
  "lua >= 5.1, < 5.5",
  "lua-cjson >= 2.1",
  "argparse >= 0.6",   -- slashid-rotate's command line (Debian: lua-argparse)
}
-- Only the library is declared: on Debian curl.h lives in a multiarch
-- folder (/usr/include/x86_64-linux-gnu) that LuaRocks' header search
-- misses but the compiler finds by itself. Pass CURL_INCDIR=... to
-- `luarocks make` for a curl installed elsewhere. libcurl 7.61 or later
-- is required (src/compat.h refuses older headers; before 7.80 the PUT
-- takes a fresh connection instead of the pre-request guard: README).
external_dependencies = {
  CURL = { library = "curl" },
}
build = {
  type = "builtin",
  modules = {
    ["slashid.core"] = {
      sources = {
        "src/core.c", "src/class.c", "src/transfer.c", "src/handle.c", "src/request.c", "src/answer.c",
        "src/json.c", "src/trace.c", "src/secret.c", "src/keyfile.c",
        "src/clock.c", "src/curlcode.c", "src/multi.c", "src/signal.c",
        "src/deadline.c", "src/pollset.c", "src/journal.c", "src/checksum.c",
        "src/output.c", "src/child.c", "src/files.c", "src/tolerant.c",
        "src/idset.c", "src/global.c", "src/stdfd.c", "src/nodump.c", "src/decode.c",
      },
      libraries = { "curl", "z", "pthread" },
      incdirs = { "$(CURL_INCDIR)" },
      libdirs = { "$(CURL_LIBDIR)" },
    },
    ["slashid"] = "lua/slashid.lua",
    ["slashid.options"] = "lua/slashid/options.lua",
    ["slashid.policy"] = "lua/slashid/policy.lua",
    ["slashid.outcome"] = "lua/slashid/outcome.lua",
    ["slashid.request"] = "lua/slashid/request.lua",
    ["slashid.job"] = "lua/slashid/job.lua",
    ["slashid.recover"] = "lua/slashid/recover.lua",
    ["slashid.op"] = "lua/slashid/op.lua",
    ["slashid.batch"] = "lua/slashid/batch.lua",
    ["slashid.journal"] = "lua/slashid/journal.lua",
    ["slashid.cli"] = "lua/slashid/cli.lua",
    ["slashid.cli.args"] = "lua/slashid/cli/args.lua",
    ["slashid.cli.input"] = "lua/slashid/cli/input.lua",
    ["slashid.cli.output"] = "lua/slashid/cli/output.lua",
    ["slashid.cli.check"] = "lua/slashid/cli/check.lua",
    ["slashid.cli.rotate"] = "lua/slashid/cli/rotate.lua",
    ["slashid.cli.deliver"] = "lua/slashid/cli/deliver.lua",
    ["slashid.cli.resume"] = "lua/slashid/cli/resume.lua",
  },
  install = {
    bin = { ["slashid-rotate"] = "bin/slashid-rotate" },
    -- LuaRocks has no place for man pages: the page goes to the rock's
    -- conf folder (`man -l $(luarocks show --rock-dir slashid)/conf/man/man1/slashid-rotate.1`);
    -- `make install` puts it in share/man/man1.
    conf = { ["man/man1/slashid-rotate.1"] = "slashid-rotate.1" },
  },
}
test_dependencies = { "busted" }
-- `luarocks test` runs the specs `make test` runs, against the module
-- installed by `luarocks make` and a fresh local emulator (no make needed;
-- README, "Install"): spec/luarocks_test.lua starts the emulator
-- (spec/with-emulator.sh) and runs busted under the interpreter of
-- --lua-version. A script, not type "busted": LuaRocks' busted runner
-- takes only a busted installed as a rock, and would download one where
-- busted is Debian's lua-busted (which rocks_provided declares instead).
test = {
  type = "command",
  script = "spec/luarocks_test.lua",
  flags = {
    "--output=spec/summary_output.lua",
    -- foreign hosts and make-built ones: make check-hosts, make check-sweeps
    "--exclude-pattern=^22%-alloc_spec",
    "--exclude-pattern=^23%-openresty_spec",
    "--exclude-pattern=^24%-embed_spec",
    "--exclude-pattern=^25%-loops_spec",
  },
}
