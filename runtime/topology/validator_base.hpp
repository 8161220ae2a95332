#pragma once

// What the checks of a topology's meaning share (validate.cpp, validate_serve.cpp): the topology,
// where the diagnostics go, and the message for a host that does not exist.

#include <string>
#include <vector>

#include "runtime/topology/diagnostic.hpp"
#include "runtime/topology/topology.hpp"

namespace troupe::detail {

class validator_base {
 protected:
  validator_base(topology& topo, std::vector<diagnostic>& out) : t_(topo), out_(out) {}

  /// A diagnostic at the position of `path` ("stages[1].device").
  void error(const std::string& path, std::string message);
  void warning(const std::string& path, std::string message);
  std::vector<std::string> host_names() const;
  /// `path = "host"` names no host: the error, with the nearest host name.
  void no_such_host(const std::string& path, const std::string& host);

  topology& t_;
  std::vector<diagnostic>& out_;
};

/// [serve]'s hosts (the prefill host filled in) and devices, into `out` (validate_serve.cpp).
void check_serve(topology& topo, std::vector<diagnostic>& out);

}  // namespace troupe::detail
