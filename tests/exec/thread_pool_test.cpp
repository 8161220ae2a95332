#include <gtest/gtest.h>

#include <atomic>
#include <stdexcept>
#include <thread>
#include <vector>

#include "runtime/exec/thread_pool.hpp"

namespace {

TEST(ThreadPool, CoversTheRangeExactlyOnce) {
  troupe::thread_pool pool(3);
  EXPECT_EQ(pool.size(), 3);
  for (std::int64_t count : {0, 1, 7, 1000, 100003}) {
    std::vector<std::atomic<int>> hits(static_cast<std::size_t>(count));
    pool.parallel_for(count, 3, [&](std::int64_t begin, std::int64_t end) {
      EXPECT_LE(begin, end);
      for (std::int64_t i = begin; i < end; ++i) hits[static_cast<std::size_t>(i)]++;
    });
    for (const auto& h : hits) ASSERT_EQ(h.load(), 1);
  }
}

TEST(ThreadPool, RespectsTheMinimumChunk) {
  troupe::thread_pool pool(4);
  std::atomic<int> small_chunks{0};
  pool.parallel_for(1000, 300, [&](std::int64_t begin, std::int64_t end) {
    if (end - begin < 300 && end != 1000) ++small_chunks;
  });
  EXPECT_EQ(small_chunks.load(), 0);
}

TEST(ThreadPool, NestedAndConcurrentCallsComplete) {
  troupe::thread_pool pool(2);
  std::atomic<std::int64_t> total{0};
  auto nested = [&] {
    pool.parallel_for(8, 1, [&](std::int64_t begin, std::int64_t end) {
      for (std::int64_t i = begin; i < end; ++i)
        pool.parallel_for(100, 1, [&](std::int64_t b, std::int64_t e) { total += e - b; });
    });
  };
  std::thread a(nested), b(nested);
  nested();
  a.join();
  b.join();
  EXPECT_EQ(total.load(), 3 * 8 * 100);
}

TEST(ThreadPool, AnExceptionInAChunkReachesTheCaller) {
  troupe::thread_pool pool(2);
  EXPECT_THROW(pool.parallel_for(100, 1,
                                 [](std::int64_t begin, std::int64_t) {
                                   if (begin == 0) throw std::runtime_error("chunk failed");
                                 }),
               std::runtime_error);
  std::atomic<int> after{0};
  pool.parallel_for(10, 1,
                    [&](std::int64_t b, std::int64_t e) { after += static_cast<int>(e - b); });
  EXPECT_EQ(after.load(), 10);
}

TEST(ThreadPool, TheAbiViewRunsCFunctionPointers) {
  troupe::thread_pool pool(2);
  const troupe_thread_pool* abi = pool.abi();
  EXPECT_EQ(abi->num_threads, 2);
  std::atomic<std::int64_t> sum{0};
  abi->parallel_for(
      abi->self, 50, 1,
      [](void* arg, std::int64_t begin, std::int64_t end) {
        auto* s = static_cast<std::atomic<std::int64_t>*>(arg);
        for (std::int64_t i = begin; i < end; ++i) *s += i;
      },
      &sum);
  EXPECT_EQ(sum.load(), 49 * 50 / 2);
}

}  // namespace
