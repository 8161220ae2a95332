#include "runtime/tensor/tensor.hpp"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <limits>

#include "runtime/core/error.hpp"
#include "runtime/device/cuda.hpp"
#include "runtime/device/memory_pool.hpp"
#include "runtime/device/pinned_memory.hpp"
#include "runtime/device/stream.hpp"
#include "runtime/tensor/host_pool.hpp"

namespace troupe {

storage::storage(void* data, std::size_t bytes, device where, std::function<void()> release)
    : data_(data), bytes_(bytes), where_(where), release_(std::move(release)) {}

storage::~storage() {
  if (release_) release_();
}

std::shared_ptr<storage> storage::allocate(std::size_t bytes, device where) {
  if (where.is_cuda()) {
    // Stream-ordered: usable by work on the thread's current stream, freed on that stream.
    cuda::memory_pool& pool = cuda::memory_pool::on(where.index);
    void* stream = cuda::current_stream(where.index);
    void* pointer = pool.allocate(bytes, stream);
    return std::make_shared<storage>(pointer, bytes, where,
                                     [&pool, pointer, stream] { pool.release(pointer, stream); });
  }
  void* pointer = host_pool::global().allocate(bytes);
  return std::make_shared<storage>(pointer, bytes, where,
                                   [pointer] { host_pool::global().release(pointer); });
}

std::shared_ptr<storage> storage::allocate_pinned(std::size_t bytes) {
  void* pointer = cuda::allocate_pinned(bytes);
  return std::make_shared<storage>(pointer, bytes, device::cpu(),
                                   [pointer] { cuda::release_pinned(pointer); });
}

std::vector<std::int64_t> contiguous_strides(std::span<const std::int64_t> shape) {
  std::vector<std::int64_t> strides(shape.size());
  std::int64_t stride = 1;
  for (std::size_t i = shape.size(); i-- > 0;) {
    strides[i] = stride;
    stride *= shape[i];
  }
  return strides;
}

namespace {

std::int64_t checked_numel(std::span<const std::int64_t> shape) {
  std::int64_t count = 1;
  for (std::int64_t extent : shape) {
    if (extent < 0) fail("tensor shape has a negative extent {}", extent);
    if (extent != 0 && count > std::numeric_limits<std::int64_t>::max() / extent)
      fail("tensor shape overflows 64-bit element counts");
    count *= extent;
  }
  return count;
}

std::string format_shape(std::span<const std::int64_t> shape) {
  return fmt::format("[{}]", fmt::join(shape, ", "));
}

/// What a DLPack capsule exported by troupe owns: a storage reference and the shape arrays.
struct export_context {
  std::shared_ptr<storage> memory;
  std::vector<std::int64_t> shape;
  std::vector<std::int64_t> strides;
  DLManagedTensor managed{};
};

}  // namespace

tensor tensor::empty(dtype type, std::vector<std::int64_t> shape, device where) {
  tensor result;
  std::int64_t count = checked_numel(shape);
  result.storage_ = storage::allocate(static_cast<std::size_t>(count) * size_of(type), where);
  result.data_ = result.storage_->data();
  result.type_ = type;
  result.where_ = where;
  result.strides_ = contiguous_strides(shape);
  result.shape_ = std::move(shape);
  return result;
}

tensor tensor::over(std::shared_ptr<storage> memory, dtype type, std::vector<std::int64_t> shape) {
  const std::int64_t count = checked_numel(shape);
  if (!memory || memory->bytes() < static_cast<std::size_t>(count) * size_of(type))
    fail("a tensor of {} bytes over storage of {} bytes",
         static_cast<std::size_t>(count) * size_of(type), memory ? memory->bytes() : 0);
  tensor result;
  result.storage_ = std::move(memory);
  result.data_ = result.storage_->data();
  result.type_ = type;
  result.where_ = result.storage_->where();
  result.strides_ = contiguous_strides(shape);
  result.shape_ = std::move(shape);
  return result;
}

tensor tensor::from_bytes(const void* data, std::size_t bytes, device where) {
  tensor host = empty(dtype::u8, {std::max<std::int64_t>(static_cast<std::int64_t>(bytes), 1)});
  if (bytes > 0) std::memcpy(host.data_, data, bytes);
  return host.to(where);
}

tensor tensor::zeros(dtype type, std::vector<std::int64_t> shape, device where) {
  tensor result = empty(type, std::move(shape), where);
  if (where.is_cpu()) {
    std::memset(result.data_, 0, result.nbytes());
  } else {
    void* stream = cuda::current_stream(where.index);
    cuda::zero_async(result.data_, result.nbytes(), stream, where.index);
    cuda::synchronize_stream(stream, where.index);
  }
  return result;
}

tensor tensor::zeros_async(dtype type, std::vector<std::int64_t> shape, device where) {
  if (where.is_cpu()) return zeros(type, std::move(shape), where);
  tensor result = empty(type, std::move(shape), where);
  cuda::zero_async(result.data_, result.nbytes(), cuda::current_stream(where.index), where.index);
  return result;
}

tensor tensor::clone_async() const {
  if (where_.is_cpu() || !is_contiguous()) return clone();
  tensor result = empty(type_, shape_, where_);
  result.copy_from_async(*this);
  return result;
}

tensor tensor::empty_pinned(dtype type, std::vector<std::int64_t> shape) {
  const std::int64_t count = checked_numel(shape);
  return over(storage::allocate_pinned(static_cast<std::size_t>(count) * size_of(type)), type,
              std::move(shape));
}

tensor tensor::from_dlpack(DLManagedTensor* managed) {
  TROUPE_CHECK(managed != nullptr, "from_dlpack needs a DLManagedTensor");
  auto release = [managed] {
    if (managed->deleter != nullptr) managed->deleter(managed);
  };
  const DLTensor& dl = managed->dl_tensor;
  auto type = troupe::from_dlpack(dl.dtype);
  device where;
  try {
    if (!type)
      fail("DLPack dtype (code {}, {} bits, {} lanes) is not one troupe holds", dl.dtype.code,
           dl.dtype.bits, dl.dtype.lanes);
    where = troupe::from_dlpack(dl.device);
    if (dl.ndim < 0) fail("DLPack tensor has negative ndim {}", dl.ndim);
  } catch (...) {
    release();
    throw;
  }
  tensor result;
  result.type_ = *type;
  result.where_ = where;
  result.shape_.assign(dl.shape, dl.shape + dl.ndim);
  result.strides_ = dl.strides != nullptr
                        ? std::vector<std::int64_t>(dl.strides, dl.strides + dl.ndim)
                        : contiguous_strides(result.shape_);
  result.data_ = static_cast<char*>(dl.data) + dl.byte_offset;
  result.storage_ = std::make_shared<storage>(result.data_, result.nbytes(), where, release);
  return result;
}

DLManagedTensor* tensor::to_dlpack() const {
  TROUPE_CHECK(defined(), "cannot export an undefined tensor to DLPack");
  auto* context = new export_context{storage_, shape_, strides_, {}};
  DLTensor& dl = context->managed.dl_tensor;
  dl.data = data_;
  dl.device = troupe::to_dlpack(where_);
  dl.ndim = static_cast<int>(shape_.size());
  dl.dtype = troupe::to_dlpack(type_);
  dl.shape = context->shape.data();
  dl.strides = context->strides.data();
  dl.byte_offset = 0;
  context->managed.manager_ctx = context;
  context->managed.deleter = [](DLManagedTensor* self) {
    delete static_cast<export_context*>(self->manager_ctx);
  };
  return &context->managed;
}

DLTensor tensor::dl_view() const {
  DLTensor dl{};
  dl.data = data_;
  dl.device = troupe::to_dlpack(where_);
  dl.ndim = static_cast<int>(shape_.size());
  dl.dtype = troupe::to_dlpack(type_);
  // DLTensor's shape is int64_t* for historical reasons; plugins must treat it as const.
  dl.shape = const_cast<std::int64_t*>(shape_.data());
  dl.strides = const_cast<std::int64_t*>(strides_.data());
  dl.byte_offset = 0;
  return dl;
}

std::int64_t tensor::size(std::int64_t axis) const {
  std::int64_t rank = dim();
  if (axis < 0) axis += rank;
  TROUPE_CHECK(axis >= 0 && axis < rank, "axis {} out of range for {}", axis, describe());
  return shape_[static_cast<std::size_t>(axis)];
}

std::int64_t tensor::numel() const {
  return checked_numel(shape_);
}

bool tensor::is_contiguous() const {
  std::int64_t expected = 1;
  for (std::size_t i = shape_.size(); i-- > 0;) {
    if (shape_[i] != 1 && strides_[i] != expected) return false;
    expected *= shape_[i];
  }
  return true;
}

tensor tensor::reshape(std::vector<std::int64_t> shape) const {
  TROUPE_CHECK(is_contiguous(), "reshape needs a contiguous tensor, got {}", describe());
  TROUPE_CHECK(checked_numel(shape) == numel(), "cannot reshape {} to {}", describe(),
               format_shape(shape));
  tensor result = *this;
  result.strides_ = contiguous_strides(shape);
  result.shape_ = std::move(shape);
  return result;
}

tensor tensor::narrow(std::int64_t axis, std::int64_t start, std::int64_t length) const {
  std::int64_t extent = size(axis);
  if (axis < 0) axis += dim();
  TROUPE_CHECK(start >= 0 && length >= 0 && start + length <= extent,
               "narrow({}, {}, {}) is outside {}", axis, start, length, describe());
  tensor result = *this;
  auto a = static_cast<std::size_t>(axis);
  result.data_ =
      static_cast<char*>(data_) + start * strides_[a] * static_cast<std::int64_t>(size_of(type_));
  result.shape_[a] = length;
  return result;
}

void tensor::check_dtype(dtype wanted_a, dtype wanted_b) const {
  TROUPE_CHECK(type_ == wanted_a || type_ == wanted_b, "element type does not match {}",
               describe());
}

namespace {

/// Copies a strided tensor into contiguous host bytes (the slow but general path).
void gather_strided(const tensor& source, char* destination) {
  const std::size_t element = size_of(source.type());
  const auto& shape = source.shape();
  const auto& strides = source.strides();
  std::vector<std::int64_t> index(shape.size(), 0);
  const char* base = static_cast<const char*>(source.data());
  for (std::int64_t n = 0, total = source.numel(); n < total; ++n) {
    std::int64_t offset = 0;
    for (std::size_t d = 0; d < shape.size(); ++d) offset += index[d] * strides[d];
    std::memcpy(destination + n * static_cast<std::int64_t>(element),
                base + offset * static_cast<std::int64_t>(element), element);
    for (std::size_t d = shape.size(); d-- > 0;) {
      if (++index[d] < shape[d]) break;
      index[d] = 0;
    }
  }
}

}  // namespace

tensor tensor::to(device where) const {
  TROUPE_CHECK(defined(), "cannot copy an undefined tensor");
  tensor result = empty(type_, shape_, where);
  result.copy_from(*this);
  return result;
}

void tensor::copy_from(const tensor& source) {
  TROUPE_CHECK(source.type_ == type_ && source.shape_ == shape_, "cannot copy {} into {}",
               source.describe(), describe());
  TROUPE_CHECK(is_contiguous(), "copy_from needs a contiguous destination, got {}", describe());
  if (nbytes() == 0) return;
  tensor staged = source;
  if (!source.is_contiguous()) {
    TROUPE_CHECK(source.where_.is_cpu(), "strided CUDA copies are not supported: {}",
                 source.describe());
    staged = empty(type_, shape_, device::cpu());
    gather_strided(source, static_cast<char*>(staged.data_));
  }
  if (where_.is_cpu() && staged.where_.is_cpu()) {
    std::memcpy(data_, staged.data_, nbytes());
    return;
  }
  copy_from_async(staged);
  const int ordinal = where_.is_cuda() ? where_.index : staged.where_.index;
  cuda::synchronize_stream(cuda::current_stream(ordinal), ordinal);
}

void tensor::copy_from_async(const tensor& source) {
  TROUPE_CHECK(source.type_ == type_ && source.shape_ == shape_, "cannot copy {} into {}",
               source.describe(), describe());
  TROUPE_CHECK(is_contiguous() && source.is_contiguous(),
               "an asynchronous copy needs contiguous tensors, got {} into {}", source.describe(),
               describe());
  const std::size_t bytes = nbytes();
  if (bytes == 0) return;
  if (where_.is_cpu() && source.where_.is_cpu()) {
    std::memcpy(data_, source.data_, bytes);
    return;
  }
  const int ordinal = where_.is_cuda() ? where_.index : source.where_.index;
  const cuda::copy_kind kind = where_.is_cpu()          ? cuda::copy_kind::device_to_host
                               : source.where_.is_cpu() ? cuda::copy_kind::host_to_device
                                                        : cuda::copy_kind::device_to_device;
  cuda::copy_async(data_, source.data_, bytes, kind, cuda::current_stream(ordinal), ordinal);
}

std::string tensor::describe() const {
  if (!defined()) return "undefined tensor";
  return fmt::format("{}{} {}", name_of(type_), format_shape(shape_), to_string(where_));
}

}  // namespace troupe
