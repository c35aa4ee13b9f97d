// Fuzzes the zip-based formats (.npz, torch.save .pt) through the public
// checkpoint API: central directory, local headers, deflate streams, npy member
// headers, data.pkl and storage layouts.
#include "fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static embstore::fuzz::InputFile file;
  embstore::fuzz::ExerciseCheckpoint(file.Write(data, size));
  return 0;
}
