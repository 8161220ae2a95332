#include "runtime/plugin/registry.hpp"

#include <dlfcn.h>
#include <stdlib.h>

#include <cstddef>
#include <deque>
#include <system_error>

#include <fmt/ranges.h>
#include <spdlog/spdlog.h>

namespace troupe {

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

/// The last field of ABI 1.0's troupe_plugin must be inside what the plugin declares.
constexpr std::size_t abi_1_0_plugin_size =
    offsetof(troupe_plugin, statistics) + sizeof(troupe_plugin::statistics);

/// Names of the entries a kind needs that the table leaves NULL.
std::vector<std::string> missing_functions(const troupe_plugin& api, plugin_kind kind) {
  std::vector<std::string> missing;
  auto need = [&](const void* fn, const char* name) {
    if (fn == nullptr) missing.emplace_back(name);
  };
  need(reinterpret_cast<const void*>(api.init), "init");
  need(reinterpret_cast<const void*>(api.create), "create");
  need(reinterpret_cast<const void*>(api.destroy), "destroy");
  if (is_layer_kind(kind)) {
    need(reinterpret_cast<const void*>(api.parameters), "parameters");
    need(reinterpret_cast<const void*>(api.bind), "bind");
    need(reinterpret_cast<const void*>(api.infer_outputs), "infer_outputs");
    need(reinterpret_cast<const void*>(api.forward), "forward");
    need(reinterpret_cast<const void*>(api.backward), "backward");
    need(reinterpret_cast<const void*>(api.forget), "forget");
    need(reinterpret_cast<const void*>(api.export_state), "export_state");
    need(reinterpret_cast<const void*>(api.import_state), "import_state");
  } else {
    need(reinterpret_cast<const void*>(api.gemm_provider), "gemm_provider");
  }
  return missing;
}

std::string dl_error() {
  const char* message = dlerror();
  return message != nullptr ? message : "unknown dlopen error";
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
    fs::path file(reference);
    std::error_code ec;
    if (!fs::exists(file, ec))
      throw plugin_load_error(plugin_load_failure::not_found, file, "no such file");
    return load_file(file, "", options);
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
  return load_file(*file, reference, options);
}

std::vector<std::shared_ptr<const plugin_library>> plugin_registry::loaded() const {
  std::lock_guard lock(mutex_);
  return {loaded_.begin(), loaded_.end()};
}

fs::path plugin_registry::private_copy(const fs::path& file) {
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

namespace {

/// Throws wrong_kind when `library` is not of the kind the load asks for.
void check_kind(const plugin_library& library, const fs::path& file,
                const plugin_load_options& options) {
  if (options.expected_kind && library.kind != *options.expected_kind)
    throw plugin_load_error(
        plugin_load_failure::wrong_kind, file,
        fmt::format("plugin '{}' is a {} plugin, but a plugin of kind {} is needed here",
                    library.name, name_of(library.kind), name_of(*options.expected_kind)));
}

/// Opens `open_path` and calls its entry function: the plugin's table (never NULL).
const troupe_plugin* open_plugin_table(const fs::path& open_path, const fs::path& file) {
  dlerror();
  // Never dlclose'd: a handle whose checks fail later is simply abandoned, so no code that a
  // static constructor may have started can lose its text.
  void* handle = dlopen(open_path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (handle == nullptr)
    throw plugin_load_error(plugin_load_failure::not_loadable, file, dl_error());
  dlerror();
  void* symbol = dlsym(handle, TROUPE_PLUGIN_ENTRY_SYMBOL);
  if (symbol == nullptr)
    throw plugin_load_error(plugin_load_failure::missing_entry, file,
                            fmt::format("no '{}' symbol: not a troupe plugin, or built without "
                                        "TROUPE_PLUGIN_EXPORT on the entry function",
                                        TROUPE_PLUGIN_ENTRY_SYMBOL));
  auto entry = reinterpret_cast<troupe_plugin_entry_fn>(symbol);
  const troupe_plugin* api = entry();
  if (api == nullptr)
    throw plugin_load_error(plugin_load_failure::bad_descriptor, file,
                            fmt::format("{}() returned NULL", TROUPE_PLUGIN_ENTRY_SYMBOL));
  return api;
}

/// Checks the plugin table's ABI version, size, kind, name and functions: the plugin's kind.
plugin_kind check_plugin_table(const troupe_plugin* api, const fs::path& file,
                               std::string_view requested_name) {
  if (api->abi_major != TROUPE_PLUGIN_ABI_MAJOR)
    throw plugin_load_error(plugin_load_failure::abi_mismatch, file,
                            fmt::format("built for plugin ABI {}.{}, this troupe speaks ABI {}; "
                                        "rebuild the plugin against this troupe's troupe_plugin.h",
                                        api->abi_major, api->abi_minor, host_abi_version()));
  if (api->abi_minor > TROUPE_PLUGIN_ABI_MINOR)
    throw plugin_load_error(plugin_load_failure::abi_mismatch, file,
                            fmt::format("needs plugin ABI {}.{}, newer than this troupe's ABI {}; "
                                        "upgrade troupe or rebuild the plugin",
                                        api->abi_major, api->abi_minor, host_abi_version()));
  if (api->struct_size < abi_1_0_plugin_size)
    throw plugin_load_error(
        plugin_load_failure::bad_descriptor, file,
        fmt::format("plugin table is {} bytes, ABI {}.0 needs at least {}", api->struct_size,
                    TROUPE_PLUGIN_ABI_MAJOR, abi_1_0_plugin_size));
  auto kind = from_abi(static_cast<std::uint32_t>(api->kind));
  if (!kind)
    throw plugin_load_error(plugin_load_failure::bad_descriptor, file,
                            fmt::format("unknown plugin kind {}", static_cast<int>(api->kind)));
  if (api->name == nullptr || *api->name == '\0' || api->version == nullptr)
    throw plugin_load_error(plugin_load_failure::bad_descriptor, file,
                            "the plugin table has no name or no version");
  if (!requested_name.empty() && requested_name != api->name)
    throw plugin_load_error(plugin_load_failure::bad_descriptor, file,
                            fmt::format("the library calls itself '{}', but was loaded as '{}'",
                                        api->name, requested_name));
  if (auto missing = missing_functions(*api, *kind); !missing.empty())
    throw plugin_load_error(plugin_load_failure::bad_descriptor, file,
                            fmt::format("a {} plugin must provide {}; these are NULL",
                                        name_of(*kind), fmt::join(missing, ", ")));
  return *kind;
}

/// Calls the plugin's init() with its host; throws init_failed with its message when it fails.
void init_plugin(const plugin_library& library, const fs::path& file) {
  troupe_error init_error{};
  if (library.api->init(make_host(library.name), &init_error) != TROUPE_STATUS_OK) {
    init_error.message[sizeof(init_error.message) - 1] = '\0';
    throw plugin_load_error(
        plugin_load_failure::init_failed, file,
        fmt::format("init() of plugin '{}' failed: {}", library.name,
                    *init_error.message != '\0' ? init_error.message : "(no message)"));
  }
}

}  // namespace

std::shared_ptr<const plugin_library> plugin_registry::load_file(
    const fs::path& file, std::string_view requested_name, const plugin_load_options& options) {
  std::lock_guard lock(mutex_);
  std::error_code ec;
  const fs::path canonical = fs::weakly_canonical(file, ec);
  if (!options.fresh_copy) {
    for (const auto& library : loaded_) {
      if (library->file == canonical) {
        check_kind(*library, file, options);
        return library;
      }
    }
  }

  const fs::path open_path = options.fresh_copy ? private_copy(canonical) : canonical;
  const troupe_plugin* api = open_plugin_table(open_path, file);
  const plugin_kind kind = check_plugin_table(api, file, requested_name);

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
  check_kind(*library, file, options);
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
