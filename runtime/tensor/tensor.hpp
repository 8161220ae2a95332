#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include <dlpack/dlpack.h>

#include "runtime/device/device.hpp"
#include "runtime/tensor/dtype.hpp"

namespace troupe {

/// One block of memory on one device, freed by its owner's release function when the last tensor
/// (or DLPack capsule) viewing it goes away.
class storage {
 public:
  storage(void* data, std::size_t bytes, device where, std::function<void()> release);
  ~storage();
  storage(const storage&) = delete;
  storage& operator=(const storage&) = delete;

  void* data() const { return data_; }
  std::size_t bytes() const { return bytes_; }
  device where() const { return where_; }

  /// Host memory of `bytes`, 256-byte aligned as DLPack asks; or CUDA memory from the device's
  /// stream-ordered pool (runtime/device/memory_pool.hpp), allocated on the calling thread's
  /// current stream and freed on that stream: a tensor used on another stream must not be
  /// dropped before that stream's work on it is done.
  static std::shared_ptr<storage> allocate(std::size_t bytes, device where);
  /// Pinned host memory of `bytes` (copies to and from GPUs run asynchronously).
  static std::shared_ptr<storage> allocate_pinned(std::size_t bytes);

 private:
  void* data_;
  std::size_t bytes_;
  device where_;
  std::function<void()> release_;
};

/// An owning, strided, n-dimensional tensor. Copies share storage (like a shared_ptr); clone()
/// copies data. Strides count elements, as in DLPack.
class tensor {
 public:
  /// An undefined tensor: no storage, defined() is false.
  tensor() = default;

  /// Uninitialised contiguous tensor.
  static tensor empty(dtype type, std::vector<std::int64_t> shape, device where = device::cpu());
  /// A contiguous tensor over `memory` (host memory of at least the tensor's bytes), e.g. a
  /// buffer a pool hands out.
  static tensor over(std::shared_ptr<storage> memory, dtype type, std::vector<std::int64_t> shape);
  /// Uninitialised contiguous tensor in pinned host memory.
  static tensor empty_pinned(dtype type, std::vector<std::int64_t> shape);
  /// Contiguous tensor of zero bits (0.0 for every floating type).
  static tensor zeros(dtype type, std::vector<std::int64_t> shape, device where = device::cpu());
  /// The same zeros on a GPU enqueued on the calling thread's current stream of `where` and not
  /// waited for: work on that stream sees them, the host and other streams must wait for it (on
  /// the CPU: zeros()).
  static tensor zeros_async(dtype type, std::vector<std::int64_t> shape, device where);
  /// A copy of `bytes` bytes of host memory at `data` as a u8 tensor on `where`, at least one byte
  /// long (an empty table still has an address): the descriptor tables kernels read.
  static tensor from_bytes(const void* data, std::size_t bytes, device where);

  /// Takes ownership of a DLPack tensor without copying: its deleter runs when the last troupe
  /// tensor viewing the memory is gone. Throws troupe::error (after calling the deleter) for
  /// types or devices troupe does not hold.
  static tensor from_dlpack(DLManagedTensor* managed);

  /// Exports without copying: the capsule keeps the storage alive until its deleter is called.
  DLManagedTensor* to_dlpack() const;

  /// A non-owning DLTensor for a plugin call; valid while this tensor lives and is not reshaped.
  DLTensor dl_view() const;

  bool defined() const { return storage_ != nullptr; }
  dtype type() const { return type_; }
  device where() const { return where_; }
  const std::vector<std::int64_t>& shape() const { return shape_; }
  const std::vector<std::int64_t>& strides() const { return strides_; }
  std::int64_t dim() const { return static_cast<std::int64_t>(shape_.size()); }
  std::int64_t size(std::int64_t axis) const;
  std::int64_t numel() const;
  std::size_t nbytes() const { return static_cast<std::size_t>(numel()) * size_of(type_); }
  bool is_contiguous() const;

  void* data() const { return data_; }
  /// Typed pointer (host or device memory); checks that T matches the dtype: uint16_t for bf16
  /// and f16 bits, uint8_t for u8 and f8_e4m3 codes.
  template <class T>
  T* data_as() const;

  /// Same storage, new shape; needs a contiguous tensor and the same element count.
  tensor reshape(std::vector<std::int64_t> shape) const;
  /// Same storage, `length` entries of `axis` starting at `start`.
  tensor narrow(std::int64_t axis, std::int64_t start, std::int64_t length) const;
  /// A contiguous copy on `where` (host<->CUDA copies go through the CUDA runtime).
  tensor to(device where) const;
  /// A contiguous copy on the same device.
  tensor clone() const { return to(where_); }
  /// The same copy of a contiguous tensor on a GPU enqueued on the calling thread's current
  /// stream and not waited for (as copy_from_async; on the CPU: clone()).
  tensor clone_async() const;
  /// Copies `source` (same dtype and shape, any device) into this tensor's memory; returns
  /// when the copy is done.
  void copy_from(const tensor& source);
  /// The same copy, both tensors contiguous, enqueued on the calling thread's current stream of
  /// the GPU involved; returns at once (host memory should be pinned). A copy between host
  /// tensors runs at once.
  void copy_from_async(const tensor& source);

  /// "f32[2, 3] cpu".
  std::string describe() const;

  /// The shared storage; for transports that need to keep memory alive.
  const std::shared_ptr<storage>& memory() const { return storage_; }

 private:
  void check_dtype(dtype wanted_a, dtype wanted_b) const;

  std::shared_ptr<storage> storage_;
  void* data_ = nullptr;
  dtype type_ = dtype::f32;
  device where_ = device::cpu();
  std::vector<std::int64_t> shape_;
  std::vector<std::int64_t> strides_;
};

/// Row-major strides of `shape`, in elements.
std::vector<std::int64_t> contiguous_strides(std::span<const std::int64_t> shape);

template <class T>
T* tensor::data_as() const {
  if constexpr (std::is_same_v<std::remove_const_t<T>, float>)
    check_dtype(dtype::f32, dtype::f32);
  else if constexpr (std::is_same_v<std::remove_const_t<T>, std::int32_t>)
    check_dtype(dtype::i32, dtype::i32);
  else if constexpr (std::is_same_v<std::remove_const_t<T>, std::int64_t>)
    check_dtype(dtype::i64, dtype::i64);
  else if constexpr (std::is_same_v<std::remove_const_t<T>, std::uint16_t>)
    check_dtype(dtype::bf16, dtype::f16);
  else if constexpr (std::is_same_v<std::remove_const_t<T>, std::uint8_t>)
    check_dtype(dtype::u8, dtype::f8_e4m3);
  else
    static_assert(sizeof(T) == 0, "no troupe dtype for this element type");
  return static_cast<T*>(data_);
}

}  // namespace troupe
