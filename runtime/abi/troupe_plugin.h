/* troupe plugin ABI.
 *
 * A plugin is a shared library named libtroupe-NAME.so that exports one C function,
 * `troupe_plugin_entry`, returning a pointer to a static `troupe_plugin`: a versioned table of
 * function pointers. The host checks the ABI version and the kind before calling anything else.
 *
 * Versioning: a plugin built against ABI major M, minor m loads into a host of major M and minor
 * >= m. New minors only append fields to the end of structs, and every struct that can grow
 * starts with its size, so each side knows which fields the other has.
 *
 * Tensors cross the ABI as DLPack `DLTensor`s (CPU or CUDA memory). Parameters and gradients are
 * owned by the runtime: a layer plugin declares them, the runtime allocates, initialises,
 * checkpoints and optimizes them and binds views of them into the plugin. State that only the
 * plugin knows (caches, counters) moves between plugin versions through export_state and
 * import_state when a running job swaps libraries.
 *
 * Threads: the host calls one instance from one thread at a time. Different instances may be
 * called concurrently; a plugin's global state must tolerate that.
 *
 * The full reference, with the inputs and outputs of each kind, is docs/plugins.md. */
#ifndef TROUPE_PLUGIN_H
#define TROUPE_PLUGIN_H

#include <dlpack/dlpack.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define TROUPE_PLUGIN_ABI_MAJOR 1u
#define TROUPE_PLUGIN_ABI_MINOR 6u

/** The symbol every plugin exports, of type troupe_plugin_entry_fn. */
#define TROUPE_PLUGIN_ENTRY_SYMBOL "troupe_plugin_entry"

#if defined(__GNUC__) || defined(__clang__)
#define TROUPE_PLUGIN_EXPORT __attribute__((visibility("default")))
#else
#define TROUPE_PLUGIN_EXPORT
#endif

/** What a plugin is for. A topology role accepts exactly one kind. */
typedef enum troupe_plugin_kind {
  TROUPE_PLUGIN_KIND_ATTENTION = 1, /**< a layer's attention block (MLA) */
  TROUPE_PLUGIN_KIND_MOE = 2,       /**< the feed-forward block of MoE layers */
  TROUPE_PLUGIN_KIND_MTP = 3,       /**< the multi-token-prediction modules */
  TROUPE_PLUGIN_KIND_GEMM = 4       /**< a GEMM provider every linear layer calls (FP8) */
} troupe_plugin_kind;

typedef enum troupe_status {
  TROUPE_STATUS_OK = 0,
  TROUPE_STATUS_INVALID_ARGUMENT = 1,
  TROUPE_STATUS_UNSUPPORTED = 2,
  TROUPE_STATUS_OUT_OF_MEMORY = 3,
  TROUPE_STATUS_INTERNAL = 4
} troupe_status;

/** Filled by a plugin whenever it returns a status other than OK: one line, NUL-terminated. */
typedef struct troupe_error {
  char message[1024];
} troupe_error;

typedef enum troupe_log_level {
  TROUPE_LOG_DEBUG = 0,
  TROUPE_LOG_INFO = 1,
  TROUPE_LOG_WARN = 2,
  TROUPE_LOG_ERROR = 3
} troupe_log_level;

/** Services the host offers a plugin for its whole life; passed to init(). */
typedef struct troupe_host {
  uint32_t struct_size;
  uint32_t abi_major;
  uint32_t abi_minor;
  void* self;
  void (*log)(void* self, troupe_log_level level, const char* message);
} troupe_host;

/** fn(arg, begin, end) over one chunk of a parallel range. */
typedef void (*troupe_range_fn)(void* arg, int64_t begin, int64_t end);

/** The runtime's worker pool. parallel_for splits [0, count) into disjoint chunks of at least
 *  `min_chunk` items, runs fn on them (the calling thread takes part) and returns when all are
 *  done. Safe to call from inside fn (nested calls run inline). */
