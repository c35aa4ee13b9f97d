// Checkpoint readers, streaming: the strided reader against a reference with
// tiny windows and odd layouts, bounded memory on large safetensors, and .npz
// archives written here with libzip (many members, large deflated members).
#include <gtest/gtest.h>
#include <sys/resource.h>
#include <unistd.h>
#include <zip.h>

#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "checkpoint/checkpoint_internal.h"
#include "checkpoint/pickle.h"
#include "checkpoint/tensor_reader.h"
#include "checkpoint_test_util.h"
#include "codec/half.h"
#include "embstore/checkpoint.h"

namespace embstore::storage {
namespace {

using namespace std::string_literals;

// ---- the strided reader against a reference, tiny windows ---------------------------------------

// A forward-only view of another source that counts restarts, standing in for a
// deflate stream.
class SequentialSource final : public ckpt::ByteSource {
 public:
  SequentialSource(std::unique_ptr<ckpt::ByteSource> inner, int* restarts)
      : inner_(std::move(inner)), restarts_(restarts) {}
  uint64_t size() const override { return inner_->size(); }
  bool random_access() const override { return false; }
  Status ReadAt(uint64_t offset, void* buf, size_t n) override {
    if (offset < position_) ++*restarts_;
    position_ = offset + n;
    return inner_->ReadAt(offset, buf, n);
  }

