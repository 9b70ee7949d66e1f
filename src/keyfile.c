/*
 * keyfile.c - the `save_to` write: the new key lands in a temp file in
 * the target's directory (mode 0600 from creation), is fsync'ed, renamed
 * over the target, and the directory is fsync'ed, so after a crash the
 * file holds either the old content or the whole new key. A symbolic link
 * is followed to the file it names, which is the one replaced; a file
 * that is replaced keeps its owner and group (where the process may set
 * them) and its permission bits less those for others. Lua's io library
 * can neither fsync nor set a mode, hence C.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>
#include "slashid.h"

#define SID_MAX_LINKS 40        /* the kernel's own limit for a path */

static int fail(lua_State *L, const char *what, const char *path, int err) {
  lua_pushnil(L);
  lua_pushfstring(L, "%s %s: %s", what, path, strerror(err));
  return 2;
}

static int write_all(int fd, const char *p, size_t n) {
  while (n) {
    ssize_t w = write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    p += w;
    n -= (size_t)w;
  }
  return 0;
}

/* Pushes how a message names the file: the path given, plus the file it
   leads to when that is another name ("a (-> b)"). */
static const char *push_name(lua_State *L, const char *path,
                             const char *target) {
  if (strcmp(path, target) == 0) lua_pushstring(L, path);
  else lua_pushfstring(L, "%s (-> %s)", path, target);
  return lua_tostring(L, -1);
}

/* Pushes nil and "cannot save to <name>: <why>"; returns 2. */
static int refuse(lua_State *L, const char *path, const char *target,
                  const char *why) {
  const char *name = push_name(L, path, target);
  lua_pushnil(L);
  lua_pushfstring(L, "cannot save to %s: %s", name, why);
  return 2;
}

/* Follows `path` through symbolic links (a chain, absolute or relative
   targets) to the name that will be replaced, and pushes that name.
   *st is filled and *exists set when a file is there; a dangling link
   leads to the name it holds, which does not exist (yet). Returns 0, or
   pushes nil, message and returns 2. */
static int resolve_target(lua_State *L, const char *path, struct stat *st,
                          int *exists) {
  char link[PATH_MAX];
  int hops = 0;
  lua_pushstring(L, path);
  for (;;) {
    const char *cur = lua_tostring(L, -1);
    const char *slash;
    ssize_t n;
    if (lstat(cur, st) != 0) {
      if (errno != ENOENT) {
        int err = errno;
        return fail(L, "cannot save to", push_name(L, path, cur), err);
      }
      *exists = 0;
      return 0;
    }
    if (!S_ISLNK(st->st_mode)) {
      *exists = 1;
      return 0;
    }
    if (++hops > SID_MAX_LINKS)
      return fail(L, "cannot save to", path, ELOOP);
    n = readlink(cur, link, sizeof link);
    if (n < 0 || (size_t)n >= sizeof link) {
      int err = n < 0 ? errno : ENAMETOOLONG;
      return fail(L, "cannot read the symbolic link",
                  push_name(L, path, cur), err);
    }
    /* A relative target is relative to the link's own directory. */
    slash = strrchr(cur, '/');
    if (link[0] != '/' && slash) {
      lua_pushlstring(L, cur, (size_t)(slash - cur) + 1);
      lua_pushlstring(L, link, (size_t)n);
      lua_concat(L, 2);
    } else {
      lua_pushlstring(L, link, (size_t)n);
    }
    lua_remove(L, -2);
  }
}

/* Gives the temp file the owner, group and mode of the file it replaces:
   its bits for owner and group only (no setuid, setgid, sticky, nor any
   bit for others). Not root, the process may be unable to give a file
   away (EPERM): it keeps its own user, and the group where it may set
   it; the group's bits are dropped when the group could not be kept, so
   no group gets a right it did not have. Returns 0 or -1 (errno). */
static int keep_owner_and_mode(int fd, const struct stat *old) {
  struct stat now;
  mode_t mode = old->st_mode & (S_IRWXU | S_IRWXG);
  if (fchown(fd, old->st_uid, old->st_gid) != 0) {
    if (errno != EPERM || geteuid() == 0) return -1;
    if (fchown(fd, (uid_t)-1, old->st_gid) != 0 && errno != EPERM)
      return -1;
  }
  if (fstat(fd, &now) != 0) return -1;
  if (now.st_gid != old->st_gid) mode &= (mode_t)~S_IRWXG;
  return fchmod(fd, mode);
}

/* core.write_key_file(path, content [, "check"]) -> true | nil, message
   "check": every step up to the temp file in the target's directory,
   which is then removed: whether a save could be made, learned before a
   key is issued (the command checks --save-to before it sends). */