typedef struct troupe_thread_pool {
  void* self;
  int32_t num_threads;
  void (*parallel_for)(void* self, int64_t count, int64_t min_chunk, troupe_range_fn fn, void* arg);
} troupe_thread_pool;

/** Scratch and activation memory on the context's device, 256-byte aligned; NULL on failure. */
typedef struct troupe_allocator {
  void* self;
  void* (*allocate)(void* self, DLDevice device, size_t bytes);
  void (*release)(void* self, DLDevice device, void* pointer);
} troupe_allocator;

/** Which training GEMM a call is (the FP8 recipe treats them differently). */
typedef enum troupe_gemm_pass {
  TROUPE_GEMM_FPROP = 0, /**< y = x W^T: activations x weights */
  TROUPE_GEMM_DGRAD = 1, /**< dx = dy W: output gradients x weights */
  TROUPE_GEMM_WGRAD = 2  /**< dW = dy^T x: output gradients x activations */
} troupe_gemm_pass;

/** C = alpha * op(A) op(B) + beta * C on 2-D row-major DLTensors; op(X) = X^T when transpose_x.
 *  strides[0] of each tensor is its leading dimension; strides[1] must be 1. */
typedef struct troupe_gemm_call {
  uint32_t struct_size;
  const DLTensor* a;
  const DLTensor* b;
  DLTensor* c;
  int32_t transpose_a;
  int32_t transpose_b;
  float alpha;
  float beta;
  troupe_gemm_pass pass;
  /** Which operand holds weights: 0 neither, 1 a, 2 b. FP8 quantises weights per 128x128 block
   *  and the other operand per 1x128 tile along the reduction dimension. */
  int32_t weight_operand;
} troupe_gemm_call;

struct troupe_exec_context;

/** A GEMM implementation. The runtime always has one (FP32 through BLAS or cuBLASLt); a GEMM
 *  plugin supplies another. */
typedef struct troupe_gemm_provider {
  void* self;
  const char* name;
  troupe_status (*gemm)(void* self, const struct troupe_exec_context* context,
                        const troupe_gemm_call* call, troupe_error* error);
} troupe_gemm_provider;

/** Names of the runtime's own providers on CUDA devices: f32 operands multiplied in FP32, or
 *  rounded to BF16 on the tensor cores with FP32 accumulation (model.precision = "bf16"). A plugin
 *  that runs GEMMs of its own (the routed experts' grouped GEMMs) follows the provider's name. */
#define TROUPE_GEMM_CUBLASLT "cublaslt"
#define TROUPE_GEMM_CUBLASLT_BF16 "cublaslt-bf16"

