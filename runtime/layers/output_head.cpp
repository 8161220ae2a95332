#include "runtime/layers/output_head.hpp"

#include "kernels/cpu/cross_entropy.hpp"
#include "kernels/cpu/gemm.hpp"

namespace troupe {

head_loss output_head_forward(const exec_context& context, const float* x, const float* weight,
                              float* logits, const std::int32_t* targets, std::int64_t rows,
                              std::int64_t width, std::int64_t vocab) {
  kernels::cpu::sgemm_on_pool(context.abi()->pool,
                              {false, true, rows, vocab, width, width, width, vocab}, 1.0f, x,
                              weight, 0.0f, logits);
  head_loss loss;
  if (targets == nullptr) return loss;
  loss.sum =
      kernels::cpu::cross_entropy_forward(logits, targets, rows, vocab, nullptr, &loss.labelled);
  return loss;
}

void output_head_backward(const exec_context& context, const float* x, const float* weight,
                          const float* logits, const std::int32_t* targets, float scale, float* dx,
                          float* dweight, std::int64_t rows, std::int64_t width,
                          std::int64_t vocab) {
  std::vector<float> dlogits(static_cast<std::size_t>(rows * vocab));
  context.pool().parallel_for(rows, 8, [&](std::int64_t begin, std::int64_t end) {
    kernels::cpu::cross_entropy_backward(logits + begin * vocab, targets + begin, end - begin,
                                         vocab, scale, dlogits.data() + begin * vocab);
  });
  const auto* pool = context.abi()->pool;
  kernels::cpu::sgemm_on_pool(pool, {false, false, rows, width, vocab, vocab, width, width}, 1.0f,
                              dlogits.data(), weight, 1.0f, dx);
  if (dweight != nullptr)
    kernels::cpu::sgemm_on_pool(pool, {true, false, vocab, width, rows, vocab, width, width}, 1.0f,
                                dlogits.data(), x, 1.0f, dweight);
}

}  // namespace troupe
