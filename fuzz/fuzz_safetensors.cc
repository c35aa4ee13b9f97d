// Fuzzes .safetensors parsing and reading through the public checkpoint API.
#include "fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static embstore::fuzz::InputFile file;
  embstore::fuzz::ExerciseCheckpoint(file.Write(data, size));
  return 0;
}
