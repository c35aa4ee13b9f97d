// embstore::Version(): the version this library was built as (version.h is
// generated from the CMake project version).
#include "embstore/version.h"

namespace embstore {

VersionInfo Version() {
  return {EMBSTORE_VERSION_MAJOR, EMBSTORE_VERSION_MINOR, EMBSTORE_VERSION_PATCH,
          EMBSTORE_VERSION_STRING};
}

}  // namespace embstore