 private:
  std::unique_ptr<ckpt::ByteSource> inner_;
  int* restarts_;
  uint64_t position_ = 0;
};

TEST(StridedReader, RandomLayoutsMatchAReference) {
  std::mt19937_64 rng(7);
  // Storages of 4000 f64 and 4000 f32 values, each its own index (exact in f32).
  constexpr int64_t kElements = 4000;
  TempFile tmp64, tmp32;
  {
    std::vector<double> d(kElements);
    std::vector<float> f(kElements);
    for (int64_t i = 0; i < kElements; ++i) d[i] = f[i] = static_cast<float>(i);
    std::ofstream(tmp64.path, std::ios::binary)
        .write(reinterpret_cast<const char*>(d.data()), static_cast<std::streamsize>(d.size() * 8));
    std::ofstream(tmp32.path, std::ios::binary)
        .write(reinterpret_cast<const char*>(f.data()), static_cast<std::streamsize>(f.size() * 4));
  }
  auto file64 = ckpt::File::Open(tmp64.path);
  auto file32 = ckpt::File::Open(tmp32.path);
  ASSERT_TRUE(file64.ok() && file32.ok());
  for (int trial = 0; trial < 600; ++trial) {
    ckpt::TensorLayout l;
    l.dtype = trial % 2 == 0 ? SourceDType::kF64 : SourceDType::kF32;
    l.rows = 1 + static_cast<int64_t>(rng() % 20);
    l.dim = 1 + static_cast<int64_t>(rng() % 12);
    const int64_t r3 = static_cast<int64_t>(rng() % 3), r40 = static_cast<int64_t>(rng() % 40);
    const int64_t r5 = static_cast<int64_t>(rng() % 5);
    const int64_t shape = (trial / 2) % 5;
    // C order, Fortran order (a transpose), a column slice, tiny/zero strides, anything.
    l.row_stride = shape == 0   ? l.dim
                   : shape == 1 ? 1
                   : shape == 2 ? l.dim + r5
                   : shape == 3 ? r3
                                : r40;
    l.col_stride = shape == 0   ? 1
                   : shape == 1 ? l.rows
                   : shape == 2 ? 1
                   : shape == 3 ? r5 % 3
                                : r5 * 9;
    l.offset = static_cast<int64_t>(rng() % 100);
    const int64_t last = l.offset + (l.rows - 1) * l.row_stride + (l.dim - 1) * l.col_stride;
    if (last >= kElements) continue;
    std::vector<float> want;
    for (int64_t r = 0; r < l.rows; ++r) {
      for (int64_t c = 0; c < l.dim; ++c) {
        want.push_back(static_cast<float>(l.offset + r * l.row_stride + c * l.col_stride));
      }
    }
    const int64_t e = ckpt::ElementSize(l.dtype);
    const size_t window = static_cast<size_t>(e) * (1 + rng() % 50);
    SCOPED_TRACE("trial " + std::to_string(trial) + " window " + std::to_string(window));
    ASSERT_TRUE(ckpt::ValidateLayout(l, kElements * e, "t").ok());
    for (bool sequential : {false, true}) {
      std::unique_ptr<ckpt::ByteSource> src =
          ckpt::MakeFileRegionSource(e == 8 ? *file64 : *file32, 0, kElements * e);
      int restarts = 0;
      if (sequential) src = std::make_unique<SequentialSource>(std::move(src), &restarts);
      ckpt::StridedTensorReader reader("t", l, std::move(src), window);
      const int64_t chunk = 1 + static_cast<int64_t>(rng() % 5);
      std::vector<float> got(want.size());
      for (int64_t first = 0; first < l.rows; first += chunk) {
        const int64_t n = std::min(chunk, l.rows - first);
        ASSERT_TRUE(reader.ReadRows(first, n, got.data() + first * l.dim).ok());
      }
      EXPECT_TRUE(SameFloats(got, want)) << "sequential=" << sequential;
      // Forward-friendly layouts never make a stream go back (others are spilled first).
      EXPECT_EQ(restarts, 0);
    }
  }
}

TEST(StridedReader, LayoutValidation) {
  ckpt::TensorLayout l;
  l.rows = 4, l.dim = 2, l.row_stride = 2, l.col_stride = 1, l.offset = 0;
  EXPECT_TRUE(ckpt::ValidateLayout(l, 32, "t").ok());
  EXPECT_FALSE(ckpt::ValidateLayout(l, 31, "t").ok());
  l.offset = 1;
  EXPECT_FALSE(ckpt::ValidateLayout(l, 32, "t").ok());
  l.offset = 0, l.row_stride = INT64_MAX / 2;
  EXPECT_EQ(ckpt::ValidateLayout(l, UINT64_MAX, "t").code(), Code::kCorruption);
  l.row_stride = -1;
  EXPECT_EQ(ckpt::ValidateLayout(l, 32, "t").code(), Code::kCorruption);
}

// ---- streaming with bounded memory
// -------------------------------------------------------------------

TEST(CheckpointStreaming, LargeSafetensorsReadsInBoundedMemory) {
  // 96 MiB of f32 (196608 x 128), written in pieces, read in 4096-row chunks.
  constexpr int64_t kRows = 196608, kDim = 128;
  TempFile tmp;
  {
    const std::string header = "{\"big\":{\"dtype\":\"F32\",\"shape\":[" + std::to_string(kRows) +
                               "," + std::to_string(kDim) + "],\"data_offsets\":[0," +
                               std::to_string(kRows * kDim * 4) + "]}}";
    std::ofstream f(tmp.path, std::ios::binary);
    const uint64_t n = header.size();
    f.write(reinterpret_cast<const char*>(&n), 8);
    f.write(header.data(), static_cast<std::streamsize>(n));
    std::vector<float> row_block(4096 * kDim);
    for (int64_t first = 0; first < kRows; first += 4096) {
      for (int64_t i = 0; i < 4096 * kDim; ++i)
        row_block[i] = static_cast<float>((first * kDim + i) % 1000003);
      f.write(reinterpret_cast<const char*>(row_block.data()),
              static_cast<std::streamsize>(row_block.size() * 4));
    }
  }
  const long before = MaxRssKb();
  auto r = OpenTensor(tmp.path, "big");
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  std::vector<float> chunk(4096 * kDim);
  for (int64_t first = 0; first < kRows; first += 4096) {
    ASSERT_TRUE((*r)->ReadRows(first, 4096, chunk.data()).ok());
    ASSERT_EQ(chunk[0], static_cast<float>((first * kDim) % 1000003));
    ASSERT_EQ(chunk.back(), static_cast<float>((first * kDim + 4096 * kDim - 1) % 1000003));
  }
  // The reader's own memory is a ~1 MiB window, far below the 96 MiB tensor.
  EXPECT_LT(MaxRssKb() - before, 32 * 1024);
}

// ---- .npz written here with libzip: many members, large deflated members ---------------

// A version 1.0 .npy of float32 or float64 values.
std::string NpyBytes(const char* descr, std::vector<int64_t> shape, bool fortran, const void* data,
                     size_t bytes) {
  std::string dict = std::string("{'descr': '") + descr +
                     "', 'fortran_order': " + (fortran ? "True" : "False") + ", 'shape': (";
  for (int64_t d : shape) dict += std::to_string(d) + ", ";
  dict += "), }";
  while ((10 + dict.size() + 1) % 64 != 0) dict += ' ';
  dict += '\n';
  std::string out = "\x93NUMPY\x01\x00"s;
  out += static_cast<char>(dict.size() & 0xff);
  out += static_cast<char>(dict.size() >> 8);
  out += dict;
  out.append(static_cast<const char*>(data), bytes);
  return out;
}

void WriteNpz(const std::string& path,
              const std::vector<std::pair<std::string, std::string>>& members) {
  int error = 0;
  zip_t* z = zip_open(path.c_str(), ZIP_CREATE | ZIP_TRUNCATE, &error);
  ASSERT_NE(z, nullptr);
  for (const auto& [name, bytes] : members) {
    zip_source_t* src = zip_source_buffer(z, bytes.data(), bytes.size(), 0);
    ASSERT_NE(src, nullptr);
    const zip_int64_t index = zip_file_add(z, (name + ".npy").c_str(), src, ZIP_FL_OVERWRITE);
    ASSERT_GE(index, 0);
    ASSERT_EQ(zip_set_file_compression(z, static_cast<zip_uint64_t>(index), ZIP_CM_DEFLATE, 1), 0);
  }
  ASSERT_EQ(zip_close(z), 0) << zip_strerror(z);
}

// A version 1.0 .npy with a hand-written header dict.
std::string NpyWithDict(std::string dict, const std::string& data) {
  while ((10 + dict.size() + 1) % 64 != 0) dict += ' ';
  dict += '\n';
  std::string out = "\x93NUMPY\x01\x00"s;
  out += static_cast<char>(dict.size() & 0xff);
  out += static_cast<char>(dict.size() >> 8);
  return out + dict + data;
}

// Members numpy can write but embstore cannot read are listed by `inspect` and
// refused only when their data is asked for.
TEST(CheckpointNpz, UnreadableMembersAreListedThenRefused) {
  const float one = 2.5f;
  const std::string f4(reinterpret_cast<const char*>(&one), 4);
  std::string long_dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (1,), }";
  long_dict.append(5000, ' ');  // past the first 4 KiB read: the `needed` round trip
  TempFile tmp;
  WriteNpz(tmp.path,
           {{"obj", NpyWithDict("{'descr': '|O', 'fortran_order': False, 'shape': (1,), }",
                                "\x80\x02]q\x00."s)},
            {"be", NpyWithDict("{'descr': '>f4', 'fortran_order': False, 'shape': (2, 2), }",
                               std::string(16, '\0'))},
            {"rec", NpyWithDict("{'descr': [('a', '<f4'), ('b', '<i8')], 'fortran_order': False, "
                                "'shape': (3,), }",
                                std::string(36, '\0'))},
            {"bogus", NpyWithDict("{'descr': 'f32', 'fortran_order': False, 'shape': (2, 2), }",
                                  std::string(16, '\0'))},
            {"long", NpyWithDict(long_dict, f4)}});
  auto entries = InspectCheckpoint(tmp.path);
  ASSERT_TRUE(entries.ok()) << entries.status().ToString();
  ASSERT_EQ(entries->size(), 5u);
  const std::vector<std::pair<std::string, std::string>> want = {
      {"obj", "object"}, {"be", ">f4"}, {"rec", "structured"}, {"bogus", "'f32'"}, {"long", "f32"}};
  for (size_t i = 0; i < want.size(); ++i) {
    EXPECT_EQ((*entries)[i].key, want[i].first);
    EXPECT_EQ((*entries)[i].dtype, want[i].second);
  }
  for (const char* key : {"obj", "be", "rec", "bogus"}) {
    SCOPED_TRACE(key);
    auto r = OpenTensor(tmp.path, key);
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.status().code(), Code::kNotSupported);
    EXPECT_NE(r.status().message().find("only floating tensors"), std::string::npos)
        << r.status().ToString();
  }
  auto obj = ReadCheckpointScalar(tmp.path, "obj");
  ASSERT_FALSE(obj.ok());
  EXPECT_EQ(obj.status().code(), Code::kNotSupported);
  EXPECT_NE(obj.status().message().find("dtype object cannot be read"), std::string::npos)
      << obj.status().ToString();
  auto value = ReadCheckpointScalar(tmp.path, "long");
  ASSERT_TRUE(value.ok()) << value.status().ToString();
  EXPECT_EQ(*value, 2.5);

