// The [serve] section's hosts and devices: the prefill host, decode and expert hosts each once
// and in one role, and devices that exist on the hosts of their role.
#include <map>
#include <tuple>

#include "runtime/core/text.hpp"
#include "runtime/topology/validator_base.hpp"

namespace troupe::detail {

void validator_base::error(const std::string& path, std::string message) {
  out_.push_back({t_.where(path), diagnostic::severity::error, std::move(message)});
}

void validator_base::warning(const std::string& path, std::string message) {
  out_.push_back({t_.where(path), diagnostic::severity::warning, std::move(message)});
}

std::vector<std::string> validator_base::host_names() const {
  std::vector<std::string> names;
  for (const auto& h : t_.hosts) names.push_back(h.name);
  return names;
}

void validator_base::no_such_host(const std::string& path, const std::string& host) {
  auto names = host_names();
  auto suggestion = nearest_word(host, names);
  error(path,
        fmt::format("{} = \"{}\" names no host{}; hosts are: {}", path, host,
                    suggestion.empty() ? "" : fmt::format(" (did you mean '{}'?)", suggestion),
                    join(names, ", ")));
}

namespace {

class serve_validator : validator_base {
 public:
  serve_validator(topology& topo, std::vector<diagnostic>& out) : validator_base(topo, out) {}

  void run() {
    check_serve_hosts();
    check_serve_devices();
  }

 private:
  /// [serve] decode_host(s) and expert_host(s): other hosts than the first, each once and in one
  /// role, with decode instances or expert shards to run there.
  void check_serve_hosts() {
    serve_spec& s = t_.serve;
    if (s.prefill_host.empty()) {
      s.prefill_host = t_.hosts.front().name;
    } else if (t_.find_host(s.prefill_host) == nullptr) {
      no_such_host("serve.prefill_host", s.prefill_host);
    }
    std::map<std::string, std::string> seen;  // host -> the key that claimed it
    const auto check = [&](const std::vector<std::string>& hosts, const char* one, const char* many,
                           const char* role, const char* more) {
      const bool list = t_.positions.count(fmt::format("serve.{}", many)) > 0;
      for (std::size_t i = 0; i < hosts.size(); ++i) {
        const std::string& host = hosts[i];
        const std::string path =
            list ? fmt::format("serve.{}[{}]", many, i) : fmt::format("serve.{}", one);
        if (t_.find_host(host) == nullptr) {
          no_such_host(path, host);
        } else if (host == t_.serve.prefill_host) {
          error(path, fmt::format("{} = \"{}\" is the prefill host (serve.prefill_host, else the "
                                  "first host), which serves HTTP and prefills: give another "
                                  "host (or leave it out to {} in one process)",
                                  path, host, role));
        } else if (const auto [it, fresh] = seen.emplace(host, many); !fresh) {
          error(path, it->second == many
                          ? fmt::format("{} = \"{}\" is named twice: a host runs one serving "
                                        "process ({})",
                                        path, host, more)
                          : fmt::format("{} = \"{}\" is named twice in [serve]: it runs the "
                                        "process of serve.{} already (a host runs one serving "
                                        "process, for decode or for expert shards)",
                                        path, host, it->second));
        }
      }
    };
    check(s.decode_hosts, "decode_host", "decode_hosts", "decode",
          "give it more decode_instances instead");
    check(s.expert_hosts, "expert_host", "expert_hosts", "hold the expert shards",
          "give it more expert_shards instead");
    const bool decode_list = t_.positions.count("serve.decode_hosts") > 0;
    if (!s.decode_hosts.empty() && s.decode_instances < 1)
      error(decode_list ? "serve.decode_hosts" : "serve.decode_host",
            fmt::format("serve.{} needs serve.decode_instances of 1 or more: the instances that "
                        "decode there",
                        decode_list ? "decode_hosts" : "decode_host"));
    const std::string experts_path =
        t_.positions.count("serve.expert_hosts") > 0 ? "serve.expert_hosts" : "serve.expert_host";
    if (!s.expert_hosts.empty() &&
        s.expert_shards < static_cast<std::int64_t>(s.expert_hosts.size()))
      error(experts_path,
            fmt::format("{} names {} hosts for {} expert shards per instance: each host needs at "
                        "least one (set serve.expert_shards)",
                        experts_path, s.expert_hosts.size(), s.expert_shards));
  }

  /// [serve] device, prefill_device, decode_device: devices that exist on the hosts of their role.
  void check_serve_devices() {
    const serve_spec& s = t_.serve;
    const std::vector<std::string> first{s.prefill_host};  // check_serve_hosts filled it
    std::vector<std::string> decode = s.decode_hosts.empty() ? first : s.decode_hosts;
    std::vector<std::string> all = first;
    all.insert(all.end(), s.decode_hosts.begin(), s.decode_hosts.end());
    for (const auto& [key, text, hosts] : {std::tuple{"device", s.device, all},
                                           std::tuple{"prefill_device", s.prefill_device, first},
                                           std::tuple{"decode_device", s.decode_device, decode}}) {
      const std::string path = std::string("serve.") + key;
      if (t_.positions.count(path) == 0 || text.empty()) continue;
      device where = device::cpu();
      try {
        where = parse_device(text);
      } catch (const troupe::error& e) {
        error(path, fmt::format("{}: {}", path, e.what()));
        continue;
      }
      for (const std::string& name : hosts) {
        const host_spec* host = t_.find_host(name);
        if (host != nullptr && where.is_cuda() && where.index >= host->gpus)
          error(path, fmt::format("{} = \"{}\" does not exist on host '{}', which has gpus = {}",
                                  path, text, name, host->gpus));
      }
    }
  }
};

}  // namespace

void check_serve(topology& topo, std::vector<diagnostic>& out) {
  serve_validator(topo, out).run();
}

}  // namespace troupe::detail
