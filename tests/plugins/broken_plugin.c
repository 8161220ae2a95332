/* Deliberately broken plugins for the loader's error paths. One source, built once per defect:
 *   BROKEN_NO_ENTRY      exports no troupe_plugin_entry
 *   BROKEN_ABI_MAJOR     claims ABI major 99
 *   BROKEN_ABI_MINOR     claims a minor newer than the host's
 *   BROKEN_INIT_FAILS    init() reports an error
 *   BROKEN_INCOMPLETE    a layer plugin without forward/backward
 *   BROKEN_MISNAMED      calls itself something other than its file name
 *   BROKEN_NULL_TABLE    the entry returns NULL
 * and, built into tests/plugins/unsafe (off the test search path: they crash or hang whoever
 * loads them in-process), the defects only the probe process survives:
 *   BROKEN_ENTRY_SEGV    troupe_plugin_entry writes to an unmapped address
 *   BROKEN_INIT_SEGV     init() writes to an unmapped address
 *   BROKEN_CTOR_EXIT     a static constructor calls exit(0)
 *   BROKEN_INIT_HANGS    init() never returns */
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "runtime/abi/troupe_plugin.h"

#ifndef PLUGIN_NAME
#error "PLUGIN_NAME must be defined"
#endif

#if defined(BROKEN_ENTRY_SEGV) || defined(BROKEN_INIT_SEGV)
/* Read at run time, so the compiler cannot turn the store into a trap of its own. Not NULL but an
 * address in the never-mapped first page: UBSan's null check (in ASan+UBSan builds) would catch a
 * store through NULL and exit with its report, and this library is meant to die by SIGSEGV. */
static int* volatile nowhere = (int*)16;
static void crash(void) {
  *nowhere = 42;
}
#endif

#ifdef BROKEN_CTOR_EXIT
__attribute__((constructor)) static void leave_at_once(void) {
  exit(0);
}
#endif

static troupe_status plugin_init(const troupe_host* host, troupe_error* error) {
  (void)host;
#ifdef BROKEN_INIT_SEGV
  crash();
#endif
#ifdef BROKEN_INIT_HANGS
  for (;;) sleep(1000);
#endif
#ifdef BROKEN_INIT_FAILS
  snprintf(error->message, sizeof error->message, "simulated failure: required resource missing");
  return TROUPE_STATUS_INTERNAL;
#else
  (void)error;
  return TROUPE_STATUS_OK;
#endif
}

static troupe_status plugin_create(const troupe_instance_config* config, troupe_instance** out,
                                   troupe_error* error) {
  (void)config;
  (void)out;
  snprintf(error->message, sizeof error->message, "broken plugin cannot create instances");
  return TROUPE_STATUS_INTERNAL;
}

static void plugin_destroy(troupe_instance* instance) {
  (void)instance;
}

static const troupe_gemm_provider* plugin_provider(troupe_instance* instance) {
  (void)instance;
  return NULL;
}

static const troupe_plugin descriptor = {
#ifdef BROKEN_ABI_MAJOR
    .abi_major = 99,
#else
    .abi_major = TROUPE_PLUGIN_ABI_MAJOR,
#endif
#ifdef BROKEN_ABI_MINOR
    .abi_minor = TROUPE_PLUGIN_ABI_MINOR + 1,
#else
    .abi_minor = TROUPE_PLUGIN_ABI_MINOR,
#endif
    .struct_size = sizeof(troupe_plugin),
#ifdef BROKEN_INCOMPLETE
    .kind = TROUPE_PLUGIN_KIND_MOE,
#else
    .kind = TROUPE_PLUGIN_KIND_GEMM,
#endif
#ifdef BROKEN_MISNAMED
    .name = "somebody-else",
#else
    .name = PLUGIN_NAME,
#endif
    .version = "0.0.1",
    .description = "a deliberately broken test plugin",
    .init = plugin_init,
    .create = plugin_create,
    .destroy = plugin_destroy,
    .gemm_provider = plugin_provider,
};

#ifdef BROKEN_NO_ENTRY
TROUPE_PLUGIN_EXPORT const troupe_plugin* not_the_entry_symbol(void) {
  return &descriptor;
}
#elif defined(BROKEN_NULL_TABLE)
TROUPE_PLUGIN_EXPORT const troupe_plugin* troupe_plugin_entry(void) {
  (void)descriptor;
  return NULL;
}
#else
TROUPE_PLUGIN_EXPORT const troupe_plugin* troupe_plugin_entry(void) {
#ifdef BROKEN_ENTRY_SEGV
  crash();
#endif
  return &descriptor;
}
#endif
