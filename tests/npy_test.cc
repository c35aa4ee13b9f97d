// .npy reading and writing, including hostile files.
#include "checkpoint/npy.h"

#include <gtest/gtest.h>

#include <cstring>

#include "checkpoint/checkpoint_internal.h"
#include "checkpoint/tensor_reader.h"
#include "codec/half.h"
#include "test_util.h"

namespace embstore::storage {
namespace {

using embstore::testing::TempDir;
using embstore::testing::WriteBytes;

// Builds a .npy (version `major`) with the given header dict and raw data.
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

  std::vector<uint16_t> h = {codec::FloatToHalf(0.5f), codec::FloatToHalf(-2.0f),
                             codec::FloatToHalf(65504.0f)};
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

// ---- The shared header grammar ------------------------------------------------------

using Code = Status::Code;

Result<RawNpyHeader> ParseWhole(const std::string& bytes) {
  size_t needed = 0;
  Result<RawNpyHeader> h = ParseNpyHeaderPrefix(bytes, &needed);
  EXPECT_EQ(needed, 0u);
  return h;
}

TEST(NpyHeaderGrammar, AcceptsWhatNumpyWrites) {
  struct Case {
    std::string dict;
    int major;
    std::vector<int64_t> shape;
    bool fortran;
  };
  const std::vector<Case> cases = {
      {"{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }", 1, {2, 3}, false},
      {"{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3)}", 2, {2, 3}, false},
      {"{\"descr\": \"<f4\", \"fortran_order\": True, \"shape\": (7,)}", 3, {7}, true},
      {"{'descr':'<f4','fortran_order':False,'shape':(3L, 4L),}", 1, {3, 4}, false},
      {"{'shape': (), 'fortran_order': False, 'descr': '<f4'}", 1, {}, false},
      {"  {\t'descr' : '<f4' ,\n'fortran_order' : True , 'shape' : ( 5 , ) , }  ", 1, {5}, true},
      {"{'descr': '<f4', 'fortran_order': False, 'shape': (0, 4), }", 1, {0, 4}, false},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.dict);
    const std::string bytes = MakeNpy(c.dict, "", c.major);
    auto h = ParseWhole(bytes);
    ASSERT_TRUE(h.ok()) << h.status().ToString();
    EXPECT_EQ(h->major_version, c.major);
    EXPECT_EQ(h->descr, "<f4");
    EXPECT_EQ(h->dtype.name, "f32");
    EXPECT_EQ(h->shape, c.shape);
    EXPECT_EQ(h->fortran_order, c.fortran);
    EXPECT_EQ(h->data_offset, bytes.size());
    EXPECT_EQ(h->num_elements,
              c.shape.empty() ? 1 : c.shape[0] * (c.shape.size() > 1 ? c.shape[1] : 1));
    EXPECT_TRUE(h->extra_keys.empty());
  }
}

TEST(NpyHeaderGrammar, NeededGrowsUntilTheHeaderIsWhole) {
  for (int major : {1, 2}) {
    SCOPED_TRACE(major);
    const std::string bytes = MakeNpy("{'descr': '<f8', 'fortran_order': False, 'shape': (4,), }",
                                      std::string(32, 'x'), major);
    const size_t header_end = bytes.size() - 32;
    for (size_t cut = 0; cut < header_end; ++cut) {
      size_t needed = 0;
      auto h = ParseNpyHeaderPrefix(std::string_view(bytes).substr(0, cut), &needed);
      ASSERT_TRUE(h.ok()) << cut << ": " << h.status().ToString();
      EXPECT_GT(needed, cut);
      EXPECT_LE(needed, header_end);
      EXPECT_TRUE(h->shape.empty());
      // A caller that reads what it is asked for gets there in at most two more rounds.
      if (cut >= 12) {
        EXPECT_EQ(needed, header_end);
      }
    }
    for (size_t cut : {header_end, bytes.size()}) {
      size_t needed = 1;
      auto h = ParseNpyHeaderPrefix(std::string_view(bytes).substr(0, cut), &needed);
      ASSERT_TRUE(h.ok()) << h.status().ToString();
      EXPECT_EQ(needed, 0u);
      EXPECT_EQ(h->data_offset, header_end);
      EXPECT_EQ(h->shape, (std::vector<int64_t>{4}));
    }
  }
  // A header longer than the first read (4 KiB) is read in a second round, by the
  // strict reader and by the checkpoint front end alike.
  std::string dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (1,), }";
  dict.append(6000, ' ');
  TempDir tmp;
  std::vector<float> v = {1.5f};
  WriteBytes(tmp / "long.npy", MakeNpy(dict, Raw(v), 2));
  auto a = LoadNpy(tmp / "long.npy");
  ASSERT_TRUE(a.ok()) << a.status().ToString();
  EXPECT_EQ(a->data.size(), 4u);
  auto scalar = ReadCheckpointScalar(tmp / "long.npy", "");
  ASSERT_TRUE(scalar.ok()) << scalar.status().ToString();
  EXPECT_EQ(*scalar, 1.5);
}

