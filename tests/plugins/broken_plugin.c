/* Deliberately broken plugins for the loader's error paths. One source, built once per defect:
 *   BROKEN_NO_ENTRY      exports no troupe_plugin_entry
 *   BROKEN_ABI_MAJOR     claims ABI major 99
 *   BROKEN_ABI_MINOR     claims a minor newer than the host's
 *   BROKEN_INIT_FAILS    init() reports an error
 *   BROKEN_INCOMPLETE    a layer plugin without forward/backward
 *   BROKEN_MISNAMED      calls itself something other than its file name
 *   BROKEN_NULL_TABLE    the entry returns NULL */
#include <stdio.h>

#include "runtime/abi/troupe_plugin.h"

#ifndef PLUGIN_NAME
#error "PLUGIN_NAME must be defined"
#endif

static troupe_status plugin_init(const troupe_host* host, troupe_error* error) {
  (void)host;
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
  return &descriptor;
}
#endif
