// troupe-test-nccl-peer ID_FILE RANKS RANK MODE: one rank of an NCCL group on cuda:RANK for the
// multi-GPU suite. Rank 0 writes the group's unique id to ID_FILE; the others wait for it. Then:
//   ops   an all-reduce (each rank gives rank + 1), an all-to-all of rows (rank r sends p + 1
//         rows of value 100 r + p to rank p) and a ring of send/receive; prints "ok" when every
//         value is right;
//   wait  joins, prints "joined", then waits to be killed (rank 1) or runs all-reduces until one
//         fails (rank 0), printing the failure and the seconds it took.
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <thread>
#include <vector>

#include "runtime/transport/nccl_communicator.hpp"

using namespace troupe;
namespace fs = std::filesystem;

namespace {

tensor filled(std::int64_t rows, std::int64_t width, float value, int ordinal) {
  tensor host = tensor::empty(dtype::f32, {rows, width});
  std::fill(host.data_as<float>(), host.data_as<float>() + host.numel(), value);
  return host.to(device::cuda(ordinal));
}

std::vector<float> values_of(const tensor& t) {
  const tensor host = t.to(device::cpu());
  return {host.data_as<const float>(), host.data_as<const float>() + host.numel()};
}

bool run_ops(nccl_communicator& comm, int rank, int ranks) {
  bool ok = true;
  tensor sum = filled(1, 1024, static_cast<float>(rank + 1), rank);
  comm.all_reduce_sum(sum);
  for (float v : values_of(sum)) ok = ok && v == static_cast<float>(ranks * (ranks + 1) / 2);
  const std::int64_t width = 8;
  std::vector<std::int64_t> send(static_cast<std::size_t>(ranks)), receive(send.size());
  std::int64_t total_send = 0, total_receive = 0;
  for (int p = 0; p < ranks; ++p) {
    total_send += send[static_cast<std::size_t>(p)] = p + 1;
    total_receive += receive[static_cast<std::size_t>(p)] = rank + 1;
  }
  tensor host = tensor::empty(dtype::f32, {total_send, width});
  std::int64_t row = 0;
  for (int p = 0; p < ranks; ++p)
    for (std::int64_t i = 0; i < p + 1; ++i, ++row)
      std::fill(host.data_as<float>() + row * width, host.data_as<float>() + (row + 1) * width,
                static_cast<float>(100 * rank + p));
  tensor out = tensor::zeros(dtype::f32, {total_receive, width}, device::cuda(rank));
  comm.all_to_all(host.to(device::cuda(rank)), send, out, receive);
  const auto got = values_of(out);
  for (int p = 0; p < ranks; ++p)
    for (std::int64_t i = 0; i < (rank + 1) * width; ++i)
      ok = ok && got[static_cast<std::size_t>(p * (rank + 1) * width + i)] ==
                     static_cast<float>(100 * p + rank);
  // A ring: even ranks send first, odd ranks receive first.
  tensor mine = filled(1, 16, static_cast<float>(rank), rank);
  tensor theirs = tensor::zeros(dtype::f32, {1, 16}, device::cuda(rank));
  const int next = (rank + 1) % ranks, previous = (rank + ranks - 1) % ranks;
  if (rank % 2 == 0) {
    comm.send(mine, next);
    comm.receive(theirs, previous);
  } else {
    comm.receive(theirs, previous);
    comm.send(mine, next);
  }
  for (float v : values_of(theirs)) ok = ok && v == static_cast<float>(previous);
  return ok;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 5) {
    std::fprintf(stderr, "usage: troupe-test-nccl-peer ID_FILE RANKS RANK ops|wait\n");
    return 2;
  }
  const fs::path id_file = argv[1];
  const int ranks = std::stoi(argv[2]), rank = std::stoi(argv[3]);
  const std::string mode = argv[4];
  try {
    std::vector<std::uint8_t> id;
    if (rank == 0) {
      id = nccl_communicator::make_id();
      const fs::path partial = id_file.string() + ".partial";
      std::ofstream(partial, std::ios::binary)
          .write(reinterpret_cast<const char*>(id.data()), static_cast<std::streamsize>(id.size()));
      fs::rename(partial, id_file);
    } else {
      for (int i = 0; i < 600 && !fs::exists(id_file); ++i)
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
      std::ifstream in(id_file, std::ios::binary);
      id.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
    }
    nccl_communicator comm(id, ranks, rank, rank, std::chrono::seconds(10));
    if (mode == "ops") {
      const bool ok = run_ops(comm, rank, ranks);
      std::printf("%s\n", ok ? "ok" : "wrong values");
      return ok ? 0 : 1;
    }
    std::printf("joined\n");
    std::fflush(stdout);
    if (rank != 0)
      for (;;) std::this_thread::sleep_for(std::chrono::seconds(1));
    const auto start = std::chrono::steady_clock::now();
    try {
      for (;;) {
        tensor values = filled(1, 1 << 20, 1.0f, rank);
        comm.all_reduce_sum(values);
      }
    } catch (const std::exception& e) {
      const double seconds =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      std::printf("failed after %.2f s: %s\n", seconds, e.what());
      return 3;
    }
  } catch (const std::exception& e) {
    std::printf("error: %s\n", e.what());
    return 1;
  }
}
