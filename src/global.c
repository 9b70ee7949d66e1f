/*
 * global.c - libcurl's process-wide set-up, once, below everything that
 * makes a handle (transfer.c, multi.c), so that nothing reaches up into
 * core.c, the module's entry point.
 */
#include <pthread.h>
#include "slashid.h"

static pthread_once_t global_once = PTHREAD_ONCE_INIT;
static CURLcode global_rc = CURLE_OK;

/* Never undone: other code in the host may use libcurl too, and states
   (one per thread in some hosts) come and go while the process lives. */
static void global_init(void) {
  global_rc = curl_global_init(CURL_GLOBAL_DEFAULT);
}

/* Run by the first handle or multi, not by luaopen: the TLS library's
   set-up is ~0.6 ms that `require "slashid"` need not pay (the libraries
   themselves are loaded, and a missing one fails, at require). */
void sid_global_init(lua_State *L) {
  pthread_once(&global_once, global_init);
  if (global_rc != CURLE_OK)
    luaL_error(L, "slashid: curl_global_init failed: %s",
               curl_easy_strerror(global_rc));
}