/** Everything a compute call may use. CPU and CUDA implementations get the same struct. */
typedef struct troupe_exec_context {
  uint32_t struct_size;
  DLDevice device;
  void* stream; /**< cudaStream_t on CUDA devices; NULL on the CPU */
  const troupe_thread_pool* pool;
  const troupe_gemm_provider* gemm;
  const troupe_allocator* allocator;
  /** ABI 1.3: a number that changes whenever the runtime may have written parameters (an
   *  optimizer step, a checkpoint load), process-wide. A plugin may keep what it derives from its
   *  parameters (BF16 copies of weights) while the number stays the same. Contexts smaller than
   *  this field (struct_size) have none: derive again on every call. */
  uint64_t (*parameter_version)(void);
  /** ABI 1.4: a number that grows by one each time the runtime zeroes the gradients of the layers
   *  that run on this context (after each optimizer step); each context starts it far from every
   *  other's. A layer's backward that finds it exactly one more than at the layer's previous
   *  backward finds its weight gradients all zeros and may store into them instead of adding
   *  (where it is their only writer); otherwise it adds (a layer's first backward, one built
   *  mid-step or swapped in, another context). Contexts smaller than this field (struct_size)
   *  have none: always add. */
  uint64_t gradient_generation;
  /** ABI 1.5: asks the runtime's optimizer to write `copy` (`count` BF16 values in device memory
   *  the caller owns, on this context's device) with the parameter whose values start at `value`
   *  rounded to nearest even, each time a step updates them, so that a layer keeping a BF16 copy
   *  of its weights need not round them again. Returns 1 when the request is recorded, 0 when it
   *  is malformed; whether a step did write the copy (not every parameter is updated whole by a
   *  GPU optimizer: ZeRO-1 slices, frozen ones, the host's) only bf16_copy_current tells, so a
   *  layer asks it before each use and rounds on its own otherwise. `copy` NULL withdraws the
   *  request; a caller withdraws it before it frees `copy`. */
  int32_t (*keep_bf16_copy)(const float* value, uint16_t* copy, int64_t count);
  /** ABI 1.5: 1 when the copy kept for `value` holds its current values (the optimizer wrote it
   *  after every other write of the parameter, on the stream that computes next), else 0 (nothing
   *  kept, or the parameter was written since: a checkpoint load, a new allocation). */
  int32_t (*bf16_copy_current)(const float* value);
  /** ABI 1.6: tells the runtime where the sum of squares of a weight gradient is, so that its
   *  global gradient norm need not read the gradient again: `sum` is one double in device memory
   *  on this context's device that the work the layer has enqueued on this context's stream
   *  writes with the sum of squares of the `count` floats starting at `grad`, as that work leaves
   *  them (the routed experts' Wgrad sums them in its epilogue). The runtime reads it, in stream
   *  order, only while the context's gradient_generation is the one at this call and nothing
   *  else wrote the gradient: the layer calls again after every later write of its own (a
   *  later micro-batch's backward), with `sum` NULL where it has no sum for what it wrote, and
   *  before it frees `sum` (a withdrawal may pass a NULL context). Returns 1 when recorded (or
   *  withdrawn), 0 for a bad request. */
  int32_t (*gradient_squares)(const struct troupe_exec_context* context, const float* grad,
                              int64_t count, const double* sum);
} troupe_exec_context;

/** How the runtime initialises a parameter before any checkpoint is loaded. */
typedef enum troupe_param_init {
  TROUPE_INIT_ZEROS = 0,
  TROUPE_INIT_ONES = 1,
  TROUPE_INIT_NORMAL = 2, /**< N(0, init_scale^2) */
  TROUPE_INIT_UNIFORM = 3 /**< U(-init_scale, init_scale) */
} troupe_param_init;

/** Parameter flags. A buffer is state the runtime keeps and checkpoints but the optimizer does
 *  not touch. A role says what a parameter is for where the runtime must find it without knowing
 *  its name (ABI 1.1): ROUTER_BIAS is the MoE router's selection bias, one f32 per routed expert
 *  (a buffer), which the runtime's bias balancer owns and sets before every step. */
#define TROUPE_PARAM_TRAINABLE 1u
#define TROUPE_PARAM_BUFFER 2u
#define TROUPE_PARAM_ROUTER_BIAS 4u
/** ABI 1.5: the layer writes this parameter's gradient whole (stores, does not add) at its first
 *  backward after gradient_generation moved (and at its first backward ever), so a runtime that
 *  moves gradient_generation may leave the gradient as it is instead of zeroing it. A layer that
 *  sets it honours it on every path of its backward (zeroing the gradient itself where it would
 *  add). */
#define TROUPE_PARAM_GRAD_OVERWRITTEN 8u

#define TROUPE_MAX_DIMS 4

/** A parameter a layer plugin declares. */
typedef struct troupe_param_spec {
  const char*
      name; /**< relative to the layer, in the checkpoint's naming: "self_attn.q_a_proj.weight" */
  int32_t ndim;
  int64_t shape[TROUPE_MAX_DIMS];
  DLDataType dtype;
  troupe_param_init init;
  float init_scale;
  uint32_t flags;
} troupe_param_spec;

/** Shape and type of one tensor, for output allocation. */
typedef struct troupe_tensor_spec {
  int32_t ndim;
  int64_t shape[TROUPE_MAX_DIMS];
  DLDataType dtype;
} troupe_tensor_spec;

