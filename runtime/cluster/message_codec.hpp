#pragma once

// How in-process messages cross processes. Actors send each other messages whose tensors share
// storage with the sender; between processes a gateway (cluster.hpp) turns a message into a
// descriptor for CAF (its small fields as bytes) and tensors for UCX, and back. The codec knows
// every message shape that may cross, each described once by a `wire` function that both writes
// and reads (one function per struct, llm.c's forward/backward spirit: no two copies to drift).
//
//   template <class Archive> void wire(Archive& a, step_order& x) { a(x.step, x.inputs, ...); }
//   codec.add_request<rank_step_report, atoms::run_step_atom, step_order>("run_step");
//
// Actor handles inside messages travel as actor names and come out as the receiving process's
// handle for that name (the actor itself or its proxy).

#include <cstdint>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include <caf/actor.hpp>
#include <caf/atom.hpp>
#include <caf/error.hpp>
#include <caf/event_based_actor.hpp>
#include <caf/message.hpp>

#include "runtime/core/error.hpp"
#include "runtime/tensor/tensor.hpp"

namespace troupe {

/// Names actors on the way out and finds them on the way in.
struct actor_names {
  std::function<std::string(const caf::actor&)> name_of;
  std::function<caf::actor(const std::string&)> find;
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
  std::string name_of(const caf::actor& actor) const { return names_->name_of(actor); }

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
  tensor next_tensor() {
    if (next_ >= tensors_.size()) fail("a cross-process message lacks a tensor: it is malformed");
    return std::move(tensors_[next_++]);
  }
  caf::actor find(const std::string& name) const { return names_->find(name); }
  bool finished() const { return position_ == body_.size() && next_ == tensors_.size(); }

 private:
  const std::vector<std::uint8_t>& body_;
  std::size_t position_ = 0;
  std::vector<tensor> tensors_;
  std::size_t next_ = 0;
  const actor_names* names_;
};

// The wire format of the basic types; structs add their own `wire` overloads next to them.

template <class Archive, class T>
requires(std::is_arithmetic_v<T> || std::is_enum_v<T>) void wire(Archive& a, T& x) {
  a.bytes(&x, sizeof x);
}

template <class Archive, caf::atom_value V>
void wire(Archive&, caf::atom_constant<V>&) {}

template <class Archive>
void wire(Archive& a, std::string& x) {
  std::uint64_t n = x.size();
  wire(a, n);
  if constexpr (Archive::loading) x.resize(n);
  if (n > 0) a.bytes(x.data(), n);
}

template <class Archive, class T>
void wire(Archive& a, std::vector<T>& x) {
  std::uint64_t n = x.size();
  wire(a, n);
  if constexpr (Archive::loading) x.resize(n);
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
  if constexpr (Archive::loading) x.resize(n);
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
void wire(Archive& a, caf::actor& x) {
  std::string name;
  if constexpr (!Archive::loading) name = a.name_of(x);
  wire(a, name);
  if constexpr (Archive::loading) x = a.find(name);
}

/// The message shapes that may cross processes.
class message_codec {
 public:
  using reply_callback = std::function<void(caf::message)>;
  using error_callback = std::function<void(const caf::error&)>;

  struct shape {
    std::string name;
    bool request = false;
    bool reply = false;  ///< the reply of a request shape (found by name only)
    std::function<bool(const caf::message&)> matches;
    std::function<void(wire_writer&, const caf::message&)> write;
    std::function<caf::message(wire_reader&)> read;
    /// Requests: asks `target` (in this process) and hands the reply or the error back.
    std::function<void(caf::event_based_actor*, const caf::actor&, caf::message, reply_callback,
                       error_callback)>
        ask;
  };

  /// A message without a reply: (Ts...).
  template <class... Ts>
  void add_one_way(const std::string& name) {
    add(make_shape<Ts...>(name));
  }

  /// A request (Ts...) answered by a Reply; the reply's own shape is added too.
  template <class Reply, class... Ts>
  void add_request(const std::string& name) {
    shape s = make_shape<Ts...>(name);
    s.request = true;
    s.ask = [](caf::event_based_actor* self, const caf::actor& target, caf::message message,
               reply_callback on_reply, error_callback on_error) {
      self->request(target, caf::infinite, std::move(message))
          .then([on_reply](Reply& reply) { on_reply(caf::make_message(std::move(reply))); },
                [on_error](caf::error& e) { on_error(e); });
    };
    add(std::move(s));
    const std::string reply_name = "reply:" + name;
    shape reply = make_shape<Reply>(reply_name);
    reply.reply = true;
    add(std::move(reply));
    reply_names_[name] = reply_name;
  }

  /// The shape `message` has, or null when it may not cross processes.
  const shape* find(const caf::message& message) const;
  const shape* find(const std::string& name) const;
  /// The shape of the replies to request shape `request`.
  const shape* reply_of(const std::string& request) const;

 private:
  template <class... Ts>
  static shape make_shape(const std::string& name) {
    shape s;
    s.name = name;
    s.matches = [](const caf::message& m) { return m.match_elements<Ts...>(); };
    s.write = [](wire_writer& w, const caf::message& m) {
      write_elements<Ts...>(w, m, std::index_sequence_for<Ts...>{});
    };
    s.read = [](wire_reader& r) {
      std::tuple<Ts...> values;
      std::apply([&r](auto&... xs) { r(xs...); }, values);
      return std::apply([](auto&... xs) { return caf::make_message(std::move(xs)...); }, values);
    };
    return s;
  }

  template <class... Ts, std::size_t... I>
  static void write_elements(wire_writer& w, const caf::message& m, std::index_sequence<I...>) {
    // wire() takes non-const references (one function reads and writes); writing only reads.
    (wire(w, const_cast<Ts&>(m.get_as<Ts>(I))), ...);
  }

  void add(shape s);

  std::vector<shape> shapes_;
  std::map<std::string, std::string> reply_names_;
};

}  // namespace troupe