static int keyfile_write(lua_State *L) {
  size_t plen, clen;
  const char *path = luaL_checklstring(L, 1, &plen);
  const char *content = luaL_checklstring(L, 2, &clen);
  const char *target, *slash, *name;
  struct stat old;
  int exists, fd, err, r;
  char *tmp;
  luaL_Buffer b;

  int check_only = strcmp(luaL_optstring(L, 3, ""), "check") == 0;

  lua_settop(L, 2);
  if (plen == 0 || strlen(path) != plen) {
    lua_pushnil(L);
    lua_pushliteral(L, "cannot save: the path is empty or holds a NUL byte");
    return 2;
  }
  r = resolve_target(L, path, &old, &exists);
  if (r) return r;
  target = lua_tostring(L, 3);                         /* index 3 */
  slash = strrchr(target, '/');
  name = slash ? slash + 1 : target;
  if (exists && S_ISDIR(old.st_mode)) {
    return refuse(L, path, target, "it is a directory");
  }
  if (exists && !S_ISREG(old.st_mode)) {
    return refuse(L, path, target, "not a regular file");
  }
  if (*name == '\0') {
    return refuse(L, path, target, "it names a directory");
  }

  /* "<dir>/.<name>.XXXXXX" in the target's directory, so rename is
     atomic. mkstemp opens with O_EXCL: it never follows a link. */
  luaL_buffinit(L, &b);
  luaL_addlstring(&b, target, (size_t)(name - target));
  luaL_addchar(&b, '.');
  /* a name near NAME_MAX (255) would not fit with the suffix: then a
     short temp name serves (it is renamed away at once) */
  luaL_addstring(&b, strlen(name) <= 200 ? name : "slashid-key");
  luaL_addstring(&b, ".XXXXXX");
  luaL_pushresult(&b);                                 /* index 4 */
  tmp = (char *)lua_newuserdata(L, sid_rawlen(L, 4) + 1); /* index 5 */
  memcpy(tmp, lua_tostring(L, 4), sid_rawlen(L, 4) + 1);

  fd = mkstemp(tmp);                       /* created 0600 */
  if (fd < 0) {
    err = errno;
    return fail(L, "cannot create a temporary file for",
                push_name(L, path, target), err);
  }
  (void)fcntl(fd, F_SETFD, FD_CLOEXEC);
  if (check_only) {
    close(fd);
    unlink(tmp);
    lua_pushboolean(L, 1);
    return 1;
  }
  if (exists ? keep_owner_and_mode(fd, &old) != 0
             : fchmod(fd, S_IRUSR | S_IWUSR) != 0) {
    err = errno;
    close(fd);
    unlink(tmp);
    return fail(L, "cannot give the new file the owner and mode of",
                push_name(L, path, target), err);
  }
  if (write_all(fd, content, clen) != 0 || fsync(fd) != 0) {
    err = errno;
    close(fd);
    unlink(tmp);
    return fail(L, "cannot write", push_name(L, path, target), err);
  }
  if (close(fd) != 0) {
    err = errno;
    unlink(tmp);
    return fail(L, "cannot write", push_name(L, path, target), err);
  }
  if (rename(tmp, target) != 0) {
    err = errno;
    unlink(tmp);
    return fail(L, "cannot rename the temporary file onto",
                push_name(L, path, target), err);
  }
  /* Make the rename itself durable. */
  sid_sync_dir_of(target);
  lua_pushboolean(L, 1);
  return 1;
}

/* core.append_key_line(path, text [, how [, ours_to]]) -> true, end |
   nil, message
   For a batch's key file (slashid-rotate --orgs --save-to) and the
   command's rescue file: each line is appended the moment its key is
   known, with ONE write(2) on a descriptor opened O_APPEND, then fsync'ed:
   lines already in the file are never read nor rewritten, a concurrent
   writer's lines survive (each write lands whole at the end), and a key
   appended survives the process being killed and a power loss. A file
   that does not exist is created mode 0600 (and its directory fsync'ed);
   a symbolic link is followed. `how`: "x" creates a new file and fails if
   the name exists, link or not (the rescue file's first line); "n" refuses
   to follow a final symbolic link; "l" starts the text on a line of its
   own: when the file's last byte is not a newline (a last line left
   unfinished), or cannot be read, a newline goes first, in the same write
   (`ours_to`, the offset the last call returned: a file still that size
   ends with our own newline). Returns true and the file's end offset
   after the write. Only a
   regular file is accepted (never
   blocks on a FIFO). A file readable or writable by others loses those
   bits where the process may change its mode; if others could still
   read it, nothing is written. Empty `text`: the checks only. */
