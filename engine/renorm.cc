// RenormTable (embstore/renorm.h): a snapshot's rows, renormalized, written
// as the table's next version.
#include "embstore/renorm.h"

#include <charconv>
#include <cmath>

#include "codec/row_codec.h"
#include "embstore/query.h"
#include "engine/guarded.h"

namespace embstore {
namespace {

// The shortest decimal that reads back as `x` ("0.5", "2", "inf").
std::string Shortest(double x) {
  char buf[64];
  const auto r = std::to_chars(buf, buf + sizeof buf, x);
  return std::string(buf, r.ptr);
}

Result<RenormResult> RenormTableUnguarded(Store& store, const std::string& table,
                                          const RenormOptions& options) {
  EMBSTORE_RETURN_IF_ERROR(CheckRenormOptions(options));
  EMBSTORE_ASSIGN_OR_RETURN(const TableSnapshot snap, store.GetSnapshot(table));
  const TableView v = snap.view();
  const TableInfo& from = snap.info();
  TableSpec spec;
  spec.rows = v.rows;
  spec.dim = v.dim;
  spec.dtype = v.dtype;
  spec.replace = true;
  spec.source = "renorm of " + table + " v" + std::to_string(from.version) +
                " (max_norm=" + Shortest(options.max_norm) +
                ", norm_type=" + Shortest(options.norm_type) + ") from " + from.source;
  spec.progress = options.progress;
  spec.expected_version = from.version;
  RenormResult result;
  const double max_norm = options.max_norm, norm_type = options.norm_type;
  EMBSTORE_ASSIGN_OR_RETURN(
      result.info, store.WriteTable(table, spec, [&](int64_t first, int64_t count, float* out) {
        for (int64_t i = 0; i < count; ++i) {
          float* row = out + i * v.dim;
          codec::DecodeRow(v.Row(first + i), v.dim, v.dtype, row);
          const double norm = RowNorm({row, static_cast<size_t>(v.dim)}, norm_type);
          if (norm > max_norm) {
            const float scale = static_cast<float>(max_norm / (norm + 1e-7));
            for (int64_t j = 0; j < v.dim; ++j) row[j] *= scale;
            ++result.rows_scaled;
          }
        }
        return Status::OK();
      }));
  return result;
}

}  // namespace

Status CheckRenormOptions(const RenormOptions& options) {
  if (!(options.max_norm > 0) || std::isinf(options.max_norm)) {
    return Status::InvalidArgument("max_norm must be a finite number > 0");
  }
  const double p = options.norm_type;
  if (std::isnan(p) || (p < 0 && !std::isinf(p))) {
    return Status::InvalidArgument("norm_type must be >= 0, inf or -inf (as torch's norm)");
  }
  return Status::OK();
}

Result<RenormResult> RenormTable(Store& store, const std::string& table,
                                 const RenormOptions& options) {
  return engine::Guarded<Result<RenormResult>>(
      [&] { return RenormTableUnguarded(store, table, options); });
}

}  // namespace embstore
