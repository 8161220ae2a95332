// runtime/device on a GPU: what `troupe version` lists, the stream-ordered pool (statistics,
// reuse without growing, out of memory as an error with the sizes), bad devices, asynchronous
// copies through pinned memory, DLPack with kDLCUDA, events, and a tensor's round trip through an
// actor whose exec context is on cuda:0.
#include <gtest/gtest.h>
#include <prometheus/collectable.h>
#include <prometheus/text_serializer.h>

#include <chrono>
#include <cstring>
#include <numeric>
#include <vector>

#include "runtime/actor/actor_runtime.hpp"
#include "runtime/device/cuda.hpp"
#include "runtime/device/memory_pool.hpp"
#include "runtime/device/stream.hpp"
#include "runtime/exec/convert.hpp"
#include "runtime/exec/exec_context.hpp"
#include "runtime/metrics/gpu_memory.hpp"
#include "runtime/tensor/tensor.hpp"
#include "tests/gpu/gpu_skip.hpp"

namespace troupe {
namespace {

using namespace std::chrono_literals;

class CudaDevice : public ::testing::Test {
 protected:
  void SetUp() override { TROUPE_SKIP_WITHOUT_GPU(); }
};

std::string failure_of(const std::function<void()>& body) {
  try {
    body();
  } catch (const error& e) {
    return e.what();
  }
  return "no failure";
}

TEST_F(CudaDevice, ListsTheVisibleGpus) {
  const auto gpus = cuda::visible_gpus();
  ASSERT_FALSE(gpus.empty());
  EXPECT_FALSE(gpus[0].name.empty());
  EXPECT_GT(gpus[0].total_bytes, std::size_t{1} << 30);
  EXPECT_GE(gpus[0].major, 7);
  std::printf("[ gpu ] %s\n", cuda::describe(gpus[0]).c_str());
  EXPECT_NE(cuda::describe(gpus[0]).find("cuda:0 "), std::string::npos);
}

TEST_F(CudaDevice, ThePoolReportsItsMemoryAndReusesItWithoutGrowing) {
  cuda::memory_pool& pool = cuda::memory_pool::on(0);
  cuda::stream stream(0);
  cuda::stream_guard guard(stream);
  stream.synchronize();
  pool.trim();
  pool.reset_peaks();
  const auto before = pool.statistics();
  constexpr std::int64_t count = std::int64_t{64} << 20;  // 256 MiB of f32
  {
    tensor t = tensor::empty(dtype::f32, {count}, device::cuda(0));
    const auto during = pool.statistics();
    EXPECT_GE(during.in_use, before.in_use + 4 * count);
    EXPECT_GE(during.reserved, during.in_use);
  }
  stream.synchronize();
  const auto freed = pool.statistics();
  EXPECT_EQ(freed.in_use, before.in_use);
  EXPECT_GE(freed.peak_in_use, before.in_use + 4 * count);
  const auto reserved = freed.reserved;
  for (int i = 0; i < 10; ++i) {  // same size again: served from what the pool holds
    tensor again = tensor::empty(dtype::f32, {count}, device::cuda(0));
  }
  stream.synchronize();
  EXPECT_EQ(pool.statistics().reserved, reserved);
  pool.trim();
  EXPECT_LT(pool.statistics().reserved, reserved);
}

TEST_F(CudaDevice, PoolStatisticsAreExportedAsMetrics) {
  tensor held = tensor::zeros(dtype::f32, {std::int64_t{1} << 20}, device::cuda(0));
  const auto families = gpu_memory_collectable()->Collect();
  ASSERT_EQ(families.size(), 4u);
  const std::string text = prometheus::TextSerializer().Serialize(families);
  EXPECT_NE(text.find("troupe_gpu_memory_in_use_bytes{device=\"cuda:0\"}"), std::string::npos)
      << text;
  EXPECT_GE(families[1].metric.at(0).gauge.value, 4.0 * (1 << 20));
}

// A tensor freed after the stream it was allocated on is gone: the stream's handle lives on
// (handed to the next stream), so the stream-ordered free still names a live stream.
TEST_F(CudaDevice, ATensorMayOutliveTheStreamItWasMadeOn) {
  tensor kept;
  void* handle = nullptr;
  {
    cuda::stream short_lived(0);
    handle = short_lived.native();
    cuda::stream_guard guard(short_lived);
    kept = tensor::zeros(dtype::f32, {1 << 20}, device::cuda(0));
  }
  cuda::stream next(0);
  EXPECT_EQ(next.native(), handle);
  kept = tensor();  // freed on the recycled stream
  next.synchronize();
  EXPECT_EQ(tensor::zeros(dtype::f32, {4}, device::cuda(0)).to(device::cpu()).data_as<float>()[3],
            0.0f);
}

TEST_F(CudaDevice, OutOfMemoryIsAnErrorWithTheSizesAndTheDeviceStaysUsable) {
  const std::string message = failure_of([] {
    tensor huge = tensor::empty(dtype::f32, {std::int64_t{1} << 40}, device::cuda(0));  // 4 TiB
  });
  EXPECT_NE(message.find("out of memory on cuda:0: asked for 4.0 TiB"), std::string::npos)
      << message;
  EXPECT_NE(message.find(" free of "), std::string::npos) << message;
  tensor small = tensor::zeros(dtype::f32, {1024}, device::cuda(0));
  EXPECT_EQ(small.to(device::cpu()).data_as<float>()[1023], 0.0f);
}

TEST_F(CudaDevice, ADeviceThatIsNotThereIsAClearError) {
  const int count = cuda::device_count();
  const std::string message =
      failure_of([] { tensor t = tensor::empty(dtype::f32, {4}, device::cuda(99)); });
  EXPECT_NE(
      message.find("cuda:99 is not on this machine: it has " + std::to_string(count) + " GPU"),
      std::string::npos)
      << message;
  thread_pool pool(1);
  EXPECT_NE(failure_of([&] {
              exec_context context(device::cuda(99), pool);
            }).find("cuda:99 is not on this machine"),
            std::string::npos);
}

TEST_F(CudaDevice, AsyncCopiesThroughPinnedMemoryOnAStream) {
  constexpr std::int64_t count = 1 << 22;
  tensor source = tensor::empty_pinned(dtype::f32, {count});
  std::iota(source.data_as<float>(), source.data_as<float>() + count, 0.0f);
  cuda::stream stream(0);
  cuda::stream_guard guard(stream);
  tensor on_gpu = tensor::empty(dtype::f32, {count}, device::cuda(0));
  tensor back = tensor::empty_pinned(dtype::f32, {count});
  cuda::event start(0, true), end(0, true);
  start.record(stream);
  on_gpu.copy_from_async(source);
  back.copy_from_async(on_gpu);
  end.record(stream);
  stream.synchronize();
  EXPECT_TRUE(end.done());
  EXPECT_GE(cuda::event::elapsed_ms(start, end), 0.0f);
  EXPECT_EQ(std::memcmp(back.data(), source.data(), static_cast<std::size_t>(count) * 4), 0);
  // And the synchronous path from pageable memory.
  tensor plain = tensor::empty(dtype::f32, {3});
  plain.data_as<float>()[2] = 7.5f;
  EXPECT_EQ(plain.to(device::cuda(0)).to(device::cpu()).data_as<float>()[2], 7.5f);
}

TEST_F(CudaDevice, DlpackCarriesCudaTensorsWithoutACopy) {
  tensor t = tensor::zeros(dtype::f32, {4, 5}, device::cuda(0));
  DLManagedTensor* managed = t.to_dlpack();
  EXPECT_EQ(managed->dl_tensor.device.device_type, kDLCUDA);
  EXPECT_EQ(managed->dl_tensor.device.device_id, 0);
  tensor back = tensor::from_dlpack(managed);
  EXPECT_EQ(back.data(), t.data());
  EXPECT_TRUE(back.where() == device::cuda(0));
  EXPECT_EQ(back.shape(), (std::vector<std::int64_t>{4, 5}));
}

struct round_trip_reply {
  TROUPE_MESSAGE("test.gpu_round_trip_reply");
  tensor value;
  auto fields() { return std::tie(value); }
};

struct round_trip_request {
  TROUPE_REQUEST("test.gpu_round_trip", round_trip_reply);
  tensor value;
  auto fields() { return std::tie(value); }
};

// A model-free round trip: the actor holds an exec context on cuda:0 (its own stream), moves the
// tensor to its GPU on that stream, converts it there (f32 -> bf16 -> f32, a CUDA kernel) and
// sends it back on the host.
TEST_F(CudaDevice, ATensorRoundTripsThroughAnActorOnCuda0) {
  actor_runtime runtime({2, false});
  thread_pool pool(1);
  auto gpu_actor = runtime.spawn("gpu", [&pool](event_actor&) {
    auto context = std::make_shared<exec_context>(device::cuda(0), pool);
    return behavior().on<round_trip_request>([context](round_trip_request& r) {
      EXPECT_TRUE(context->where() == device::cuda(0));
      EXPECT_NE(context->stream(), nullptr);
      EXPECT_EQ(context->abi()->device.device_type, kDLCUDA);
      cuda::stream_guard on_its_stream(0, context->stream());
      tensor on_gpu = r.value.to(device::cuda(0));
      tensor rounded = convert(convert(on_gpu, dtype::bf16), dtype::f32);
      EXPECT_TRUE(rounded.where() == device::cuda(0));
      return round_trip_reply{rounded.to(device::cpu())};
    });
  });
  scoped_actor self(runtime);
  tensor value = tensor::empty(dtype::f32, {3});
  value.data_as<float>()[0] = 1.0f;
  value.data_as<float>()[1] = 1.00390625f;  // rounds to 1 in bf16 (ties to even)
  value.data_as<float>()[2] = -3.5f;
  const tensor back = self.ask(gpu_actor, round_trip_request{value}, "round trip", 30s).value;
  ASSERT_TRUE(back.where() == device::cpu());
  EXPECT_EQ(back.data_as<float>()[0], 1.0f);
  EXPECT_EQ(back.data_as<float>()[1], 1.0f);
  EXPECT_EQ(back.data_as<float>()[2], -3.5f);
}

}  // namespace
}  // namespace troupe
