#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/router.hpp"

namespace troupe::kernels::cuda {

namespace {

constexpr int threads = 128;
constexpr int max_groups = 64;
constexpr int max_group_top = 16;

// NOTES: one thread per token, choices in a per-thread array (local memory, cached): the router
// is a sliver of the step (tokens x experts values), and one thread per token keeps the
// selection rule identical to the CPU's line by line.
__global__ void router_forward_kernel(router_shape r, const float* logits, const float* bias,
                                      float* scores, std::int32_t* selected, float* gates,
                                      std::int64_t tokens) {
  const std::int64_t t = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x;
  if (t >= tokens) return;
  float choice[max_router_experts];
  float group_score[max_groups];
  bool kept[max_groups];
  const std::int64_t per_group = r.experts / r.groups;
  const float* l = logits + t * r.experts;
  float* s = scores + t * r.experts;
  for (std::int64_t e = 0; e < r.experts; ++e) {
    s[e] = 1.0f / (1.0f + expf(-l[e]));
    choice[e] = s[e] + (bias != nullptr ? bias[e] : 0.0f);
  }
  // A group's score: its `group_top` best choice values, summed best first.
  for (std::int64_t g = 0; g < r.groups; ++g) {
    float best[max_group_top];
    for (std::int64_t i = 0; i < r.group_top; ++i) best[i] = -INFINITY;
    // Consecutive groups: their own run of experts; groups by map: every expert, checked.
    const std::int64_t first = r.group_of != nullptr ? 0 : g * per_group;
    const std::int64_t last = r.group_of != nullptr ? r.experts : first + per_group;
    for (std::int64_t e = first; e < last; ++e) {
      if (r.group_of != nullptr && r.group_of[e] != g) continue;
      const float c = choice[e];
      for (std::int64_t i = 0; i < r.group_top; ++i)
        if (c > best[i]) {
          for (std::int64_t j = r.group_top - 1; j > i; --j) best[j] = best[j - 1];
          best[i] = c;
          break;
        }
    }
    float sum = best[0];
    for (std::int64_t i = 1; i < r.group_top; ++i) sum += best[i];
    group_score[g] = sum;
    kept[g] = false;
  }
  for (std::int64_t i = 0; i < r.topk_groups; ++i) {
    std::int64_t best = -1;
    for (std::int64_t g = 0; g < r.groups; ++g)
      if (!kept[g] && (best < 0 || group_score[g] > group_score[best])) best = g;
    kept[best] = true;
  }
  for (std::int64_t e = 0; e < r.experts; ++e)
    if (!kept[r.group_of != nullptr ? r.group_of[e] : e / per_group]) choice[e] = -INFINITY;
  // The top-k of choice, then listed in increasing expert order: mark them in `choice` as NaN.
  std::int32_t* chosen = selected + t * r.topk;
  for (std::int64_t k = 0; k < r.topk; ++k) {
    std::int64_t best = -1;
    for (std::int64_t e = 0; e < r.experts; ++e)
      if (!isnan(choice[e]) && (best < 0 || choice[e] > choice[best])) best = e;
    choice[best] = NAN;
  }
  std::int64_t k = 0;
  for (std::int64_t e = 0; e < r.experts && k < r.topk; ++e)
    if (isnan(choice[e])) chosen[k++] = static_cast<std::int32_t>(e);
  float* g = gates + t * r.topk;
  float sum = 0.0f;
  for (k = 0; k < r.topk; ++k) sum += (g[k] = s[chosen[k]]);
  const float factor = r.normalize ? r.scaling / (sum + 1e-20f) : r.scaling;
  for (k = 0; k < r.topk; ++k) g[k] *= factor;
}

// NOTES: one warp per token, each lane holding experts lane, lane + 32, ... in registers; every
// selection (a group's best choice values, the kept groups, the top-k) is a warp reduction under
// one total order: the larger value, on a tie the lower expert id, as the CPU's scans. One thread
// per token (router_forward_kernel, kept for top-k above 32) ran its scans serially over local
// memory with a quarter of an H200's multiprocessors busy at 4,096 tokens: 2.32 ms of the small
// config's training step, now under 1.3 (routing 12.7 -> 11.1 ms, docs/benchmarks.md). Sums keep
// the CPU's order: a group's values best first, the gates by increasing expert id.
constexpr int warp_max_topk = 32;
constexpr int warps_per_block = 4;

struct ranked {
  float value;
  int expert;  // -1: none
  float score;
};

__device__ inline bool beats(const ranked& a, const ranked& b) {
  if (a.expert < 0) return false;
  if (b.expert < 0) return true;
  if (a.value > b.value) return true;
  if (a.value < b.value) return false;
  if (a.value == b.value) return a.expert < b.expert;
  const bool a_nan = isnan(a.value), b_nan = isnan(b.value);
  if (a_nan != b_nan) return b_nan;
  return a.expert < b.expert;
}

__device__ inline ranked warp_best(ranked mine) {
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) {
    ranked other{__shfl_xor_sync(0xffffffffu, mine.value, offset),
                 __shfl_xor_sync(0xffffffffu, mine.expert, offset),
                 __shfl_xor_sync(0xffffffffu, mine.score, offset)};
    if (beats(other, mine)) mine = other;
  }
  return mine;
}

/// The best of this warp's experts in slots `eligible(j)` and not yet `taken` (this lane's bits),
/// which it then marks taken.
template <int Slots, class Eligible>
__device__ inline ranked take_best(const float (&choice)[Slots], const float (&score)[Slots],
                                   unsigned& taken, Eligible eligible) {
  const int lane = static_cast<int>(threadIdx.x) % 32;
  ranked mine{0.0f, -1, 0.0f};
#pragma unroll
  for (int j = 0; j < Slots; ++j) {
    const ranked candidate{choice[j], eligible(j) && !(taken >> j & 1u) ? lane + 32 * j : -1,
                           score[j]};
    if (beats(candidate, mine)) mine = candidate;
  }
  const ranked best = warp_best(mine);
  if (best.expert >= 0 && best.expert % 32 == lane) taken |= 1u << (best.expert / 32);
  return best;
}

template <int Slots>  // experts per lane: ceil(experts / 32) rounded up to a power of two
__global__ void __launch_bounds__(32 * warps_per_block)
    router_forward_warp_kernel(router_shape r, const float* logits, const float* bias,
                               float* scores, std::int32_t* selected, float* gates,
                               std::int64_t tokens) {
  __shared__ float group_score[warps_per_block][max_groups];
  __shared__ int sorted_expert[warps_per_block][warp_max_topk];
  __shared__ float sorted_score[warps_per_block][warp_max_topk];
  const int warp = static_cast<int>(threadIdx.x) / 32, lane = static_cast<int>(threadIdx.x) % 32;
  const std::int64_t t = static_cast<std::int64_t>(blockIdx.x) * warps_per_block + warp;
  if (t >= tokens) return;  // the whole warp
  const int experts = static_cast<int>(r.experts);
  const int per_group = static_cast<int>(r.experts / r.groups);
  const float* l = logits + t * r.experts;
  float* s_out = scores + t * r.experts;
  float s[Slots], choice[Slots];
  int group[Slots];
#pragma unroll
  for (int j = 0; j < Slots; ++j) {
    const int e = lane + 32 * j;
    s[j] = 0.0f;
    choice[j] = -INFINITY;
    group[j] = -1;  // a slot past the experts: never eligible
    if (e < experts) {
      s[j] = 1.0f / (1.0f + expf(-l[e]));
      s_out[e] = s[j];
      choice[j] = s[j] + (bias != nullptr ? bias[e] : 0.0f);
      group[j] = r.group_of != nullptr ? r.group_of[e] : e / per_group;
    }
  }
  // A group's score: its group_top best choice values, summed best first.
  for (int g = 0; g < static_cast<int>(r.groups); ++g) {
    unsigned taken = 0;
    float sum = 0.0f;
    for (int i = 0; i < static_cast<int>(r.group_top); ++i) {
      const ranked best = take_best(choice, s, taken, [&](int j) { return group[j] == g; });
      const float value = best.expert < 0 ? -INFINITY : best.value;
      sum = i == 0 ? value : sum + value;
    }
    if (lane == 0) group_score[warp][g] = sum;
  }
  __syncwarp();
  std::uint64_t kept = 0;
  for (int i = 0; i < static_cast<int>(r.topk_groups); ++i) {
    int best = -1;
    for (int g = 0; g < static_cast<int>(r.groups); ++g)
      if (!(kept >> g & 1u) && (best < 0 || group_score[warp][g] > group_score[warp][best]))
        best = g;
    kept |= std::uint64_t{1} << best;
  }
#pragma unroll
  for (int j = 0; j < Slots; ++j)
    if (group[j] >= 0 && !(kept >> group[j] & 1u)) choice[j] = -INFINITY;
  // The top-k: round k's winner is lane k's; then each finds its rank by expert id.
  unsigned taken = 0;
  int my_expert = -1;
  float my_score = 0.0f;
  for (int k = 0; k < static_cast<int>(r.topk); ++k) {
    const ranked best = take_best(choice, s, taken, [&](int j) { return group[j] >= 0; });
    if (lane == k) {
      my_expert = best.expert;
      my_score = best.score;
    }
  }
  int rank = 0;
  for (int k = 0; k < static_cast<int>(r.topk); ++k)
    rank += __shfl_sync(0xffffffffu, my_expert, k) < my_expert;
  if (lane < r.topk) {
    sorted_expert[warp][rank] = my_expert;
    sorted_score[warp][rank] = my_score;
  }
  __syncwarp();
  float sum = 0.0f;
  for (int k = 0; k < static_cast<int>(r.topk); ++k) sum += sorted_score[warp][k];
  const float factor = r.normalize ? r.scaling / (sum + 1e-20f) : r.scaling;
  if (lane < r.topk) {
    selected[t * r.topk + lane] = static_cast<std::int32_t>(sorted_expert[warp][lane]);
    gates[t * r.topk + lane] = sorted_score[warp][lane] * factor;
  }
}

__global__ void router_backward_kernel(router_shape r, const float* scores,
                                       const std::int32_t* selected, const float* d_gates,
                                       float* d_logits, std::int64_t tokens) {
  const std::int64_t t = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x;
  if (t >= tokens) return;
  const float* s = scores + t * r.experts;
  const std::int32_t* chosen = selected + t * r.topk;
  const float* dg = d_gates + t * r.topk;
  float* dl = d_logits + t * r.experts;
  float z = 1e-20f, dot = 0.0f;
  for (std::int64_t k = 0; k < r.topk; ++k) {
    z += s[chosen[k]];
    dot += dg[k] * s[chosen[k]];
  }
  for (std::int64_t k = 0; k < r.topk; ++k) {
    const float sk = s[chosen[k]];
    const float d_score = r.normalize ? r.scaling * (dg[k] / z - dot / (z * z)) : r.scaling * dg[k];
    dl[chosen[k]] += d_score * sk * (1.0f - sk);
  }
}

// z[t] = sum_e scores[t, e] (float64), one warp per token.
__global__ void row_sums_kernel(const float* scores, std::int64_t experts, std::int64_t tokens,
                                double* z) {
  const std::int64_t t = blockIdx.x * static_cast<std::int64_t>(blockDim.x / 32) + threadIdx.x / 32;
  if (t >= tokens) return;
  double sum = 0.0;
  for (std::int64_t e = threadIdx.x % 32; e < experts; e += 32)
    sum += static_cast<double>(scores[t * experts + e]);
  sum = warp_sum(sum);
  if (threadIdx.x % 32 == 0) z[t] = sum;
}

// NOTES: P_e = sum_t s[t, e] / z[t] runs over a sequence's tokens; one thread per expert walking
// the whole sequence left the GPU nearly idle (a block per sequence, E threads busy). Blocks of
// `balance_chunk` tokens write partial sums that the per-sequence kernel adds in chunk order, so
// the result does not depend on scheduling.
constexpr std::int64_t balance_chunk = 64;

__host__ __device__ inline std::int64_t balance_chunks(std::int64_t length) {
  return (length + balance_chunk - 1) / balance_chunk;
}

// One block per (sequence, chunk of tokens): partial[b, c, e] = sum_t s[t, e] / z[t].
__global__ void balance_partial_kernel(router_shape r, const float* scores, std::int64_t length,
                                       const double* z, double* partial) {
  const std::int64_t b = blockIdx.y, c = blockIdx.x;
  const std::int64_t first = c * balance_chunk, last = min(first + balance_chunk, length);
  for (std::int64_t e = threadIdx.x; e < r.experts; e += blockDim.x) {
    double p = 0.0;
    for (std::int64_t t = first; t < last; ++t)
      p += static_cast<double>(scores[(b * length + t) * r.experts + e]) / z[b * length + t];
    partial[(b * gridDim.x + c) * r.experts + e] = p;
  }
}

// One block per sequence: f[b, e] = E/(K*length) * tokens routed to e, and
// per_sequence[b] = sum_e f_e * P_e / length with P_e the sum of its chunks' partial sums.
__global__ void balance_fractions_kernel(router_shape r, const std::int32_t* selected,
                                         std::int64_t length, const double* partial, double* f,
                                         double* per_sequence) {
  __shared__ int counts[max_router_experts];
  __shared__ double shared[32];
  const std::int64_t b = blockIdx.x, chunks = balance_chunks(length);
  for (std::int64_t e = threadIdx.x; e < r.experts; e += blockDim.x) counts[e] = 0;
  __syncthreads();
  const std::int32_t* chosen = selected + b * length * r.topk;
  for (std::int64_t i = threadIdx.x; i < length * r.topk; i += blockDim.x)
    atomicAdd(&counts[chosen[i]], 1);
  __syncthreads();
  const double factor =
      static_cast<double>(r.experts) / (static_cast<double>(r.topk) * static_cast<double>(length));
  double loss = 0.0;
  for (std::int64_t e = threadIdx.x; e < r.experts; e += blockDim.x) {
    const double fe = factor * counts[e];
    f[b * r.experts + e] = fe;
    double p = 0.0;
    for (std::int64_t c = 0; c < chunks; ++c) p += partial[(b * chunks + c) * r.experts + e];
    loss += fe * p / static_cast<double>(length);
  }
  loss = block_sum(loss, shared);
  if (threadIdx.x == 0) per_sequence[b] = loss;
}

__global__ void balance_total_kernel(const double* per_sequence, std::int64_t sequences,
                                     double alpha, float* loss) {
  double total = 0.0;
  for (std::int64_t b = 0; b < sequences; ++b) total += alpha * per_sequence[b];
  *loss = static_cast<float>(sequences > 0 ? total / static_cast<double>(sequences) : 0.0);
}

// One warp per token: ds_j = c * (f_j - sum_i f_i s_i / z) / z, then through the sigmoid.
__global__ void balance_backward_kernel(router_shape r, const float* scores, std::int64_t tokens,
                                        std::int64_t length, const double* f, const double* z,
                                        double c, float* d_logits) {
  const std::int64_t t = blockIdx.x * static_cast<std::int64_t>(blockDim.x / 32) + threadIdx.x / 32;
  if (t >= tokens) return;
  const int lane = threadIdx.x % 32;
  const double* fb = f + (t / length) * r.experts;
  const float* s = scores + t * r.experts;
  double weighted = 0.0;
  for (std::int64_t e = lane; e < r.experts; e += 32) weighted += fb[e] * static_cast<double>(s[e]);
  weighted = warp_sum(weighted);
  const double zt = z[t];
  float* dl = d_logits + t * r.experts;
  for (std::int64_t e = lane; e < r.experts; e += 32) {
    const double ds = c * (fb[e] - weighted / zt) / zt;
    dl[e] += static_cast<float>(ds) * s[e] * (1.0f - s[e]);
  }
}

__global__ void count_kernel(const std::int32_t* selected, std::int64_t pairs,
                             std::int64_t* counts) {
  const std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x;
  if (i < pairs) atomicAdd(reinterpret_cast<unsigned long long*>(counts + selected[i]), 1ull);
}

void check_shape(const router_shape& r, const char* kernel) {
  require(r.experts > 0 && r.experts <= max_router_experts, kernel,
          "the number of routed experts must be in [1, 512]");
  require(r.groups > 0 && r.groups <= max_groups &&
              (r.group_of != nullptr || r.experts % r.groups == 0),
          kernel, "the expert groups must divide the experts (at most 64 groups)");
  require(r.topk_groups > 0 && r.topk_groups <= r.groups, kernel, "topk_groups out of range");
  require(r.group_top > 0 && r.group_top <= max_group_top, kernel, "group_top out of range");
  require(r.topk > 0 && (r.group_of != nullptr || r.topk <= r.topk_groups * (r.experts / r.groups)),
          kernel, "top-k larger than the experts of the kept groups");
}

struct balance_scratch {
  double *z, *f, *per_sequence, *partial;
};

balance_scratch carve(void* scratch, std::int64_t sequences, std::int64_t length,
                      std::int64_t experts) {
  auto* base = static_cast<double*>(scratch);
  double* f = base + sequences * length;
  double* per_sequence = f + sequences * experts;
  return {base, f, per_sequence, per_sequence + sequences};
}

/// z, then f and the loss per sequence (the forward and the backward both need them).
void balance_fractions(const router_shape& shape, const float* scores, const std::int32_t* selected,
                       std::int64_t sequences, std::int64_t length, const balance_scratch& s,
                       cudaStream_t stream) {
  const std::int64_t tokens = sequences * length;
  row_sums_kernel<<<blocks_for(tokens, 8), 256, 0, stream>>>(scores, shape.experts, tokens, s.z);
  TROUPE_CUDA_LAUNCHED();
  balance_partial_kernel<<<dim3(static_cast<unsigned>(balance_chunks(length)),
                                static_cast<unsigned>(sequences)),
                           128, 0, stream>>>(shape, scores, length, s.z, s.partial);
  TROUPE_CUDA_LAUNCHED();
  balance_fractions_kernel<<<static_cast<unsigned>(sequences), 256, 0, stream>>>(
      shape, selected, length, s.partial, s.f, s.per_sequence);
  TROUPE_CUDA_LAUNCHED();
}

}  // namespace

