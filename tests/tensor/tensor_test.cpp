#include <gtest/gtest.h>

#include <cstring>

#include "runtime/core/error.hpp"
#include "runtime/device/cuda.hpp"
#include "runtime/exec/convert.hpp"
#include "runtime/tensor/e4m3.hpp"
#include "runtime/tensor/tensor.hpp"

namespace {

using troupe::dtype;
using troupe::tensor;

TEST(Dtype, NamesSizesAndDlpackCodesRoundTrip) {
  for (dtype type :
       {dtype::f32, dtype::bf16, dtype::f16, dtype::f8_e4m3, dtype::i32, dtype::i64, dtype::u8}) {
    EXPECT_EQ(troupe::parse_dtype(troupe::name_of(type)), type);
    EXPECT_EQ(troupe::from_dlpack(troupe::to_dlpack(type)), type);
    EXPECT_EQ(troupe::to_dlpack(type).bits, troupe::size_of(type) * 8);
  }
  EXPECT_EQ(troupe::parse_dtype("F8_E4M3"), dtype::f8_e4m3);
  EXPECT_EQ(troupe::parse_dtype("BF16"), dtype::bf16);
  EXPECT_FALSE(troupe::parse_dtype("f64"));
  EXPECT_EQ(troupe::to_dlpack(dtype::f8_e4m3).code, 10);  // DLPack 1.1 kDLFloat8_e4m3fn
  EXPECT_EQ(troupe::to_dlpack(dtype::bf16).code, kDLBfloat);
  EXPECT_FALSE(troupe::from_dlpack(DLDataType{kDLFloat, 64, 1}));
  EXPECT_FALSE(troupe::from_dlpack(DLDataType{kDLFloat, 32, 4}));
}

TEST(Device, ParsesAndPrints) {
  EXPECT_EQ(troupe::parse_device("cpu"), troupe::device::cpu());
  EXPECT_EQ(troupe::parse_device("cuda"), troupe::device::cuda(0));
  EXPECT_EQ(troupe::parse_device("cuda:7"), troupe::device::cuda(7));
  EXPECT_EQ(troupe::to_string(troupe::device::cuda(3)), "cuda:3");
  for (const char* bad : {"gpu", "cuda:", "cuda:-1", "cuda:x", "cuda:1x", ""})
    EXPECT_THROW(troupe::parse_device(bad), troupe::error) << bad;
}

TEST(Tensor, EmptyZerosShapesAndStrides) {
  tensor t = tensor::zeros(dtype::f32, {2, 3, 4});
  EXPECT_TRUE(t.defined());
  EXPECT_EQ(t.numel(), 24);
  EXPECT_EQ(t.nbytes(), 96u);
  EXPECT_EQ(t.strides(), (std::vector<std::int64_t>{12, 4, 1}));
  EXPECT_TRUE(t.is_contiguous());
  EXPECT_EQ(reinterpret_cast<std::uintptr_t>(t.data()) % 256, 0u);
  for (int i = 0; i < 24; ++i) EXPECT_EQ(t.data_as<float>()[i], 0.0f);
  EXPECT_EQ(t.describe(), "f32[2, 3, 4] cpu");
  EXPECT_FALSE(tensor().defined());
  EXPECT_THROW(tensor::empty(dtype::f32, {2, -1}), troupe::error);
  EXPECT_THROW((void)t.data_as<std::int32_t>(), troupe::error);
}

TEST(Tensor, ReshapeNarrowAndCloneShareOrCopyAsDocumented) {
  tensor t = tensor::empty(dtype::i32, {4, 3});
  for (int i = 0; i < 12; ++i) t.data_as<std::int32_t>()[i] = i;
  tensor flat = t.reshape({12});
  EXPECT_EQ(flat.data(), t.data());
  EXPECT_THROW(t.reshape({5}), troupe::error);
  tensor rows = t.narrow(0, 1, 2);  // rows 1 and 2: contiguous
  EXPECT_TRUE(rows.is_contiguous());
  EXPECT_EQ(rows.data_as<std::int32_t>()[0], 3);
  tensor column = t.narrow(1, 2, 1);  // a column: strided
  EXPECT_FALSE(column.is_contiguous());
  tensor copy = column.clone();
  EXPECT_TRUE(copy.is_contiguous());
  EXPECT_EQ(copy.shape(), (std::vector<std::int64_t>{4, 1}));
  for (int r = 0; r < 4; ++r) EXPECT_EQ(copy.data_as<std::int32_t>()[r], r * 3 + 2);
  EXPECT_THROW(t.narrow(1, 2, 2), troupe::error);
}

TEST(Tensor, CudaTensorsWithoutAGpuFailWithAClearMessage) {
  if (troupe::cuda::device_count() > 0)
    GTEST_SKIP() << "a GPU is present: covered by the gpu suite";
  try {
    tensor::empty(dtype::f32, {4}, troupe::device::cuda(0));
    FAIL() << "allocating on cuda:0 without a GPU should throw";
  } catch (const troupe::error& e) {
    EXPECT_NE(std::string(e.what()).find("cuda"), std::string::npos) << e.what();
  }
}

struct probe_capsule {
  int* deleted;
  std::vector<std::int64_t> shape{2, 2};
  std::vector<float> data{1, 2, 3, 4};
  DLManagedTensor managed{};
};

DLManagedTensor* make_probe(int* deleted, DLDataType type = {kDLFloat, 32, 1}) {
  auto* probe = new probe_capsule{deleted};
  probe->managed.dl_tensor =
      DLTensor{probe->data.data(), {kDLCPU, 0}, 2, type, probe->shape.data(), nullptr, 0};
  probe->managed.manager_ctx = probe;
  probe->managed.deleter = [](DLManagedTensor* self) {
    auto* owner = static_cast<probe_capsule*>(self->manager_ctx);
    ++*owner->deleted;
    delete owner;
  };
  return &probe->managed;
}

TEST(Dlpack, ImportIsZeroCopyAndCallsTheDeleterOnceWhenTheLastViewGoes) {
  int deleted = 0;
  DLManagedTensor* capsule = make_probe(&deleted);
  void* original = capsule->dl_tensor.data;
  {
    tensor imported = tensor::from_dlpack(capsule);
    EXPECT_EQ(imported.data(), original);
    EXPECT_EQ(imported.shape(), (std::vector<std::int64_t>{2, 2}));
    EXPECT_EQ(imported.strides(), (std::vector<std::int64_t>{2, 1}));  // NULL strides: row-major
    tensor view = imported.narrow(0, 1, 1);
    imported = tensor();
    EXPECT_EQ(deleted, 0);
    EXPECT_EQ(view.data_as<float>()[0], 3.0f);
  }
  EXPECT_EQ(deleted, 1);
}

TEST(Dlpack, UnsupportedImportsThrowAndStillReleaseTheCapsule) {
  int deleted = 0;
  EXPECT_THROW(tensor::from_dlpack(make_probe(&deleted, {kDLFloat, 64, 1})), troupe::error);
  EXPECT_EQ(deleted, 1);
  DLManagedTensor* on_opencl = make_probe(&deleted);
  on_opencl->dl_tensor.device = {kDLOpenCL, 0};
  EXPECT_THROW(tensor::from_dlpack(on_opencl), troupe::error);
  EXPECT_EQ(deleted, 2);
}

TEST(Dlpack, ExportIsZeroCopyAndKeepsStorageAliveUntilTheConsumerDeletes) {
  DLManagedTensor* capsule = nullptr;
  void* data = nullptr;
  {
    tensor t = tensor::empty(dtype::bf16, {3, 5});
    data = t.data();
    std::memset(data, 0x3F, t.nbytes());
    capsule = t.narrow(0, 1, 2).to_dlpack();
  }
  // The producer's tensors are gone; the capsule still owns the memory.
  EXPECT_EQ(capsule->dl_tensor.data, static_cast<char*>(data) + 5 * 2);
  EXPECT_EQ(capsule->dl_tensor.ndim, 2);
  EXPECT_EQ(capsule->dl_tensor.shape[0], 2);
  EXPECT_EQ(capsule->dl_tensor.strides[0], 5);
  EXPECT_EQ(capsule->dl_tensor.dtype.code, kDLBfloat);
  EXPECT_EQ(static_cast<unsigned char*>(capsule->dl_tensor.data)[0], 0x3F);
  // Round trip: importing our own capsule is zero-copy too.
  tensor back = tensor::from_dlpack(capsule);
  EXPECT_EQ(back.data(), static_cast<char*>(data) + 10);
  EXPECT_EQ(back.type(), dtype::bf16);
}

TEST(Convert, F32ToEveryFloatTypeAndBackOnTheCpu) {
  tensor source = tensor::empty(dtype::f32, {2, 130});
  float* values = source.data_as<float>();
  for (int i = 0; i < 260; ++i) values[i] = (i - 130) * 3.75f;
  for (dtype type : {dtype::bf16, dtype::f16, dtype::f8_e4m3}) {
    tensor narrow_type = troupe::convert(source, type);
    EXPECT_EQ(narrow_type.type(), type);
    tensor back = troupe::convert(narrow_type, dtype::f32);
    for (int i = 0; i < 260; ++i) {
      float tolerance = type == dtype::f8_e4m3 ? 0.0625f : type == dtype::bf16 ? 0.004f : 0.0005f;
      float expected = std::min(std::fabs(values[i]), 448.0f);
      if (type != dtype::f8_e4m3) expected = std::fabs(values[i]);
      EXPECT_NEAR(std::fabs(back.data_as<float>()[i]), expected, tolerance * expected + 1e-6f)
          << troupe::name_of(type) << " " << values[i];
    }
  }
  // Non-f32 to non-f32 passes through f32 exactly.
  tensor e4m3 = troupe::convert(troupe::convert(source, dtype::bf16), dtype::f8_e4m3);
  tensor direct = troupe::convert(troupe::convert(troupe::convert(source, dtype::bf16), dtype::f32),
                                  dtype::f8_e4m3);
  EXPECT_EQ(std::memcmp(e4m3.data(), direct.data(), e4m3.nbytes()), 0);
  EXPECT_THROW(troupe::convert(tensor::zeros(dtype::i32, {3}), dtype::f32), troupe::error);
}

}  // namespace
