// troupe-test-nccl-peer ID_FILE RANKS RANK MODE: one rank of an NCCL group on cuda:RANK for the
// multi-GPU suite. Rank 0 writes the group's unique id to ID_FILE; the others wait for it. Then:
//   ops   an all-reduce (each rank gives rank + 1), an all-to-all of rows (rank r sends p + 1
//         rows of value 100 r + p to rank p) and a ring of send/receive; prints "ok" when every
//         value is right;
//   experts  expert parallelism (nccl_expert_exchange.hpp): 4 x RANKS + 1 experts dealt round
//         robin, uneven counts per rank; FP8 dispatch, each expert scales its rows by its index
//         + 1, BF16 combine; prints "ok" when every rank's experts got exactly the rows the
//         host's codecs predict (from every rank's inputs, regenerated here) and every token
//         row came back with the host's bits;
//   zero  ZeRO-1 over NCCL (nccl_zero_one.hpp) against plain AdamW on the replicas' summed
//         gradients (tests/support/zero_one_scenario.hpp); prints "ok" when they agree;
//   group ID_FILE is a rendezvous port instead: the ranks meet as a troupe job (CAF, UCX) and
//         join two NCCL groups through it (runtime/cluster/nccl_group.hpp), every rank and the
//         even ranks, each id made by the group's first member and fetched by the others; an
//         all-reduce in each; prints "ok" when the sums are right;
//   pipeline  ID_FILE is a rendezvous port: the ranks run 1F1B and (an even number of ranks)
//         DualPipe plans of schedule_plan.hpp over NCCL (nccl_pipeline_links.hpp) with a toy
//         stage per pipeline stage (y = a x + b elementwise, micro-batch m's loss weighted m + 1),
//         activations and gradients crossing as each op needs them; prints "ok" when every
//         micro-batch's gradients of every stage copy equal the ones computed in this process;
//   wait  joins, prints "joined", then waits to be killed (rank 1) or runs all-reduces until one
//         fails (rank 0), printing the failure and the seconds it took.
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <random>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "runtime/actor/actor_runtime.hpp"
#include "runtime/cluster/nccl_group.hpp"
#include "runtime/experts/expert_payload.hpp"
#include "runtime/experts/nccl_expert_exchange.hpp"
#include "runtime/schedule/schedule_plan.hpp"
#include "runtime/stage/nccl_pipeline_links.hpp"
#include "runtime/transport/nccl_communicator.hpp"
#include "tests/support/zero_one_scenario.hpp"

using namespace troupe;
namespace fs = std::filesystem;

