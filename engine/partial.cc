#include "engine/partial.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <string>

namespace embstore::engine {

std::vector<ShardPart> SplitByShard(const BagPlan& plan, std::span<const int64_t> shard_begins) {
  const int64_t bags = plan.num_bags();
  std::vector<ShardPart> parts(shard_begins.size());
  for (ShardPart& p : parts) p.offsets.reserve(static_cast<size_t>(bags));
  auto shard_of = [&](int64_t id) {
    return static_cast<size_t>(std::upper_bound(shard_begins.begin(), shard_begins.end(), id) -
                               shard_begins.begin() - 1);
  };
  for (int64_t b = 0; b < bags; ++b) {
    for (ShardPart& p : parts) p.offsets.push_back(static_cast<int64_t>(p.ids.size()));
    for (int64_t k = plan.bag_begin[b]; k < plan.bag_end[b]; ++k) {
      const int64_t id = plan.indices[k];
      if (id == plan.padding_row) continue;
      const size_t s = shard_of(id);
      ShardPart& p = parts[s];
      p.ids.push_back(id - shard_begins[s]);
      p.positions.push_back(k);
      if (plan.weights != nullptr) p.weights.push_back(plan.weights[k]);
      p.any = true;
    }
  }
  return parts;
}

namespace {

Status Malformed(size_t s, const std::string& what) {
  return Status::InvalidArgument("shard " + std::to_string(s) + "'s partial " + what);
}

void MergeMax(std::span<const ShardPart> parts, std::span<const Partial> partials, int64_t bags,
              int64_t dim, std::span<float> out) {
  for (int64_t b = 0; b < bags; ++b) {
    // The shard holding the bag's first entry decides NaN.
    size_t first_shard = parts.size();
    int64_t first_pos = std::numeric_limits<int64_t>::max();
    for (size_t s = 0; s < parts.size(); ++s) {
      const ShardPart& p = parts[s];
      if (!p.any) continue;
      const int64_t begin = p.offsets[b];
      const int64_t end = b + 1 < bags ? p.offsets[b + 1] : static_cast<int64_t>(p.ids.size());
      if (begin < end && p.positions[begin] < first_pos) {
        first_pos = p.positions[begin];
        first_shard = s;
      }
    }
    if (first_shard == parts.size()) continue;  // an empty bag: zeros
    const Partial& fp = partials[first_shard];
    const int64_t row0 = b * dim;
    // nan_cells are increasing in a node's reply; look up this bag's range.
    auto nan_it = std::lower_bound(fp.nan_cells.begin(), fp.nan_cells.end(), row0);
    for (int64_t d = 0; d < dim; ++d) {
      const int64_t cell = row0 + d;
      while (nan_it != fp.nan_cells.end() && *nan_it < cell) ++nan_it;
      if (nan_it != fp.nan_cells.end() && *nan_it == cell) {
        const uint32_t bits = fp.nan_bits[static_cast<size_t>(nan_it - fp.nan_cells.begin())];
        std::memcpy(&out[static_cast<size_t>(cell)], &bits, sizeof bits);
        continue;
      }
      bool have = false;
      float best = 0.0f;
      int64_t best_pos = 0;
      for (size_t s = 0; s < parts.size(); ++s) {
        if (!parts[s].any) continue;
        const int32_t pos = partials[s].max_positions[static_cast<size_t>(cell)];
        if (pos < 0) continue;
        const float x = partials[s].values[static_cast<size_t>(cell)];
        const int64_t global = parts[s].positions[static_cast<size_t>(pos)];
        if (!have || x > best || (x == best && global < best_pos)) {
          have = true;
          best = x;
          best_pos = global;
        }
      }
      out[static_cast<size_t>(cell)] = have ? best : 0.0f;
    }
  }
}

}  // namespace

Status MergePartials(std::span<const ShardPart> parts, std::span<const Partial> partials,
                     int64_t bags, int64_t dim, PoolingMode mode, std::span<float> out) {
  const size_t cells = static_cast<size_t>(bags * dim);
  if (partials.size() != parts.size()) {
    return Status::InvalidArgument("MergePartials: " + std::to_string(partials.size()) +
                                   " partials for " + std::to_string(parts.size()) + " shards");
  }
  if (out.size() != cells) return Status::InvalidArgument("MergePartials: out has the wrong size");
  const bool max_mode = mode == PoolingMode::kMax;
  for (size_t s = 0; s < parts.size(); ++s) {
    if (!parts[s].any) continue;
    const Partial& p = partials[s];
    if (p.values.size() != cells) return Malformed(s, "has the wrong number of values");
    if (p.counts.size() != static_cast<size_t>(bags)) return Malformed(s, "has the wrong counts");
    if (!max_mode) continue;
    if (p.max_positions.size() != cells || p.nan_cells.size() != p.nan_bits.size()) {
      return Malformed(s, "came without its max positions");
    }
    const auto n = static_cast<int32_t>(parts[s].ids.size());
    for (int32_t pos : p.max_positions) {
      if (pos >= n) return Malformed(s, "names a position past its ids");
    }
    for (size_t i = 0; i < p.nan_cells.size(); ++i) {
      if (p.nan_cells[i] < 0 || p.nan_cells[i] >= static_cast<int64_t>(cells) ||
          (i > 0 && p.nan_cells[i] <= p.nan_cells[i - 1])) {
        return Malformed(s, "has NaN cells out of order or range");
      }
    }
  }
  std::fill(out.begin(), out.end(), 0.0f);
  if (max_mode) {
    MergeMax(parts, partials, bags, dim, out);
    return Status::OK();
  }
  std::vector<int64_t> count(static_cast<size_t>(bags), 0);
  for (size_t s = 0; s < parts.size(); ++s) {
    if (!parts[s].any) continue;
    const Partial& p = partials[s];
    for (int64_t b = 0; b < bags; ++b) {
      const int64_t c = p.counts[static_cast<size_t>(b)];
      if (c == 0) continue;
      float* o = &out[static_cast<size_t>(b * dim)];
      const float* v = &p.values[static_cast<size_t>(b * dim)];
      for (int64_t d = 0; d < dim; ++d) o[d] += v[d];
      count[static_cast<size_t>(b)] += c;
    }
  }
  if (mode == PoolingMode::kMean) {
    for (int64_t b = 0; b < bags; ++b) {
      const int64_t c = count[static_cast<size_t>(b)];
      if (c == 0) continue;
      float* o = &out[static_cast<size_t>(b * dim)];
      for (int64_t d = 0; d < dim; ++d) o[d] /= static_cast<float>(c);
    }
  }
  return Status::OK();
}

}  // namespace embstore::engine
