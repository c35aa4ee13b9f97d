// Checkpoint readers: every fixture of tests/data/checkpoints (written by
// make_checkpoints.py with torch 1.13 / numpy, plus hand-made torch 2.x,
// safetensors and ZIP64 files) reads back bit-exactly; hostile and broken
// files are refused with clear messages; the strided reader, the pickle VM and
// the zip reader hold up against odd layouts and limits.
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
#include "embstore/checkpoint.h"
#include "storage/half.h"

namespace embstore::storage {
namespace {

namespace fs = std::filesystem;
using Code = Status::Code;

const std::string kDataDir = std::string(EMBSTORE_SOURCE_DIR) + "/tests/data/checkpoints";
std::string Data(const std::string& rel) { return kDataDir + "/" + rel; }

std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// The expected rows: a float32, C-order, 2-D .npy written by make_checkpoints.py.
struct Expected {
  int64_t rows = 0, dim = 0;
  std::vector<float> values;
};

Expected LoadExpected(const std::string& path) {
  const std::string bytes = ReadAll(path);
  EXPECT_GE(bytes.size(), 10u) << path;
  EXPECT_EQ(bytes.substr(0, 6), "\x93NUMPY") << path;
  const size_t header_len = static_cast<uint8_t>(bytes[8]) | (static_cast<uint8_t>(bytes[9]) << 8);
  const std::string header = bytes.substr(10, header_len);
  EXPECT_NE(header.find("'<f4'"), std::string::npos) << header;
  EXPECT_NE(header.find("'fortran_order': False"), std::string::npos) << header;
  Expected e;
  const size_t open = header.find('('), comma = header.find(',', open),
               close = header.find(')', open);
  e.rows = std::stoll(header.substr(open + 1, comma - open - 1));
  e.dim = std::stoll(header.substr(comma + 1, close - comma - 1));
  e.values.resize(static_cast<size_t>(e.rows * e.dim));
  EXPECT_EQ(bytes.size(), 10 + header_len + e.values.size() * 4) << path;
  if (!e.values.empty())
    std::memcpy(e.values.data(), bytes.data() + 10 + header_len, e.values.size() * 4);
  return e;
}

// Bit-exact, except that any NaN matches any NaN.
::testing::AssertionResult SameFloats(const std::vector<float>& got,
                                      const std::vector<float>& want) {
  if (got.size() != want.size()) {
    return ::testing::AssertionFailure() << "size " << got.size() << " vs " << want.size();
  }
  for (size_t i = 0; i < got.size(); ++i) {
    uint32_t a, b;
    std::memcpy(&a, &got[i], 4);
    std::memcpy(&b, &want[i], 4);
    if (a != b && !(std::isnan(got[i]) && std::isnan(want[i]))) {
      return ::testing::AssertionFailure()
             << "element " << i << ": " << got[i] << " vs " << want[i];
    }
  }
  return ::testing::AssertionSuccess();
}

std::vector<float> ReadWhole(TensorReader& r) {
  std::vector<float> out(static_cast<size_t>(r.rows() * r.dim()));
  Status s = r.ReadRows(0, r.rows(), out.data());
  EXPECT_TRUE(s.ok()) << s.ToString();
  return out;
}

// Reads in chunks of `chunk` rows, in order.
std::vector<float> ReadChunked(TensorReader& r, int64_t chunk) {
  std::vector<float> out(static_cast<size_t>(r.rows() * r.dim()));
  for (int64_t first = 0; first < r.rows(); first += chunk) {
    const int64_t n = std::min(chunk, r.rows() - first);
    Status s = r.ReadRows(first, n, out.data() + first * r.dim());
    EXPECT_TRUE(s.ok()) << s.ToString();
  }
  return out;
}

nlohmann::json Manifest() { return nlohmann::json::parse(ReadAll(Data("manifest.json"))); }

// ---- every fixture, driven by the manifest -----------------------------------------

TEST(CheckpointFixtures, InspectListsKeysDtypesShapesInOrder) {
  const nlohmann::json manifest = Manifest();
  ASSERT_GE(manifest.size(), 12u);
  for (const auto& [file, info] : manifest.items()) {
    SCOPED_TRACE(file);
    auto entries = InspectCheckpoint(Data(file));
    ASSERT_TRUE(entries.ok()) << entries.status().ToString();
    const auto& want = info["tensors"];
    ASSERT_EQ(entries->size(), want.size());
    for (size_t i = 0; i < want.size(); ++i) {
      EXPECT_EQ((*entries)[i].key, want[i]["key"].get<std::string>());
      EXPECT_EQ((*entries)[i].dtype, want[i]["dtype"].get<std::string>());
      EXPECT_EQ((*entries)[i].shape, want[i]["shape"].get<std::vector<int64_t>>());
    }
  }
}

TEST(CheckpointFixtures, EveryImportableTensorReadsBitExact) {
  const nlohmann::json manifest = Manifest();
  int checked = 0;
  for (const auto& [file, info] : manifest.items()) {
    for (const auto& t : info["tensors"]) {
      if (!t.contains("expected")) continue;
      const std::string key = t["key"].get<std::string>();
      SCOPED_TRACE(file + ":" + key);
      const Expected want = LoadExpected(Data(t["expected"].get<std::string>()));
      auto reader = OpenTensor(Data(file), key);
      ASSERT_TRUE(reader.ok()) << reader.status().ToString();
      TensorReader& r = **reader;
      EXPECT_EQ(r.rows(), want.rows);
      EXPECT_EQ(r.dim(), want.dim);
      EXPECT_NE(r.source().find(file), std::string::npos) << r.source();
      EXPECT_TRUE(SameFloats(ReadWhole(r), want.values));
      ++checked;
    }
  }
  EXPECT_GE(checked, 45);
}

TEST(CheckpointFixtures, OddChunksAndRestartsEqualAWholeRead) {
  const nlohmann::json manifest = Manifest();
  for (const auto& [file, info] : manifest.items()) {
    for (const auto& t : info["tensors"]) {
      if (!t.contains("expected")) continue;
      const std::string key = t["key"].get<std::string>();
      SCOPED_TRACE(file + ":" + key);
      const Expected want = LoadExpected(Data(t["expected"].get<std::string>()));
      auto reader = OpenTensor(Data(file), key);
      ASSERT_TRUE(reader.ok()) << reader.status().ToString();
      TensorReader& r = **reader;
      for (int64_t chunk : {1, 3, 7, 64})
        EXPECT_TRUE(SameFloats(ReadChunked(r, chunk), want.values)) << chunk;
      // Backwards: the second half first, then the first half (streams restart).
      if (r.rows() >= 2 && r.dim() > 0) {
        const int64_t half = r.rows() / 2;
        std::vector<float> out(want.values.size());
        ASSERT_TRUE(r.ReadRows(half, r.rows() - half, out.data() + half * r.dim()).ok());
        ASSERT_TRUE(r.ReadRows(0, half, out.data()).ok());
        EXPECT_TRUE(SameFloats(out, want.values));
      }
    }
  }
}

TEST(CheckpointFixtures, NonImportableTensorsAreRefusedClearly) {
  const nlohmann::json manifest = Manifest();
  int checked = 0;
  for (const auto& [file, info] : manifest.items()) {
    for (const auto& t : info["tensors"]) {
      if (!t.contains("refused")) continue;
      const std::string key = t["key"].get<std::string>();
      SCOPED_TRACE(file + ":" + key);
      auto reader = OpenTensor(Data(file), key);
      ASSERT_FALSE(reader.ok());
      EXPECT_NE(reader.status().message().find(t["refused"].get<std::string>()), std::string::npos)
          << reader.status().ToString();
      EXPECT_NE(reader.status().message().find("'" + key + "'"), std::string::npos)
          << reader.status().ToString();
      ++checked;
    }
  }
  EXPECT_GE(checked, 10);
}

TEST(CheckpointFixtures, ScalarsReadBack) {
  const nlohmann::json manifest = Manifest();
  int checked = 0;
  for (const auto& [file, info] : manifest.items()) {
    for (const auto& [key, value] : info["scalars"].items()) {
      SCOPED_TRACE(file + ":" + key);
      auto v = ReadCheckpointScalar(Data(file), key);
      ASSERT_TRUE(v.ok()) << v.status().ToString();
      EXPECT_EQ(*v, value.get<double>());
      ++checked;
    }
  }
  EXPECT_GE(checked, 12);
}

TEST(CheckpointFixtures, IntegerTensorMessage) {
  auto r = OpenTensor(Data("dtypes.pt"), "ids");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kNotSupported);
  EXPECT_NE(r.status().message().find("tensor 'ids' has dtype int64; only floating tensors (f32, "
                                      "f64, f16, bf16) can be imported"),
            std::string::npos)
      << r.status().message();
  EXPECT_NE(r.status().message().find("dtypes.pt"), std::string::npos);
}

TEST(CheckpointFixtures, ScalarErrors) {
  auto big = ReadCheckpointScalar(Data("training.pt"), "model.emb.weight");
  ASSERT_FALSE(big.ok());
  EXPECT_EQ(big.status().code(), Code::kInvalidArgument);
  EXPECT_NE(big.status().message().find("not a single number"), std::string::npos);
  auto missing = ReadCheckpointScalar(Data("training.pt"), "name");  // a string leaf
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), Code::kNotFound);
}

