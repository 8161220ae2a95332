/* libtroupe-test-naive-gemm.so: a test-only GEMM provider in plain C (triple loop, double
 * accumulation), proving the ABI header is C and that a GEMM plugin can replace the runtime's
 * provider in an exec context. */
#include <stdio.h>
#include <stdlib.h>

#include "runtime/abi/troupe_plugin.h"

struct troupe_instance {
  troupe_gemm_provider provider;
  long calls;
};

static float* at(const DLTensor* t, int64_t row, int64_t col) {
  int64_t ld = t->strides != NULL ? t->strides[0] : t->shape[1];
  return (float*)((char*)t->data + t->byte_offset) + row * ld + col;
}

static troupe_status naive_gemm(void* self, const troupe_exec_context* context,
                                const troupe_gemm_call* call, troupe_error* error) {
  (void)context;
  struct troupe_instance* instance = (struct troupe_instance*)self;
  const DLTensor *a = call->a, *b = call->b;
  DLTensor* c = call->c;
  if (a->ndim != 2 || b->ndim != 2 || c->ndim != 2 || a->dtype.bits != 32 || b->dtype.bits != 32) {
    snprintf(error->message, sizeof error->message, "naive gemm takes 2-D f32 operands");
    return TROUPE_STATUS_INVALID_ARGUMENT;
  }
  int64_t m = c->shape[0], n = c->shape[1];
  int64_t k = call->transpose_a ? a->shape[0] : a->shape[1];
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      double sum = 0.0;
      for (int64_t p = 0; p < k; ++p) {
        float x = call->transpose_a ? *at(a, p, i) : *at(a, i, p);
        float y = call->transpose_b ? *at(b, j, p) : *at(b, p, j);
        sum += (double)x * (double)y;
      }
      float* out = at(c, i, j);
      *out = (float)(call->alpha * sum + (call->beta != 0.0f ? (double)call->beta * *out : 0.0));
    }
  }
  ++instance->calls;
  return TROUPE_STATUS_OK;
}

static troupe_status plugin_init(const troupe_host* host, troupe_error* error) {
  (void)error;
  host->log(host->self, TROUPE_LOG_DEBUG, "naive gemm ready");
  return TROUPE_STATUS_OK;
}

static troupe_status plugin_create(const troupe_instance_config* config, troupe_instance** out,
                                   troupe_error* error) {
  if (config->device.device_type != kDLCPU) {
    snprintf(error->message, sizeof error->message, "naive gemm runs on the CPU only");
    return TROUPE_STATUS_UNSUPPORTED;
  }
  struct troupe_instance* instance = calloc(1, sizeof *instance);
  if (instance == NULL) return TROUPE_STATUS_OUT_OF_MEMORY;
  instance->provider.self = instance;
  instance->provider.name = "test-naive-gemm";
  instance->provider.gemm = naive_gemm;
  *out = instance;
  return TROUPE_STATUS_OK;
}

static void plugin_destroy(troupe_instance* instance) {
  free(instance);
}

static const troupe_gemm_provider* plugin_provider(troupe_instance* instance) {
  return &instance->provider;
}

static const troupe_plugin descriptor = {
    .abi_major = TROUPE_PLUGIN_ABI_MAJOR,
    .abi_minor = TROUPE_PLUGIN_ABI_MINOR,
    .struct_size = sizeof(troupe_plugin),
    .kind = TROUPE_PLUGIN_KIND_GEMM,
    .name = "test-naive-gemm",
    .version = "1.0.0",
    .description = "test-only naive FP32 GEMM provider in C",
    .init = plugin_init,
    .create = plugin_create,
    .destroy = plugin_destroy,
    .gemm_provider = plugin_provider,
};

TROUPE_PLUGIN_EXPORT const troupe_plugin* troupe_plugin_entry(void) {
  return &descriptor;
}
