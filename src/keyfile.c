/*
 * keyfile.c - the `save_to` write: the new key lands in a temp file in
 * the same directory (mode 0600 from creation), is fsync'ed, renamed over
 * the target, and the directory is fsync'ed, so after a crash the file
 * holds either the old content or the whole new key. Lua's io library
 * can neither fsync nor set a mode, hence C.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "slashid.h"

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

/* core.write_key_file(path, content) -> true | nil, message */
static int keyfile_write(lua_State *L) {
  size_t plen, clen;
  const char *path = luaL_checklstring(L, 1, &plen);
  const char *content = luaL_checklstring(L, 2, &clen);
  const char *slash = strrchr(path, '/');
  luaL_Buffer b;
  char *tmp;
  int fd, err;

  /* "<dir>/.<name>.XXXXXX": same directory, so rename is atomic. */
  luaL_buffinit(L, &b);
  if (slash) luaL_addlstring(&b, path, (size_t)(slash - path) + 1);
  luaL_addchar(&b, '.');
  luaL_addstring(&b, slash ? slash + 1 : path);
  luaL_addstring(&b, ".XXXXXX");
  luaL_pushresult(&b);
  tmp = (char *)lua_newuserdata(L, sid_rawlen(L, -1) + 1);
  memcpy(tmp, lua_tostring(L, -2), sid_rawlen(L, -2) + 1);

  fd = mkstemp(tmp);                       /* created 0600 */
  if (fd < 0) return fail(L, "cannot create a temporary file for", path,
                          errno);
  if (fchmod(fd, S_IRUSR | S_IWUSR) != 0 || write_all(fd, content, clen) ||
      fsync(fd) != 0) {
    err = errno;
    close(fd);
    unlink(tmp);
    return fail(L, "cannot write", path, err);
  }
  if (close(fd) != 0) {
    err = errno;
    unlink(tmp);
    return fail(L, "cannot write", path, err);
  }
  if (rename(tmp, path) != 0) {
    err = errno;
    unlink(tmp);
    return fail(L, "cannot rename the temporary file onto", path, err);
  }
  /* Make the rename itself durable. */
  if (slash) {
    lua_pushlstring(L, path, (size_t)(slash - path) + 1);
    fd = open(lua_tostring(L, -1), O_RDONLY | O_DIRECTORY);
  } else {
    fd = open(".", O_RDONLY | O_DIRECTORY);
  }
  if (fd >= 0) {
    fsync(fd);
    close(fd);
  }
  lua_pushboolean(L, 1);
  return 1;
}

/* core.append_key_line(path, text) -> true | nil, message
   For a batch's key file: each new key is appended and fsync'ed the
   moment its answer arrives, so an interrupted batch keeps every key it
   was given. The file is created mode 0600 if it does not exist. */
static int keyfile_append(lua_State *L) {
  size_t tlen;
  const char *path = luaL_checkstring(L, 1);
  const char *text = luaL_checklstring(L, 2, &tlen);
  int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC,
                S_IRUSR | S_IWUSR);
  int err;
  if (fd < 0) return fail(L, "cannot open", path, errno);
  if (write_all(fd, text, tlen) != 0 || fsync(fd) != 0) {
    err = errno;
    close(fd);
    return fail(L, "cannot append to", path, err);
  }
  if (close(fd) != 0) return fail(L, "cannot append to", path, errno);
  lua_pushboolean(L, 1);
  return 1;
}

void sid_open_keyfile(lua_State *L) {
  lua_pushcfunction(L, keyfile_write);
  lua_setfield(L, -2, "write_key_file");
  lua_pushcfunction(L, keyfile_append);
  lua_setfield(L, -2, "append_key_line");
}
