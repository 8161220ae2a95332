// The NCCL communicator (runtime/transport/nccl_communicator.hpp) on one GPU: a group of one rank
// runs every operation (sums, scatter, gather, all-to-all with uneven rows, send to itself) with
// the values they must give; a group whose other rank never comes fails within its deadline,
// naming the cause, and leaves no thread inside NCCL. Several GPUs are the multigpu suite's.
#include <gtest/gtest.h>

#include <chrono>
#include <numeric>
#include <vector>

#include "runtime/core/error.hpp"
#include "runtime/transport/nccl_communicator.hpp"
#include "tests/gpu/gpu_skip.hpp"

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

}  // namespace
