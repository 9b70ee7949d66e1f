/*
 * files.c - what the command needs of the file system beyond Lua's io
 * library: inputs read as plain descriptors (a FIFO, a pipe and a regular
 * file alike, so one reader with one 1 MiB line cap serves them all, and
 * a signal interrupts a wait), the private directory a journal lives
 * in (made mode 0700, component by component), and the directory fsync
 * that makes a new name durable (keyfile.c and journal.c both need it).
 */
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "slashid.h"

/* fsync of a directory: a file created or renamed in it survives a crash
   only once this returns 0 (-1 and errno otherwise). */
int sid_sync_dir(const char *dir) {
  int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC), err;
  if (fd < 0) return -1;
  if (fsync(fd) != 0) {
    err = errno;
    close(fd);
    errno = err;
    return -1;
  }
  close(fd);
  return 0;
}

/* The same for the directory that holds `path` ("." when it has no '/'). */
int sid_sync_dir_of(const char *path) {
  char dir[4096];
  const char *slash = strrchr(path, '/');
  size_t len;
  if (slash == NULL) return sid_sync_dir(".");
  len = slash == path ? 1 : (size_t)(slash - path);   /* "/name": "/" */
  if (len >= sizeof dir) {
    errno = ENAMETOOLONG;
    return -1;
  }
  memcpy(dir, path, len);
  dir[len] = '\0';
  return sid_sync_dir(dir);
}

/* core.open_input(path) -> fd | false (a signal came while the open
   waited: a FIFO with no writer yet) | nil, message */
static int files_open_input(lua_State *L) {
  size_t len;
  const char *path = luaL_checklstring(L, 1, &len);
  int fd;
  if (len == 0 || strlen(path) != len) {
    lua_pushnil(L);
    lua_pushliteral(L, "the path is empty or holds a NUL byte");
    return 2;
  }
  fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    if (errno == EINTR) {
      lua_pushboolean(L, 0);
      return 1;
    }
    lua_pushnil(L);
    lua_pushstring(L, strerror(errno));
    return 2;
  }
  lua_pushinteger(L, fd);
  return 1;
}

/* core.seek_input(fd [, offset]) -> the offset after seeking to `offset`
   (from the start), or the current one without it | nil, message (not
   seekable: a pipe, a terminal) */
static int files_seek_input(lua_State *L) {
  lua_Integer fd = luaL_checkinteger(L, 1);
  off_t at;
  luaL_argcheck(L, fd >= 0 && fd <= 1 << 20, 1, "a descriptor expected");
  if (lua_isnoneornil(L, 2)) at = lseek((int)fd, 0, SEEK_CUR);
  else at = lseek((int)fd, (off_t)luaL_checknumber(L, 2), SEEK_SET);
  if (at < 0) {
    lua_pushnil(L);
    lua_pushstring(L, strerror(errno));
    return 2;
  }
  lua_pushnumber(L, (lua_Number)at);
  return 1;
}

/* core.is_regular(fd) -> whether the descriptor is on a regular file */
static int files_is_regular(lua_State *L) {
  lua_Integer fd = luaL_checkinteger(L, 1);
  struct stat st;
  lua_pushboolean(L, fd >= 0 && fd <= 1 << 20 && fstat((int)fd, &st) == 0 &&
                     S_ISREG(st.st_mode));
  return 1;
}

/* core.close_input(fd): closes a descriptor open_input returned */
static int files_close_input(lua_State *L) {
  lua_Integer fd = luaL_checkinteger(L, 1);
  luaL_argcheck(L, fd > 2 && fd <= 1 << 20, 1, "a descriptor open_input returned expected");
  close((int)fd);
  return 0;
}

/* core.make_private_dir(path) -> true | nil, message. Makes the
   directory and its missing parents, mode 0700 (those that exist are
   left as they are); the last one must then be a directory owned by this
   user that no one else may write (a journal's home). */
static int files_make_private_dir(lua_State *L) {
  size_t len, i;
  const char *path = luaL_checklstring(L, 1, &len);
  struct stat st;
  char *copy;
  if (len == 0 || strlen(path) != len) {
    lua_pushnil(L);
    lua_pushliteral(L, "the path is empty or holds a NUL byte");
    return 2;
  }
  copy = (char *)lua_newuserdata(L, len + 1);
  memcpy(copy, path, len + 1);
  for (i = 1; i <= len; i++) {
    if (i == len || copy[i] == '/') {
      char saved = copy[i];
      copy[i] = '\0';
      if (mkdir(copy, S_IRWXU) != 0 && errno != EEXIST) {
        int err = errno;
        lua_pushnil(L);
        lua_pushfstring(L, "cannot make the directory %s: %s", copy, strerror(err));
        return 2;
      }
      copy[i] = saved;
    }
  }
  if (stat(path, &st) != 0 || !S_ISDIR(st.st_mode)) {
    lua_pushnil(L);
    lua_pushfstring(L, "%s is not a directory", path);
    return 2;
  }
  if (st.st_uid != geteuid() || (st.st_mode & (S_IWGRP | S_IWOTH))) {
    lua_pushnil(L);
    lua_pushfstring(L, "the directory %s may be written by other users", path);
    return 2;
  }
  lua_pushboolean(L, 1);
  return 1;
}

/* core.file_kind(path) -> "file" | "directory" | "fifo" | "socket" |
   "device" | "other" (links followed), or nil when it cannot be looked at:
   a reader that must not block on a FIFO asks first. */
static int files_file_kind(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  struct stat st;
  if (stat(path, &st) != 0) return 0;
  if (S_ISREG(st.st_mode)) lua_pushliteral(L, "file");
  else if (S_ISDIR(st.st_mode)) lua_pushliteral(L, "directory");
  else if (S_ISFIFO(st.st_mode)) lua_pushliteral(L, "fifo");
  else if (S_ISSOCK(st.st_mode)) lua_pushliteral(L, "socket");
  else if (S_ISCHR(st.st_mode) || S_ISBLK(st.st_mode)) lua_pushliteral(L, "device");
  else lua_pushliteral(L, "other");
  return 1;
}

static const luaL_Reg files_functions[] = {
  {"file_kind", files_file_kind},
  {"open_input", files_open_input},
  {"seek_input", files_seek_input},
  {"is_regular", files_is_regular},
  {"close_input", files_close_input},
  {"make_private_dir", files_make_private_dir},
  {NULL, NULL}
};

void sid_open_files(lua_State *L) {
  sid_setfuncs(L, files_functions);
}