// ---- key selection ---------------------------------------------------------------------

TEST(CheckpointKeys, EmptyKeyPicksTheOnlyTensor) {
  auto r = OpenTensor(Data("bare_tensor.pt"), "");
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ((*r)->rows(), 4);
  auto z = OpenTensor(Data("zip64.npz"), "");
  ASSERT_TRUE(z.ok()) << z.status().ToString();
}

TEST(CheckpointKeys, EmptyKeyWithSeveralTensorsListsThem) {
  auto r = OpenTensor(Data("state_dict.pt"), "");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kInvalidArgument);
  const std::string& m = r.status().message();
  EXPECT_NE(m.find("holds 3 tensors"), std::string::npos) << m;
  EXPECT_NE(m.find("emb.weight [10, 4] f32"), std::string::npos) << m;
  EXPECT_NE(m.find("fc.bias [3] f32"), std::string::npos) << m;
  EXPECT_NE(m.find("embstore inspect"), std::string::npos) << m;
  // A long list is truncated.
  auto v = OpenTensor(Data("views.pt"), "");
  ASSERT_FALSE(v.ok());
  EXPECT_NE(v.status().message().find("and 6 more"), std::string::npos) << v.status().message();
}

TEST(CheckpointKeys, UnknownKeySuggestsAndPointsAtInspect) {
  auto r = OpenTensor(Data("training.pt"), "emb.weight");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kNotFound);
  const std::string& m = r.status().message();
  EXPECT_NE(m.find("no tensor 'emb.weight'"), std::string::npos) << m;
  EXPECT_NE(m.find("did you mean 'model.emb.weight'"), std::string::npos) << m;
  EXPECT_NE(m.find("`embstore inspect "), std::string::npos) << m;
}