void router_forward(const router_shape& shape, const float* logits, const float* bias,
                    float* scores, std::int32_t* selected, float* gates, std::int64_t tokens,
                    void* stream) {
  check_shape(shape, "router_forward");
  if (tokens == 0) return;
  const auto warp_kernel = [&](auto kernel) {
    kernel<<<blocks_for(tokens, warps_per_block), 32 * warps_per_block, 0, as_stream(stream)>>>(
        shape, logits, bias, scores, selected, gates, tokens);
  };
  static_assert(max_router_experts == 16 * 32);
  if (shape.topk > warp_max_topk)
    router_forward_kernel<<<blocks_for(tokens, threads), threads, 0, as_stream(stream)>>>(
        shape, logits, bias, scores, selected, gates, tokens);
  else if (shape.experts <= 64)
    warp_kernel(router_forward_warp_kernel<2>);
  else if (shape.experts <= 128)
    warp_kernel(router_forward_warp_kernel<4>);
  else if (shape.experts <= 256)
    warp_kernel(router_forward_warp_kernel<8>);
  else
    warp_kernel(router_forward_warp_kernel<16>);
  TROUPE_CUDA_LAUNCHED();
}

void router_backward(const router_shape& shape, const float* scores, const std::int32_t* selected,
                     const float* d_gates, float* d_logits, std::int64_t tokens, void* stream) {
  check_shape(shape, "router_backward");
  if (tokens == 0) return;
  router_backward_kernel<<<blocks_for(tokens, threads), threads, 0, as_stream(stream)>>>(
      shape, scores, selected, d_gates, d_logits, tokens);
  TROUPE_CUDA_LAUNCHED();
}

