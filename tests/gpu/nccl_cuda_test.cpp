// The NCCL communicator (runtime/transport/nccl_communicator.hpp) on one GPU: a group of one rank
// runs every operation (sums, scatter, gather, all-to-all with uneven rows, send to itself) with
// the values they must give; a group whose other rank never comes fails within its deadline,
// naming the cause, and leaves no thread inside NCCL. Several GPUs are the multigpu suite's.
#include <gtest/gtest.h>

#include <chrono>
#include <cstring>
#include <numeric>
#include <random>
#include <vector>

#include "runtime/actor/actor_runtime.hpp"
#include "runtime/cluster/nccl_group.hpp"
#include "runtime/core/error.hpp"
#include "runtime/exec/convert.hpp"
#include "runtime/experts/expert_payload.hpp"
#include "runtime/experts/nccl_expert_exchange.hpp"
#include "runtime/transport/nccl_communicator.hpp"
#include "tests/gpu/gpu_skip.hpp"
#include "tests/support/free_port.hpp"
#include "tests/support/zero_one_scenario.hpp"

namespace {

using namespace troupe;

#define SKIP_WITHOUT_NCCL()                                       \
  do {                                                            \
    TROUPE_SKIP_WITHOUT_GPU();                                    \
    std::string why;                                              \
    if (!nccl_communicator::available(&why)) GTEST_SKIP() << why; \
  } while (false)

tensor on_gpu(const std::vector<float>& values) {
  tensor host = tensor::empty(dtype::f32, {static_cast<std::int64_t>(values.size())});
  std::copy(values.begin(), values.end(), host.data_as<float>());
  return host.to(device::cuda(0));
}

std::vector<float> on_host(const tensor& t) {
  const tensor host = t.to(device::cpu());
  return {host.data_as<const float>(), host.data_as<const float>() + host.numel()};
}

TEST(Nccl, OneRankRunsEveryOperation) {
  SKIP_WITHOUT_NCCL();
  const auto id = nccl_communicator::make_id();
  ASSERT_EQ(id.size(), 128u);
  nccl_communicator comm(id, 1, 0, 0, std::chrono::seconds(20));
  EXPECT_EQ(comm.ranks(), 1);
  std::vector<float> values(1000);
  std::iota(values.begin(), values.end(), -3.5f);
  tensor sum = on_gpu(values);
  comm.all_reduce_sum(sum);
  EXPECT_EQ(on_host(sum), values);
  tensor scattered = tensor::empty(dtype::f32, {1000}, device::cuda(0));
  comm.reduce_scatter_sum(on_gpu(values), scattered);
  EXPECT_EQ(on_host(scattered), values);
  tensor gathered = tensor::empty(dtype::f32, {1000}, device::cuda(0));
  comm.all_gather(on_gpu(values), gathered);
  EXPECT_EQ(on_host(gathered), values);
  // All-to-all of 250 rows of 4 to itself (FP8 payloads go the same way, as bytes).
  tensor rows = on_gpu(values).reshape({250, 4});
  tensor received = tensor::zeros(dtype::f32, {300, 4}, device::cuda(0));
  const std::vector<std::int64_t> counts{250};
  comm.all_to_all(rows, counts, received, counts);
  auto got = on_host(received);
  EXPECT_EQ(std::vector<float>(got.begin(), got.begin() + 1000), values);
  // Mismatched shapes are refused before NCCL sees them.
  tensor wrong = tensor::empty(dtype::f32, {999}, device::cuda(0));
  EXPECT_THROW(comm.reduce_scatter_sum(on_gpu(values), wrong), troupe::error);
  tensor on_the_host = tensor::zeros(dtype::f32, {4});
  EXPECT_THROW(comm.all_reduce_sum(on_the_host), troupe::error) << "a host tensor";
  EXPECT_FALSE(comm.aborted());
}

TEST(Nccl, AMissingRankFailsWithinTheDeadline) {
  SKIP_WITHOUT_NCCL();
  // Rank 0 of 2; rank 1 never comes. The join fails after 3 s, names the cause, and returns.
  const auto id = nccl_communicator::make_id();
  const auto start = std::chrono::steady_clock::now();
  try {
    nccl_communicator comm(id, 2, 0, 0, std::chrono::seconds(3));
    ADD_FAILURE() << "a group of 2 formed with one rank";
  } catch (const troupe::error& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("rank 0, cuda:0"), std::string::npos) << what;
    EXPECT_NE(what.find("not done within 3.0 s"), std::string::npos) << what;
    EXPECT_NE(what.find("aborted"), std::string::npos) << what;
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_LT(seconds, 10.0);
  std::cout << "a group missing a rank failed after " << seconds << " s\n";
}

TEST(Nccl, ExpertExchangeOfOneRankKeepsTheWiresBits) {
  SKIP_WITHOUT_NCCL();
  // One rank holds every expert: a dispatch gives each row back as its wire format decodes it on
  // the host (expert_payload.hpp: the same quantizer), and a combine of those rows does the same
  // in BF16. Several GPUs (rows crossing ranks, reordered) are the multigpu suite's.
  nccl_communicator comm(nccl_communicator::make_id(), 1, 0, 0, std::chrono::seconds(20));
  nccl_expert_exchange ep(comm, 0, expert_rank_layout({{0, 1, 2, 3, 4}}, 5));
  const std::vector<std::int64_t> counts{3, 0, 17, 1, 9};
  const std::int64_t rows = 30, width = 300;  // 300: an edge tile of 44 columns
  tensor x = tensor::empty(dtype::f32, {rows, width});
  std::mt19937 rng(3);
  std::normal_distribution<float> normal;
  for (std::int64_t i = 0; i < x.numel(); ++i) x.data_as<float>()[i] = normal(rng) * (1 + i % 5);
  const auto plan = ep.plan(counts);
  EXPECT_EQ(plan.expert_rows, counts);
  EXPECT_EQ(plan.rows_to_others(), 0);
  auto same = [](const tensor& a, const tensor& b) {
    const tensor ha = a.to(device::cpu()), hb = b.to(device::cpu());
    return ha.shape() == hb.shape() && std::memcmp(ha.data(), hb.data(), ha.nbytes()) == 0;
  };
  const tensor dispatched = ep.dispatch(plan, x.to(device::cuda(0)), wire_precision::fp8);
  const tensor fp8_reference = decode_rows(encode_rows(x, wire_precision::fp8));
  EXPECT_TRUE(same(dispatched, fp8_reference)) << "fp8 dispatch";
  const tensor combined = ep.combine(plan, dispatched, wire_precision::bf16);
  EXPECT_TRUE(same(combined, decode_rows(encode_rows(fp8_reference, wire_precision::bf16))))
      << "bf16 combine";
  EXPECT_TRUE(same(ep.dispatch(plan, x.to(device::cuda(0)), wire_precision::f32), x)) << "f32";
  // Kept encoded (what an FP8 GEMM reads): the host's codes and scales; from BF16 rows: the
  // host's quantization of the widened values; a combine from BF16 rows: those rows widened.
  const encoded_rows codes = ep.dispatch_encoded(plan, x.to(device::cuda(0)), wire_precision::fp8);
  const encoded_rows host_codes = encode_rows(x, wire_precision::fp8);
  EXPECT_TRUE(same(codes.values, host_codes.values) && same(codes.scales, host_codes.scales));
  const tensor x16 = convert(x, dtype::bf16);
  EXPECT_TRUE(same(ep.dispatch(plan, x16.to(device::cuda(0)), wire_precision::fp8),
                   decode_rows(encode_rows(convert(x16, dtype::f32), wire_precision::fp8))))
      << "fp8 from bf16 rows";
  EXPECT_TRUE(same(ep.combine(plan, x16.to(device::cuda(0)), wire_precision::bf16),
                   convert(x16, dtype::f32)))
      << "bf16 combine of bf16 rows";
  EXPECT_THROW(ep.combine(plan, x16.to(device::cuda(0)), wire_precision::f32), troupe::error);
  // A row count that does not match the plan is refused before NCCL sees it.
  EXPECT_THROW(ep.dispatch(plan, x.narrow(0, 0, 29).to(device::cuda(0)), wire_precision::fp8),
               troupe::error);
  EXPECT_THROW(nccl_expert_exchange(comm, 0, expert_rank_layout({{0}, {1}}, 2)), troupe::error)
      << "a layout of two ranks on a group of one";
}

TEST(Nccl, AGroupJoinsThroughTheJobsCluster) {
  SKIP_WITHOUT_NCCL();
  // A job of one process: the group's id is made, published and used; several processes (the id
  // fetched over CAF) are the multigpu suite's and the CPU suite's (tests/actor).
  actor_runtime runtime({1, true});
  cluster_options options;
  options.hosts = {"gpu0"};
  options.rendezvous_port = troupe::test::free_tcp_port();
  cluster job(runtime, options);
  auto comm = join_nccl_group(job, "experts", {0}, 0, std::chrono::seconds(20));
  tensor values = on_gpu({1.0f, 2.0f, 3.0f});
  comm->all_reduce_sum(values);
  EXPECT_EQ(on_host(values), (std::vector<float>{1.0f, 2.0f, 3.0f}));
  EXPECT_EQ(job.fetch("nccl-id:experts", 0, std::chrono::seconds(1)).size(), 128u);
  EXPECT_THROW(join_nccl_group(job, "others", {1, 2}, 0, std::chrono::seconds(1)), troupe::error)
      << "rank 0 is not a member";
  EXPECT_THROW(join_nccl_group(job, "experts", {0}, 0, std::chrono::seconds(1)), troupe::error)
      << "a group's name is used once";
}

TEST(Nccl, ZeroOneOfOneReplicaStepsAsPlainAdamw) {
  SKIP_WITHOUT_NCCL();
  // The whole ZeRO-1 path (packing in buckets, reduce-scatter, the norm from the slices, AdamW on
  // the slices, all-gather) with one replica; several replicas are the multigpu suite's.
  nccl_communicator comm(nccl_communicator::make_id(), 1, 0, 0, std::chrono::seconds(20));
  EXPECT_EQ(troupe::testing::run_zero_one_scenario(comm, 0, 5000), "") << "small buckets";
  EXPECT_EQ(troupe::testing::run_zero_one_scenario(comm, 0, nccl_zero_one::default_bucket_elements),
            "")
      << "one bucket";
}

}  // namespace
