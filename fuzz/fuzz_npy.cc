// Fuzzes .npy reading: npy.cc's InspectNpy/OpenNpy (through a file), and the
// in-memory header parsers: the shared grammar, its strict front end and the
// lenient one used for .npz members.
#include <cstdlib>
#include <string_view>

#include "checkpoint/checkpoint_internal.h"
#include "checkpoint/npy.h"
#include "fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static embstore::fuzz::InputFile file;
  const std::string& path = file.Write(data, size);
  auto entries = embstore::storage::InspectNpy(path);
  auto reader = embstore::storage::OpenNpy(path);
  if (reader.ok()) embstore::fuzz::DrainReader(**reader);
  (void)embstore::ReadCheckpointScalar(path, "");
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  embstore::storage::ckpt::NpyHeader header;
  size_t needed = 0;
  (void)embstore::storage::ckpt::ParseNpyHeader(bytes, &header, &needed);
  // The `needed` protocol: a header that parses whole asks for more than it was
  // given when cut short, and never fails for lack of bytes.
  auto whole = embstore::storage::ParseNpyHeaderPrefix(bytes, &needed);
  const bool complete = whole.ok() && needed == 0;
  for (size_t cut : {size_t{0}, size / 3, size / 2}) {
    size_t part_needed = 0;
    auto part = embstore::storage::ParseNpyHeaderPrefix(bytes.substr(0, cut), &part_needed);
    if (complete && cut < whole->data_offset && !(part.ok() && part_needed > cut)) std::abort();
  }
  (void)embstore::storage::ParseNpyHeader({data, size}, size);
  return 0;
}
