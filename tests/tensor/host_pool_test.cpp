// The host memory pool (runtime/tensor/host_pool.hpp): a freed large block serves the next
// allocation that fits (no new pages), small ones go to malloc, the limit bounds what is kept,
// and a step that allocates the same tensors again faults almost no new pages.
#include <sys/resource.h>

#include <gtest/gtest.h>

#include <cstring>
#include <vector>

#include "runtime/tensor/host_pool.hpp"
#include "runtime/tensor/tensor.hpp"

namespace {

using troupe::host_pool;

long minor_faults() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return usage.ru_minflt;
}

TEST(HostPool, AFreedBlockServesTheNextAllocationThatFits) {
  if (!host_pool::pooling()) GTEST_SKIP() << "the pool steps aside under AddressSanitizer";
  host_pool pool(std::size_t{64} << 20);
  void* a = pool.allocate(1 << 20);
  std::memset(a, 1, 1 << 20);
  pool.release(a);
  EXPECT_EQ(pool.stats().kept_bytes, std::size_t{1} << 20);
  EXPECT_EQ(pool.allocate((1 << 20) - 100), a);  // fits, wastes little
  EXPECT_EQ(pool.stats().reused, 1u);
  void* b = pool.allocate(4 << 20);  // nothing kept fits
  EXPECT_NE(b, a);
  EXPECT_EQ(reinterpret_cast<std::uintptr_t>(b) % 256, 0u);
  pool.release(b);
  void* c = pool.allocate(1 << 20);  // the 4 MiB block is far too big for it: a fresh one
  EXPECT_NE(c, b);
  EXPECT_EQ(pool.stats().fresh, 3u);
  pool.release(a);
  pool.release(c);
  void* small = pool.allocate(100);  // malloc's
  pool.release(small);
  EXPECT_EQ(pool.stats().kept_bytes, (std::size_t{6} << 20));
  pool.trim();
  EXPECT_EQ(pool.stats().kept_bytes, 0u);
}

TEST(HostPool, TheLimitBoundsWhatIsKept) {
  if (!host_pool::pooling()) GTEST_SKIP() << "the pool steps aside under AddressSanitizer";
  host_pool pool(std::size_t{3} << 20);
  void* a = pool.allocate(2 << 20);
  void* b = pool.allocate(2 << 20);
  pool.release(a);
  pool.release(b);  // would make 4 MiB kept: goes back to the system
  EXPECT_EQ(pool.stats().kept_bytes, std::size_t{2} << 20);
}

TEST(HostPool, RepeatedStepsOfTensorsFaultAlmostNoNewPages) {
  if (!host_pool::pooling()) GTEST_SKIP() << "the pool steps aside under AddressSanitizer";
  // Ten "steps" of the same 40 tensors of 1 MiB, written whole: the first faults their pages,
  // the later ones reuse them.
  const auto step = [] {
    std::vector<troupe::tensor> live;
    for (int i = 0; i < 40; ++i) {
      live.push_back(troupe::tensor::empty(troupe::dtype::f32, {256 * 1024}));
      std::memset(live.back().data(), 0, 1 << 20);
    }
  };
  step();
  const long before = minor_faults();
  for (int i = 0; i < 10; ++i) step();
  const long faults = minor_faults() - before;
  // 40 MiB a step is 10,240 pages; reused, a handful for the vector and the bookkeeping.
  EXPECT_LT(faults, 500) << faults << " minor faults in 10 steps";
}

}  // namespace
