#include "runtime/experts/expert_exchange_plan.hpp"

#include <algorithm>
#include <numeric>

#include "runtime/core/error.hpp"

namespace troupe {

expert_rank_layout::expert_rank_layout(std::vector<std::vector<std::int64_t>> rank_experts,
                                       std::int64_t experts)
    : rank_experts_(std::move(rank_experts)), experts_(experts) {
  if (rank_experts_.empty()) fail("expert parallelism needs at least one rank");
  if (experts < 1) fail("expert parallelism needs at least one routed expert, got {}", experts);
  owner_.assign(static_cast<std::size_t>(experts), -1);
  for (std::size_t p = 0; p < rank_experts_.size(); ++p) {
    const auto& mine = rank_experts_[p];
    widest_ = std::max<std::int64_t>(widest_, static_cast<std::int64_t>(mine.size()));
    for (std::size_t j = 0; j < mine.size(); ++j) {
      const std::int64_t e = mine[j];
      if (e < 0 || e >= experts)
        fail("expert parallelism: rank {} holds expert {}, but the layer has experts 0 to {}", p, e,
             experts - 1);
      if (j > 0 && e <= mine[j - 1])
        fail("expert parallelism: rank {}'s experts are not ascending ({} after {})", p, e,
             mine[j - 1]);
      auto& owner = owner_[static_cast<std::size_t>(e)];
      if (owner >= 0)
        fail("expert parallelism: expert {} is on rank {} and on rank {}", e, owner, p);
      owner = static_cast<std::int32_t>(p);
    }
  }
  const auto missing = std::find(owner_.begin(), owner_.end(), -1);
  if (missing != owner_.end())
    fail("expert parallelism: expert {} is on no rank", missing - owner_.begin());
}

const std::vector<std::int64_t>& expert_rank_layout::experts_of(std::int32_t rank) const {
  if (rank < 0 || rank >= ranks())
    fail("expert parallelism: rank {} of a group of {}", rank, ranks());
  return rank_experts_[static_cast<std::size_t>(rank)];
}

std::vector<std::int64_t> expert_rank_layout::counts_for(
    std::int32_t peer, std::span<const std::int64_t> counts) const {
  if (static_cast<std::int64_t>(counts.size()) != experts_)
    fail("expert parallelism: {} row counts for a layer of {} experts", counts.size(), experts_);
  std::vector<std::int64_t> row(static_cast<std::size_t>(widest_), 0);
  const auto& theirs = experts_of(peer);
  for (std::size_t j = 0; j < theirs.size(); ++j)
    row[j] = counts[static_cast<std::size_t>(theirs[j])];
  return row;
}

std::int64_t expert_exchange_plan::rows_to_others() const {
  std::int64_t n = 0;
  for (std::size_t p = 0; p < send_rows.size(); ++p)
    if (static_cast<std::int32_t>(p) != rank) n += send_rows[p];
  return n;
}

namespace {

/// The inverse of a permutation (empty stays empty: the identity).
std::vector<std::int64_t> inverse(const std::vector<std::int64_t>& source) {
  std::vector<std::int64_t> out(source.size());
  for (std::size_t i = 0; i < source.size(); ++i)
    out[static_cast<std::size_t>(source[i])] = static_cast<std::int64_t>(i);
  return out;
}

bool is_identity(const std::vector<std::int64_t>& source) {
  for (std::size_t i = 0; i < source.size(); ++i)
    if (source[i] != static_cast<std::int64_t>(i)) return false;
  return true;
}

}  // namespace

expert_exchange_plan plan_exchange(const expert_rank_layout& layout, std::int32_t rank,
                                   std::span<const std::int64_t> counts,
                                   const std::vector<std::vector<std::int64_t>>& received_counts) {
  const std::int32_t ranks = layout.ranks();
  const auto& mine = layout.experts_of(rank);
  if (static_cast<std::int64_t>(counts.size()) != layout.experts())
    fail("expert parallelism: {} row counts for a layer of {} experts", counts.size(),
         layout.experts());
  if (static_cast<std::int32_t>(received_counts.size()) != ranks)
    fail("expert parallelism: counts from {} ranks in a group of {}", received_counts.size(),
         ranks);
  expert_exchange_plan plan;
  plan.rank = rank;
  plan.send_rows.assign(static_cast<std::size_t>(ranks), 0);
  plan.receive_rows.assign(static_cast<std::size_t>(ranks), 0);
  plan.expert_rows.assign(mine.size(), 0);

  // Token side: where each expert's rows start in the grouping (ascending experts).
  std::vector<std::int64_t> first(counts.size() + 1, 0);
  for (std::size_t e = 0; e < counts.size(); ++e) {
    if (counts[e] < 0) fail("expert parallelism: expert {} has {} rows", e, counts[e]);
    first[e + 1] = first[e] + counts[e];
  }
  plan.token_rows = first.back();
  // The send buffer: peer by peer, each peer's experts in its order.
  plan.send_source.reserve(static_cast<std::size_t>(plan.token_rows));
  for (std::int32_t p = 0; p < ranks; ++p)
    for (std::int64_t e : layout.experts_of(p)) {
      const auto u = static_cast<std::size_t>(e);
      plan.send_rows[static_cast<std::size_t>(p)] += counts[u];
      for (std::int64_t r = first[u]; r < first[u + 1]; ++r) plan.send_source.push_back(r);
    }

  // Expert side: what each source sends for each of my experts, source-major in the buffer.
  std::vector<std::vector<std::int64_t>> at(static_cast<std::size_t>(ranks));  // buffer offsets
  std::int64_t offset = 0;
  for (std::int32_t q = 0; q < ranks; ++q) {
    const auto& row = received_counts[static_cast<std::size_t>(q)];
    if (static_cast<std::int64_t>(row.size()) != layout.widest())
      fail("expert parallelism: rank {} sent {} counts, the group's rows have {}", q, row.size(),
           layout.widest());
    auto& starts = at[static_cast<std::size_t>(q)];
    for (std::size_t j = 0; j < row.size(); ++j) {
      if (row[j] < 0 || (j >= mine.size() && row[j] != 0))
        fail(
            "expert parallelism: rank {} sends {} rows for this rank's expert slot {} (it holds "
            "{} experts)",
            q, row[j], j, mine.size());
      if (j >= mine.size()) continue;
      starts.push_back(offset);
      offset += row[j];
      plan.receive_rows[static_cast<std::size_t>(q)] += row[j];
      plan.expert_rows[j] += row[j];
    }
  }
  plan.received_rows = offset;
  plan.receive_source.reserve(static_cast<std::size_t>(offset));
  for (std::size_t j = 0; j < mine.size(); ++j)
    for (std::int32_t q = 0; q < ranks; ++q) {
      const std::int64_t start = at[static_cast<std::size_t>(q)][j];
      const std::int64_t n = received_counts[static_cast<std::size_t>(q)][j];
      for (std::int64_t r = 0; r < n; ++r) plan.receive_source.push_back(start + r);
    }

  plan.combine_send_source = inverse(plan.receive_source);
  plan.combine_receive_source = inverse(plan.send_source);
  for (auto* list : {&plan.send_source, &plan.receive_source, &plan.combine_send_source,
                     &plan.combine_receive_source})
    if (is_identity(*list)) list->clear();
  return plan;
}

}  // namespace troupe
