// A build without CUDA: ZeRO-1 over NCCL says so when it is asked for (ZeRO-1 between processes
// on the CPU goes through UCX: zero_sharding.hpp).
#include "runtime/core/error.hpp"
#include "runtime/optim/nccl_zero_one.hpp"

namespace troupe {

nccl_zero_one::nccl_zero_one(nccl_communicator& comm, int ordinal, parameter_store&, adamw&,
                             std::int64_t)
    : comm_(comm), ordinal_(ordinal) {
  fail("ZeRO-1 over NCCL needs a build with CUDA (meson setup -Dcuda=enabled)");
}
nccl_zero_one::~nccl_zero_one() = default;
double nccl_zero_one::reduce_gradients() {
  return 0.0;
}
void nccl_zero_one::gather_values() {}

}  // namespace troupe
