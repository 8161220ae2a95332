#include "runtime/plugin/registry.hpp"

#include <stdlib.h>

#include <deque>
#include <system_error>

#include <fmt/ranges.h>
#include <spdlog/spdlog.h>
#include <nlohmann/json.hpp>

#include "runtime/plugin/plugin_table.hpp"
#include "runtime/plugin/probe.hpp"

namespace troupe {

nlohmann::json describe(const plugin_library& library) {
  return {{"plugin", library.name},
          {"version", library.version},
          {"generation", library.generation},
          {"library", library.file.string()}};
}

namespace fs = std::filesystem;

namespace {

/// The troupe_host each library gets. Libraries are never unloaded, so neither are these.
struct host_slot {
  troupe_host host{};
  std::string plugin_name;
};

void log_from_plugin(void* self, troupe_log_level level, const char* message) {
  const auto* slot = static_cast<const host_slot*>(self);
  const char* text = message != nullptr ? message : "";
  switch (level) {
    case TROUPE_LOG_DEBUG:
      spdlog::debug("[plugin {}] {}", slot->plugin_name, text);
      break;
    case TROUPE_LOG_INFO:
      spdlog::info("[plugin {}] {}", slot->plugin_name, text);
      break;
    case TROUPE_LOG_WARN:
      spdlog::warn("[plugin {}] {}", slot->plugin_name, text);
      break;
    default:
      spdlog::error("[plugin {}] {}", slot->plugin_name, text);
      break;
  }
}

const troupe_host* make_host(const std::string& plugin_name) {
  static std::mutex mutex;
  static auto* slots = new std::deque<host_slot>();  // intentionally never freed
  std::lock_guard lock(mutex);
  host_slot& slot = slots->emplace_back();
  slot.plugin_name = plugin_name;
  slot.host = troupe_host{sizeof(troupe_host), TROUPE_PLUGIN_ABI_MAJOR, TROUPE_PLUGIN_ABI_MINOR,
                          &slot, &log_from_plugin};
  return &slot.host;
}

}  // namespace

std::string host_abi_version() {
  return fmt::format("{}.{}", TROUPE_PLUGIN_ABI_MAJOR, TROUPE_PLUGIN_ABI_MINOR);
}

plugin_registry::plugin_registry(plugin_search_path path) : search_path_(std::move(path)) {}

plugin_registry::~plugin_registry() {
  // The libraries stay mapped; only the private copies' files go.
  if (!private_dir_.empty()) {
    std::error_code ec;
    fs::remove_all(private_dir_, ec);
  }
}

std::shared_ptr<const plugin_library> plugin_registry::load(std::string_view reference,
                                                            plugin_load_options options) {
  if (plugin_search_path::is_path(reference)) {
    const fs::path file(reference);
    plugin_search_path::check_file(file);
    return load_file(file, options);
  }
  auto file = search_path_.find(reference);
  if (!file) {
    std::vector<std::string> names;
    for (const auto& [name, path] : search_path_.available()) names.push_back(name);
    throw plugin_load_error(
        plugin_load_failure::not_found, plugin_search_path::library_file_name(reference),
        fmt::format("no plugin named '{}' on the search path [{}]; available: {}", reference,
                    search_path_.describe(),
                    names.empty() ? "none" : fmt::format("{}", fmt::join(names, ", "))));
  }
  return load_file(*file, options);
}

std::vector<std::shared_ptr<const plugin_library>> plugin_registry::loaded() const {
  std::lock_guard lock(mutex_);
  return {loaded_.begin(), loaded_.end()};
}

fs::path plugin_registry::private_copy(const fs::path& file) {
  std::lock_guard lock(mutex_);
  if (private_dir_.empty()) {
    std::string pattern = (fs::temp_directory_path() / "troupe-plugins-XXXXXX").string();
    if (mkdtemp(pattern.data()) == nullptr)
      throw plugin_load_error(plugin_load_failure::not_loadable, file,
                              fmt::format("cannot create a private copy directory: {}",
                                          std::generic_category().message(errno)));
    private_dir_ = pattern;
  }
  ++copies_;
  fs::path copy = private_dir_ / fmt::format("{}.copy{}.so", file.stem().string(), copies_);
  std::error_code ec;
  fs::copy_file(file, copy, fs::copy_options::overwrite_existing, ec);
  if (ec)
    throw plugin_load_error(plugin_load_failure::not_loadable, file,
                            fmt::format("cannot copy to {}: {}", copy.string(), ec.message()));
  return copy;
}

void plugin_registry::drop_private_copy(const fs::path& copy) {
  std::error_code ignored;
  fs::remove(copy, ignored);
  if (fs::remove(private_dir_, ignored)) private_dir_.clear();  // only when no other copy is there
}

namespace {

/// Throws wrong_kind when a plugin of `kind` is not what the load asks for.
void check_kind(std::string_view name, plugin_kind kind, const fs::path& file,
                const plugin_load_options& options) {
  if (options.expected_kind && kind != *options.expected_kind)
    throw plugin_load_error(
        plugin_load_failure::wrong_kind, file,
        fmt::format("plugin '{}' is a {} plugin, but a plugin of kind {} is needed here", name,
                    name_of(kind), name_of(*options.expected_kind)));
}

/// Throws bad_descriptor when a library libtroupe-NAME.so calls itself anything but NAME.
void check_name(std::string_view name, const fs::path& file) {
  const auto expected = plugin_search_path::plugin_name_of(file);
  if (expected && *expected != name)
    throw plugin_load_error(
        plugin_load_failure::bad_descriptor, file,
        fmt::format("the library calls itself '{}', but its file name says '{}' (the plugin "
                    "NAME is libtroupe-NAME.so)",
                    name, *expected));
}

/// Throws what the probe found wrong. A table that does not suit the file or the role is
/// reported before what went wrong after it (init() failing, crashing or hanging).
void check_probe(const plugin_probe_report& report, const fs::path& file,
                 const plugin_load_options& options) {
  if (report.table) {
    check_name(report.name, file);
    check_kind(report.name, report.kind, file, options);
  }
  if (report.failure) throw plugin_load_error(*report.failure, file, report.cause);
}

/// Calls the plugin's init() with its host; throws init_failed with its message when it fails.
void init_plugin(const plugin_library& library, const fs::path& file) {
  troupe_error init_error{};
  if (library.api->init(make_host(library.name), &init_error) != TROUPE_STATUS_OK)
    throw plugin_load_error(plugin_load_failure::init_failed, file,
                            init_failure_message(library.name, init_error));
}

}  // namespace

std::shared_ptr<plugin_library> plugin_registry::find_loaded(const fs::path& canonical) const {
  for (const auto& library : loaded_)
    if (library->file == canonical) return library;
  return nullptr;
}

std::shared_ptr<const plugin_library> plugin_registry::load_file(
    const fs::path& file, const plugin_load_options& options) {
  std::error_code ec;
  const fs::path canonical = fs::weakly_canonical(file, ec);
  if (!options.fresh_copy) {
    std::lock_guard lock(mutex_);
    if (auto library = find_loaded(canonical)) {
      check_kind(library->name, library->kind, file, options);
      return library;
    }
  }
  // NOTES: the probe runs what will be loaded (the private copy for a fresh load) and its result
  // is kept for the contents of `canonical` the copy was made from; a file that changed while it
  // was copied is probed without keeping the result.
  auto stamp = plugin_file_stamp::of(canonical);
  const fs::path open_path = options.fresh_copy ? private_copy(canonical) : canonical;
  if (options.fresh_copy && plugin_file_stamp::of(canonical) != stamp) stamp.reset();
  try {
    check_probe(probe_plugin(file, open_path, stamp), file, options);
  } catch (const plugin_load_error&) {
    if (options.fresh_copy) {  // never loaded: nothing maps it
      std::lock_guard lock(mutex_);
      drop_private_copy(open_path);
    }
    throw;
  }

  std::lock_guard lock(mutex_);
  if (!options.fresh_copy) {
    if (auto library = find_loaded(canonical)) {  // another thread loaded it meanwhile
      check_kind(library->name, library->kind, file, options);
      return library;
    }
  }
  return load_in_process(file, canonical, open_path, options);
}

std::shared_ptr<const plugin_library> plugin_registry::load_in_process(
    const fs::path& file, const fs::path& canonical, const fs::path& open_path,
    const plugin_load_options& options) {
  const troupe_plugin* api = plugin_table_of(open_plugin_library(open_path, file), file);
  // NOTES: the mapping outlives the file: the private copy goes as soon as it is open, so a
  // process that never runs the destructor (killed, _exit) leaves nothing in /tmp.
  if (options.fresh_copy) drop_private_copy(open_path);
  const plugin_kind kind = check_plugin_table(api, file);
  check_name(api->name, file);
  check_kind(api->name, kind, file, options);

  auto library = std::make_shared<plugin_library>();
  library->name = api->name;
  library->version = api->version;
  library->description = api->description != nullptr ? api->description : "";
  library->kind = kind;
  library->abi_major = api->abi_major;
  library->abi_minor = api->abi_minor;
  library->file = canonical;
  library->loaded_from = open_path;
  library->api = api;
  for (const auto& other : loaded_)
    if (other->name == library->name)
      library->generation = std::max(library->generation, other->generation + 1);

  init_plugin(*library, file);
  spdlog::debug("loaded plugin {} {} ({}) from {}", library->name, library->version,
                name_of(library->kind), open_path.string());
  loaded_.push_back(library);
  return library;
}

}  // namespace troupe