TEST(NpyHeaderGrammar, DecodesTypeStrings) {
  struct Case {
    const char* descr;
    char kind;
    int64_t item_size;
    bool big_endian;
    const char* name;
  };
  const Case cases[] = {
      {"<f4", 'f', 4, false, "f32"},
      {"<f8", 'f', 8, false, "f64"},
      {"<f2", 'f', 2, false, "f16"},
      {"=f4", 'f', 4, false, "f32"},
      {"<i8", 'i', 8, false, "int64"},
      {"|u1", 'u', 1, false, "uint8"},
      {"|b1", 'b', 1, false, "bool"},
      {"<c16", 'c', 16, false, "complex128"},
      {">i1", 'i', 1, false, "int8"},
      {">f4", 'f', 4, true, ">f4"},
      {">c8", 'c', 8, true, ">c8"},
      {"<U5", 'U', 20, false, "<U5"},
      {"|S7", 'S', 7, false, "|S7"},
      {"|V16", 'V', 16, false, "|V16"},
      {"|O", 'O', 0, false, "object"},
      {"|O8", 'O', 0, false, "object"},
      {"<M8[ns]", 'M', 0, false, "<M8[ns]"},
      {"<f", 'f', 0, false, "<f"},
      {"<x4", 0, 0, false, "<x4"},
      {"<f99999999999", 'f', 0, false, "<f99999999999"},
      {"f32", 0, 0, false, "'f32'"},
      {"object", 0, 0, false, "'object'"},
      {"", 0, 0, false, "''"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.descr);
    const NpyDType t = DecodeNpyDescr(c.descr);
    EXPECT_EQ(t.kind, c.kind);
    EXPECT_EQ(t.item_size, c.item_size);
    EXPECT_EQ(t.big_endian, c.big_endian);
    EXPECT_EQ(t.name, c.name);
  }
}

TEST(NpyHeaderGrammar, StructuredDescrIsListedNotRead) {
  const std::string bytes = MakeNpy(
      "{'descr': [('id', '<i8'), ('pos', '<f4', (3,)), (('title', 'name'), [('x', '|u1')])], "
      "'fortran_order': False, 'shape': (2,), }",
      std::string(64, '\0'));
  auto raw = ParseWhole(bytes);
  ASSERT_TRUE(raw.ok()) << raw.status().ToString();
  EXPECT_TRUE(raw->structured);
  EXPECT_EQ(raw->dtype.name, "structured");
  EXPECT_EQ(raw->dtype.item_size, 0);
  EXPECT_EQ(raw->shape, (std::vector<int64_t>{2}));

  ckpt::NpyHeader lenient;
  size_t needed = 0;
  ASSERT_TRUE(ckpt::ParseNpyHeader(bytes, &lenient, &needed).ok());
  EXPECT_EQ(lenient.dtype, "structured");
  EXPECT_EQ(lenient.source_dtype, SourceDType::kOther);

  auto strict =
      ParseNpyHeader({reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size()}, bytes.size());
  ASSERT_FALSE(strict.ok());
  EXPECT_EQ(strict.status().code(), Code::kInvalidArgument);
  EXPECT_NE(strict.status().message().find("structured"), std::string::npos)
      << strict.status().ToString();
}

