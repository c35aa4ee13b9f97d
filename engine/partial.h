// Pooling a request over row shards: the split of a planned request into
// each shard's share (its ids as shard rows, grouped by the request's bags)
// and the exact merge of the shards' partial results. Used by the cluster
// client (serve/cluster.cc) and by embstore.Cluster in Python; no network
// here.
//
// A shard's partial, as an `embstore serve --cluster` node computes it
// (PoolPartial): per bag, the SUM (weights and max_norm applied) or the MAX
// of its entries on that shard, and how many entries it pooled. For MAX, the
// node also reports per element the request position of the max's first
// entry (-1 where the bag has none there) over the entries that are not NaN,
// and the elements whose first entry on that shard is NaN, with its bits.
// With those the merge reproduces torch's rule over the whole bag bit for
// bit: strict `>`, so the first entry wins ties (+0 and -0 included), and a
// NaN counts only as the bag's first entry.
#ifndef EMBSTORE_ENGINE_PARTIAL_H_
#define EMBSTORE_ENGINE_PARTIAL_H_

#include <cstdint>
#include <span>
#include <vector>

#include "embstore/query.h"
#include "embstore/status.h"
#include "engine/plan.h"

namespace embstore::engine {

// One shard's share of a planned request.
struct ShardPart {
  std::vector<int64_t> ids;        // shard rows (the request's id - the shard's first row)
  std::vector<int64_t> offsets;    // B bag starts into `ids`
  std::vector<float> weights;      // parallel to ids; empty when the request has none
  std::vector<int64_t> positions;  // per id, its position in the request
  bool any = false;                // some bag has an id on this shard
};

// Shard s holds rows [shard_begins[s], shard_begins[s + 1]) (the last one to
// the end of the table); shard_begins[0] == 0, increasing. Ids equal to the
// plan's padding row are dropped (neither pooled nor counted), so a shard's
// part needs no padding_idx and no include_last_offset.
std::vector<ShardPart> SplitByShard(const BagPlan& plan, std::span<const int64_t> shard_begins);

// One shard's partial result for its part; see the header comment.
struct Partial {
  std::span<const float> values;    // bags x dim
  std::span<const int64_t> counts;  // bags
  // MAX only: bags x dim int32 positions (into the shard's part, -1: none),
  // and the elements whose first entry on the shard is NaN, with its bits.
  std::span<const int32_t> max_positions;
  std::span<const int64_t> nan_cells;
  std::span<const uint32_t> nan_bits;
};

// Merges the partials (one per part; those of parts with !any are not read)
// into `out` (bags x dim): SUM adds in shard order, MEAN divides that by the
// count, MAX is exact as above; a bag with no entry is zeros. InvalidArgument
// when a partial's sizes do not match its part (a malformed reply).
Status MergePartials(std::span<const ShardPart> parts, std::span<const Partial> partials,
                     int64_t bags, int64_t dim, PoolingMode mode, std::span<float> out);

}  // namespace embstore::engine

#endif  // EMBSTORE_ENGINE_PARTIAL_H_
