#include "runtime/checkpoint/safetensors.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>

#include <nlohmann/json.hpp>

namespace troupe {

namespace fs = std::filesystem;

struct safetensors_file::mapping {
  void* address = nullptr;
  std::size_t size = 0;
  ~mapping() {
    if (address != nullptr && address != MAP_FAILED) munmap(address, size);
  }
};

std::string_view safetensors_dtype_name(dtype type) {
  switch (type) {
    case dtype::f32:
      return "F32";
    case dtype::bf16:
      return "BF16";
    case dtype::f16:
      return "F16";
    case dtype::f8_e4m3:
      return "F8_E4M3";
    case dtype::i32:
      return "I32";
    case dtype::i64:
      return "I64";
    case dtype::u8:
      return "U8";
  }
  return "?";
}

namespace {

[[noreturn]] void bad(const fs::path& file, const std::string& cause) {
  throw checkpoint_error(fmt::format("{}: {}", file.string(), cause));
}

std::uint64_t read_le64(const unsigned char* p) {
  std::uint64_t value = 0;
  for (int i = 7; i >= 0; --i) value = (value << 8) | p[i];
  return value;
}

constexpr std::uint64_t max_header_bytes = 100u << 20;  // safetensors' own limit

/// The JSON header of a mapped file, `header_length` bytes after the 8-byte length field.
nlohmann::json parse_header(const fs::path& file, const unsigned char* bytes,
                            std::uint64_t header_length) {
  nlohmann::json header;
  try {
    header = nlohmann::json::parse(reinterpret_cast<const char*>(bytes + 8),
                                   reinterpret_cast<const char*>(bytes + 8 + header_length));
  } catch (const nlohmann::json::exception& e) {
    // Not only parse_error: a number beyond double range (1e400) throws out_of_range.
    bad(file, fmt::format("the header is not valid JSON: {}", e.what()));
  }
  if (!header.is_object()) bad(file, "the header is not a JSON object");
  return header;
}

/// Reads the shape of tensor `name` into `shape`: its number of elements.
std::uint64_t parse_shape(const fs::path& file, const std::string& name, const nlohmann::json& spec,
                          std::vector<std::int64_t>& shape) {
  if (!spec["shape"].is_array())
    bad(file, fmt::format("tensor '{}': shape must be an array", name));
  if (spec["shape"].size() > 16)
    bad(file, fmt::format("tensor '{}': shape has {} dimensions (at most 16)", name,
                          spec["shape"].size()));
  // NOTES: the element count is bounded while it is multiplied: a shape claiming 2^62+1 elements
  // must not wrap around to match a 4-byte data range.
  constexpr std::uint64_t max_elements = std::uint64_t{1} << 60;
  std::uint64_t count = 1;
  for (const auto& extent : spec["shape"]) {
    if (!extent.is_number_integer() || extent.get<std::int64_t>() < 0 ||
        (extent.is_number_unsigned() && extent.get<std::uint64_t>() > max_elements))
      bad(file, fmt::format("tensor '{}': shape {} has a bad extent", name, spec["shape"].dump()));
    shape.push_back(extent.get<std::int64_t>());
    const auto e = static_cast<std::uint64_t>(shape.back());
    if (e != 0 && count > max_elements / e)
      bad(file, fmt::format("tensor '{}': shape {} has more than 2^60 elements", name,
                            spec["shape"].dump()));
    count *= e;
  }
  return count;
}

/// The header's entry of tensor `name`, checked against the `data_size`-byte data section.
safetensors_entry parse_entry(const fs::path& file, const std::string& name,
                              const nlohmann::json& spec, std::uint64_t data_size) {
  if (!spec.is_object() || !spec.contains("dtype") || !spec.contains("shape") ||
      !spec.contains("data_offsets"))
    bad(file, fmt::format("tensor '{}': needs dtype, shape and data_offsets", name));
  safetensors_entry entry;
  entry.name = name;
  const std::string type_name = spec["dtype"].is_string() ? spec["dtype"].get<std::string>() : "";
  auto type = parse_dtype(type_name);
  if (!type)
    bad(file, fmt::format("tensor '{}': dtype {} is not supported (troupe reads F32, BF16, F16, "
                          "F8_E4M3, I32, I64, U8)",
                          name, spec["dtype"].dump()));
  entry.type = *type;
  const std::uint64_t count = parse_shape(file, name, spec, entry.shape);
  const auto& offsets = spec["data_offsets"];
  if (!offsets.is_array() || offsets.size() != 2 || !offsets[0].is_number_unsigned() ||
      !offsets[1].is_number_unsigned())
    bad(file, fmt::format("tensor '{}': data_offsets must be [begin, end]", name));
  entry.begin = offsets[0].get<std::uint64_t>();
  entry.end = offsets[1].get<std::uint64_t>();
  if (entry.begin > entry.end || entry.end > data_size)
    bad(file,
        fmt::format(
            "tensor '{}': bytes [{}, {}) are outside the {}-byte data section (truncated file?)",
            name, entry.begin, entry.end, data_size));
  if (entry.end - entry.begin != count * size_of(entry.type))
    bad(file, fmt::format("tensor '{}': {} bytes for shape {} of {} (needs {})", name,
                          entry.end - entry.begin, spec["shape"].dump(), type_name,
                          count * size_of(entry.type)));
  return entry;
}

/// Throws when two entries' bytes overlap in the data section.
void check_no_overlaps(const fs::path& file, const std::vector<safetensors_entry>& entries) {
  std::vector<const safetensors_entry*> by_offset;
  for (const auto& e : entries) by_offset.push_back(&e);
  std::sort(by_offset.begin(), by_offset.end(),
            [](auto* a, auto* b) { return a->begin < b->begin; });
  for (std::size_t i = 1; i < by_offset.size(); ++i)
    if (by_offset[i]->begin < by_offset[i - 1]->end)
      bad(file, fmt::format("tensors '{}' and '{}' overlap in the data section",
                            by_offset[i - 1]->name, by_offset[i]->name));
}

}  // namespace

std::shared_ptr<safetensors_file::mapping> safetensors_file::map_file(const fs::path& file) {
  const int fd = ::open(file.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) bad(file, fmt::format("cannot open: {}", std::strerror(errno)));
  struct stat info {};
  if (fstat(fd, &info) != 0) {
    const int saved = errno;
    ::close(fd);
    bad(file, fmt::format("cannot stat: {}", std::strerror(saved)));
  }
  const auto size = static_cast<std::uint64_t>(info.st_size);
  if (size < 8) {
    ::close(fd);
    bad(file,
        fmt::format("{} bytes is too short for a safetensors file (the header length alone is 8)",
                    size));
  }
  auto map = std::make_shared<mapping>();
  map->size = static_cast<std::size_t>(size);
  map->address = mmap(nullptr, map->size, PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  if (map->address == MAP_FAILED) bad(file, fmt::format("cannot map: {}", std::strerror(errno)));
  return map;
}

safetensors_file safetensors_file::open(const fs::path& file) {
  safetensors_file result;
  result.path_ = file;
  auto map = map_file(file);
  // NOTES: map_file checked that the file is at least 8 bytes long.
  const auto size = static_cast<std::uint64_t>(map->size);
  const auto* bytes = static_cast<const unsigned char*>(map->address);
  const std::uint64_t header_length = read_le64(bytes);
  if (header_length > max_header_bytes || header_length > size - 8)
    bad(file, fmt::format("the header claims {} bytes but the file has {} after the length field "
                          "(truncated or not "
                          "a safetensors file)",
                          header_length, size - 8));
  const std::uint64_t data_size = size - 8 - header_length;
  const nlohmann::json header = parse_header(file, bytes, header_length);
  for (auto it = header.begin(); it != header.end(); ++it) {
    if (it.key() == "__metadata__") {
      if (!it->is_object()) bad(file, "__metadata__ must be an object of strings");
      for (auto m = it->begin(); m != it->end(); ++m)
        if (m->is_string()) result.metadata_[m.key()] = m->get<std::string>();
      continue;
    }
    result.entries_.push_back(parse_entry(file, it.key(), *it, data_size));
  }
  check_no_overlaps(file, result.entries_);
  std::sort(result.entries_.begin(), result.entries_.end(),
            [](const auto& a, const auto& b) { return a.name < b.name; });
  result.mapping_ = std::move(map);
  result.data_start_ = 8 + header_length;
  return result;
}

const safetensors_entry* safetensors_file::find(std::string_view name) const {
  auto it =
      std::lower_bound(entries_.begin(), entries_.end(), name,
                       [](const safetensors_entry& e, std::string_view n) { return e.name < n; });
  return it != entries_.end() && it->name == name ? &*it : nullptr;
}

tensor safetensors_file::get(std::string_view name) const {
  const safetensors_entry* entry = find(name);
  if (entry == nullptr)
    throw checkpoint_error(fmt::format("{}: no tensor named '{}'", path_.string(), name));
  char* address = static_cast<char*>(mapping_->address) + data_start_ + entry->begin;
  // A DLPack capsule whose deleter drops a reference to the mapping: the view keeps it alive.
  struct capsule {
    std::shared_ptr<mapping> keep;
    std::vector<std::int64_t> shape;
    DLManagedTensor managed{};
  };
  auto* c = new capsule{mapping_, entry->shape, {}};
  c->managed.dl_tensor = DLTensor{address,
                                  {kDLCPU, 0},
                                  static_cast<int>(c->shape.size()),
                                  to_dlpack(entry->type),
                                  c->shape.data(),
                                  nullptr,
                                  0};
  c->managed.manager_ctx = c;
  c->managed.deleter = [](DLManagedTensor* self) {
    delete static_cast<capsule*>(self->manager_ctx);
  };
  return tensor::from_dlpack(&c->managed);
}

void write_safetensors(const fs::path& file,
                       const std::vector<std::pair<std::string, tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  nlohmann::json header = nlohmann::json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::uint64_t offset = 0;
  for (const auto& [name, t] : tensors) {
    if (!t.defined() || !t.where().is_cpu() || !t.is_contiguous())
      throw checkpoint_error(fmt::format(
          "{}: tensor '{}' must be a contiguous CPU tensor to be written", file.string(), name));
    if (header.contains(name))
      throw checkpoint_error(fmt::format("{}: tensor '{}' appears twice", file.string(), name));
    header[name] = {{"dtype", safetensors_dtype_name(t.type())},
                    {"shape", t.shape()},
                    {"data_offsets", {offset, offset + t.nbytes()}}};
    offset += t.nbytes();
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  const fs::path temporary = file.parent_path() / (file.filename().string() + ".partial");
  {
    std::ofstream out(temporary, std::ios::binary | std::ios::trunc);
    if (!out)
      throw checkpoint_error(
          fmt::format("{}: cannot write: {}", temporary.string(), std::strerror(errno)));
    unsigned char length[8];
    std::uint64_t n = text.size();
    for (int i = 0; i < 8; ++i) length[i] = static_cast<unsigned char>(n >> (8 * i));
    out.write(reinterpret_cast<const char*>(length), 8);
    out.write(text.data(), static_cast<std::streamsize>(text.size()));
    for (const auto& [name, t] : tensors)
      out.write(static_cast<const char*>(t.data()), static_cast<std::streamsize>(t.nbytes()));
    out.flush();
    if (!out)
      throw checkpoint_error(
          fmt::format("{}: write failed: {}", temporary.string(), std::strerror(errno)));
  }
  // Flush to disk before the rename, so a crash leaves either the old file or the whole new one.
  if (int fd = ::open(temporary.c_str(), O_RDONLY); fd >= 0) {
    ::fsync(fd);
    ::close(fd);
  }
  std::error_code ec;
  fs::rename(temporary, file, ec);
  if (ec)
    throw checkpoint_error(
        fmt::format("{}: cannot move the new file into place: {}", file.string(), ec.message()));
}

}  // namespace troupe