  // A malformed header, by contrast, fails the whole archive, naming the member.
  WriteNpz(
      tmp.path,
      {{"ok", NpyWithDict("{'descr': '<f4', 'fortran_order': False, 'shape': (1,), }", f4)},
       {"broken", NpyWithDict("{'descr': '<f4', 'fortran_order': Flase, 'shape': (1,), }", f4)}});
  auto broken = InspectCheckpoint(tmp.path);
  ASSERT_FALSE(broken.ok());
  EXPECT_EQ(broken.status().code(), Code::kCorruption);
  EXPECT_NE(broken.status().message().find("member 'broken.npy'"), std::string::npos)
      << broken.status().ToString();
  EXPECT_NE(broken.status().message().find("malformed .npy header"), std::string::npos)
      << broken.status().ToString();
}

TEST(CheckpointNpz, ThousandsOfCompressedMembersListQuickly) {
  TempFile tmp;
  std::vector<std::pair<std::string, std::string>> members;
  for (int i = 0; i < 3000; ++i) {
    const float v[3] = {static_cast<float>(i), 0.5f, -static_cast<float>(i)};
    members.emplace_back("layer" + std::to_string(i), NpyBytes("<f4", {3}, false, v, sizeof(v)));
  }
  WriteNpz(tmp.path, members);
  const auto start = std::chrono::steady_clock::now();
  auto entries = InspectCheckpoint(tmp.path);
  ASSERT_TRUE(entries.ok()) << entries.status().ToString();
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(20));
  ASSERT_EQ(entries->size(), 3000u);
  EXPECT_EQ((*entries)[2999].key, "layer2999");
  auto r = OpenTensor(tmp.path, "layer1234");
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_TRUE(SameFloats(ReadWhole(**r), {1234.0f, 0.5f, -1234.0f}));
}

