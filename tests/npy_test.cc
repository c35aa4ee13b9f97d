// .npy reading and writing, including hostile files.
#include "storage/npy.h"

#include <gtest/gtest.h>

#include <cstring>

#include "storage/half.h"
#include "storage/tensor_reader.h"
#include "test_util.h"

namespace embstore::storage {
namespace {

using embstore::testing::TempDir;
using embstore::testing::WriteBytes;

// Builds a version-1 .npy with the given header dict and raw data.
std::string MakeNpy(const std::string& dict, const std::string& data, int major = 1) {
  std::string h = dict;
  const size_t pre = major == 1 ? 10 : 12;
  while ((pre + h.size() + 1) % 64 != 0) h += ' ';
  h += '\n';
  std::string out = "\x93NUMPY";
  out += static_cast<char>(major);
  out += '\0';
  out += static_cast<char>(h.size() & 0xff);
  out += static_cast<char>((h.size() >> 8) & 0xff);
  if (major != 1) {
    out += '\0';
    out += '\0';
  }
  return out + h + data;
}

template <typename T>
std::string Raw(const std::vector<T>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(T));
}

std::vector<float> ReadAll(TensorReader& r) {
  std::vector<float> out(static_cast<size_t>(r.rows() * r.dim()));
  EXPECT_TRUE(r.ReadRows(0, r.rows(), out.data()).ok());
  return out;
}

TEST(NpyTest, WriteThenReadF32) {
  TempDir tmp;
  std::vector<float> v = {1, 2, 3, 4, 5, 6};
  ASSERT_TRUE(
      WriteNpy(tmp / "a.npy", "<f4", {2, 3}, {reinterpret_cast<uint8_t*>(v.data()), 24}).ok());
  auto r = OpenNpy(tmp / "a.npy");
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ((*r)->rows(), 2);
  EXPECT_EQ((*r)->dim(), 3);
  EXPECT_EQ(ReadAll(**r), v);
  auto e = InspectNpy(tmp / "a.npy");
  ASSERT_TRUE(e.ok());
  EXPECT_EQ((*e)[0].dtype, "f32");
  EXPECT_EQ((*e)[0].shape, (std::vector<int64_t>{2, 3}));
}

TEST(NpyTest, FortranOrderF64AndF16And1D) {
  TempDir tmp;
  // Fortran order: column-major storage of [[1,2,3],[4,5,6]].
  std::vector<double> col = {1, 4, 2, 5, 3, 6};
  WriteBytes(tmp / "f.npy",
             MakeNpy("{'descr': '<f8', 'fortran_order': True, 'shape': (2, 3), }", Raw(col)));
  auto r = OpenNpy(tmp / "f.npy");
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ((*r)->source_dtype(), SourceDType::kF64);
  EXPECT_EQ(ReadAll(**r), (std::vector<float>{1, 2, 3, 4, 5, 6}));
  // Chunked reads of a Fortran array.
  std::vector<float> row(3);
  ASSERT_TRUE((*r)->ReadRows(1, 1, row.data()).ok());
  EXPECT_EQ(row, (std::vector<float>{4, 5, 6}));

  std::vector<uint16_t> h = {FloatToHalf(0.5f), FloatToHalf(-2.0f), FloatToHalf(65504.0f)};
  WriteBytes(tmp / "h.npy",
             MakeNpy("{'descr': '<f2', 'fortran_order': False, 'shape': (3,), }", Raw(h)));
  auto rh = OpenNpy(tmp / "h.npy");
  ASSERT_TRUE(rh.ok()) << rh.status().ToString();
  EXPECT_EQ((*rh)->rows(), 3);
  EXPECT_EQ((*rh)->dim(), 1);
  EXPECT_EQ(ReadAll(**rh), (std::vector<float>{0.5f, -2.0f, 65504.0f}));
}

TEST(NpyTest, Version2Header) {
  TempDir tmp;
  std::vector<float> v = {1, 2};
  WriteBytes(tmp / "v2.npy",
             MakeNpy("{'descr': '<f4', 'fortran_order': False, 'shape': (1, 2), }", Raw(v), 2));
  auto r = OpenNpy(tmp / "v2.npy");
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(ReadAll(**r), v);
}

struct BadCase {
  const char* name;
  std::string bytes;
  const char* expect;
};

TEST(NpyTest, RefusesBadFiles) {
  TempDir tmp;
  std::vector<float> six(6, 1.0f);
  std::vector<int64_t> ints = {1, 2, 3};
  std::string absurd = "\x93NUMPY";
  absurd += '\x02';
  absurd += '\0';
  absurd += std::string("\xff\xff\xff\x7f", 4);
  absurd += "{'descr'";
  std::vector<BadCase> cases = {
      {"empty", "", "bad magic"},
      {"wrong magic", "PK\x03\x04 hello world", "bad magic"},
      {"absurd header length", absurd, "absurd .npy header length"},
      {"truncated data",
       MakeNpy("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }",
               Raw(six).substr(0, 10)),
       "truncated"},
      {"truncated header",
       MakeNpy("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }", "").substr(0, 30),
       "truncated"},
      {"integer dtype",
       MakeNpy("{'descr': '<i8', 'fortran_order': False, 'shape': (3,), }", Raw(ints)), "int64"},
      {"object dtype",
       MakeNpy("{'descr': '|O', 'fortran_order': False, 'shape': (3,), }",
               "xxxxxxxxxxxxxxxxxxxxxxxx"),
       "dtype"},
      {"3-D", MakeNpy("{'descr': '<f4', 'fortran_order': False, 'shape': (1, 2, 3), }", Raw(six)),
       "3 dimensions"},
      {"big endian", MakeNpy("{'descr': '>f4', 'fortran_order': False, 'shape': (6,), }", Raw(six)),
       "big-endian"},
      {"garbage dict", MakeNpy("{'descr': <f4, 'shape': (6,)}", Raw(six)), "malformed"},
      {"huge shape",
       MakeNpy("{'descr': '<f4', 'fortran_order': False, 'shape': (999999999999, 99999999999), }",
               ""),
       "absurdly large"},
      {"unknown key",
       MakeNpy("{'descr': '<f4', 'fortran_order': False, 'shape': (6,), 'x': 1}", Raw(six)),
       "unexpected key"},
  };
  for (const BadCase& c : cases) {
    WriteBytes(tmp / "bad.npy", c.bytes);
    auto r = OpenNpy(tmp / "bad.npy");
    ASSERT_FALSE(r.ok()) << c.name;
    EXPECT_NE(r.status().message().find(c.expect), std::string::npos)
        << c.name << ": " << r.status().message();
  }
  auto missing = OpenNpy(tmp / "nope.npy");
  EXPECT_EQ(missing.status().code(), Status::Code::kNotFound);
}

TEST(NpyTest, WriterLeavesNoPartialFile) {
  TempDir tmp;
  {
    NpyWriter w;
    ASSERT_TRUE(w.Open(tmp / "o.npy", "<f4", {4}).ok());
    float x = 1;
    ASSERT_TRUE(w.Append({reinterpret_cast<uint8_t*>(&x), 4}).ok());
    // Abandoned before Commit.
  }
  EXPECT_TRUE(std::filesystem::is_empty(tmp.path()));
}

TEST(HalfTest, ConversionsRoundTrip) {
  for (uint32_t h = 0; h < 0x10000; ++h) {
    const float f = HalfToFloat(static_cast<uint16_t>(h));
    if (std::isnan(f)) continue;
    EXPECT_EQ(FloatToHalf(f), h) << std::hex << h;
  }
  EXPECT_EQ(FloatToHalf(1e6f), 0x7c00);
  EXPECT_EQ(FloatToHalf(1.0f + 1.0f / 2048), FloatToHalf(1.0f));  // ties to even
  EXPECT_EQ(BF16ToFloat(FloatToBF16(3.140625f)), 3.140625f);
  EXPECT_TRUE(std::isnan(BF16ToFloat(FloatToBF16(std::nanf("")))));
}

}  // namespace
}  // namespace embstore::storage