TEST(CheckpointKeys, MissingFile) {
  auto r = InspectCheckpoint(Data("no_such_file.pt"));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kNotFound);
  auto d = InspectCheckpoint(kDataDir);
  ASSERT_FALSE(d.ok());
  EXPECT_NE(d.status().message().find("directory"), std::string::npos);
}

// ---- hostile and broken files ------------------------------------------------------------

struct BadCase {
  const char* file;
  const char* key;  // nullptr: InspectCheckpoint fails; else OpenTensor(file, key) or a read fails
  Code code;
  const char* message;
};

const BadCase kBadCases[] = {
    {"bad/os_system.pt", nullptr, Code::kInvalidArgument,
     "checkpoint refers to 'os.system', which embstore does not load (only tensors and plain "
     "containers are accepted)"},
    {"bad/builtins_eval.pt", nullptr, Code::kInvalidArgument, "refers to 'builtins.eval'"},
    {"bad/inst.pt", nullptr, Code::kInvalidArgument, "refers to 'os.system'"},
    {"bad/getattr_in_state_dict.pt", nullptr, Code::kInvalidArgument,
     "refers to '__builtin__.getattr'"},
    {"bad/truncated_pickle.pt", nullptr, Code::kCorruption, "truncated"},
    {"bad/huge_string.pt", nullptr, Code::kCorruption, "truncated"},
    {"bad/big_endian.pt", nullptr, Code::kNotSupported, "only little-endian"},
    {"bad/view_past_storage.pt", "w", Code::kCorruption, "but the data holds only 32 bytes"},
    {"bad/numel_past_member.pt", "w", Code::kCorruption,
     "should hold 100 elements but has only 32 bytes"},
    {"bad/missing_storage.pt", "w", Code::kCorruption,
     "storage member 'archive/data/7' is missing"},
    {"bad/truncated_state_dict.pt", nullptr, Code::kCorruption, "(truncated?)"},
    {"bad/truncated_weights.safetensors", nullptr, Code::kCorruption, "(truncated?)"},
    {"bad/truncated_stored.npz", nullptr, Code::kCorruption, "(truncated?)"},
    {"bad/truncated_compressed.npz", nullptr, Code::kCorruption, "(truncated?)"},
    {"bad/corrupt_deflate.npz", "big", Code::kCorruption, "member 'big.npy'"},
    {"bad/header_too_long.safetensors", nullptr, Code::kCorruption,
     "header length 1099511627776 exceeds the file size"},
    {"bad/offsets_past_end.safetensors", nullptr, Code::kCorruption, "outside the 16 data bytes"},
    {"bad/shape_mismatch.safetensors", nullptr, Code::kCorruption,
     "needs 28 bytes but data_offsets span 24"},
    {"bad/deep_json.safetensors", nullptr, Code::kCorruption, "nested too deeply"},
    {"bad/not_a_checkpoint.txt", nullptr, Code::kInvalidArgument,
     "is not a checkpoint embstore can read"},
    {"bad/empty.bin", nullptr, Code::kInvalidArgument, "is empty"},
    {"bad/plain.zip", nullptr, Code::kInvalidArgument, "neither a .npz"},
    {"bad/legacy.pt", nullptr, Code::kNotSupported, "legacy torch.save format"},
};

