#pragma once

// Every atom troupe's actors use, in one place. CAF 0.17 atoms hold at most 10 characters
// (caf::atom static_asserts it); TROUPE_ATOM(name) declares `name_atom` and the constant
// `name_atom_v` for sending.

#include <caf/atom.hpp>

#define TROUPE_ATOM(name)                                       \
  using name##_atom = ::caf::atom_constant<::caf::atom(#name)>; \
  inline constexpr name##_atom name##_atom_v {}

namespace troupe::atoms {

TROUPE_ATOM(ping);
TROUPE_ATOM(stop);
TROUPE_ATOM(status);
// Training (runtime/train).
TROUPE_ATOM(run_step);
TROUPE_ATOM(transfer);
TROUPE_ATOM(peers);
TROUPE_ATOM(gradients);
TROUPE_ATOM(optimize);
TROUPE_ATOM(biases);
TROUPE_ATOM(balance);
TROUPE_ATOM(save);
TROUPE_ATOM(snapshot);
TROUPE_ATOM(batch);
TROUPE_ATOM(position);
TROUPE_ATOM(reduced);
TROUPE_ATOM(peer_down);
// Hot swaps of plugins: prepare, then commit or abort (runtime/train).
TROUPE_ATOM(swap);
TROUPE_ATOM(commit);
TROUPE_ATOM(abort);
// Processes of one job (runtime/cluster).
TROUPE_ATOM(forward);
TROUPE_ATOM(arrived);
TROUPE_ATOM(expose);
TROUPE_ATOM(hello);
TROUPE_ATOM(gather);
TROUPE_ATOM(missing);
TROUPE_ATOM(introduce);
TROUPE_ATOM(peers_in);
TROUPE_ATOM(barrier);
TROUPE_ATOM(tick);
TROUPE_ATOM(finish);
TROUPE_ATOM(finished);
TROUPE_ATOM(proxy);
TROUPE_ATOM(watch);

}  // namespace troupe::atoms
