#pragma once

// What one process's gateway sends another's through CAF: a message's descriptor. The message's
// small fields travel in `body` (message_codec's byte format); its tensors travel over UCX and
// are named here by their transfer tags only. CAF never carries tensor bytes between processes.

#include <cstdint>
#include <string>
#include <vector>

#include <caf/meta/type_name.hpp>

namespace troupe {

enum class envelope_kind : std::uint8_t {
  one_way,  ///< a message to `target`, no reply
  request,  ///< a message to `target`; the reply comes back as `reply` or `failure`
  reply,    ///< the reply to request `request`
  failure,  ///< request `request` failed: `body` holds the message text
};

struct envelope {
  std::int32_t from = 0;  ///< the sending process's rank
  std::uint8_t kind = 0;  ///< an envelope_kind
  std::uint64_t request = 0;
  std::string target;  ///< the receiving actor's name (one_way, request)
  std::string type;    ///< the message's shape in the codec
  std::vector<std::uint8_t> body;
  std::vector<std::uint64_t> tensors;  ///< UCX tags in the sender's numbering; 0: no tensor
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, envelope& x) {
  return f(caf::meta::type_name("troupe.envelope"), x.from, x.kind, x.request, x.target, x.type,
           x.body, x.tensors);
}

/// What a process tells rank 0 at rendezvous, and rank 0 tells everyone after it.
struct process_card {
  std::int32_t rank = 0;
  std::string host;     ///< the topology's host name it runs
  std::string address;  ///< where its gateway listens
  std::uint16_t port = 0;
  std::vector<std::uint8_t> ucx_address;
  std::int32_t pid = 0;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, process_card& x) {
  return f(caf::meta::type_name("troupe.process_card"), x.rank, x.host, x.address, x.port,
           x.ucx_address, x.pid);
}

}  // namespace troupe