// Opens and fully reads `key`; returns the first failure.
Status OpenAndRead(const std::string& path, const std::string& key) {
  auto r = OpenTensor(path, key);
  if (!r.ok()) return r.status();
  std::vector<float> out(static_cast<size_t>((*r)->dim()) * 16);
  for (int64_t first = 0; first < (*r)->rows(); first += 16) {
    Status s = (*r)->ReadRows(first, std::min<int64_t>(16, (*r)->rows() - first), out.data());
    if (!s.ok()) return s;
  }
  return Status::OK();
}

TEST(CheckpointRefusals, HostileAndBrokenFilesFailClearly) {
  const std::string marker = "/tmp/embstore_pwned";
  fs::remove(marker);
  for (const BadCase& c : kBadCases) {
    SCOPED_TRACE(c.file);
    Status s;
    if (c.key == nullptr) {
      auto r = InspectCheckpoint(Data(c.file));
      ASSERT_FALSE(r.ok());
      s = r.status();
      // OpenTensor reports the same problem.
      auto o = OpenTensor(Data(c.file), "");
      ASSERT_FALSE(o.ok());
      EXPECT_EQ(o.status().code(), c.code) << o.status().ToString();
    } else {
      auto r = InspectCheckpoint(Data(c.file));
      EXPECT_TRUE(r.ok()) << r.status().ToString();  // the directory is fine; the data is not
      s = OpenAndRead(Data(c.file), c.key);
      ASSERT_FALSE(s.ok());
    }
    EXPECT_EQ(s.code(), c.code) << s.ToString();
    EXPECT_NE(s.message().find(c.message), std::string::npos) << s.ToString();
    EXPECT_NE(s.message().find(fs::path(c.file).filename().string()), std::string::npos)
        << s.ToString();
    // A valid file still reads fine afterwards.
    auto ok = OpenTensor(Data("training.pt"), "model.emb.weight");
    ASSERT_TRUE(ok.ok()) << ok.status().ToString();
    EXPECT_EQ(ReadWhole(**ok).size(), 72u);
  }
  EXPECT_FALSE(fs::exists(marker));
}