std::size_t balance_loss_scratch_bytes(std::int64_t sequences, std::int64_t length,
                                       std::int64_t experts) {
  return static_cast<std::size_t>(sequences * length + sequences * experts + sequences +
                                  sequences * balance_chunks(length) * experts) *
         sizeof(double);
}

void balance_loss_forward(const router_shape& shape, const float* scores,
                          const std::int32_t* selected, std::int64_t sequences, std::int64_t length,
                          double alpha, float* loss, void* scratch, std::size_t scratch_bytes,
                          void* stream) {
  check_shape(shape, "balance_loss_forward");
  require(scratch_bytes >= balance_loss_scratch_bytes(sequences, length, shape.experts),
          "balance_loss_forward", "scratch smaller than balance_loss_scratch_bytes");
  const balance_scratch s = carve(scratch, sequences, length, shape.experts);
  const std::int64_t tokens = sequences * length;
  if (tokens > 0)
    balance_fractions(shape, scores, selected, sequences, length, s, as_stream(stream));
  balance_total_kernel<<<1, 1, 0, as_stream(stream)>>>(s.per_sequence, tokens > 0 ? sequences : 0,
                                                       alpha, loss);
  TROUPE_CUDA_LAUNCHED();
}

void balance_loss_backward(const router_shape& shape, const float* scores,
                           const std::int32_t* selected, std::int64_t sequences,
                           std::int64_t length, double alpha, float d_loss, float* d_logits,
                           void* scratch, std::size_t scratch_bytes, void* stream) {
  check_shape(shape, "balance_loss_backward");
  require(scratch_bytes >= balance_loss_scratch_bytes(sequences, length, shape.experts),
          "balance_loss_backward", "scratch smaller than balance_loss_scratch_bytes");
  const std::int64_t tokens = sequences * length;
  if (tokens == 0) return;
  const balance_scratch s = carve(scratch, sequences, length, shape.experts);
  balance_fractions(shape, scores, selected, sequences, length, s, as_stream(stream));
  const double c = static_cast<double>(d_loss) * alpha /
                   (static_cast<double>(length) * static_cast<double>(sequences));
  balance_backward_kernel<<<blocks_for(tokens, 8), 256, 0, as_stream(stream)>>>(
      shape, scores, tokens, length, s.f, s.z, c, d_logits);
  TROUPE_CUDA_LAUNCHED();
}

void count_selections(const std::int32_t* selected, std::int64_t pairs, std::int64_t* counts,
                      void* stream) {
  if (pairs == 0) return;
  count_kernel<<<blocks_for(pairs, 256), 256, 0, as_stream(stream)>>>(selected, pairs, counts);
  TROUPE_CUDA_LAUNCHED();
}

}  // namespace troupe::kernels::cuda
