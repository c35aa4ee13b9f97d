// make_npy OUT.npy ROWS DIM TAG: writes a float32 [ROWS, DIM] .npy whose
// element (r, c) is TAG * 65536 + r * 16 + c (exact in float32 for
// ROWS <= 4096, DIM <= 16, TAG < 200), the table a "training run" hands
// over. The consumer checks every pooled result against this pattern.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

int main(int argc, char** argv) {
  if (argc != 5) {
    std::fprintf(stderr, "usage: make_npy OUT.npy ROWS DIM TAG\n");
    return 2;
  }
  const long rows = std::atol(argv[2]), dim = std::atol(argv[3]), tag = std::atol(argv[4]);
  if (rows < 1 || rows > 4096 || dim < 1 || dim > 16 || tag < 0 || tag >= 200) {
    std::fprintf(stderr, "make_npy: need 1 <= ROWS <= 4096, 1 <= DIM <= 16, 0 <= TAG < 200\n");
    return 2;
  }
  std::string header = "{'descr': '<f4', 'fortran_order': False, 'shape': (" +
                       std::to_string(rows) + ", " + std::to_string(dim) + "), }";
  while ((10 + header.size() + 1) % 64 != 0) header += ' ';
  header += '\n';
  std::vector<float> data(static_cast<size_t>(rows * dim));
  for (long r = 0; r < rows; ++r) {
    for (long c = 0; c < dim; ++c) data[r * dim + c] = static_cast<float>(tag * 65536 + r * 16 + c);
  }
  std::FILE* f = std::fopen(argv[1], "wb");
  if (f == nullptr) {
    std::perror(argv[1]);
    return 1;
  }
  const unsigned char magic[8] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0};
  const uint16_t len = static_cast<uint16_t>(header.size());  // little-endian hosts
  bool ok = std::fwrite(magic, 1, 8, f) == 8 && std::fwrite(&len, 2, 1, f) == 1 &&
            std::fwrite(header.data(), 1, header.size(), f) == header.size() &&
            std::fwrite(data.data(), sizeof(float), data.size(), f) == data.size();
  ok = (std::fclose(f) == 0) && ok;
  if (!ok) {
    std::fprintf(stderr, "make_npy: cannot write %s\n", argv[1]);
    return 1;
  }
  return 0;
}
