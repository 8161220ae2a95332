// A build without CUDA or without NCCL's header: no communicator can be made, and the reason
// says so.
#include "runtime/transport/nccl_communicator.hpp"

#include "runtime/core/error.hpp"

namespace troupe {

namespace {

constexpr const char* missing =
    "this build of troupe has no NCCL (it needs CUDA and nccl.h at build time: meson setup with "
    "-Dcuda=enabled on a machine with the CUDA toolkit)";

}  // namespace

struct nccl_communicator::state {};

bool nccl_communicator::available(std::string* why) {
  if (why != nullptr) *why = missing;
  return false;
}

std::vector<std::uint8_t> nccl_communicator::make_id() {
  fail("{}", missing);
}

nccl_communicator::nccl_communicator(std::span<const std::uint8_t>, int, int, int,
                                     std::chrono::milliseconds) {
  fail("{}", missing);
}

nccl_communicator::~nccl_communicator() = default;

int nccl_communicator::ranks() const {
  return 0;
}
int nccl_communicator::rank() const {
  return 0;
}
int nccl_communicator::ordinal() const {
  return 0;
}
bool nccl_communicator::aborted() const {
  return true;
}
void nccl_communicator::all_reduce_sum(tensor&) {
  fail("{}", missing);
}
void nccl_communicator::reduce_scatter_sum(const tensor&, tensor&) {
  fail("{}", missing);
}
void nccl_communicator::all_gather(const tensor&, tensor&) {
  fail("{}", missing);
}
void nccl_communicator::all_to_all(const tensor&, std::span<const std::int64_t>, tensor&,
                                   std::span<const std::int64_t>) {
  fail("{}", missing);
}
void nccl_communicator::all_to_all(std::span<const tensor>, std::span<const std::int64_t>,
                                   std::span<tensor>, std::span<const std::int64_t>) {
  fail("{}", missing);
}
void nccl_communicator::send(const tensor&, int) {
  fail("{}", missing);
}
void nccl_communicator::post_send(const tensor&, int) {
  fail("{}", missing);
}
void nccl_communicator::wait_sends() {}
std::size_t nccl_communicator::sends_pending() {
  return 0;
}
void nccl_communicator::receive(tensor&, int) {
  fail("{}", missing);
}

}  // namespace troupe