/** What create() gets: one instance per model layer (or per GEMM provider). */
typedef struct troupe_instance_config {
  uint32_t struct_size;
  const char* model_config_json; /**< the model's Hugging Face config.json, as text; from ABI 1.1
                                      with every field written out (defaults applied, rope
                                      scaling as "rope_scaling"), so a plugin needs no defaults */
  const char* options_json;      /**< this plugin's options from the topology; "{}" if none */
  int32_t layer_index;           /**< the layer this instance computes; -1 when not a layer */
  DLDevice device;
} troupe_instance_config;

/** An instance, opaque to the host. */
typedef struct troupe_instance troupe_instance;

/** Bytes a plugin hands the host; the host calls release(data) when done. */
typedef struct troupe_blob {
  void* data;
  size_t size;
  void (*release)(void* data);
} troupe_blob;

/** Which part of backward to run. DualPipe-style schedules run the input-gradient part first
 *  and the weight-gradient part later; BOTH is the two in one call. A WEIGHT call must follow
 *  an INPUT call of the same micro-batch; BOTH and WEIGHT release the saved activations. */
typedef enum troupe_backward_part {
  TROUPE_BACKWARD_BOTH = 0,
  TROUPE_BACKWARD_INPUT = 1,
  TROUPE_BACKWARD_WEIGHT = 2
} troupe_backward_part;

/** ABI 1.2: the inference cache as one attention layer sees it in a forward_cached() call.
 *
 *  The cache is paged: one pool of fixed-size blocks of `block_tokens` tokens on the context's
 *  device; a sequence's tokens live in the blocks its block table lists, in order. In this layer,
 *  row `p` of sequence `s` (its token at position p) starts at element
 *    block_tables[s * max_blocks + p / block_tokens] * block_stride + layer_offset
 *      + (p % block_tokens) * width
 *  of `pool`, and holds `width` values of `dtype`. What a row means is the plugin's: MLA keeps
 *  the normalised kv latent (kv_lora_rank values) and then the rotated rope key
 *  (qk_rope_head_dim values), so width = kv_lora_rank + qk_rope_head_dim. */
typedef struct troupe_kv_cache {
  uint32_t struct_size;
  void* pool;           /**< device memory on the context's device */
  DLDataType dtype;     /**< f32 or bf16 */
  int64_t width;        /**< values per row */
  int64_t block_tokens; /**< rows per block */
  int64_t block_stride; /**< elements from one block to the next */
  int64_t layer_offset; /**< elements from a block's start to this layer's rows */
  int32_t num_sequences;
  int32_t max_blocks;           /**< columns of block_tables: a sequence holds at most
                                     max_blocks * block_tokens rows */
  const int32_t* block_tables;  /**< [num_sequences][max_blocks] block indices, host memory */
  const int64_t* cached_tokens; /**< per sequence: rows already in the cache, which is also the
                                     position of its first new token (host memory) */
  const int64_t* new_tokens;    /**< per sequence: how many rows of x are its new tokens; the
                                     sequences' rows follow each other in x (host memory) */
} troupe_kv_cache;

/** The table a plugin exports. Function pointers a kind does not use are NULL: layer kinds
 *  (attention, moe, mtp) fill parameters..import_state, the gemm kind fills gemm_provider. */
