// The exception barrier, shared with the storage layer (storage/guarded.h).
#ifndef EMBSTORE_ENGINE_GUARDED_H_
#define EMBSTORE_ENGINE_GUARDED_H_

#include "storage/guarded.h"

namespace embstore::engine {
using storage::Guarded;
}  // namespace embstore::engine

#endif  // EMBSTORE_ENGINE_GUARDED_H_
