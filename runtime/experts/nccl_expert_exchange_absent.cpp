// A build without CUDA: expert parallelism over NCCL says so when it is asked for.
#include "runtime/core/error.hpp"
#include "runtime/experts/nccl_expert_exchange.hpp"

namespace troupe {

namespace {
constexpr const char* exchange_missing =
    "expert parallelism over NCCL needs a build with CUDA (meson setup -Dcuda=enabled)";
}

nccl_expert_exchange::nccl_expert_exchange(nccl_communicator& comm, int ordinal,
                                           expert_rank_layout layout)
    : comm_(comm), ordinal_(ordinal), layout_(std::move(layout)) {
  fail("{}", exchange_missing);
}
expert_exchange_plan nccl_expert_exchange::plan(std::span<const std::int64_t>) {
  fail("{}", exchange_missing);
}
tensor nccl_expert_exchange::dispatch(const expert_exchange_plan&, const tensor&, wire_precision) {
  fail("{}", exchange_missing);
}
encoded_rows nccl_expert_exchange::dispatch_encoded(const expert_exchange_plan&, const tensor&,
                                                    wire_precision) {
  fail("{}", exchange_missing);
}
tensor nccl_expert_exchange::combine(const expert_exchange_plan&, const tensor&, wire_precision) {
  fail("{}", exchange_missing);
}

}  // namespace troupe
