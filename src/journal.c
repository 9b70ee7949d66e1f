/*
 * journal.c - the write-ahead journal's file: a line-based, append-only
 * log that a run writes before it acts (and after), so a crashed or
 * killed run can be resumed without issuing a key twice or losing one.
 * The Lua layer (journal.lua) decides what the lines say; this file
 * makes each append durable before it returns (fdatasync), never leaves
 * half a record behind when a write fails, and makes sure that only one
 * run at a time uses a journal (flock) and that no other user can read
 * it or swap it (it may hold keys). Lua's io library can neither fsync,
 * lock, set a mode, nor cut a file back, hence C.
 *
 * Messages name the path and the system's reason, never the data.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>
#include "slashid.h"

#define SID_JOURNAL_MT "slashid.journal_file"

typedef struct sid_journal {
  int fd;                /* -1 once closed */
  double fsyncs;         /* flushes of the file that succeeded */
  double bytes;          /* bytes this handle added to the file */
  char path[1];          /* as given, NUL-terminated (allocated longer) */
} sid_journal;

static sid_journal *check_journal(lua_State *L) {
  return (sid_journal *)luaL_checkudata(L, 1, SID_JOURNAL_MT);
}

static sid_journal *check_open(lua_State *L) {
  sid_journal *j = check_journal(L);
  if (j->fd < 0) {
    lua_pushfstring(L, "slashid: the journal %s is closed", j->path);
    lua_error(L);
  }
  return j;
}

static void push_count(lua_State *L, double n) {
#if SID_HAS_INTEGERS
  lua_pushinteger(L, (lua_Integer)n);
#else
  lua_pushnumber(L, (lua_Number)n);
#endif
}

/* Unlocks (even if a forked child still shares the open file) and
   closes. Everything appended was flushed already: close's own result
   says nothing more about it. */
static void close_journal(sid_journal *j) {
  if (j->fd < 0) return;
  (void)flock(j->fd, LOCK_UN);
  close(j->fd);
  j->fd = -1;
}

/* Closes what open_journal opened, then pushes nil and the message
   built by the caller (already on the stack: moved above the nil). */
static int refuse(lua_State *L, sid_journal *j) {
  close_journal(j);
  lua_pushnil(L);
  lua_insert(L, -2);
  return 2;
}