static int keyfile_append(lua_State *L) {
  size_t plen, tlen;
  const char *path = luaL_checklstring(L, 1, &plen);
  const char *text = luaL_checklstring(L, 2, &tlen);
  const char *how = luaL_optstring(L, 3, "");
  int line = strchr(how, 'l') != NULL;
  int flags = (line ? O_RDWR : O_WRONLY) | O_APPEND | O_CLOEXEC | O_NONBLOCK;
  int fd, err, created = 0;
  struct stat st;
  ssize_t w;
  off_t end_offset;

  if (plen == 0 || strlen(path) != plen) {
    lua_pushnil(L);
    lua_pushliteral(L, "cannot append: the path is empty or holds a NUL byte");
    return 2;
  }
  if (strchr(how, 'n')) flags |= O_NOFOLLOW;
  if (strchr(how, 'x')) {
    fd = open(path, flags | O_CREAT | O_EXCL, S_IRUSR | S_IWUSR);
    created = 1;
  } else {
    fd = open(path, flags);
    if (fd < 0 && errno == EACCES && line) {
      /* appending to a file it may not read: no look at its last byte,
         so a non-empty file always gets a newline first (at worst an
         empty line, which readers skip; never a key glued to a line
         another writer left unfinished) */
      line = 2;
      flags = (flags & ~O_RDWR) | O_WRONLY;
      fd = open(path, flags);
    }
    if (fd < 0 && errno == ENOENT) {
      fd = open(path, flags | O_CREAT, S_IRUSR | S_IWUSR);
      created = 1;
    }
  }
  if (fd < 0) return fail(L, "cannot open", path, errno);
  if (fstat(fd, &st) != 0) {
    err = errno;
    close(fd);
    return fail(L, "cannot open", path, err);
  }
  if (!S_ISREG(st.st_mode)) {
    close(fd);
    lua_pushnil(L);
    lua_pushfstring(L, "cannot append to %s: not a regular file", path);
    return 2;
  }
  if ((st.st_mode & S_IRWXO) &&
      fchmod(fd, st.st_mode & (S_IRWXU | S_IRWXG)) != 0 &&
      (st.st_mode & S_IROTH)) {
    close(fd);
    lua_pushnil(L);
    lua_pushfstring(L, "cannot append to %s: other users may read it, and "
                    "its mode cannot be changed", path);
    return 2;
  }
  /* the file ends where our last line did: its last byte is our newline */
  if (line == 2 && lua_isnumber(L, 4) &&
      (lua_Number)st.st_size == lua_tonumber(L, 4))
    line = 0;
  if (tlen > 0 && line && st.st_size > 0) {
    char last = '\n';
    if (line == 2 ||
        (pread(fd, &last, 1, st.st_size - 1) == 1 && last != '\n')) {
      lua_pushliteral(L, "\n");
      lua_pushvalue(L, 2);
      lua_concat(L, 2);
      text = lua_tolstring(L, -1, &tlen);
    }
  }
  if (tlen > 0) {
    do {
      w = write(fd, text, tlen);
    } while (w < 0 && errno == EINTR);
    if (w < 0 || (size_t)w != tlen) {
      err = w < 0 ? errno : ENOSPC;
      if (w > 0) {
        /* A piece of a line (the disk filled up): take it back if nothing
           was appended after it, so no reader takes it for a whole key. */
        off_t end = lseek(fd, 0, SEEK_CUR);
        struct stat now;
        int undone = end >= (off_t)w && fstat(fd, &now) == 0 &&
                     now.st_size == end && ftruncate(fd, end - (off_t)w) == 0;
        if (undone) fsync(fd);
        close(fd);
        lua_pushnil(L);
        lua_pushfstring(L, "cannot append to %s: only %d of %d bytes written (%s?)%s",
                        path, (int)w, (int)tlen, strerror(err),
                        undone ? ", taken back" : ", an unfinished line is left");
        return 2;
      }
      close(fd);
      return fail(L, "cannot append to", path, err);
    }
    if (fsync(fd) != 0) {
      err = errno;
      close(fd);
      return fail(L, "cannot append to", path, err);
    }
  }
  end_offset = lseek(fd, 0, SEEK_CUR);
  if (close(fd) != 0) return fail(L, "cannot append to", path, errno);
  if (created) sid_sync_dir_of(path);   /* make the new name durable */
  lua_pushboolean(L, 1);
  if (end_offset < 0) return 1;
  lua_pushnumber(L, (lua_Number)end_offset);
  return 2;
}

/* core.key_file_identity(path) -> a string naming the file a save_to
   path would write: "dev:ino" of the file it reaches (links followed)
   when it exists, else the real path of its directory plus its name, else
   the path as given. Two spellings of one file ("d/key", "d/./key", a
   link to d) get the same identity, so a batch can refuse them. */
static int keyfile_identity(lua_State *L) {
  size_t len;
  const char *path = luaL_checklstring(L, 1, &len);
  struct stat st;
  const char *slash = strrchr(path, '/');
  char real[PATH_MAX];
  if (stat(path, &st) == 0) {
    lua_pushfstring(L, "%d:%d:%s", (int)major(st.st_dev), (int)minor(st.st_dev),
                    lua_pushfstring(L, "%f", (lua_Number)st.st_ino));
    return 1;
  }
  lua_pushlstring(L, path, slash ? (size_t)(slash - path) : 0);
  if (realpath(slash ? (slash == path ? "/" : lua_tostring(L, -1)) : ".", real) != NULL) {
    lua_pushfstring(L, "%s/%s", real, slash ? slash + 1 : path);
    return 1;
  }
  lua_pushvalue(L, 1);
  return 1;
}

void sid_open_keyfile(lua_State *L) {
  static const luaL_Reg functions[] = {
    {"key_file_identity", keyfile_identity},
    {"write_key_file", keyfile_write},
    {"append_key_line", keyfile_append},
    {NULL, NULL}
  };
  sid_setfuncs(L, functions);
}
