// Checkpoint readers: every fixture of tests/data/checkpoints (written by
// make_checkpoints.py with torch 1.13 / numpy, plus hand-made torch 2.x,
// safetensors and ZIP64 files) reads back bit-exactly; hostile and broken
// files are refused with clear messages; the pickle VM holds up against
// hostile pickles and limits. The strided reader, bounded-memory streaming and
// the zip reader are in checkpoint_stream_test.cc.
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
  const int checked = ForEachImportableFixture([](const Expected& want, TensorReader& r) {
    EXPECT_EQ(r.rows(), want.rows);
    EXPECT_EQ(r.dim(), want.dim);
    EXPECT_TRUE(SameFloats(ReadWhole(r), want.values));
  });
  EXPECT_GE(checked, 45);
}

TEST(CheckpointFixtures, OddChunksAndRestartsEqualAWholeRead) {
  const int checked = ForEachImportableFixture([](const Expected& want, TensorReader& r) {
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
  });
  EXPECT_GE(checked, 45);
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

// ---- the pickle VM
// ----------------------------------------------------------------------------------

using namespace std::string_literals;

std::string Pkl(const std::string& body) { return "\x80\x02"s + body + "."; }
// BINUNICODE
std::string Str(const std::string& text) {
  const uint32_t n = static_cast<uint32_t>(text.size());
  return std::string("X").append(reinterpret_cast<const char*>(&n), 4).append(text);
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

}  // namespace
}  // namespace embstore::storage
