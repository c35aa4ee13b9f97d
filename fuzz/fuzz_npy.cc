// Fuzzes .npy reading: npy.cc's InspectNpy/OpenNpy (through a file) and the
// in-memory header parser used for .npz members.
#include <string_view>

#include "fuzz/fuzz_util.h"
#include "storage/checkpoint_internal.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static embstore::fuzz::InputFile file;
  const std::string& path = file.Write(data, size);
  auto entries = embstore::storage::InspectNpy(path);
  auto reader = embstore::storage::OpenNpy(path);
  if (reader.ok()) embstore::fuzz::DrainReader(**reader);
  (void)embstore::ReadCheckpointScalar(path, "");
  embstore::storage::ckpt::NpyHeader header;
  size_t needed = 0;
  (void)embstore::storage::ckpt::ParseNpyHeader(
      std::string_view(reinterpret_cast<const char*>(data), size), &header, &needed);
  return 0;
}