// ---- conversions -----------------------------------------------------------------------------

TEST(CheckpointConvert, EveryHalfAndBFloat16Value) {
  for (uint32_t bits = 0; bits < 65536; ++bits) {
    const uint16_t h = static_cast<uint16_t>(bits);
    const int exponent = (h >> 10) & 31, mantissa = h & 1023;
    const double sign = (h & 0x8000) ? -1.0 : 1.0;
    double want;
    if (exponent == 0) {
      want = sign * std::ldexp(mantissa, -24);
    } else if (exponent == 31) {
      want = mantissa == 0 ? sign * INFINITY : NAN;
    } else {
      want = sign * std::ldexp(1024 + mantissa, exponent - 25);
    }
    float got;
    const uint8_t le[2] = {static_cast<uint8_t>(h), static_cast<uint8_t>(h >> 8)};
    ckpt::ConvertToFloat(SourceDType::kF16, le, 2, 1, &got, 1);
    if (std::isnan(want)) {
      EXPECT_TRUE(std::isnan(got)) << bits;
    } else {
      EXPECT_EQ(got, static_cast<float>(want)) << bits;
      EXPECT_EQ(std::signbit(got), std::signbit(want)) << bits;
    }
    ckpt::ConvertToFloat(SourceDType::kBF16, le, 2, 1, &got, 1);
    uint32_t got_bits;
    std::memcpy(&got_bits, &got, 4);
    EXPECT_EQ(got_bits, bits << 16);
  }
}

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

struct TempFile {
  TempFile() {
    char name[] = "/tmp/embstore_ckpt_test_XXXXXX";
    int fd = mkstemp(name);
    EXPECT_GE(fd, 0);
    close(fd);
    path = name;
  }
  ~TempFile() { fs::remove(path); }
  std::string path;
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

// ---- the pickle VM
// ----------------------------------------------------------------------------------

using namespace std::string_literals;

std::string Pkl(const std::string& body) { return "\x80\x02"s + body + "."; }
// BINUNICODE
std::string Str(const std::string& text) {
  const uint32_t n = static_cast<uint32_t>(text.size());
  return "X" + std::string(reinterpret_cast<const char*>(&n), 4) + text;
}

TEST(Pickle, FlattensNestedContainers) {
  // {"a": {"b": 1, 2: [3.5, True]}, "s": "text", "n": None}
  const std::string p = Pkl("}(" + Str("a") + "}(" + Str("b") +
                            "K\x01"
                            "K\x02"
                            "](G" +
                            "\x40\x0c\0\0\0\0\0\0"s +
                            "\x88"
                            "eu" +
                            Str("s") + Str("text") + Str("n") + "Nu");
  auto c = pickle::ParseTorchPickle(p);
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  ASSERT_EQ(c->leaves.size(), 3u);
  EXPECT_EQ(c->leaves[0].key, "a.b");
  EXPECT_EQ(c->leaves[0].number, 1);
  EXPECT_EQ(c->leaves[1].key, "a.2.0");
  EXPECT_EQ(c->leaves[1].number, 3.5);
  EXPECT_EQ(c->leaves[2].key, "a.2.1");
  EXPECT_EQ(c->leaves[2].number, 1);
}

TEST(Pickle, RefusesGlobalsOutsideTheAllowlist) {
  for (const char* g :
       {"os\nsystem\n", "posix\nsystem\n", "builtins\neval\n", "subprocess\nPopen\n",
        "torch\nload\n", "numpy.core.multiarray\n_reconstruct\n"}) {
    auto c = pickle::ParseTorchPickle(Pkl(std::string("c") + g + ")R"));
    ASSERT_FALSE(c.ok());
    EXPECT_EQ(c.status().code(), Code::kInvalidArgument);
    EXPECT_NE(c.status().message().find("which embstore does not load"), std::string::npos);
  }
  // An allowlisted non-callable is still not callable.
  auto c = pickle::ParseTorchPickle(Pkl("ctorch\nFloatStorage\n)R"));
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find("calls 'torch.FloatStorage'"), std::string::npos);
}