// The same header through both front ends: the checkpoint one describes what
// it cannot read, the strict one refuses it.
TEST(NpyHeaderGrammar, LenientListsWhatStrictRefuses) {
  struct Case {
    const char* descr;
    const char* listed_as;
    Code strict_code;
    const char* strict_message;
  };
  const Case cases[] = {
      {">f4", ">f4", Code::kNotSupported, "big-endian .npy data ('>f4') is not supported"},
      {"|O", "object", Code::kInvalidArgument, "unsupported .npy dtype '|O'"},
      {"<M8[ns]", "<M8[ns]", Code::kInvalidArgument, "unsupported .npy dtype '<M8[ns]'"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.descr);
    const std::string bytes = MakeNpy(
        std::string("{'descr': '") + c.descr + "', 'fortran_order': False, 'shape': (3,), }",
        std::string(24, '\0'));
    ckpt::NpyHeader lenient;
    size_t needed = 0;
    Status s = ckpt::ParseNpyHeader(bytes, &lenient, &needed);
    ASSERT_TRUE(s.ok()) << s.ToString();
    EXPECT_EQ(needed, 0u);
    EXPECT_EQ(lenient.dtype, c.listed_as);
    EXPECT_EQ(lenient.source_dtype, SourceDType::kOther);
    EXPECT_EQ(lenient.shape, (std::vector<int64_t>{3}));
    auto strict = ParseNpyHeader({reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size()},
                                 bytes.size());
    ASSERT_FALSE(strict.ok());
    EXPECT_EQ(strict.status().code(), c.strict_code);
    EXPECT_NE(strict.status().message().find(c.strict_message), std::string::npos)
        << strict.status().ToString();
  }
  // Keys numpy does not write are ignored by one, refused by the other.
  const std::string extra =
      MakeNpy("{'descr': '<f4', 'fortran_order': False, 'shape': (1,), 'note': [1, None]}", "abcd");
  ckpt::NpyHeader lenient;
  size_t needed = 0;
  EXPECT_TRUE(ckpt::ParseNpyHeader(extra, &lenient, &needed).ok());
  EXPECT_EQ(lenient.dtype, "f32");
  auto strict =
      ParseNpyHeader({reinterpret_cast<const uint8_t*>(extra.data()), extra.size()}, extra.size());
  ASSERT_FALSE(strict.ok());
  EXPECT_NE(strict.status().message().find("unexpected key 'note'"), std::string::npos);
}

TEST(NpyHeaderGrammar, RefusesMalformedAndHostileHeaders) {
  const std::string deep = "{'descr': " + std::string(40, '[') + std::string(40, ']') +
                           ", 'fortran_order': False, 'shape': (1,)}";
  std::string many_dims = "{'descr': '<f4', 'fortran_order': False, 'shape': (";
  for (int i = 0; i < 65; ++i) many_dims += "1, ";
  many_dims += ")}";
  struct Case {
    std::string dict;
    const char* message;
  };
  const std::vector<Case> cases = {
      {"{'descr': <f4, 'fortran_order': False, 'shape': (1,)}", "'descr' must be a string"},
      {"{'descr': '<f4', 'shape': (1,)}", "lacks one of"},
      {"{'descr': '<f4', 'fortran_order': Truex, 'shape': (1,)}", "must be True or False"},
      {"{'descr': '<f4', 'fortran_order': 0, 'shape': (1,)}", "must be True or False"},
      {"{'descr': '<f4, 'fortran_order': False, 'shape': (1,)}", "expected ',' or '}'"},
      {"{'descr' '<f4', 'fortran_order': False, 'shape': (1,)}", "expected ':' after key"},
      {"{'descr': '<f4', 'fortran_order': False, 'shape': (1,)} x", "trailing characters"},
      {"{'descr': '<f4', 'fortran_order': False, 'shape': (-1,)}", "negative dimension"},
      {"{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999,)}",
       "integer too large"},
      {"{'descr': '<f4', 'fortran_order': False, 'shape': (1 2)}", "expected ',' or ')'"},
      {"{'descr': '<f4', 'fortran_order': False, 'shape': [1]}", "'shape' must be a tuple"},
      {"{'descr': '<\\f4', 'fortran_order': False, 'shape': (1,)}", "escape"},
      {"{'descr': '<f4', 'fortran_order': False, 'shape': (1,)", "expected ',' or '}'"},
      {"['descr', '<f4']", "expected '{'"},
      {"{1: 2}", "expected a string"},
      {deep, "nesting too deep"},
      {many_dims, "too many dimensions"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.dict);
    const std::string bytes = MakeNpy(c.dict, "");
    size_t needed = 0;
    auto h = ParseNpyHeaderPrefix(bytes, &needed);
    ASSERT_FALSE(h.ok());
    EXPECT_EQ(h.status().code(), Code::kInvalidArgument);
    EXPECT_NE(h.status().message().find("malformed .npy header"), std::string::npos)
        << h.status().ToString();
    EXPECT_NE(h.status().message().find(c.message), std::string::npos) << h.status().ToString();
    // The checkpoint front end calls a damaged member Corruption.
    ckpt::NpyHeader lenient;
    Status s = ckpt::ParseNpyHeader(bytes, &lenient, &needed);
    EXPECT_EQ(s.code(), Code::kCorruption);
    EXPECT_NE(s.message().find(c.message), std::string::npos) << s.ToString();
  }

  size_t needed = 0;
  auto overflow = ParseNpyHeaderPrefix(
      MakeNpy("{'descr': '<f4', 'fortran_order': False, 'shape': (4294967296, 4294967296)}", ""),
      &needed);
  ASSERT_FALSE(overflow.ok());
  EXPECT_NE(overflow.status().message().find("absurdly large"), std::string::npos);

  std::string v4 = MakeNpy("{'descr': '<f4', 'fortran_order': False, 'shape': (1,)}", "");
  v4[6] = '\x04';
  auto version = ParseNpyHeaderPrefix(v4, &needed);
  ASSERT_FALSE(version.ok());
  EXPECT_EQ(version.status().code(), Code::kNotSupported);
  EXPECT_NE(version.status().message().find("version 4.0"), std::string::npos);

  // A header length over 1 MiB is refused before any more bytes are asked for.
  std::string huge = "\x93NUMPY\x02";
  huge += '\0';
  huge += std::string("\x01\x00\x10\x00", 4);  // 0x100001 bytes
  auto length = ParseNpyHeaderPrefix(huge, &needed);
  ASSERT_FALSE(length.ok());
  EXPECT_NE(length.status().message().find("absurd .npy header length 1048577"), std::string::npos);

  auto magic = ParseNpyHeaderPrefix("\x93NUMPX", &needed);
  ASSERT_FALSE(magic.ok());
  EXPECT_NE(magic.status().message().find("bad magic"), std::string::npos);
}

