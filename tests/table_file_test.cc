// Table file format: round trip, header validation, compatibility fixture.
#include "storage/table_file.h"

#include <gtest/gtest.h>

#include <cstring>

#include "codec/row_codec.h"
#include "storage/convert.h"
#include "test_util.h"

namespace embstore::storage {
namespace {

using embstore::testing::TempDir;

Result<TableHeader> WriteTableFile(const std::string& dir, const std::string& name, DType dtype,
                                   int64_t rows, int64_t dim, const std::vector<float>& values) {
  TableFileWriter w;
  EMBSTORE_RETURN_IF_ERROR(w.Open(dir + "/" + name + ".tmp", dtype, rows, dim));
  std::vector<uint8_t> enc(static_cast<size_t>(rows) * w.row_stride());
  EMBSTORE_RETURN_IF_ERROR(
      EncodeRows(values.data(), rows, dim, dtype, w.row_stride(), enc.data(), 0));
  EMBSTORE_RETURN_IF_ERROR(w.AppendRows(enc, rows));
  return w.Finish(dir + "/" + name, dir);
}

TEST(TableFileTest, RoundTripEveryDType) {
  TempDir tmp;
  const int64_t rows = 17, dim = 37;
  auto values = embstore::testing::RandomFloats(rows * dim, 7);
  for (DType dt : kAllDTypes) {
    const std::string name = std::string("t_") + DTypeName(dt);
    auto h = WriteTableFile(tmp.path(), name, dt, rows, dim, values);
    ASSERT_TRUE(h.ok()) << h.status().ToString();
    EXPECT_EQ(h->row_stride % 64, 0u);
    EXPECT_FALSE(std::filesystem::exists(tmp / (name + ".tmp")));
    auto m = MappedTableFile::Open(tmp / name, true);
    ASSERT_TRUE(m.ok()) << m.status().ToString();
    EXPECT_EQ((*m)->header().rows, static_cast<uint64_t>(rows));
    EXPECT_EQ((*m)->header().dim, static_cast<uint64_t>(dim));
    EXPECT_EQ((*m)->header().dtype, dt);
    EXPECT_EQ(reinterpret_cast<uintptr_t>((*m)->data()) % 64, 0u);
    std::vector<float> row(dim);
    for (int64_t r = 0; r < rows; ++r) {
      codec::DecodeRow((*m)->data() + r * h->row_stride, dim, dt, row.data());
      for (int64_t j = 0; j < dim; ++j) {
        const float want = values[r * dim + j];
        float tol = 0;
        if (dt == DType::kF16) tol = std::abs(want) * 1e-3f + 1e-4f;
        if (dt == DType::kBF16) tol = std::abs(want) * 8e-3f + 1e-6f;
        if (dt == DType::kInt8Rowwise) {
          float scale;
          std::memcpy(&scale, (*m)->data() + r * h->row_stride + dim, 4);
          tol = scale * 0.5f + 1e-5f;
        }
        EXPECT_NEAR(row[j], want, tol) << DTypeName(dt) << " r=" << r << " j=" << j;
      }
    }
    auto v = VerifyTableFile(tmp / name);
    EXPECT_TRUE(v.ok()) << v.status().ToString();
  }
}

TEST(TableFileTest, DetectsDataCorruption) {
  TempDir tmp;
  auto values = embstore::testing::RandomFloats(8 * 4, 1);
  ASSERT_TRUE(WriteTableFile(tmp.path(), "t", DType::kF32, 8, 4, values).ok());
  std::string bytes = embstore::testing::ReadBytes(tmp / "t");
  bytes[kHeaderBytes + 5] ^= 0x40;
  embstore::testing::WriteBytes(tmp / "t", bytes);
  auto v = VerifyTableFile(tmp / "t");
  ASSERT_FALSE(v.ok());
  EXPECT_EQ(v.status().code(), Status::Code::kCorruption);
  EXPECT_NE(v.status().message().find("checksum mismatch"), std::string::npos);
}

TEST(TableFileTest, RejectsBadHeaders) {
  TempDir tmp;
  auto values = embstore::testing::RandomFloats(8 * 4, 1);
  ASSERT_TRUE(WriteTableFile(tmp.path(), "t", DType::kF32, 8, 4, values).ok());
  const std::string good = embstore::testing::ReadBytes(tmp / "t");
  struct Case {
    const char* what;
    std::function<void(std::string&)> mutate;
    const char* expect;
  } cases[] = {
      {"magic", [](std::string& b) { b[0] = 'X'; }, "bad magic"},
      {"header byte", [](std::string& b) { b[20] ^= 1; }, "header checksum"},
      {"truncated", [](std::string& b) { b.resize(b.size() - 3); }, "bytes"},
      {"short", [](std::string& b) { b.resize(100); }, "truncated"},
  };
  for (const Case& c : cases) {
    std::string b = good;
    c.mutate(b);
    embstore::testing::WriteBytes(tmp / "bad", b);
    auto m = MappedTableFile::Open(tmp / "bad", false);
    ASSERT_FALSE(m.ok()) << c.what;
    EXPECT_EQ(m.status().code(), Status::Code::kCorruption) << c.what;
    EXPECT_NE(m.status().message().find(c.expect), std::string::npos)
        << c.what << ": " << m.status().message();
  }
}

// A format-version-1 file committed to the repository (tests/data/table_v1.emb,
// written by the first release). Every later build must keep reading it.
TEST(TableFileTest, ReadsFormatVersion1Fixture) {
  const std::string path = std::string(EMBSTORE_SOURCE_DIR) + "/tests/data/table_v1.emb";
  auto m = MappedTableFile::Open(path, false);
  ASSERT_TRUE(m.ok()) << m.status().ToString();
  const TableHeader& h = (*m)->header();
  EXPECT_EQ(h.format_version, 1u);
  EXPECT_EQ(h.dtype, DType::kF32);
  ASSERT_EQ(h.rows, 3u);
  ASSERT_EQ(h.dim, 5u);
  // Row r holds r * 10 + j.
  for (int r = 0; r < 3; ++r) {
    const float* row = reinterpret_cast<const float*>((*m)->data() + r * h.row_stride);
    for (int j = 0; j < 5; ++j) EXPECT_EQ(row[j], static_cast<float>(r * 10 + j));
  }
  EXPECT_TRUE(VerifyTableFile(path).ok());
}

TEST(TableFileTest, WriterRemovesTemporaryWhenAbandoned) {
  TempDir tmp;
  {
    TableFileWriter w;
    ASSERT_TRUE(w.Open(tmp / "x.tmp", DType::kF32, 10, 4).ok());
    EXPECT_TRUE(std::filesystem::exists(tmp / "x.tmp"));
  }
  EXPECT_FALSE(std::filesystem::exists(tmp / "x.tmp"));
}

}  // namespace
}  // namespace embstore::storage
