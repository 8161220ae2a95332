#include "runtime/optim/nccl_zero_one.hpp"

#include <algorithm>
#include <cstring>

#include "kernels/cuda/elementwise.hpp"
#include "kernels/cuda/gradient_norm.hpp"
#include "runtime/core/error.hpp"
#include "runtime/device/cuda.hpp"
#include "runtime/device/stream.hpp"
#include "runtime/exec/exec_context.hpp"

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
  return tensor::from_bytes(values.data(), values.size() * sizeof(T), device::cuda(ordinal));
}

}  // namespace

nccl_zero_one::nccl_zero_one(nccl_communicator& comm, int ordinal, parameter_store& store,
                             adamw& optimizer, std::int64_t bucket_elements)
    : comm_(comm), ordinal_(ordinal) {
  const device gpu = device::cuda(ordinal);
  if (store.where() != gpu)
    fail("ZeRO-1 over NCCL: the parameters are on {}, the communicator on cuda:{}",
         to_string(store.where()), ordinal);
  if (bucket_elements < 1) fail("ZeRO-1 over NCCL: buckets of {} elements", bucket_elements);
  const std::int32_t ranks = comm_.ranks(), rank = comm_.rank();
  std::vector<kc::gradient_tensor> norm_table;
  for (parameter* p : store.all()) {
    if (!p->spec.trainable() || !p->grad.defined()) continue;  // what adamw::attach steps
    if (p->value.type() != dtype::f32 || p->grad.type() != dtype::f32 ||
        !p->value.is_contiguous() || !p->grad.is_contiguous())
      fail("ZeRO-1 over NCCL: {} must be a contiguous f32 value with an f32 gradient, got {}",
           p->name, p->value.describe());
    values_.push_back(p->value.data_as<const float>());
    const element_range mine = zero_slice(p->value.numel(), rank, ranks);
    ranges_[p->name] = mine;
    if (mine.size() > 0)
      norm_table.push_back({p->grad.data_as<const float>() + mine.begin, mine.size(), nullptr});
    // Slice 0 is the longest: it fills the buckets, cut where one is full.
    const std::int64_t longest = zero_slice(p->value.numel(), 0, ranks).size();
    for (std::int64_t offset = 0; offset < longest;) {
      if (buckets_.empty() || buckets_.back().filled == bucket_elements) buckets_.emplace_back();
      bucket& b = buckets_.back();
      const std::int64_t take = std::min(bucket_elements - b.filled, longest - offset);
      b.pieces.push_back({p, offset, take});
      b.filled += take;
      offset += take;
    }
  }
  std::int64_t widest = 4;
  for (bucket& b : buckets_) {
    lay_out(b);
    widest = std::max(widest, b.width);
  }
  exchange_ = tensor::zeros(dtype::f32, {ranks * widest}, gpu);
  part_ = tensor::zeros(dtype::f32, {widest}, gpu);
  for (bucket& b : buckets_) build_tables(b);
  norm_count_ = static_cast<std::int64_t>(norm_table.size());
  norm_tensors_ = on_device(norm_table, ordinal);
  optimizer.keep_ranges(ranges_);
}

nccl_zero_one::~nccl_zero_one() {
  try {
    cuda::synchronize(ordinal_);
  } catch (const std::exception&) {
    // a failed device fails the next call anyway
  }
}

void nccl_zero_one::lay_out(bucket& b) const {
  const std::int32_t ranks = comm_.ranks();
  // NOTES: each piece starts in the packed part at the same address modulo 16 bytes as in its
  // parameter (the tensors' memory is 256-byte aligned), so copy_spans moves 16 bytes at a time;
  // that costs at most 3 elements of padding a piece.
  std::vector<std::int64_t> next(static_cast<std::size_t>(ranks), 0);
  for (const piece& pc : b.pieces) {
    auto& places = b.at.emplace_back(static_cast<std::size_t>(ranks), 0);
    for (std::int32_t k = 0; k < ranks; ++k) {
      const element_range slice = zero_slice(pc.param->value.numel(), k, ranks);
      const std::int64_t begin = slice.begin + pc.offset;
      std::int64_t& at = next[static_cast<std::size_t>(k)];
      at += ((begin - at) % 4 + 4) % 4;
      places[static_cast<std::size_t>(k)] = at;
      at += std::max<std::int64_t>(0, std::min(pc.length, slice.size() - pc.offset));
    }
  }
  for (std::int64_t at : next) b.width = std::max(b.width, (at + 3) / 4 * 4);
}

void nccl_zero_one::build_tables(bucket& b) {
  const std::int32_t ranks = comm_.ranks(), rank = comm_.rank();
  std::vector<kc::copy_span> tables[4];
  float* exchange = exchange_.data_as<float>();
  float* part = part_.data_as<float>();
  for (std::size_t i = 0; i < b.pieces.size(); ++i) {
    const piece& pc = b.pieces[i];
    for (std::int32_t k = 0; k < ranks; ++k) {
      const element_range slice = zero_slice(pc.param->value.numel(), k, ranks);
      const std::int64_t count = std::min(pc.length, slice.size() - pc.offset);
      if (count <= 0) continue;
      const std::int64_t begin = slice.begin + pc.offset;
      const std::int64_t at = b.at[i][static_cast<std::size_t>(k)];
      float* packed = exchange + k * b.width + at;
      add_span(tables[pack_gradients], packed, pc.param->grad.data_as<const float>() + begin,
               count);
      add_span(tables[unpack_values], pc.param->value.data_as<float>() + begin, packed, count);
      if (k == rank) {
        add_span(tables[unpack_sums], pc.param->grad.data_as<float>() + begin, part + at, count);
        add_span(tables[pack_values], part + at, pc.param->value.data_as<const float>() + begin,
                 count);
      }
    }
  }
  for (int t = 0; t < 4; ++t) {
    b.spans[t] = static_cast<std::int64_t>(tables[t].size());
    b.tables[t] = on_device(tables[t], ordinal_);
  }
  b.at.clear();
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
    // What layers derived from these values (their BF16 copies) is derived again.
    if (&b == &buckets_.front()) parameters_stepped(values_);
    copy(b, unpack_values, stream);
  }
}

}  // namespace troupe