// PageBuffer: small (operator new) and large (huge-page mapping) buffers
// hold what is written, are aligned, and move.
TEST(PageBufferTest, SmallAndLargeBuffersHoldTheirBytesAndMove) {
  for (size_t n : {size_t{1}, size_t{4096}, kPageBufferMapBytes - 1, kPageBufferMapBytes,
                   kPageBufferMapBytes * 3 + 17}) {
    auto b = PageBuffer::Allocate(n);
    ASSERT_TRUE(b.ok()) << b.status().ToString();
    ASSERT_EQ(b->size(), n);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(b->data()) % 64, 0u);
    for (size_t i = 0; i < n; i += 997) (*b)[i] = static_cast<uint8_t>(i * 7);
    (*b)[n - 1] = 0xAB;
    PageBuffer moved = std::move(b).value();
    EXPECT_EQ(moved.size(), n);
    for (size_t i = 0; i + 1 < n; i += 997) ASSERT_EQ(moved[i], static_cast<uint8_t>(i * 7));
    EXPECT_EQ(moved[n - 1], 0xAB);
    PageBuffer other;
    other = std::move(moved);
    EXPECT_EQ(other.size(), n);
    EXPECT_EQ(moved.size(), 0u);  // NOLINT(bugprone-use-after-move): moved-from is empty
    EXPECT_TRUE(moved.empty());
  }
  auto empty = PageBuffer::Allocate(0);
  ASSERT_TRUE(empty.ok());
  EXPECT_TRUE(empty->empty());
  // An impossible size is an error, not a crash.
  auto huge = PageBuffer::Allocate(~size_t{0} - 4096);
  EXPECT_FALSE(huge.ok());
}

// LoadNpy into a huge-page buffer: a multi-megabyte array reads back exactly.
TEST(PageBufferTest, LoadNpyOfSeveralMegabytes) {
  TempDir tmp;
  std::vector<int64_t> v(700000);
  for (size_t i = 0; i < v.size(); ++i) v[i] = static_cast<int64_t>(i * 2654435761u % 1000003);
  WriteBytes(tmp / "big.npy",
             MakeNpy("{'descr': '<i8', 'fortran_order': False, 'shape': (700000,), }", Raw(v)));
  auto a = LoadNpy(tmp / "big.npy");
  ASSERT_TRUE(a.ok()) << a.status().ToString();
  ASSERT_EQ(a->data.size(), v.size() * 8);
  EXPECT_EQ(std::memcmp(a->data.data(), v.data(), a->data.size()), 0);
}

}  // namespace
}  // namespace embstore::storage