typedef struct troupe_plugin {
  uint32_t abi_major;   /**< TROUPE_PLUGIN_ABI_MAJOR the plugin was built with */
  uint32_t abi_minor;   /**< TROUPE_PLUGIN_ABI_MINOR the plugin was built with */
  uint32_t struct_size; /**< sizeof(troupe_plugin) the plugin was built with */
  troupe_plugin_kind kind;
  const char* name; /**< "mla", "moe", ...: the NAME of libtroupe-NAME.so */
  const char* version;
  const char* description;

  /** Called once per process after loading, before create(). */
  troupe_status (*init)(const troupe_host* host, troupe_error* error);

  troupe_status (*create)(const troupe_instance_config* config, troupe_instance** instance,
                          troupe_error* error);
  void (*destroy)(troupe_instance* instance);

  /* ---- layer kinds ------------------------------------------------------------------------ */

  /** The parameters this instance needs; the array stays valid until destroy(). */
  troupe_status (*parameters)(troupe_instance* instance, const troupe_param_spec** specs,
                              int32_t* count, troupe_error* error);

  /** Binds the runtime's parameter and gradient tensors, in the order parameters() gave. The
   *  tensors stay valid until the next bind() or destroy(). grads[i].data is NULL for buffers. */
  troupe_status (*bind)(troupe_instance* instance, const DLTensor* params, const DLTensor* grads,
                        int32_t count, troupe_error* error);

  /** Shapes and types of the outputs forward() writes for these inputs. `*num_outputs` holds the
   *  capacity of `outputs` on entry and the count on return. */
  troupe_status (*infer_outputs)(troupe_instance* instance, const DLTensor* inputs,
                                 int32_t num_inputs, troupe_tensor_spec* outputs,
                                 int32_t* num_outputs, troupe_error* error);

  /** Computes one micro-batch. What backward needs is saved under `micro_batch`, so several
   *  micro-batches can be in flight at once. Outputs are preallocated by the host. The inputs
   *  stay valid and unchanged until backward() (its last part) or forget() of the same
   *  micro-batch, so a plugin may keep pointers to them instead of copies. */
  troupe_status (*forward)(troupe_instance* instance, const troupe_exec_context* context,
                           int64_t micro_batch, const DLTensor* inputs, int32_t num_inputs,
                           DLTensor* outputs, int32_t num_outputs, troupe_error* error);

  /** Backward of one micro-batch. Input gradients and the bound parameter gradients are
   *  accumulated with += (the host zeroes them), llm.c style. */
  troupe_status (*backward)(troupe_instance* instance, const troupe_exec_context* context,
                            int64_t micro_batch, troupe_backward_part part,
                            const DLTensor* output_grads, int32_t num_output_grads,
                            DLTensor* input_grads, int32_t num_input_grads, troupe_error* error);

  /** Drops what forward saved for `micro_batch` (evaluation runs, aborted steps). */
  void (*forget)(troupe_instance* instance, int64_t micro_batch);

  /** Plugin-internal state (not parameters) for a swap or a checkpoint. */
  troupe_status (*export_state)(troupe_instance* instance, troupe_blob* state, troupe_error* error);
  troupe_status (*import_state)(troupe_instance* instance, const void* data, size_t size,
                                troupe_error* error);

  /* ---- gemm kind -------------------------------------------------------------------------- */

  /** The provider this instance implements; valid until destroy(). */
  const troupe_gemm_provider* (*gemm_provider)(troupe_instance* instance);

  /* ---- any kind, optional (may be NULL) ---------------------------------------------------- */

  /** A JSON object of the instance's own statistics (activation bytes held, call counts, ...);
   *  the string stays valid until the next call on the instance. */
  const char* (*statistics)(troupe_instance* instance);

  /* ---- attention kind, optional (may be NULL), ABI 1.2 ------------------------------------- */

  /** Inference forward of new tokens over the cache: x [1, rows, hidden] holds each sequence's
   *  new tokens (cache->new_tokens of them, sequence after sequence); the plugin writes their
   *  rows into the cache at positions cached_tokens[s] onwards, then attends causally over each
   *  sequence's cached and new rows (a new token at position p sees positions 0..p) and writes
   *  y [1, rows, hidden]. Nothing is saved for backward. The host has reserved the blocks; the
   *  plugin checks the cache's shape against its own and the positions against max_blocks. */
  troupe_status (*forward_cached)(troupe_instance* instance, const troupe_exec_context* context,
                                  const troupe_kv_cache* cache, const DLTensor* x, DLTensor* y,
                                  troupe_error* error);
} troupe_plugin;

/** Type of the entry symbol. It must not fail and must not allocate: it returns a static table. */
typedef const troupe_plugin* (*troupe_plugin_entry_fn)(void);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* TROUPE_PLUGIN_H */
