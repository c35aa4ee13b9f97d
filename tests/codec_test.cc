// The row codec and the dtype table: scalar fp16/bf16, the encoding and
// decoding of one stored row of every dtype, and the sizes and names every
// layer takes from include/embstore/dtype.h.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "codec/half.h"
#include "codec/row_codec.h"
#include "embstore/dtype.h"

namespace embstore::codec {
namespace {

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

TEST(HalfTest, SubnormalsAndSpecials) {
  EXPECT_EQ(HalfToFloat(0x0001), std::ldexp(1.0f, -24));  // smallest subnormal
  EXPECT_EQ(HalfToFloat(0x03ff), std::ldexp(1023.0f, -24));
  EXPECT_EQ(HalfToFloat(0x7c00), std::numeric_limits<float>::infinity());
  EXPECT_EQ(HalfToFloat(0xfc00), -std::numeric_limits<float>::infinity());
  EXPECT_TRUE(std::signbit(HalfToFloat(0x8000)));
  EXPECT_EQ(FloatToHalf(std::ldexp(1.0f, -25)), 0x0000);  // half of the smallest: ties to even 0
  EXPECT_EQ(FloatToHalf(std::ldexp(3.0f, -25)), 0x0002);  // 1.5 units: ties to even 2
  EXPECT_EQ(FloatToHalf(65504.0f), 0x7bff);               // the largest half
  EXPECT_EQ(FloatToHalf(65520.0f), 0x7c00);               // rounds past it: inf
  EXPECT_EQ(FloatToBF16(1.0f + std::ldexp(1.0f, -8)), FloatToBF16(1.0f));  // ties to even
}

TEST(DTypeTable, NamesSizesAndCodes) {
  int known = 0;
  for (uint32_t code = 0; code < 64; ++code) known += IsKnownDType(code) ? 1 : 0;
  EXPECT_EQ(known, static_cast<int>(std::size(kDTypes)));
  ASSERT_EQ(kAllDTypes.size(), std::size(kDTypes));
  for (size_t i = 0; i < kAllDTypes.size(); ++i) EXPECT_EQ(kAllDTypes[i], kDTypes[i].dtype);
  for (const DTypeInfo& d : kDTypes) {
    EXPECT_TRUE(IsKnownDType(static_cast<uint32_t>(d.dtype)));
    EXPECT_EQ(ParseDType(d.name), d.dtype);
    EXPECT_EQ(ParseDType(d.long_name), d.dtype);
    EXPECT_STREQ(DTypeName(d.dtype), d.name);
  }
  EXPECT_FALSE(IsKnownDType(0));
  EXPECT_STREQ(DTypeName(static_cast<DType>(99)), "unknown");
  EXPECT_FALSE(ParseDType("f8").has_value());
  EXPECT_EQ(RowPayloadBytes(DType::kF32, 3), 12u);
  EXPECT_EQ(RowPayloadBytes(DType::kF16, 3), 6u);
  EXPECT_EQ(RowPayloadBytes(DType::kBF16, 3), 6u);
  EXPECT_EQ(RowPayloadBytes(DType::kInt8Rowwise, 3), 11u);  // codes, f32 scale, f32 bias
  EXPECT_EQ(RowPayloadBytes(DType::kF32, -1), 0u);
  EXPECT_EQ(RowPayloadBytes(static_cast<DType>(99), 3), 0u);
  EXPECT_EQ(RowStrideBytes(DType::kF32, 17), 128u);
  EXPECT_EQ(RowStrideBytes(DType::kInt8Rowwise, 56), 64u);
}

// Every dtype: the payload is written and the padding zeroed; decoding gives
// the value of each element as stored (exact for f32; f16/bf16 the rounded
// value; int8 code * scale + bias).
TEST(RowCodec, EncodeDecodeEveryDType) {
  const std::vector<float> row = {0.5f, -2.0f, 3.25f, 1e-3f, -0.0f, 7.0f};
  const int64_t dim = static_cast<int64_t>(row.size());
  for (const DTypeInfo& d : kDTypes) {
    SCOPED_TRACE(d.name);
    const size_t payload = RowPayloadBytes(d.dtype, dim);
    std::vector<uint8_t> bytes(payload + 16, 0xAB);
    ASSERT_EQ(EncodeRow(row.data(), dim, d.dtype, bytes.size(), bytes.data()),
              EncodeProblem::kNone);
    for (size_t i = payload; i < bytes.size(); ++i) EXPECT_EQ(bytes[i], 0) << i;
    std::vector<float> back(row.size(), 42.0f);
    DecodeRow(bytes.data(), dim, d.dtype, back.data());
    for (int64_t j = 0; j < dim; ++j) {
      switch (d.dtype) {
        case DType::kF32:
          EXPECT_EQ(std::memcmp(&back[j], &row[j], 4), 0) << j;
          break;
        case DType::kF16:
          EXPECT_EQ(back[j], HalfToFloat(FloatToHalf(row[j]))) << j;
          break;
        case DType::kBF16:
          EXPECT_EQ(back[j], BF16ToFloat(FloatToBF16(row[j]))) << j;
          break;
        case DType::kInt8Rowwise: {
          const float scale = LoadF32(bytes.data() + dim);
          const float bias = LoadF32(bytes.data() + dim + 4);
          EXPECT_EQ(bias, -2.0f);
          EXPECT_EQ(scale, 9.0f / 255.0f);
          const float scaled = static_cast<float>(bytes[j]) * scale;
          EXPECT_EQ(back[j], scaled + bias) << j;
          EXPECT_NEAR(back[j], row[j], scale / 2 + 1e-6f) << j;
          break;
        }
      }
    }
  }
}

TEST(RowCodec, Int8RefusesRowsItCannotRepresent) {
  std::vector<uint8_t> bytes(64);
  const std::vector<float> with_nan = {1.0f, std::nanf(""), 2.0f};
  EXPECT_EQ(EncodeRow(with_nan.data(), 3, DType::kInt8Rowwise, bytes.size(), bytes.data()),
            EncodeProblem::kNonFinite);
  const std::vector<float> too_wide = {-3e38f, 3e38f};
  EXPECT_EQ(EncodeRow(too_wide.data(), 2, DType::kInt8Rowwise, bytes.size(), bytes.data()),
            EncodeProblem::kRangeOverflow);
  // A constant row: scale 1, every code 0, decoded exactly.
  const std::vector<float> flat = {4.5f, 4.5f};
  ASSERT_EQ(EncodeRow(flat.data(), 2, DType::kInt8Rowwise, bytes.size(), bytes.data()),
            EncodeProblem::kNone);
  std::vector<float> back(2);
  DecodeRow(bytes.data(), 2, DType::kInt8Rowwise, back.data());
  EXPECT_EQ(back, flat);
}

}  // namespace
}  // namespace embstore::codec