TEST(Pickle, Limits) {
  pickle::Limits limits;
  limits.max_depth = 5;
  // [[[[[[[]]]]]]] nested 8 deep.
  std::string nested;
  for (int i = 0; i < 8; ++i) nested += "]";
  for (int i = 0; i < 7; ++i) nested += "a";
  auto deep = pickle::ParseTorchPickle(Pkl(nested), limits);
  ASSERT_FALSE(deep.ok());
  EXPECT_NE(deep.status().message().find("levels deep"), std::string::npos);
  // A list containing itself: a cycle is not followed.
  auto cyc =
      pickle::ParseTorchPickle(Pkl("]q\0h\0"
                                   "aK\x01"
                                   "a"s));
  ASSERT_TRUE(cyc.ok()) << cyc.status().ToString();
  ASSERT_EQ(cyc->leaves.size(), 1u);
  EXPECT_EQ(cyc->leaves[0].key, "1");
  // Shared references doubling per level: 2^40 paths, stopped by the visit budget.
  std::string dag = "]q\0"s;
  for (int i = 1; i <= 40; ++i) {
    dag += std::string("]h") + static_cast<char>(i - 1) + "h" + static_cast<char>(i - 1) + "\x86" +
           "aq" + static_cast<char>(i);
  }
  limits = pickle::Limits();
  limits.max_leaves = 100000;
  auto wide = pickle::ParseTorchPickle(Pkl(dag), limits);
  ASSERT_FALSE(wide.ok());
  EXPECT_NE(wide.status().message().find("expands to more than"), std::string::npos);
  // Memo and object limits.
  limits = pickle::Limits();
  limits.max_memo = 2;
  auto memo = pickle::ParseTorchPickle(Pkl("Nq\0q\x01q\x02"s), limits);
  ASSERT_FALSE(memo.ok());
  EXPECT_NE(memo.status().message().find("memoizes more than 2"), std::string::npos);
  limits = pickle::Limits();
  limits.max_objects = 3;
  auto objs = pickle::ParseTorchPickle(Pkl("]]]]0000"), limits);
  ASSERT_FALSE(objs.ok());
  // A string longer than what follows is never allocated.
  auto big = pickle::ParseTorchPickle(std::string("\x80\x02X\xff\xff\xff\xff", 7));
  ASSERT_FALSE(big.ok());
  EXPECT_EQ(big.status().code(), Code::kCorruption);
  // Stack underflow, unknown memo, odd SETITEMS, unsupported protocol.
  for (const std::string& bad : {Pkl("R"), Pkl("h\x05"), Pkl("}(Nu"), std::string("\x80\x06N.", 4),
                                 Pkl("(t0t"), std::string("\x80\x02", 2)}) {
    EXPECT_FALSE(pickle::ParseTorchPickle(bad).ok());
  }
  // Big integers are opaque leaves, not errors.
  auto bigint = pickle::ParseTorchPickle(Pkl(std::string("\x8a\x09", 2) + std::string(9, '\x01')));
  EXPECT_TRUE(bigint.ok());
}

// ---- streaming with bounded memory
// -------------------------------------------------------------------

long MaxRssKb() {
  struct rusage u;
  getrusage(RUSAGE_SELF, &u);
  return u.ru_maxrss;
}

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