static int write_all(int fd, const char *p, size_t n, size_t *done) {
  *done = 0;
  while (*done < n) {
    ssize_t w = write(fd, p + *done, n - *done);
    if (w < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    if (w == 0) {                  /* no progress, no error: not forever */
      errno = EIO;
      return -1;
    }
    *done += (size_t)w;
  }
  return 0;
}

/* The directory a journal lives in: no other user may add, remove or
   rename a file there (swap the journal for one of theirs, or a link),
   so it must be ours and writable by us alone. Pushes the directory's
   name in every case; returns 0 or 1 (and then a message is pushed
   above the name). */
static int check_directory(lua_State *L, const char *path) {
  const char *slash = strrchr(path, '/');
  const char *dir;
  struct stat st;
  if (slash == NULL) lua_pushliteral(L, ".");
  else if (slash == path) lua_pushliteral(L, "/");
  else lua_pushlstring(L, path, (size_t)(slash - path));
  dir = lua_tostring(L, -1);
  if (stat(dir, &st) != 0) {
    lua_pushfstring(L, "journal directory %s: %s", dir, strerror(errno));
    return 1;
  }
  if (!S_ISDIR(st.st_mode)) {
    lua_pushfstring(L, "journal directory %s: not a directory", dir);
    return 1;
  }
  if (st.st_mode & (S_IWGRP | S_IWOTH)) {
    lua_pushfstring(L, "journal directory %s: writable by other users (it "
                    "must be writable only by its owner)", dir);
    return 1;
  }
  if (st.st_uid != geteuid()) {
    lua_pushfstring(L, "journal directory %s: not owned by this user", dir);
    return 1;
  }
  return 0;
}

/* Opens the journal itself. "new" creates it (0600) or takes an empty
   one; *created tells which. Never follows a symbolic link. Returns the
   descriptor, or -1 with errno. */
static int open_file(const char *path, int is_new, int *created) {
  /* O_NONBLOCK: opening a FIFO or a device someone put there must not
     block (they are refused below); on a regular file it changes nothing. */
  int flags = O_RDWR | O_APPEND | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK;
  int tries, fd = -1;
  *created = 0;
  if (!is_new) return open(path, flags);
  /* O_EXCL first, to know whether this call made the file; when the name
     exists, the file there (emptiness checked under the lock). Removed in
     between by someone else: try again, a few times. */
  for (tries = 0; tries < 8; tries++) {
    fd = open(path, flags | O_CREAT | O_EXCL, S_IRUSR | S_IWUSR);
    if (fd >= 0) {
      *created = 1;
      return fd;
    }
    if (errno != EEXIST) return -1;
    fd = open(path, flags);
    if (fd >= 0 || errno != ENOENT) return fd;
  }
  return fd;
}

/* core.journal_open(path, how) -> journal file | nil, message
   how = "new": a journal for a new run; the file is created (0600) or,
   if it exists, must be empty. how = "resume": an existing journal, whose
   torn last line (no newline: a crash mid-append) is ended with "\n" so
   the next record starts a line of its own (readers skip the torn one by
   its checksum). Both: the directory must be ours and writable by us
   alone; the file a regular file (not a link: never followed), ours, with
   no access for group or others; and not locked by another open of it
   (flock, held until close): two runs never write one journal. */
static int journal_open(lua_State *L) {
  static const char *const hows[] = {"new", "resume", NULL};
  size_t plen;
  const char *path = luaL_checklstring(L, 1, &plen);
  int is_new = luaL_checkoption(L, 2, NULL, hows) == 0;
  sid_journal *j;
  struct stat st;
  int created, err;
  const char *dir;

  lua_settop(L, 2);
  if (plen == 0 || strlen(path) != plen) {
    lua_pushnil(L);
    lua_pushliteral(L, "the journal path is empty or holds a NUL byte");
    return 2;
  }
  /* The userdata first, so that a memory error from here on leaves the
     descriptor to __gc instead of leaking it. */
  j = (sid_journal *)sid_newuserdata(L, sizeof *j + plen);     /* index 3 */
  j->fd = -1;
  j->fsyncs = j->bytes = 0;
  memcpy(j->path, path, plen + 1);
  sid_setmetatable(L, SID_JOURNAL_MT);
  if (check_directory(L, path)) return refuse(L, j);          /* dir: 4 */
  dir = lua_tostring(L, 4);

  j->fd = open_file(path, is_new, &created);
  if (j->fd < 0) {
    err = errno;
    if (err == ELOOP)
      lua_pushfstring(L, "cannot open the journal %s: it is a symbolic link "
                      "(not followed)", path);
    else
      lua_pushfstring(L, "cannot open the journal %s: %s", path, strerror(err));
    return refuse(L, j);
  }
  /* umask may have taken the owner's bits too: ours is 0600 exactly */
  if (created && fchmod(j->fd, S_IRUSR | S_IWUSR) != 0) {
    lua_pushfstring(L, "cannot open the journal %s: %s", path, strerror(errno));
    return refuse(L, j);
  }
  if (fstat(j->fd, &st) != 0) {
    lua_pushfstring(L, "cannot open the journal %s: %s", path, strerror(errno));
    return refuse(L, j);
  }
  if (!S_ISREG(st.st_mode)) {
    lua_pushfstring(L, "journal %s: not a regular file", path);
    return refuse(L, j);
  }
  if (st.st_uid != geteuid()) {
    lua_pushfstring(L, "journal %s: not owned by this user", path);
    return refuse(L, j);
  }
  if (st.st_mode & (S_IRWXG | S_IRWXO)) {
    char mode[8];
    snprintf(mode, sizeof mode, "%04o", (unsigned)(st.st_mode & 07777));
    lua_pushfstring(L, "journal %s: other users have access to it (mode %s; "
                    "it must be for its owner only: 0600)", path, mode);
    return refuse(L, j);
  }
  if (flock(j->fd, LOCK_EX | LOCK_NB) != 0) {
    err = errno;
    if (err == EWOULDBLOCK)
      lua_pushfstring(L, "journal %s is held by another process (another run "
                      "is using it)", path);
    else
      lua_pushfstring(L, "cannot lock the journal %s: %s", path, strerror(err));
    return refuse(L, j);
  }
  /* the size again, now that no other run can append */
  if (fstat(j->fd, &st) != 0) {
    lua_pushfstring(L, "cannot open the journal %s: %s", path, strerror(errno));
    return refuse(L, j);
  }
  if (is_new) {
    if (st.st_size > 0) {
      lua_pushfstring(L, "journal %s is not empty: a new run never appends to "
                      "an existing journal (finish it with --resume)", path);
      return refuse(L, j);
    }
    /* Whether this call made the file or an earlier, failed one did: its
       name must survive a crash before the first record counts. */
    if (sid_sync_dir(dir) != 0) {
      lua_pushfstring(L, "cannot flush the journal directory %s to disk: %s",
                      dir, strerror(errno));
      return refuse(L, j);
    }
  } else if (st.st_size > 0) {
    char last;
    ssize_t r;
    size_t done;
    do {
      r = pread(j->fd, &last, 1, st.st_size - 1);
    } while (r < 0 && errno == EINTR);
    if (r != 1) {
      lua_pushfstring(L, "cannot read the journal %s: %s", path,
                      strerror(r < 0 ? errno : EIO));
      return refuse(L, j);
    }
    if (last != '\n') {
      if (write_all(j->fd, "\n", 1, &done) != 0) {
        lua_pushfstring(L, "cannot write the journal %s: %s", path,
                        strerror(errno));
        return refuse(L, j);
      }
      j->bytes += 1;
      if (fsync(j->fd) != 0) {
        lua_pushfstring(L, "cannot flush the journal %s to disk: %s", path,
                        strerror(errno));
        return refuse(L, j);
      }
      j->fsyncs += 1;
    }
  }
  lua_settop(L, 3);
  return 1;
}

/* jf:append(data) -> true | nil, message
   All of data at the end of the file (the caller ends its record with
   "\n"), written from the Lua string itself (no copy to wipe), then
   fdatasync: true means the record is on disk. A write that fails (disk
   full, EFBIG, EIO) cuts the file back to the size it had before, so no
   partial record is left: "cannot write the journal PATH: why". A flush
   that fails: "cannot flush the journal PATH to disk: why" (the record
   may or may not be there; the caller takes the journal for failed). */
static int journal_append(lua_State *L) {
  sid_journal *j = check_open(L);
  size_t n, done;
  const char *data = luaL_checklstring(L, 2, &n);
  struct stat st;
  int err;
  if (n == 0) {
    lua_pushboolean(L, 1);
    return 1;
  }
  if (fstat(j->fd, &st) != 0) {
    lua_pushnil(L);
    lua_pushfstring(L, "cannot write the journal %s: %s", j->path,
                    strerror(errno));
    return 2;
  }
  if (write_all(j->fd, data, n, &done) != 0) {
    err = errno;
    lua_pushnil(L);
    if (done > 0 && ftruncate(j->fd, st.st_size) != 0)
      lua_pushfstring(L, "cannot write the journal %s: %s (and the part "
                      "written could not be taken back: %s)", j->path,
                      strerror(err), strerror(errno));
    else
      lua_pushfstring(L, "cannot write the journal %s: %s", j->path,
                      strerror(err));
    return 2;
  }
  j->bytes += (double)n;
  if (fdatasync(j->fd) != 0) {
    lua_pushnil(L);
    lua_pushfstring(L, "cannot flush the journal %s to disk: %s", j->path,
                    strerror(errno));
    return 2;
  }
  j->fsyncs += 1;
  lua_pushboolean(L, 1);
  return 1;
}

/* jf:stats() -> { fsyncs = flushes of the file that succeeded (one per
   append, one for a torn line ended on resume), bytes = bytes this handle
   added to the file } */
static int journal_stats(lua_State *L) {
  sid_journal *j = check_journal(L);
  lua_createtable(L, 0, 2);
  push_count(L, j->fsyncs);
  lua_setfield(L, -2, "fsyncs");
  push_count(L, j->bytes);
  lua_setfield(L, -2, "bytes");
  return 1;
}

static int journal_path(lua_State *L) {
  lua_pushstring(L, check_journal(L)->path);
  return 1;
}

/* jf:close() -> true; again: true. Releases the lock. */
static int journal_close(lua_State *L) {
  close_journal(check_journal(L));
  lua_pushboolean(L, 1);
  return 1;
}

static int journal_gc(lua_State *L) {
  close_journal(check_journal(L));
  return 0;
}

static int journal_tostring(lua_State *L) {
  sid_journal *j = check_journal(L);
  if (j->fd < 0) lua_pushliteral(L, SID_JOURNAL_MT " (closed)");
  else lua_pushfstring(L, SID_JOURNAL_MT " (%s)", j->path);
  return 1;
}

void sid_open_journal(lua_State *L) {
  static const luaL_Reg methods[] = {
    {"append", journal_append},
    {"stats", journal_stats},
    {"path", journal_path},
    {"close", journal_close},
    {NULL, NULL}
  };
  static const luaL_Reg meta[] = {
    {"__gc", journal_gc},
    {"__tostring", journal_tostring},
#if SID_HAS_CLOSE
    {"__close", journal_gc},
#endif
    {NULL, NULL}
  };
  static const luaL_Reg functions[] = {
    {"journal_open", journal_open},
    {NULL, NULL}
  };
  sid_new_class(L, SID_JOURNAL_MT, meta, methods);
  sid_setfuncs(L, functions);
}
