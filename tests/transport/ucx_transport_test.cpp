// The UCX transport between two workers on the loopback: tensors from 1 byte to 64 MiB arrive
// intact (checksums), in any order of send and expect, eager and rendezvous alike.

#include <gtest/gtest.h>

#include <chrono>
#include <cstdint>
#include <cstring>
#include <future>
#include <random>
#include <thread>

#include "runtime/transport/ucx_transport.hpp"

namespace troupe {
namespace {

std::uint64_t checksum(const tensor& t) {
  // FNV-1a over the bytes.
  std::uint64_t h = 1469598103934665603ull;
  const auto* p = static_cast<const unsigned char*>(t.data());
  for (std::size_t i = 0; i < t.nbytes(); ++i) h = (h ^ p[i]) * 1099511628211ull;
  return h;
}

tensor random_bytes(std::size_t bytes, std::uint64_t seed) {
  tensor t = tensor::empty(dtype::u8, {static_cast<std::int64_t>(bytes)});
  std::mt19937_64 rng(seed);
  auto* p = static_cast<std::uint8_t*>(t.data());
  std::size_t i = 0;
  for (; i + 8 <= bytes; i += 8) {
    const std::uint64_t v = rng();
    std::memcpy(p + i, &v, 8);
  }
  for (; i < bytes; ++i) p[i] = static_cast<std::uint8_t>(rng());
  return t;
}

/// Two transports (ranks 0 and 1) connected both ways, each with its progress loop running.
struct transport_pair {
  ucx_transport a{0}, b{1};
  std::thread loop_a{[this] { a.run(); }}, loop_b{[this] { b.run(); }};
  transport_pair() {
    a.connect(1, b.address());
    b.connect(0, a.address());
  }
  ~transport_pair() {
    a.close();
    b.close();
    loop_a.join();
    loop_b.join();
  }
};

tensor wait_for(ucx_transport& receiver, int from, std::uint64_t tag) {
  auto promise = std::make_shared<std::promise<tensor>>();
  auto future = promise->get_future();
  receiver.expect(from, tag, [promise](tensor t) { promise->set_value(std::move(t)); });
  if (future.wait_for(std::chrono::seconds(30)) != std::future_status::ready)
    throw std::runtime_error("timed out waiting for a tensor");
  return future.get();
}

TEST(UcxTransport, SizesFromOneByteTo64MiBArriveIntact) {
  transport_pair pair;
  std::vector<std::size_t> sizes{1,     7,      64,      1000,          4096,     8191,
                                 65536, 100000, 1 << 20, (1 << 20) + 3, 16 << 20, 64 << 20};
  for (std::size_t i = 0; i < sizes.size(); ++i) {
    const tensor sent = random_bytes(sizes[i], i);
    const std::uint64_t expected = checksum(sent);
    std::promise<std::string> done;
    pair.a.send(1, 100 + i, sent, [&](const std::string& failure) { done.set_value(failure); });
    const tensor got = wait_for(pair.b, 0, 100 + i);
    EXPECT_EQ(done.get_future().get(), "") << sizes[i] << " bytes";
    ASSERT_EQ(got.nbytes(), sizes[i]);
    EXPECT_EQ(checksum(got), expected) << sizes[i] << " bytes";
  }
}

TEST(UcxTransport, ShapeAndDtypeTravelWithTheBytes) {
  transport_pair pair;
  tensor sent = tensor::empty(dtype::f32, {3, 5, 7});
  for (std::int64_t i = 0; i < sent.numel(); ++i)
    sent.data_as<float>()[i] = static_cast<float>(i) * 0.5f;
  pair.b.send(0, 9, sent);  // the other direction
  const tensor got = wait_for(pair.a, 1, 9);
  EXPECT_EQ(got.type(), dtype::f32);
  EXPECT_EQ(got.shape(), (std::vector<std::int64_t>{3, 5, 7}));
  EXPECT_EQ(checksum(got), checksum(sent));
}

TEST(UcxTransport, ManyInFlightMatchTheirTagsWhateverTheOrder) {
  transport_pair pair;
  std::vector<tensor> sent;
  for (int i = 0; i < 32; ++i)
    sent.push_back(random_bytes(static_cast<std::size_t>(i) * 40000 + 1, 1000 + i));
  for (int i = 0; i < 32; ++i)
    pair.a.send(1, static_cast<std::uint64_t>(i), sent[static_cast<std::size_t>(i)]);
  // Expect in reverse order: some tensors are already there, others still travel.
  for (int i = 31; i >= 0; --i) {
    const tensor got = wait_for(pair.b, 0, static_cast<std::uint64_t>(i));
    EXPECT_EQ(checksum(got), checksum(sent[static_cast<std::size_t>(i)])) << "tag " << i;
  }
  EXPECT_EQ(pair.a.sent_count(), 32u);
}

TEST(UcxTransport, SendingToAnUnknownRankFailsTheSend) {
  transport_pair pair;
  std::promise<std::string> done;
  pair.a.send(5, 1, random_bytes(10, 1),
              [&](const std::string& failure) { done.set_value(failure); });
  EXPECT_NE(done.get_future().get().find("rank 5 is not connected"), std::string::npos);
}

}  // namespace
}  // namespace troupe