TEST(CheckpointNpz, LargeCompressedMembersStreamInBoundedMemory) {
  constexpr int64_t kRows = 16384, kDim = 128;  // 8 MiB of f32, C order
  constexpr int64_t kFRows = 6000,
                    kFDim = 48;  // 2.2 MiB of f64, Fortran order (spilled to a temp file)
  auto value = [](int64_t r, int64_t c) {
    return static_cast<float>((r * 131 + c * 7) % 4099) * 0.25f;
  };
  TempFile tmp;
  {
    std::vector<float> c_order(kRows * kDim);
    for (int64_t r = 0; r < kRows; ++r) {
      for (int64_t c = 0; c < kDim; ++c) c_order[r * kDim + c] = value(r, c);
    }
    std::vector<double> f_order(kFRows * kFDim);
    for (int64_t r = 0; r < kFRows; ++r) {
      for (int64_t c = 0; c < kFDim; ++c) f_order[c * kFRows + r] = value(r, c);
    }
    WriteNpz(tmp.path,
             {{"c", NpyBytes("<f4", {kRows, kDim}, false, c_order.data(), c_order.size() * 4)},
              {"f", NpyBytes("<f8", {kFRows, kFDim}, true, f_order.data(), f_order.size() * 8)}});
  }
  const long before = MaxRssKb();
  for (const auto& [key, rows, dim] :
       {std::tuple{"c", kRows, kDim}, std::tuple{"f", kFRows, kFDim}}) {
    SCOPED_TRACE(key);
    auto r = OpenTensor(tmp.path, key);
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    ASSERT_EQ((*r)->rows(), rows);
    ASSERT_EQ((*r)->dim(), dim);
    std::vector<float> chunk(static_cast<size_t>(1000 * dim));
    // Forward in chunks of 1000, then once more from an earlier row (a restart).
    for (int64_t first : {int64_t{0}, int64_t{1000}, int64_t{2000}, int64_t{5000}, int64_t{1500}}) {
      const int64_t n = std::min<int64_t>(1000, rows - first);
      ASSERT_TRUE((*r)->ReadRows(first, n, chunk.data()).ok());
      for (int64_t i = 0; i < n; ++i) {
        for (int64_t c = 0; c < dim; ++c)
          ASSERT_EQ(chunk[i * dim + c], value(first + i, c)) << first + i << "," << c;
      }
    }
    for (int64_t first = 0; first < rows; first += 1000) {
      ASSERT_TRUE((*r)->ReadRows(first, std::min<int64_t>(1000, rows - first), chunk.data()).ok());
    }
  }
  EXPECT_LT(MaxRssKb() - before, 32 * 1024);
}

}  // namespace
}  // namespace embstore::storage