namespace {

tensor filled(std::int64_t rows, std::int64_t width, float value, int ordinal) {
  tensor host = tensor::empty(dtype::f32, {rows, width});
  std::fill(host.data_as<float>(), host.data_as<float>() + host.numel(), value);
  return host.to(device::cuda(ordinal));
}

std::vector<float> values_of(const tensor& t) {
  const tensor host = t.to(device::cpu());
  return {host.data_as<const float>(), host.data_as<const float>() + host.numel()};
}

bool run_ops(nccl_communicator& comm, int rank, int ranks) {
  bool ok = true;
  tensor sum = filled(1, 1024, static_cast<float>(rank + 1), rank);
  comm.all_reduce_sum(sum);
  for (float v : values_of(sum)) ok = ok && v == static_cast<float>(ranks * (ranks + 1) / 2);
  const std::int64_t width = 8;
  std::vector<std::int64_t> send(static_cast<std::size_t>(ranks)), receive(send.size());
  std::int64_t total_send = 0, total_receive = 0;
  for (int p = 0; p < ranks; ++p) {
    total_send += send[static_cast<std::size_t>(p)] = p + 1;
    total_receive += receive[static_cast<std::size_t>(p)] = rank + 1;
  }
  tensor host = tensor::empty(dtype::f32, {total_send, width});
  std::int64_t row = 0;
  for (int p = 0; p < ranks; ++p)
    for (std::int64_t i = 0; i < p + 1; ++i, ++row)
      std::fill(host.data_as<float>() + row * width, host.data_as<float>() + (row + 1) * width,
                static_cast<float>(100 * rank + p));
  tensor out = tensor::zeros(dtype::f32, {total_receive, width}, device::cuda(rank));
  comm.all_to_all(host.to(device::cuda(rank)), send, out, receive);
  const auto got = values_of(out);
  for (int p = 0; p < ranks; ++p)
    for (std::int64_t i = 0; i < (rank + 1) * width; ++i)
      ok = ok && got[static_cast<std::size_t>(p * (rank + 1) * width + i)] ==
                     static_cast<float>(100 * p + rank);
  // A ring: even ranks send first, odd ranks receive first.
  tensor mine = filled(1, 16, static_cast<float>(rank), rank);
  tensor theirs = tensor::zeros(dtype::f32, {1, 16}, device::cuda(rank));
  const int next = (rank + 1) % ranks, previous = (rank + ranks - 1) % ranks;
  if (rank % 2 == 0) {
    comm.send(mine, next);
    comm.receive(theirs, previous);
  } else {
    comm.receive(theirs, previous);
    comm.send(mine, next);
  }
  for (float v : values_of(theirs)) ok = ok && v == static_cast<float>(previous);
  return ok;
}

/// Rank `rank`'s rows of every expert for the experts test: counts[e] = (rank + 3e) % 5 rows of
/// expert e, grouped by expert; values from a seed of its own.
std::pair<std::vector<std::int64_t>, tensor> token_rows(int rank, std::int64_t experts,
                                                        std::int64_t width) {
  std::vector<std::int64_t> counts;
  std::int64_t rows = 0;
  for (std::int64_t e = 0; e < experts; ++e) rows += counts.emplace_back((rank + 3 * e) % 5);
  tensor x = tensor::empty(dtype::f32, {rows, width});
  std::mt19937 rng(static_cast<std::uint32_t>(1000 + rank));
  std::normal_distribution<float> normal;
  for (std::int64_t i = 0; i < x.numel(); ++i)
    x.data_as<float>()[i] = normal(rng) * static_cast<float>(1 + i % 7);
  return {counts, x};
}

/// Scales each expert's rows of `rows` (grouped, `counts[j]` rows of `experts[j]`) by expert + 1.
void scale_by_expert(tensor& rows, const std::vector<std::int64_t>& experts,
                     const std::vector<std::int64_t>& counts) {
  float* at = rows.data_as<float>();
  for (std::size_t j = 0; j < experts.size(); ++j)
    for (std::int64_t i = 0; i < counts[j] * rows.size(1); ++i)
      *at++ *= static_cast<float>(experts[j] + 1);
}

bool same_bits(const tensor& a, const tensor& b) {
  return a.shape() == b.shape() && std::memcmp(a.data(), b.data(), a.nbytes()) == 0;
}

bool run_experts(nccl_communicator& comm, int rank, int ranks) {
  const std::int64_t experts = 4 * ranks + 1, width = 300;
  std::vector<std::vector<std::int64_t>> placed(static_cast<std::size_t>(ranks));
  for (std::int64_t e = 0; e < experts; ++e)
    placed[static_cast<std::size_t>(e % ranks)].push_back(e);
  nccl_expert_exchange ep(comm, rank, expert_rank_layout(placed, experts));
  const auto [counts, x] = token_rows(rank, experts, width);
  const auto plan = ep.plan(counts);
  tensor expert_side =
      ep.dispatch(plan, x.to(device::cuda(rank)), wire_precision::fp8).to(device::cpu());
  // What this rank's experts must get: each source's FP8-decoded rows of each, source by source.
  const auto& mine = placed[static_cast<std::size_t>(rank)];
  std::vector<tensor> decoded;
  std::vector<std::vector<std::int64_t>> firsts;
  for (int q = 0; q < ranks; ++q) {
    const auto [c, xq] = token_rows(q, experts, width);
    decoded.push_back(decode_rows(encode_rows(xq, wire_precision::fp8)));
    auto& first = firsts.emplace_back(1, 0);
    for (std::int64_t n : c) first.push_back(first.back() + n);
  }
  std::vector<float> expected;
  for (std::int64_t e : mine)
    for (int q = 0; q < ranks; ++q) {
      const auto& first = firsts[static_cast<std::size_t>(q)];
      const float* from = decoded[static_cast<std::size_t>(q)].data_as<const float>();
      expected.insert(expected.end(), from + first[static_cast<std::size_t>(e)] * width,
                      from + first[static_cast<std::size_t>(e) + 1] * width);
    }
  bool ok = static_cast<std::int64_t>(expected.size()) == expert_side.numel() &&
            std::memcmp(expected.data(), expert_side.data(), expert_side.nbytes()) == 0;
  if (!ok) std::printf("rank %d: the experts got other rows\n", rank);
  // The same rows kept as FP8 codes and scales (the plan serves again: the counts are the same).
  const encoded_rows kept =
      ep.dispatch_encoded(plan, x.to(device::cuda(rank)), wire_precision::fp8);
  encoded_rows kept_host{wire_precision::fp8, kept.values.to(device::cpu()),
                         kept.scales.to(device::cpu())};
  if (!same_bits(decode_rows(kept_host), expert_side)) {
    std::printf("rank %d: the kept FP8 rows decode to other rows\n", rank);
    ok = false;
  }
  scale_by_expert(expert_side, mine, plan.expert_rows);
  const tensor back =
      ep.combine(plan, expert_side.to(device::cuda(rank)), wire_precision::bf16).to(device::cpu());
  std::vector<std::int64_t> all(static_cast<std::size_t>(experts));
  for (std::int64_t e = 0; e < experts; ++e) all[static_cast<std::size_t>(e)] = e;
  tensor reference = decoded[static_cast<std::size_t>(rank)].clone();
  scale_by_expert(reference, all, counts);
  if (!same_bits(back, decode_rows(encode_rows(reference, wire_precision::bf16)))) {
    std::printf("rank %d: the combined rows differ from the host's\n", rank);
    ok = false;
  }
  std::printf("rank %d: %lld rows to other ranks, %lld bytes sent\n", rank,
              static_cast<long long>(ep.sent().rows_sent),
              static_cast<long long>(ep.sent().bytes_sent));
  return ok;
}

// The pipeline test's toy stage s: y = a_s x + b_s elementwise on [4, 64] rows; the loss is the
// sum of the last stage's outputs.
constexpr std::int64_t toy_rows = 4, toy_width = 64;
float toy_a(std::int32_t stage) {
  return 1.0f + 0.25f * static_cast<float>(stage);
}
float toy_b(std::int32_t stage) {
  return 0.1f * static_cast<float>(stage);
}
std::vector<float> toy_input(std::int64_t micro_batch) {
  std::vector<float> x(toy_rows * toy_width);
  for (std::size_t i = 0; i < x.size(); ++i)
    x[i] = static_cast<float>(micro_batch + 1) * 0.01f * static_cast<float>(i % 7);
  return x;
}

/// Micro-batch m's loss is (m + 1) times the sum of the last stage's outputs: every micro-batch's
/// gradients differ, so one that reaches another's op shows.
float toy_loss_weight(std::int64_t m) {
  return static_cast<float>(m + 1);
}

/// d loss / d a_s and d loss / d b_s of micro-batch `m` (the reference, in this process).
std::pair<double, double> toy_gradients(std::int32_t stages, std::int32_t stage, std::int64_t m) {
  std::vector<float> x = toy_input(m);
  for (std::int32_t s = 0; s < stage; ++s)
    for (float& v : x) v = toy_a(s) * v + toy_b(s);
  float dy = toy_loss_weight(m);  // d loss / d y of stage `stage`: times the later a's
  for (std::int32_t s = stage + 1; s < stages; ++s) dy *= toy_a(s);
  double da = 0, db = 0;
  for (float v : x) {
    da += static_cast<double>(dy) * static_cast<double>(v);
    db += static_cast<double>(dy);
  }
  return {da, db};
}

bool run_pipeline(cluster& job, int rank, int ranks, schedule_kind kind) {
  const schedule_plan plan = schedule_plan::build(kind, ranks, 2 * ranks);
  std::vector<int> members(static_cast<std::size_t>(ranks));
  for (int r = 0; r < ranks; ++r) members[static_cast<std::size_t>(r)] = r;
  auto owned = join_pipeline_groups(job, plan, members, rank, std::chrono::seconds(30),
                                    std::string(to_string(kind)));
  std::vector<nccl_communicator*> comms;
  for (auto& c : owned) comms.push_back(c.get());
  nccl_pipeline_links links(plan, rank, comms);
  using key = std::tuple<std::int32_t, std::int32_t, std::int64_t>;  // stage, copy, micro-batch
  std::map<key, std::vector<float>> inputs, output_grads;
  std::map<key, std::pair<double, double>> grads;  // each micro-batch's, to check one by one
  const device gpu = device::cuda(rank);
  auto to_gpu = [&](const std::vector<float>& v) {
    tensor host = tensor::empty(dtype::f32, {toy_rows, toy_width});
    std::copy(v.begin(), v.end(), host.data_as<float>());
    return host.to(gpu);
  };
  auto forward = [&](const stage_work& w) {
    std::vector<float> x;
    if (w.stage == 0) {
      x = toy_input(w.micro_batch);
    } else {
      tensor in = tensor::empty(dtype::f32, {toy_rows, toy_width}, gpu);
      links.receive(nccl_pipeline_links::kind::activations, w, in);
      x = values_of(in);
    }
    inputs[{w.stage, w.copy, w.micro_batch}] = x;
    std::vector<float> y = x;
    for (float& v : y) v = toy_a(w.stage) * v + toy_b(w.stage);
    links.send(nccl_pipeline_links::kind::activations, w, to_gpu(y));
  };
  auto backward_input = [&](const stage_work& w) {
    std::vector<float> dy(toy_rows * toy_width, toy_loss_weight(w.micro_batch));
    if (w.stage + 1 < plan.stages()) {
      tensor in = tensor::empty(dtype::f32, {toy_rows, toy_width}, gpu);
      links.receive(nccl_pipeline_links::kind::gradients, w, in);
      dy = values_of(in);
    }
    output_grads[{w.stage, w.copy, w.micro_batch}] = dy;
    std::vector<float> dx = dy;
    for (float& v : dx) v *= toy_a(w.stage);
    links.send(nccl_pipeline_links::kind::gradients, w, to_gpu(dx));
  };
  auto backward_weight = [&](const stage_work& w) {
    const key k{w.stage, w.copy, w.micro_batch};
    const auto& x = inputs.at(k);
    const auto& dy = output_grads.at(k);
    auto& [da, db] = grads[k];
    for (std::size_t i = 0; i < x.size(); ++i) {
      da += static_cast<double>(dy[i]) * static_cast<double>(x[i]);
      db += static_cast<double>(dy[i]);
    }
  };
  for (const pipeline_op& op : plan.ops(rank)) {
    switch (op.kind) {
      case op_kind::forward:
        forward(op.work);
        break;
      case op_kind::backward:
        backward_input(op.work);
        backward_weight(op.work);
        break;
      case op_kind::backward_input:
        backward_input(op.work);
        break;
      case op_kind::backward_weight:
        backward_weight(op.work);
        break;
      case op_kind::forward_backward:
        forward(op.work);
        backward_input(op.backward_work);
        backward_weight(op.backward_work);
        break;
    }
  }
  links.flush();
  bool ok = true;
  for (const auto& [stage, copy] : plan.chunks(rank))
    for (std::int64_t m = 0; m < plan.micro_batches(); ++m) {
      if (plan.copy_of(m) != copy) continue;
      const auto [da, db] = toy_gradients(plan.stages(), stage, m);
      const auto got = grads[{stage, copy, m}];
      if (std::abs(got.first - da) > 1e-5 * std::abs(da) + 1e-9 ||
          std::abs(got.second - db) > 1e-5 * std::abs(db) + 1e-9) {
        std::printf(
            "rank %d, %s: stage %d copy %d micro-batch %lld: gradients %.9g, %.9g against %.9g, "
            "%.9g\n",
            rank, std::string(to_string(kind)).c_str(), stage, copy, static_cast<long long>(m),
            got.first, got.second, da, db);
        ok = false;
      }
    }
  return ok;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 5) {
    std::fprintf(
        stderr,
        "usage: troupe-test-nccl-peer ID_FILE RANKS RANK ops|experts|zero|group|pipeline|wait\n");
    return 2;
  }
  const fs::path id_file = argv[1];
  const int ranks = std::stoi(argv[2]), rank = std::stoi(argv[3]);
  const std::string mode = argv[4];
  try {
    if (mode == "group" || mode == "pipeline") {
      actor_runtime runtime({1, true});
      cluster_options options;
      options.rank = rank;
      options.world = ranks;
      for (int r = 0; r < ranks; ++r) options.hosts.push_back("gpu" + std::to_string(r));
      options.rendezvous_port = static_cast<std::uint16_t>(std::stoi(argv[1]));
      options.rendezvous_timeout = std::chrono::seconds(60);
      cluster job(runtime, options);
      job.barrier(std::chrono::seconds(60));
      std::vector<int> all, even;
      for (int r = 0; r < ranks; ++r) {
        all.push_back(r);
        if (r % 2 == 0) even.push_back(r);
      }
      // Says how it went, then leaves with the others.
      auto leave = [&](bool ok, const char* otherwise) {
        std::printf("%s\n", ok ? "ok" : otherwise);
        std::fflush(stdout);
        job.barrier(std::chrono::seconds(60));
        if (rank == 0)
          job.finish(0, "");
        else
          job.wait_for_finish();
        return ok ? 0 : 1;
      };
      bool ok = true;
      if (mode == "pipeline") {
        ok = run_pipeline(job, rank, ranks, schedule_kind::one_f_one_b);
        if (ranks % 2 == 0) ok = run_pipeline(job, rank, ranks, schedule_kind::dualpipe) && ok;
        return leave(ok, "wrong gradients");
      }
      auto whole = join_nccl_group(job, "all", all, rank, std::chrono::seconds(30));
      tensor sum = filled(1, 256, static_cast<float>(rank + 1), rank);
      whole->all_reduce_sum(sum);
      for (float v : values_of(sum)) ok = ok && v == static_cast<float>(ranks * (ranks + 1) / 2);
      if (rank % 2 == 0) {
        auto evens = join_nccl_group(job, "even", even, rank, std::chrono::seconds(30));
        tensor count = filled(1, 256, 1.0f, rank);
        evens->all_reduce_sum(count);
        for (float v : values_of(count)) ok = ok && v == static_cast<float>(even.size());
      }
      return leave(ok, "wrong values");
    }
    std::vector<std::uint8_t> id;
    if (rank == 0) {
      id = nccl_communicator::make_id();
      const fs::path partial = id_file.string() + ".partial";
      std::ofstream(partial, std::ios::binary)
          .write(reinterpret_cast<const char*>(id.data()), static_cast<std::streamsize>(id.size()));
      fs::rename(partial, id_file);
    } else {
      for (int i = 0; i < 600 && !fs::exists(id_file); ++i)
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
      std::ifstream in(id_file, std::ios::binary);
      id.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
    }
    nccl_communicator comm(id, ranks, rank, rank, std::chrono::seconds(10));
    if (mode == "zero") {
      const std::string problems = troupe::testing::run_zero_one_scenario(comm, rank, 5000) +
                                   troupe::testing::run_zero_one_scenario(
                                       comm, rank, nccl_zero_one::default_bucket_elements);
      std::printf("%s\n", problems.empty() ? "ok" : problems.c_str());
      return problems.empty() ? 0 : 1;
    }
    if (mode == "ops" || mode == "experts") {
      const bool ok = mode == "ops" ? run_ops(comm, rank, ranks) : run_experts(comm, rank, ranks);
      std::printf("%s\n", ok ? "ok" : "wrong values");
      return ok ? 0 : 1;
    }
    std::printf("joined\n");
    std::fflush(stdout);
    if (rank != 0)
      for (;;) std::this_thread::sleep_for(std::chrono::seconds(1));
    const auto start = std::chrono::steady_clock::now();
    try {
      for (;;) {
        tensor values = filled(1, 1 << 20, 1.0f, rank);
        comm.all_reduce_sum(values);
      }
    } catch (const std::exception& e) {
      const double seconds =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      std::printf("failed after %.2f s: %s\n", seconds, e.what());
      return 3;
    }
  } catch (const std::exception& e) {
    std::printf("error: %s\n", e.what());
    return 1;
  }
}
