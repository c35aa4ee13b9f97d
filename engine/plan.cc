#include "engine/plan.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <string>
#include <utility>

#include "util/memory.h"

namespace embstore::engine {
namespace {

std::string Str(int64_t v) { return std::to_string(v); }

std::string Str(double v) {
  if (std::isnan(v)) return "nan";
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%.17g", v);
  // Prefer the shortest form that reads back the same (1.5, not 1.50000...).
  for (int precision = 1; precision <= 17; ++precision) {
    char shorter[64];
    std::snprintf(shorter, sizeof(shorter), "%.*g", precision, v);
    if (std::strtod(shorter, nullptr) == v) return shorter;
  }
  return buf;
}

std::string TableName(const TableView& table) {
  return table.name.empty() ? std::string("<unnamed>") : std::string(table.name);
}

Status CheckArray(const IndexArray& array, const char* what) {
  if (array.size < 0) return Status::InvalidArgument(std::string(what) + " has a negative size");
  if (array.size > 0 && array.data == nullptr) {
    return Status::InvalidArgument(std::string(what) + " has " + Str(array.size) +
                                   " entries but no data");
  }
  if (array.type != IndexType::kInt32 && array.type != IndexType::kInt64) {
    return Status::InvalidArgument(std::string(what) + " must be int32 or int64");
  }
  return Status::OK();
}

Status CheckWeights(const std::optional<std::span<const float>>& weights, int64_t expected,
                    const char* indices_desc) {
  if (!weights.has_value()) return Status::OK();
  const int64_t n = static_cast<int64_t>(weights->size());
  if (n != expected) {
    return Status::InvalidArgument("per_sample_weights has " + Str(n) + " entries but " +
                                   indices_desc + " has " + Str(expected) +
                                   " (they must have the same shape)");
  }
  if (n > 0 && weights->data() == nullptr) {
    return Status::InvalidArgument("per_sample_weights has " + Str(n) + " entries but no data");
  }
  return Status::OK();
}

// Resolves padding_idx against the table (torch's rule: -rows <= p < rows).
Result<int64_t> ResolvePadding(const TableView& table, const QueryOptions& options) {
  if (!options.padding_idx.has_value()) return int64_t{-1};
  const int64_t p = *options.padding_idx;
  if (p < -table.rows || p >= table.rows) {
    return Status::InvalidArgument("padding_idx must be within the number of embeddings, " +
                                   Str(-table.rows) + " through " + Str(table.rows - 1) +
                                   ", but got " + Str(p) + " (table '" + TableName(table) +
                                   "' has " + Str(table.rows) + " rows)");
  }
  return p < 0 ? p + table.rows : p;
}

// Checks every id at positions [begin, end) and tracks the largest one.
template <typename Int>
Status CheckIdRange(const Int* ids, int64_t begin, int64_t end, const TableView& table,
                    int64_t* max_id) {
  int64_t local_max = *max_id;
  for (int64_t pos = begin; pos < end; ++pos) {
    const int64_t id = static_cast<int64_t>(ids[pos]);
    if (static_cast<uint64_t>(id) >= static_cast<uint64_t>(table.rows)) {
      std::string msg = "indices[" + Str(pos) + "] = " + Str(id) + " is out of range for table '" +
                        TableName(table) + "' (" + Str(table.rows) + " rows)";
      if (id < 0) msg += ": ids must not be negative";
      return Status::InvalidArgument(std::move(msg));
    }
    if (id > local_max) local_max = id;
  }
  *max_id = local_max;
  return Status::OK();
}

// Validates the ids inside every bag of `plan` and sets min_rows.
Status CheckPlanIds(const TableView& table, BagPlan* plan) {
  int64_t max_id = -1;
  const int64_t bags = plan->num_bags();
  // Bags are ordered and disjoint; merge touching ranges so contiguous
  // layouts are checked in one tight loop.
  int64_t run_begin = 0, run_end = 0;
  auto flush = [&]() -> Status {
    if (run_end <= run_begin) return Status::OK();
    if (plan->indices.type == IndexType::kInt64) {
      return CheckIdRange(static_cast<const int64_t*>(plan->indices.data), run_begin, run_end,
                          table, &max_id);
    }
    return CheckIdRange(static_cast<const int32_t*>(plan->indices.data), run_begin, run_end, table,
                        &max_id);
  };
  for (int64_t b = 0; b < bags; ++b) {
    const int64_t begin = plan->bag_begin[b], end = plan->bag_end[b];
    if (begin == end) continue;
    if (begin != run_end) {
      EMBSTORE_RETURN_IF_ERROR(flush());
      run_begin = begin;
    }
    run_end = end;
  }
  EMBSTORE_RETURN_IF_ERROR(flush());
  plan->min_rows = max_id + 1;
  return Status::OK();
}

}  // namespace

Status CheckFitsInMemory(int64_t count, int64_t bytes_each, const std::string& what) {
  int64_t total = 0;
  if (count < 0 || bytes_each < 0 || __builtin_mul_overflow(count, bytes_each, &total)) {
    return Status::InvalidArgument(Str(count) + " " + what +
                                   " need more memory than can be addressed");
  }
  // Memory the kernel would overcommit ends in the OOM killer, not in an
  // error: a request that cannot fit is refused before anything is allocated.
  const uint64_t limit = UsableMemoryBytes();
  if (static_cast<uint64_t>(total) > limit) {
    return Status::InvalidArgument(
        "this request asks for " + Str(count) + " " + what + ", which would need " + Str(total) +
        " bytes; this process may use " + Str(static_cast<int64_t>(limit)));
  }
  return Status::OK();
}

namespace {

// The plan keeps two int64 per bag and the output dim floats per bag. 2-D
// indices with 0 columns can ask for any number of bags with no data behind
// them.
Status CheckBagCount(int64_t bags, int64_t dim) {
  int64_t per_bag = 0;
  if (__builtin_mul_overflow(std::max<int64_t>(dim, 1), int64_t{sizeof(float)}, &per_bag) ||
      __builtin_add_overflow(per_bag, int64_t{2 * sizeof(int64_t)}, &per_bag)) {
    per_bag = -1;  // not addressable
  }
  return CheckFitsInMemory(bags, per_bag, "bags of dim " + Str(dim));
}

Status CheckLayout1D(const BagRequest& request, const QueryOptions& options, int64_t n, int64_t dim,
                     BagPlan* plan) {
  if (!request.offsets.has_value()) {
    return Status::InvalidArgument(
        "offsets are required with 1-D indices (give offsets, or 2-D indices [B, N])");
  }
  const IndexArray& offsets = *request.offsets;
  EMBSTORE_RETURN_IF_ERROR(CheckArray(offsets, "offsets"));
  if (options.include_last_offset && offsets.size < 1) {
    return Status::InvalidArgument(
        "include_last_offset: number of offsets should be at least 1 (got 0)");
  }
  if (offsets.size > 0 && offsets[0] != 0) {
    return Status::InvalidArgument("offsets[0] must be 0 (got " + Str(offsets[0]) + ")");
  }
  for (int64_t i = 0; i < offsets.size; ++i) {
    const int64_t o = offsets[i];
    if (i > 0 && o < offsets[i - 1]) {
      return Status::InvalidArgument("offsets must be non-decreasing: offsets[" + Str(i) +
                                     "] = " + Str(o) + " is less than offsets[" + Str(i - 1) +
                                     "] = " + Str(offsets[i - 1]));
    }
    if (o > n) {
      return Status::InvalidArgument("offsets[" + Str(i) + "] = " + Str(o) +
                                     " is past the end of indices (" + Str(n) + " entries)");
    }
  }
  const int64_t bags = options.include_last_offset ? offsets.size - 1 : offsets.size;
  // Few offsets each cost a few bytes, but every bag a row of output: many
  // offsets over a wide table can ask for more than fits.
  EMBSTORE_RETURN_IF_ERROR(CheckBagCount(bags, dim));
  plan->bag_begin.resize(bags);
  plan->bag_end.resize(bags);
  for (int64_t b = 0; b < bags; ++b) {
    plan->bag_begin[b] = offsets[b];
    plan->bag_end[b] = (b + 1 < offsets.size) ? offsets[b + 1] : n;
  }
  plan->bag_shape = {bags};
  return Status::OK();
}

Status CheckLayout2D(const BagRequest& request, const QueryOptions& options, int64_t rows_b,
                     int64_t cols_n, int64_t dim, BagPlan* plan) {
  if (request.offsets.has_value()) {
    return Status::InvalidArgument("if input is 2D, offsets has to be None");
  }
  // torch turns 2-D input into offsets = [0, N, ..., (B-1) N]; with
  // include_last_offset those are B "offsets" for B - 1 bags and the last row
  // is ignored. We match torch's bag boundaries (and, as for 1-D input, the
  // ignored entries take no part in any mode).
  int64_t bags = rows_b;
  if (options.include_last_offset) {
    if (rows_b < 1) {
      return Status::InvalidArgument(
          "include_last_offset: number of offsets should be at least 1 (2-D indices with 0 "
          "rows)");
    }
    bags = rows_b - 1;
  }
  EMBSTORE_RETURN_IF_ERROR(CheckBagCount(bags, dim));
  plan->bag_begin.resize(bags);
  plan->bag_end.resize(bags);
  for (int64_t b = 0; b < bags; ++b) {
    plan->bag_begin[b] = b * cols_n;
    plan->bag_end[b] = (b + 1) * cols_n;
  }
  plan->bag_shape = {bags};
  return Status::OK();
}

std::string ShapeString(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + Str(shape[i]);
  return s + "]";
}

bool MulOverflows(int64_t a, int64_t b, int64_t* out) { return __builtin_mul_overflow(a, b, out); }

std::string ProductStr(int64_t a, int64_t b) {
  int64_t product = 0;
  return MulOverflows(a, b, &product) ? std::string("(too large)") : Str(product);
}

}  // namespace

int64_t BagPlan::num_entries() const {
  int64_t total = 0;
  for (size_t b = 0; b < bag_begin.size(); ++b) total += bag_end[b] - bag_begin[b];
  return total;
}

std::vector<int64_t> BagPlan::OutputShape(int64_t dim) const {
  std::vector<int64_t> shape = bag_shape;
  shape.push_back(dim);
  return shape;
}

Status ValidateTable(const TableView& table) {
  const std::string name = TableName(table);
  if (!IsKnownDType(static_cast<uint32_t>(table.dtype))) {
    return Status::InvalidArgument("table '" + name + "' has an unknown dtype (" +
                                   Str(static_cast<int64_t>(table.dtype)) + ")");
  }
  if (table.rows < 0 || table.dim < 0) {
    return Status::InvalidArgument("table '" + name + "' has a negative shape (" + Str(table.rows) +
                                   " x " + Str(table.dim) + ")");
  }
  const size_t payload = RowPayloadBytes(table.dtype, table.dim);
  if (table.rows > 0 && table.row_stride < payload) {
    return Status::InvalidArgument("table '" + name + "' has row_stride " +
                                   std::to_string(table.row_stride) + " bytes, less than a row (" +
                                   std::to_string(payload) + " bytes)");
  }
  if (table.rows > 0 && payload > 0 && table.data == nullptr) {
    return Status::InvalidArgument("table '" + name + "' has " + Str(table.rows) +
                                   " rows but no data");
  }
  return Status::OK();
}

Status ValidatePoolOptions(const QueryOptions& options) {
  switch (options.mode) {
    case PoolingMode::kSum:
    case PoolingMode::kMean:
    case PoolingMode::kMax:
      break;
    default:
      return Status::InvalidArgument("unknown pooling mode " +
                                     Str(static_cast<int64_t>(options.mode)) +
                                     " (expected sum, mean or max)");
  }
  if (options.max_norm.has_value()) {
    const double m = *options.max_norm;
    if (!(m > 0)) return Status::InvalidArgument("max_norm must be > 0 (got " + Str(m) + ")");
  }
  // torch also accepts finite negative p; we refuse them (not a norm), but
  // keep -inf (min |x|), the limit of the p-norm formula, as torch has it.
  const double p = options.norm_type;
  if (std::isnan(p) || (p < 0 && !std::isinf(p))) {
    return Status::InvalidArgument("norm_type must be >= 0, inf or -inf (got " + Str(p) + ")");
  }
  if (options.max_threads < 0) {
    return Status::InvalidArgument("max_threads must be >= 0 (got " +
                                   Str(static_cast<int64_t>(options.max_threads)) + ")");
  }
  switch (options.prefetch) {
    case QueryOptions::Prefetch::kAuto:
    case QueryOptions::Prefetch::kOn:
    case QueryOptions::Prefetch::kOff:
      break;
    default:
      return Status::InvalidArgument("unknown prefetch mode " +
                                     Str(static_cast<int64_t>(options.prefetch)) +
                                     " (expected auto, on or off)");
  }
  if (options.prefetch_depth < 1 || options.prefetch_depth > kMaxPrefetchDepth) {
    return Status::InvalidArgument("prefetch_depth must be in [1, " + Str(kMaxPrefetchDepth) +
                                   "] (got " + Str(static_cast<int64_t>(options.prefetch_depth)) +
                                   ")");
  }
  return Status::OK();
}

Status ValidatePoolInputs(const TableView& table, const BagPlan& plan, const QueryOptions& options,
                          size_t out_size) {
  EMBSTORE_RETURN_IF_ERROR(ValidateTable(table));
  EMBSTORE_RETURN_IF_ERROR(ValidatePoolOptions(options));
  if (plan.bag_begin.size() != plan.bag_end.size()) {
    return Status::InvalidArgument("malformed bag plan (begin/end sizes differ)");
  }
  if (plan.min_rows > table.rows) {
    return Status::InvalidArgument("the bag plan uses row " + Str(plan.min_rows - 1) +
                                   " but table '" + TableName(table) + "' has " + Str(table.rows) +
                                   " rows");
  }
  if (plan.padding_row >= table.rows) {
    return Status::InvalidArgument("the bag plan's padding row " + Str(plan.padding_row) +
                                   " is out of range for table '" + TableName(table) + "' (" +
                                   Str(table.rows) + " rows)");
  }
  int64_t needed = 0;
  if (MulOverflows(plan.num_bags(), table.dim, &needed)) {
    return Status::InvalidArgument("output too large");
  }
  if (static_cast<uint64_t>(needed) != out_size) {
    return Status::InvalidArgument("output buffer has " + std::to_string(out_size) +
                                   " floats but " + Str(needed) + " are needed (" +
                                   Str(plan.num_bags()) + " bags x dim " + Str(table.dim) + ")");
  }
  return Status::OK();
}

Result<BagPlan> PlanBags(const TableView& table, const BagRequest& request,
                         const QueryOptions& options) {
  EMBSTORE_ASSIGN_OR_RETURN(BagPlan plan, PlanBagLayout(table, request, options));
  EMBSTORE_RETURN_IF_ERROR(CheckPlanIds(table, &plan));
  return plan;
}

Result<BagPlan> PlanBatchedBags(const TableView& table, const BatchedBagRequest& request,
                                const QueryOptions& options) {
  EMBSTORE_ASSIGN_OR_RETURN(BagPlan plan, PlanBatchedBagLayout(table, request, options));
  EMBSTORE_RETURN_IF_ERROR(CheckPlanIds(table, &plan));
  return plan;
}

Result<BagPlan> PlanBagLayout(const TableView& table, const BagRequest& request,
                              const QueryOptions& options) {
  EMBSTORE_RETURN_IF_ERROR(ValidateTable(table));
  EMBSTORE_RETURN_IF_ERROR(ValidatePoolOptions(options));
  EMBSTORE_ASSIGN_OR_RETURN(const int64_t padding_row, ResolvePadding(table, options));
  EMBSTORE_RETURN_IF_ERROR(CheckArray(request.indices, "indices"));
  const int64_t n = request.indices.size;

  BagPlan plan;
  plan.indices = request.indices;
  plan.padding_row = padding_row;
  const std::vector<int64_t>& shape = request.indices_shape;
  if (shape.size() > 2) {
    return Status::InvalidArgument("indices must be 1-D or 2-D (got shape " + ShapeString(shape) +
                                   ")");
  }
  for (int64_t d : shape) {
    if (d < 0)
      return Status::InvalidArgument("indices shape " + ShapeString(shape) +
                                     " has a negative dimension");
  }
  if (shape.size() == 1 && shape[0] != n) {
    return Status::InvalidArgument("indices shape " + ShapeString(shape) + " holds " +
                                   Str(shape[0]) + " entries but indices has " + Str(n));
  }
  if (shape.size() == 2) {
    int64_t count = 0;
    if (MulOverflows(shape[0], shape[1], &count) || count != n) {
      return Status::InvalidArgument("indices shape " + ShapeString(shape) +
                                     " does not match the " + Str(n) + " entries of indices");
    }
  }
  EMBSTORE_RETURN_IF_ERROR(CheckWeights(request.weights, n, "indices"));
  if (request.weights.has_value()) plan.weights = request.weights->data();

  if (shape.size() == 2) {
    EMBSTORE_RETURN_IF_ERROR(CheckLayout2D(request, options, shape[0], shape[1], table.dim, &plan));
  } else {
    EMBSTORE_RETURN_IF_ERROR(CheckLayout1D(request, options, n, table.dim, &plan));
  }
  return plan;
}

Result<BagPlan> PlanBatchedBagLayout(const TableView& table, const BatchedBagRequest& request,
                                     const QueryOptions& options) {
  EMBSTORE_RETURN_IF_ERROR(ValidateTable(table));
  EMBSTORE_RETURN_IF_ERROR(ValidatePoolOptions(options));
  if (options.include_last_offset) {
    return Status::InvalidArgument(
        "include_last_offset does not apply to batched bags (ends are inclusive)");
  }
  EMBSTORE_ASSIGN_OR_RETURN(const int64_t padding_row, ResolvePadding(table, options));
  EMBSTORE_RETURN_IF_ERROR(CheckArray(request.indices, "indices"));
  EMBSTORE_RETURN_IF_ERROR(CheckArray(request.ends, "ends"));
  const int64_t batch = request.batch, items = request.items, k = request.bags_per_sample;
  if (batch < 0 || items < 0 || k < 0) {
    return Status::InvalidArgument("batched bags need batch, items and bags_per_sample >= 0 (got " +
                                   Str(batch) + ", " + Str(items) + ", " + Str(k) + ")");
  }
  int64_t n = 0, num_ends = 0;
  if (MulOverflows(batch, items, &n) || n != request.indices.size) {
    return Status::InvalidArgument("indices has " + Str(request.indices.size) +
                                   " entries but batch x items = " + Str(batch) + " x " +
                                   Str(items) + " = " + ProductStr(batch, items));
  }
  if (MulOverflows(batch, k, &num_ends) || num_ends != request.ends.size) {
    return Status::InvalidArgument("ends has " + Str(request.ends.size) +
                                   " entries but batch x bags_per_sample = " + Str(batch) + " x " +
                                   Str(k) + " = " + ProductStr(batch, k));
  }
  EMBSTORE_RETURN_IF_ERROR(CheckWeights(request.weights, n, "indices"));

  BagPlan plan;
  plan.indices = request.indices;
  plan.padding_row = padding_row;
  if (request.weights.has_value()) plan.weights = request.weights->data();
  EMBSTORE_RETURN_IF_ERROR(CheckBagCount(num_ends, table.dim));
  plan.bag_begin.resize(num_ends);
  plan.bag_end.resize(num_ends);
  // k == 0: no bags at all, whatever the batch (which may be huge: nothing
  // backs it).
  for (int64_t b = 0; k > 0 && b < batch; ++b) {
    int64_t prev = -1;
    for (int64_t m = 0; m < k; ++m) {
      const int64_t e = request.ends[b * k + m];
      if (e < -1 || e > items - 1) {
        return Status::InvalidArgument("ends[" + Str(b) + ", " + Str(m) + "] = " + Str(e) +
                                       " is outside [-1, " + Str(items - 1) +
                                       "] (items = " + Str(items) + ")");
      }
      if (e < prev) {
        return Status::InvalidArgument("ends must be non-decreasing: ends[" + Str(b) + ", " +
                                       Str(m) + "] = " + Str(e) + " is less than ends[" + Str(b) +
                                       ", " + Str(m - 1) + "] = " + Str(prev));
      }
      plan.bag_begin[b * k + m] = b * items + prev + 1;
      plan.bag_end[b * k + m] = b * items + e + 1;
      prev = e;
    }
  }
  plan.bag_shape = {batch, k};
  return plan;
}

Result<BagPlan> PlanIds(const TableView& table, IndexArray ids) {
  const int64_t zero = 0;
  BagRequest request;
  request.indices = ids;
  request.indices_shape = {ids.size};
  request.offsets = IndexArray(std::span<const int64_t>(&zero, 1));
  return PlanBags(table, request, QueryOptions());
}

}  // namespace embstore::engine
