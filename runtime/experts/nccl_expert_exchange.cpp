#include "runtime/experts/nccl_expert_exchange.hpp"

#include <algorithm>
#include <numeric>
#include <vector>

#include "kernels/cuda/convert.hpp"
#include "kernels/cuda/fp8_quantize.hpp"
#include "kernels/cuda/row_exchange.hpp"
#include "runtime/core/error.hpp"
#include "runtime/device/cuda.hpp"
#include "runtime/device/stream.hpp"

namespace troupe {

namespace {

constexpr std::int64_t fp8_tile = 128;

std::int64_t total(std::span<const std::int64_t> rows) {
  return std::accumulate(rows.begin(), rows.end(), std::int64_t{0});
}

/// An index list on the GPU (null tensor for the empty list: the identity).
tensor upload(std::span<const std::int64_t> values, int ordinal) {
  if (values.empty()) return {};
  tensor host = tensor::empty(dtype::i64, {static_cast<std::int64_t>(values.size())});
  std::copy(values.begin(), values.end(), host.data_as<std::int64_t>());
  return host.to(device::cuda(ordinal));
}

/// `uploaded` when the plan has it on the GPU, else `list` uploaded now (a plan made by hand).
tensor index_of(const tensor& uploaded, std::span<const std::int64_t> list, int ordinal) {
  return uploaded.defined() || list.empty() ? uploaded : upload(list, ordinal);
}

/// Bytes of one row (every dimension after the first).
std::int64_t row_bytes(const tensor& t) {
  auto bytes = static_cast<std::int64_t>(size_of(t.type()));
  for (std::int64_t d = 1; d < t.dim(); ++d) bytes *= t.size(d);
  return bytes;
}

}  // namespace

nccl_expert_exchange::nccl_expert_exchange(nccl_communicator& comm, int ordinal,
                                           expert_rank_layout layout)
    : comm_(comm), ordinal_(ordinal), layout_(std::move(layout)) {
  if (comm_.ranks() != layout_.ranks())
    fail("expert parallelism: the NCCL group has {} ranks, the experts are laid out on {}",
         comm_.ranks(), layout_.ranks());
}

expert_exchange_plan nccl_expert_exchange::plan(std::span<const std::int64_t> counts) {
  const std::int32_t ranks = layout_.ranks();
  const std::int64_t width = layout_.widest();
  tensor mine = tensor::empty(dtype::i64, {ranks, width});
  for (std::int32_t p = 0; p < ranks; ++p) {
    const auto row = layout_.counts_for(p, counts);
    std::copy(row.begin(), row.end(), mine.data_as<std::int64_t>() + p * width);
  }
  cuda::use_device(ordinal_);
  tensor theirs = tensor::empty(dtype::i64, {ranks, width}, device::cuda(ordinal_));
  const std::vector<std::int64_t> one_row(static_cast<std::size_t>(ranks), 1);
  comm_.all_to_all(mine.to(device::cuda(ordinal_)), one_row, theirs, one_row);
  const tensor back = theirs.to(device::cpu());
  std::vector<std::vector<std::int64_t>> received(static_cast<std::size_t>(ranks));
  for (std::int32_t q = 0; q < ranks; ++q)
    received[static_cast<std::size_t>(q)].assign(
        back.data_as<const std::int64_t>() + q * width,
        back.data_as<const std::int64_t>() + (q + 1) * width);
  traffic_.bytes_sent += (ranks - 1) * width * 8;
  traffic_.bytes_received += (ranks - 1) * width * 8;
  expert_exchange_plan plan = plan_exchange(layout_, comm_.rank(), counts, received);
  // The reorderings go to the GPU in one copy (a copy from pageable memory waits for itself).
  std::vector<std::int64_t> all;
  for (const auto* list : {&plan.send_source, &plan.receive_source, &plan.combine_send_source,
                           &plan.combine_receive_source})
    all.insert(all.end(), list->begin(), list->end());
  if (!all.empty()) {
    const tensor uploaded = upload(all, ordinal_);
    std::int64_t at = 0;
    for (auto [list, index] : {std::pair{&plan.send_source, &plan.send_index},
                               {&plan.receive_source, &plan.receive_index},
                               {&plan.combine_send_source, &plan.combine_send_index},
                               {&plan.combine_receive_source, &plan.combine_receive_index}}) {
      const auto n = static_cast<std::int64_t>(list->size());
      if (n > 0) *index = uploaded.narrow(0, at, n);
      at += n;
    }
  }
  return plan;
}

tensor nccl_expert_exchange::dispatch(const expert_exchange_plan& plan, const tensor& rows,
                                      wire_precision wire) {
  const encoded_rows arrived =
      move(rows, wire, plan.send_rows, plan.receive_rows,
           index_of(plan.send_index, plan.send_source, ordinal_), plan.received_rows);
  traffic_.rows_sent += plan.rows_to_others();
  return decode(arrived, index_of(plan.receive_index, plan.receive_source, ordinal_));
}

encoded_rows nccl_expert_exchange::dispatch_encoded(const expert_exchange_plan& plan,
                                                    const tensor& rows, wire_precision wire) {
  encoded_rows arrived =
      move(rows, wire, plan.send_rows, plan.receive_rows,
           index_of(plan.send_index, plan.send_source, ordinal_), plan.received_rows);
  traffic_.rows_sent += plan.rows_to_others();
  if (plan.receive_source.empty() || plan.received_rows == 0) return arrived;
  void* stream = cuda::current_stream(ordinal_);
  const tensor index = index_of(plan.receive_index, plan.receive_source, ordinal_);
  for (tensor* t : {&arrived.values, &arrived.scales}) {
    if (!t->defined()) continue;
    tensor ordered = tensor::empty(t->type(), t->shape(), device::cuda(ordinal_));
    kernels::cuda::gather_rows(t->data(), row_bytes(*t), index.data_as<const std::int64_t>(),
                               plan.received_rows, ordered.data(), stream);
    *t = std::move(ordered);
  }
  return arrived;
}

tensor nccl_expert_exchange::combine(const expert_exchange_plan& plan, const tensor& rows,
                                     wire_precision wire) {
  return decode(
      move(rows, wire, plan.receive_rows, plan.send_rows,
           index_of(plan.combine_send_index, plan.combine_send_source, ordinal_), plan.token_rows),
      index_of(plan.combine_receive_index, plan.combine_receive_source, ordinal_));
}

encoded_rows nccl_expert_exchange::move(const tensor& rows, wire_precision wire,
                                        std::span<const std::int64_t> send_rows,
                                        std::span<const std::int64_t> receive_rows,
                                        const tensor& source, std::int64_t out_rows) {
  const device at = device::cuda(ordinal_);
  const bool half = rows.defined() && rows.type() == dtype::bf16;
  if (!rows.defined() || (rows.type() != dtype::f32 && !half) || rows.dim() != 2 ||
      !rows.is_contiguous() || rows.where() != at || rows.size(1) < 1)
    fail(
        "expert parallelism: rows must be a contiguous f32 or bf16 tensor [rows, hidden] on {}, "
        "got {}",
        to_string(at), rows.defined() ? rows.describe() : "nothing");
  if (half && wire == wire_precision::f32)
    fail("expert parallelism: bf16 rows cannot go in f32 (choose bf16 or fp8)");
  const std::int64_t r = rows.size(0), h = rows.size(1), tiles = (h + fp8_tile - 1) / fp8_tile;
  if (r != total(send_rows))
    fail("expert parallelism: {} rows to send, the plan has {}", r, total(send_rows));
  if (out_rows != total(receive_rows))
    fail("expert parallelism: the plan receives {} rows into {}", total(receive_rows), out_rows);
  cuda::use_device(ordinal_);
  void* stream = cuda::current_stream(ordinal_);

  // Encode in the token side's order.
  std::vector<tensor> outgoing;
  switch (wire) {
    case wire_precision::f32:
      outgoing = {rows};
      break;
    case wire_precision::bf16: {
      if (half) {
        outgoing = {rows};
        break;
      }
      tensor values = tensor::empty(dtype::bf16, {r, h}, at);
      if (r > 0)
        kernels::cuda::f32_to_bf16(rows.data_as<const float>(), values.data_as<std::uint16_t>(),
                                   r * h, stream);
      outgoing = {values};
      break;
    }
    case wire_precision::fp8: {
      tensor codes = tensor::empty(dtype::f8_e4m3, {r, h}, at);
      tensor scales = tensor::empty(dtype::f32, {r, tiles}, at);
      if (r > 0) {
        kernels::cuda::fp8_outputs out;
        out.row_tiles = {codes.data_as<std::uint8_t>(), scales.data_as<float>(), tiles, 1};
        // NOTES: in pieces of 2^22 rows: the cast's grid has a block row per 128 rows, and a
        // grid's y dimension stops at 65535.
        constexpr std::int64_t piece = std::int64_t{1} << 22;
        for (std::int64_t first = 0; first < r; first += piece) {
          const std::int64_t n = std::min(piece, r - first);
          kernels::cuda::fp8_outputs part = out;
          part.row_tiles.codes += first * h;
          part.row_tiles.scale += first * tiles;
          if (half)
            kernels::cuda::fp8_quantize(rows.data_as<const std::uint16_t>() + first * h, h, n, h,
                                        part, stream);
          else
            kernels::cuda::fp8_quantize(rows.data_as<const float>() + first * h, h, n, h, part,
                                        stream);
        }
      }
      outgoing = {codes, scales};
      break;
    }
  }
  // Peer by peer.
  if (source.defined() && r > 0) {
    for (tensor& t : outgoing) {
      tensor ordered = tensor::empty(t.type(), t.shape(), at);
      kernels::cuda::gather_rows(t.data(), row_bytes(t), source.data_as<const std::int64_t>(), r,
                                 ordered.data(), stream);
      t = std::move(ordered);
    }
  }
  std::vector<tensor> incoming;
  for (const tensor& t : outgoing) {
    auto shape = t.shape();
    shape[0] = out_rows;
    incoming.push_back(tensor::empty(t.type(), shape, at));
  }
  comm_.all_to_all(outgoing, send_rows, incoming, receive_rows);
  const auto self = static_cast<std::size_t>(comm_.rank());
  for (const tensor& t : outgoing) {
    traffic_.bytes_sent += (r - send_rows[self]) * row_bytes(t);
    traffic_.bytes_received += (out_rows - receive_rows[self]) * row_bytes(t);
  }
  encoded_rows out;
  out.precision = wire;
  out.values = incoming[0];
  if (incoming.size() > 1) out.scales = incoming[1];
  return out;
}

tensor nccl_expert_exchange::decode(const encoded_rows& rows, const tensor& landing) {
  const std::int64_t n = rows.values.size(0), h = rows.values.size(1);
  const device at = device::cuda(ordinal_);
  if (n == 0) return tensor::empty(dtype::f32, {0, h}, at);
  void* stream = cuda::current_stream(ordinal_);
  const auto* order = landing.defined() ? landing.data_as<const std::int64_t>() : nullptr;
  if (rows.precision == wire_precision::f32 && order == nullptr) return rows.values;
  tensor out = tensor::empty(dtype::f32, {n, h}, at);
  switch (rows.precision) {
    case wire_precision::f32:
      kernels::cuda::gather_rows(rows.values.data(), h * 4, order, n, out.data(), stream);
      break;
    case wire_precision::bf16:
      kernels::cuda::decode_bf16_rows(rows.values.data_as<const std::uint16_t>(), h, order, n,
                                      out.data_as<float>(), stream);
      break;
    case wire_precision::fp8:
      kernels::cuda::decode_fp8_rows(rows.values.data_as<const std::uint8_t>(),
                                     rows.scales.data_as<const float>(), h, order, n,
                                     out.data_as<float>(), stream);
      break;
  }
  return out;
}

}  // namespace troupe
