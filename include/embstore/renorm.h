// Renormalizing a table to a maximum row norm (embstore extension): a new
// version holding the weight torch.nn.functional.embedding_bag(max_norm=...)
// leaves behind once every row has been looked up, so that queries without
// max_norm then give what queries with it give (see docs/semantics.md).
//
// Thread-safety: as Store; the table is read through a snapshot, so queries
// and other processes' reads go on while it is written.
#ifndef EMBSTORE_RENORM_H_
#define EMBSTORE_RENORM_H_

#include <cstdint>
#include <string>

#include "embstore/status.h"
#include "embstore/store.h"

namespace embstore {

struct RenormOptions {
  // A row whose norm_type-norm exceeds max_norm is scaled by
  // max_norm / (norm + 1e-7), as torch's embedding_renorm_. Must be finite and
  // > 0.
  double max_norm = 0.0;
  // p of the p-norm, as QueryOptions::norm_type: p >= 0, +inf or -inf.
  double norm_type = 2.0;
  // Called as rows are written; may be empty.
  ProgressFn progress;
};

struct RenormResult {
  TableInfo info;           // the version written
  int64_t rows_scaled = 0;  // rows whose norm exceeded max_norm
};

// OK, or InvalidArgument naming the bad option ("max_norm must be ...",
// "norm_type must be ...").
Status CheckRenormOptions(const RenormOptions& options);

// Writes a new version of `table` computed from its current version: each row
// decoded to float32, scaled as above when its norm exceeds max_norm, and
// stored in the table's dtype. The version's source reads "renorm of TABLE vN
// (max_norm=X, norm_type=P) from SOURCE" (X and P in their shortest decimal
// form). Published only if the table is still at version N when the write
// takes the writer lock (TableSpec::expected_version): a version another
// process published meanwhile is never replaced unseen (IOError naming both).
// Errors: CheckRenormOptions (before the store is read), NotFound for an
// unknown table, and Store::WriteTable's. No exception leaves it.
Result<RenormResult> RenormTable(Store& store, const std::string& table,
                                 const RenormOptions& options);

}  // namespace embstore

#endif  // EMBSTORE_RENORM_H_
