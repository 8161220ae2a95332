#pragma once

// The wire format of messages between processes. Within a process actors hand each other
// messages whose tensors share storage with the sender; between processes a gateway
// (runtime/cluster) writes a message's small fields as bytes, which travel through CAF, and its
// tensors, which travel over UCX. One `wire(archive, x)` function both writes and reads a type
// (llm.c's forward/backward spirit: no two copies to drift). Messages and the structs inside them
// list their fields once:
//
//   struct stage_transfer {
//     bool gradient = false;
//     tensor value;
//     auto fields() { return std::tie(gradient, value); }
//   };
//
// Types that need more (a schedule plan travels as what builds it) add a `wire` overload next to
// their declaration. Actor handles travel as actor names and come out as the receiving process's
// handle for that name (the actor itself or its proxy).

#include <cstdint>
#include <cstring>
#include <functional>
#include <map>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "runtime/actor/actor_ref.hpp"
#include "runtime/core/error.hpp"
#include "runtime/tensor/tensor.hpp"

namespace troupe {

/// Names actors on the way out and finds them on the way in.
struct actor_names {
  std::function<std::string(const actor_ref&)> name_of;
  std::function<actor_ref(const std::string&)> find;
};

/// Writes a message's fields as bytes and collects its tensors.
class wire_writer {
 public:
  static constexpr bool loading = false;
  explicit wire_writer(const actor_names* names) : names_(names) {}

  template <class... Ts>
  void operator()(Ts&... xs) {
    (wire(*this, xs), ...);
  }
  void bytes(const void* data, std::size_t n) {
    const auto* p = static_cast<const std::uint8_t*>(data);
    body_.insert(body_.end(), p, p + n);
  }
  void add_tensor(const tensor& t) { tensors_.push_back(t); }
  std::string name_of(const actor_ref& actor) const { return names_->name_of(actor); }

  std::vector<std::uint8_t>& body() { return body_; }
  std::vector<tensor>& tensors() { return tensors_; }

 private:
  const actor_names* names_;
  std::vector<std::uint8_t> body_;
  std::vector<tensor> tensors_;
};

/// Reads what wire_writer wrote; throws troupe::error on a short or malformed body.
class wire_reader {
 public:
  static constexpr bool loading = true;
  wire_reader(const std::vector<std::uint8_t>& body, std::vector<tensor> tensors,
              const actor_names* names)
      : body_(body), tensors_(std::move(tensors)), names_(names) {}

  template <class... Ts>
  void operator()(Ts&... xs) {
    (wire(*this, xs), ...);
  }
  void bytes(void* data, std::size_t n) {
    if (position_ + n > body_.size()) fail("a cross-process message ends early: it is malformed");
    std::memcpy(data, body_.data() + position_, n);
    position_ += n;
  }
  /// A count of elements that are each at least `element_bytes` long: checked against what is
  /// left, so a corrupt count cannot ask for more memory than the message holds.
  std::uint64_t count(std::uint64_t n, std::size_t element_bytes) const {
    if (element_bytes > 0 && n > (body_.size() - position_) / element_bytes)
      fail("a cross-process message counts {} elements in {} bytes: it is malformed", n,
           body_.size() - position_);
    return n;
  }
  tensor next_tensor() {
    if (next_ >= tensors_.size() || !tensors_[next_].defined())
      fail("a cross-process message lacks a tensor: it is malformed");
    return std::move(tensors_[next_++]);
  }
  actor_ref find(const std::string& name) const { return names_->find(name); }
  bool finished() const { return position_ == body_.size() && next_ == tensors_.size(); }

 private:
  const std::vector<std::uint8_t>& body_;
  std::size_t position_ = 0;
  std::vector<tensor> tensors_;
  std::size_t next_ = 0;
  const actor_names* names_;
};

// The wire format of the basic types; structs list their fields() or add their own `wire`.

template <class Archive, class T>
requires((std::is_arithmetic_v<T> && !std::is_same_v<T, bool>) ||
         std::is_enum_v<T>) void wire(Archive& a, T& x) {
  // NOTES: an enum arrives as its bytes; the code that uses one checks its range (a malformed
  // value is refused there, as any other bad field).
  a.bytes(&x, sizeof x);
}

/// A bool travels as one byte, 0 or 1 (any other byte is malformed, not a bool).
template <class Archive>
void wire(Archive& a, bool& x) {
  std::uint8_t byte = x ? 1 : 0;
  a.bytes(&byte, 1);
  if constexpr (Archive::loading) {
    if (byte > 1) fail("a cross-process message holds {} for a bool: it is malformed", byte);
    x = byte == 1;
  }
}

template <class Archive>
void wire(Archive& a, std::string& x) {
  std::uint64_t n = x.size();
  wire(a, n);
  if constexpr (Archive::loading) x.resize(a.count(n, 1));
  if (n > 0) a.bytes(x.data(), n);
}

template <class Archive, class T>
void wire(Archive& a, std::vector<T>& x) {
  std::uint64_t n = x.size();
  wire(a, n);
  if constexpr (Archive::loading) x.resize(a.count(n, std::is_arithmetic_v<T> ? sizeof(T) : 1));
  if constexpr (std::is_arithmetic_v<T>) {
    if (n > 0) a.bytes(x.data(), n * sizeof(T));
  } else {
    for (auto& item : x) wire(a, item);
  }
}

template <class Archive>
void wire(Archive& a, std::vector<bool>& x) {
  std::uint64_t n = x.size();
  wire(a, n);
  if constexpr (Archive::loading) x.resize(a.count(n, 1));
  for (std::size_t i = 0; i < n; ++i) {
    bool b = x[i];
    wire(a, b);
    x[i] = b;
  }
}

template <class Archive, class A, class B>
void wire(Archive& a, std::pair<A, B>& x) {
  wire(a, x.first);
  wire(a, x.second);
}

template <class Archive, class K, class V>
void wire(Archive& a, std::map<K, V>& x) {
  std::uint64_t n = x.size();
  wire(a, n);
  if constexpr (Archive::loading) {
    x.clear();
    a.count(n, 1);
    for (std::uint64_t i = 0; i < n; ++i) {
      std::pair<K, V> item;
      wire(a, item);
      x.emplace(std::move(item));
    }
  } else {
    for (auto& [key, value] : x) {
      K k = key;
      wire(a, k);
      wire(a, value);
    }
  }
}

/// Tensors: a flag in the body (defined or not); the bytes go over UCX.
template <class Archive>
void wire(Archive& a, tensor& x) {
  bool defined = x.defined();
  wire(a, defined);
  if constexpr (Archive::loading) {
    x = defined ? a.next_tensor() : tensor();
  } else {
    if (defined) a.add_tensor(x);
  }
}

template <class Archive>
void wire(Archive& a, actor_ref& x) {
  std::string name;
  if constexpr (!Archive::loading) name = a.name_of(x);
  wire(a, name);
  if constexpr (Archive::loading) x = a.find(name);
}

/// A struct that lists its fields: `auto fields() { return std::tie(a, b, c); }`.
template <class Archive, class T>
requires requires(T& x) {
  x.fields();
}
void wire(Archive& a, T& x) {
  std::apply([&a](auto&... field) { (wire(a, field), ...); }, x.fields());
}

}  // namespace troupe
