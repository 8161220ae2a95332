#include "runtime/optim/nccl_zero_one.hpp"

#include <algorithm>
#include <cstring>

#include "kernels/cuda/elementwise.hpp"
#include "kernels/cuda/gradient_norm.hpp"
#include "runtime/core/error.hpp"
#include "runtime/device/cuda.hpp"
#include "runtime/device/stream.hpp"

namespace troupe {

namespace {

namespace kc = kernels::cuda;

// NOTES: a block moves one span alone, so large slices are cut into spans of 4 MiB: a 400 MB
// embedding's slice then spreads over the GPU's SMs instead of crawling through one.
constexpr std::uint64_t span_bytes = std::uint64_t{4} << 20;

void add_span(std::vector<kc::copy_span>& table, void* to, const void* from, std::int64_t count) {
  const auto bytes = static_cast<std::uint64_t>(count) * sizeof(float);
  for (std::uint64_t done = 0; done < bytes; done += span_bytes)
    table.push_back({static_cast<char*>(to) + done, static_cast<const char*>(from) + done,
                     std::min(span_bytes, bytes - done)});
}

/// A host array copied to the device as bytes.
template <class T>
tensor on_device(const std::vector<T>& values, int ordinal) {
  tensor host = tensor::empty(dtype::u8, {static_cast<std::int64_t>(values.size() * sizeof(T))});
  if (!values.empty()) std::memcpy(host.data(), values.data(), values.size() * sizeof(T));
  return host.to(device::cuda(ordinal));
}

}  // namespace

nccl_zero_one::nccl_zero_one(nccl_communicator& comm, int ordinal, parameter_store& store,
                             adamw& optimizer, std::int64_t bucket_elements)
    : comm_(comm), ordinal_(ordinal) {
  if (store.where() != device::cuda(ordinal))
    fail("ZeRO-1 over NCCL: the parameters are on {}, the communicator on cuda:{}",
         to_string(store.where()), ordinal);
  if (bucket_elements < 1) fail("ZeRO-1 over NCCL: buckets of {} elements", bucket_elements);
  const std::int32_t ranks = comm_.ranks(), rank = comm_.rank();
  std::vector<kc::gradient_tensor> norm_table;
  std::int64_t widest = 1;
  for (parameter* p : store.all()) {
    if (!p->grad.defined()) continue;  // a buffer, not optimised
    const element_range mine = zero_slice(p->value.numel(), rank, ranks);
    ranges_[p->name] = mine;
    if (mine.size() > 0)
      norm_table.push_back({p->grad.data_as<const float>() + mine.begin, mine.size(), nullptr});
    // Slice 0 is the longest: it sets the bucket's width.
    const std::int64_t width = zero_slice(p->value.numel(), 0, ranks).size();
    if (buckets_.empty() || buckets_.back().width + width > bucket_elements)
      buckets_.emplace_back();
    buckets_.back().params.push_back(p);
    buckets_.back().width += width;
    widest = std::max(widest, buckets_.back().width);
  }
  exchange_ = tensor::zeros(dtype::f32, {ranks * widest}, device::cuda(ordinal));
  part_ = tensor::zeros(dtype::f32, {widest}, device::cuda(ordinal));
  for (bucket& b : buckets_) build_tables(b);
  norm_count_ = static_cast<std::int64_t>(norm_table.size());
  norm_tensors_ = on_device(norm_table, ordinal);
  optimizer.keep_ranges(ranges_);
}

void nccl_zero_one::build_tables(bucket& b) {
  const std::int32_t ranks = comm_.ranks(), rank = comm_.rank();
  std::vector<kc::copy_span> tables[4];
  float* exchange = exchange_.data_as<float>();
  float* part = part_.data_as<float>();
  // Replica k's part of the exchange buffer: every parameter's slice k, in parameter order.
  std::vector<std::int64_t> at(static_cast<std::size_t>(ranks), 0);
  for (parameter* p : b.params)
    for (std::int32_t k = 0; k < ranks; ++k) {
      const element_range slice = zero_slice(p->value.numel(), k, ranks);
      std::int64_t& next = at[static_cast<std::size_t>(k)];
      float* packed = exchange + k * b.width + next;
      add_span(tables[pack_gradients], packed, p->grad.data_as<const float>() + slice.begin,
               slice.size());
      add_span(tables[unpack_values], p->value.data_as<float>() + slice.begin, packed,
               slice.size());
      if (k == rank) {
        add_span(tables[unpack_sums], p->grad.data_as<float>() + slice.begin, part + next,
                 slice.size());
        add_span(tables[pack_values], part + next, p->value.data_as<const float>() + slice.begin,
                 slice.size());
      }
      next += slice.size();
    }
  for (int t = 0; t < 4; ++t) {
    b.spans[t] = static_cast<std::int64_t>(tables[t].size());
    b.tables[t] = on_device(tables[t], ordinal_);
  }
}

void nccl_zero_one::copy(const bucket& b, table which, void* stream) {
  kc::copy_spans(static_cast<const kc::copy_span*>(b.tables[which].data()), b.spans[which], stream);
}

double nccl_zero_one::reduce_gradients() {
  cuda::use_device(ordinal_);
  void* stream = cuda::current_stream(ordinal_);
  const std::int64_t ranks = comm_.ranks();
  for (const bucket& b : buckets_) {
    copy(b, pack_gradients, stream);
    tensor part = part_.narrow(0, 0, b.width);
    comm_.reduce_scatter_sum(exchange_.narrow(0, 0, ranks * b.width), part);
    copy(b, unpack_sums, stream);
  }
  // This replica's part of the norm in float64, then every replica's, added in replica order.
  // NOTES: the float64 travels as the 8 bytes of an i64 (NCCL only copies it: an all-gather).
  tensor squares = tensor::zeros(dtype::i64, {1}, device::cuda(ordinal_));
  if (norm_count_ > 0) {
    const std::size_t scratch_bytes = kc::gradient_norm_scratch_bytes(norm_count_);
    tensor scratch = tensor::empty(dtype::u8, {static_cast<std::int64_t>(scratch_bytes)},
                                   device::cuda(ordinal_));
    kc::gradient_norm_squared(static_cast<const kc::gradient_tensor*>(norm_tensors_.data()),
                              norm_count_, reinterpret_cast<double*>(squares.data()),
                              scratch.data(), scratch_bytes, stream);
  }
  tensor every = tensor::empty(dtype::i64, {ranks}, device::cuda(ordinal_));
  comm_.all_gather(squares, every);
  const tensor host = every.to(device::cpu());
  double sum = 0.0;
  for (std::int64_t k = 0; k < ranks; ++k) {
    double part = 0.0;
    std::memcpy(&part, host.data_as<const std::int64_t>() + k, sizeof part);
    sum += part;
  }
  return sum;
}

void nccl_zero_one::gather_values() {
  cuda::use_device(ordinal_);
  void* stream = cuda::current_stream(ordinal_);
  const std::int64_t ranks = comm_.ranks();
  for (const bucket& b : buckets_) {
    copy(b, pack_values, stream);
    tensor gathered = exchange_.narrow(0, 0, ranks * b.width);
    comm_.all_gather(part_.narrow(0, 0, b.width), gathered);
    copy(b, unpack_values, stream);
  }
}

}  // namespace troupe
