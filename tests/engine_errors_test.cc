// Every invalid request gives InvalidArgument with a message naming the
// problem, from the fast path and the reference alike, and leaves the
// caller's output buffer untouched (validation is complete before writing).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <span>
#include <string>
#include <vector>

#include "embstore/query.h"
#include "engine/kernels_ref.h"
#include "engine_test_util.h"

namespace embstore {
namespace {

using testing::TestTable;

TestTable Items() {
  std::vector<float> v(1000 * 4);
  for (size_t i = 0; i < v.size(); ++i) v[i] = static_cast<float>(i % 7);
  return TestTable(v, 1000, 4, DType::kF32);
}

// Runs the request through the public API (caller's buffer and new buffer)
// and the reference; all must fail with InvalidArgument containing `expect`,
// and the buffer must be untouched.
void ExpectError(const TableView& table, const BagRequest& request, const QueryOptions& options,
                 const std::string& expect, size_t out_size = 8) {
  std::vector<float> out(out_size, 42.0f);
  const Status s = EmbeddingBag(table, request, options, out);
  EXPECT_EQ(s.code(), Status::Code::kInvalidArgument) << s.message();
  EXPECT_NE(s.message().find(expect), std::string::npos)
      << "message: \"" << s.message() << "\" lacks \"" << expect << "\"";
  EXPECT_EQ(out, std::vector<float>(out_size, 42.0f)) << "output was written";
  auto fresh = EmbeddingBag(table, request, options);
  ASSERT_FALSE(fresh.ok());
  EXPECT_EQ(fresh.status().message(), s.message());
  EXPECT_EQ(CountBags(table, request, options).status().code(), Status::Code::kInvalidArgument);
  std::vector<float> ref_out(out_size, 42.0f);
  const Status r = engine::EmbeddingBagRef(table, request, options, ref_out);
  EXPECT_EQ(r.message(), s.message()) << "reference and fast path disagree";
  EXPECT_EQ(ref_out, std::vector<float>(out_size, 42.0f));
}

void ExpectBatchedError(const TableView& table, const BatchedBagRequest& request,
                        const QueryOptions& options, const std::string& expect,
                        size_t out_size = 8) {
  std::vector<float> out(out_size, 42.0f);
  const Status s = BatchedEmbeddingBag(table, request, options, out);
  EXPECT_EQ(s.code(), Status::Code::kInvalidArgument) << s.message();
  EXPECT_NE(s.message().find(expect), std::string::npos)
      << "message: \"" << s.message() << "\" lacks \"" << expect << "\"";
  EXPECT_EQ(out, std::vector<float>(out_size, 42.0f)) << "output was written";
  EXPECT_FALSE(BatchedEmbeddingBag(table, request, options).ok());
  const Status r = engine::BatchedEmbeddingBagRef(table, request, options, out);
  EXPECT_EQ(r.message(), s.message());
}

struct Req {
  std::vector<int64_t> ids;
  std::optional<std::vector<int64_t>> offsets;
  std::vector<int64_t> shape;
  std::optional<std::vector<float>> weights;
  BagRequest Get() const {
    BagRequest r;
    r.indices = std::span<const int64_t>(ids);
    r.indices_shape = shape;
    if (offsets) r.offsets = std::span<const int64_t>(*offsets);
    if (weights) r.weights = std::span<const float>(*weights);
    return r;
  }
};

TEST(Errors, IndexOutOfRangeNamesPositionValueAndTable) {
  const TestTable t = Items();
  Req r;
  r.ids.assign(20, 1);
  r.ids[17] = 1000;
  r.offsets = std::vector<int64_t>{0, 10};
  ExpectError(t.view(), r.Get(), {},
              "indices[17] = 1000 is out of range for table 'items' (1000 rows)");
  // With int32 ids too.
  std::vector<int32_t> ids32(r.ids.begin(), r.ids.end());
  BagRequest r32 = r.Get();
  r32.indices = std::span<const int32_t>(ids32);
  ExpectError(t.view(), r32, {},
              "indices[17] = 1000 is out of range for table 'items' (1000 rows)");
}

TEST(Errors, NegativeIndex) {
  const TestTable t = Items();
  Req r{{0, 1, -1}, std::vector<int64_t>{0}, {}, {}};
  ExpectError(t.view(), r.Get(), {}, "indices[2] = -1 is out of range for table 'items'");
  ExpectError(t.view(), r.Get(), {}, "negative");
  // 2-D as well.
  Req r2{{0, 1, 2, -7}, std::nullopt, {2, 2}, {}};
  ExpectError(t.view(), r2.Get(), {}, "indices[3] = -7");
}

TEST(Errors, Offsets) {
  const TestTable t = Items();
  Req first{{0, 1, 2, 3}, std::vector<int64_t>{3, 4}, {}, {}};
  ExpectError(t.view(), first.Get(), {}, "offsets[0] must be 0 (got 3)");
  Req decreasing{{0, 1, 2, 3}, std::vector<int64_t>{0, 3, 2}, {}, {}};
  ExpectError(t.view(), decreasing.Get(), {},
              "offsets must be non-decreasing: offsets[2] = 2 is less than offsets[1] = 3");
  Req past{{0, 1, 2, 3}, std::vector<int64_t>{0, 2, 5}, {}, {}};
  ExpectError(t.view(), past.Get(), {}, "offsets[2] = 5 is past the end of indices (4 entries)");
  Req negative{{0, 1}, std::vector<int64_t>{0, -1}, {}, {}};
  ExpectError(t.view(), negative.Get(), {}, "offsets[1] = -1 is less than offsets[0] = 0");
}

TEST(Errors, OffsetsWith2DInput) {
  const TestTable t = Items();
  Req r{{0, 1, 2, 3}, std::vector<int64_t>{0, 2}, {2, 2}, {}};
  ExpectError(t.view(), r.Get(), {}, "if input is 2D, offsets has to be None");
}

TEST(Errors, OneDimensionalWithoutOffsets) {
  const TestTable t = Items();
  Req r{{0, 1, 2, 3}, std::nullopt, {}, {}};
  ExpectError(t.view(), r.Get(), {}, "offsets are required with 1-D indices");
  Req r1{{0, 1, 2, 3}, std::nullopt, {4}, {}};
  ExpectError(t.view(), r1.Get(), {}, "offsets are required with 1-D indices");
}

TEST(Errors, IncludeLastOffsetWithoutOffsets) {
  const TestTable t = Items();
  QueryOptions o;
  o.include_last_offset = true;
  Req r{{0, 1}, std::vector<int64_t>{}, {}, {}};
  ExpectError(t.view(), r.Get(), o, "include_last_offset: number of offsets should be at least 1");
  Req r2{{}, std::nullopt, {0, 3}, {}};
  ExpectError(t.view(), r2.Get(), o, "include_last_offset: number of offsets should be at least 1");
}

TEST(Errors, WeightsOfTheWrongLength) {
  const TestTable t = Items();
  Req r{{0, 1, 2}, std::vector<int64_t>{0}, {}, std::vector<float>{1, 2}};
  ExpectError(t.view(), r.Get(), {}, "per_sample_weights has 2 entries but indices has 3");
  Req r2{{0, 1, 2, 3}, std::nullopt, {2, 2}, std::vector<float>{1, 2, 3, 4, 5}};
  ExpectError(t.view(), r2.Get(), {}, "per_sample_weights has 5 entries but indices has 4");
}

TEST(Errors, BadShapes) {
  const TestTable t = Items();
  Req r{{0, 1, 2}, std::nullopt, {2, 2}, {}};
  ExpectError(t.view(), r.Get(), {}, "indices shape [2, 2] does not match the 3 entries");
  Req r3{{0, 1, 2}, std::nullopt, {1, 1, 3}, {}};
  ExpectError(t.view(), r3.Get(), {}, "indices must be 1-D or 2-D");
  Req r1{{0, 1, 2}, std::vector<int64_t>{0}, {4}, {}};
  ExpectError(t.view(), r1.Get(), {}, "indices shape [4] holds 4 entries but indices has 3");
}

TEST(Errors, PaddingIdxOutOfRange) {
  const TestTable t = Items();
  Req r{{0, 1}, std::vector<int64_t>{0}, {}, {}};
  QueryOptions o;
  o.padding_idx = 1000;
  ExpectError(t.view(), r.Get(), o,
              "padding_idx must be within the number of embeddings, -1000 through 999, but got "
              "1000");
  o.padding_idx = -1001;
  ExpectError(t.view(), r.Get(), o, "but got -1001");
}

TEST(Errors, MaxNormAndNormType) {
  const TestTable t = Items();
  Req r{{0, 1}, std::vector<int64_t>{0}, {}, {}};
  QueryOptions o;
  o.max_norm = 0.0;
  ExpectError(t.view(), r.Get(), o, "max_norm must be > 0 (got 0)");
  o.max_norm = -1.5;
  ExpectError(t.view(), r.Get(), o, "max_norm must be > 0 (got -1.5)");
  o.max_norm = std::numeric_limits<double>::quiet_NaN();
  ExpectError(t.view(), r.Get(), o, "max_norm must be > 0 (got nan)");
  o.max_norm = 1.0;
  o.norm_type = -1;
  ExpectError(t.view(), r.Get(), o, "norm_type must be >= 0, inf or -inf (got -1)");
  o.norm_type = -0.5;
  ExpectError(t.view(), r.Get(), o, "norm_type must be >= 0, inf or -inf (got -0.5)");
  o.norm_type = std::numeric_limits<double>::quiet_NaN();
  ExpectError(t.view(), r.Get(), o, "norm_type must be >= 0, inf or -inf (got nan)");
}

TEST(Errors, BadModeAndThreads) {
  const TestTable t = Items();
  Req r{{0, 1}, std::vector<int64_t>{0}, {}, {}};
  QueryOptions o;
  o.mode = static_cast<PoolingMode>(7);
  ExpectError(t.view(), r.Get(), o, "unknown pooling mode 7");
  QueryOptions threads;
  threads.max_threads = -2;
  ExpectError(t.view(), r.Get(), threads, "max_threads must be >= 0");
}

TEST(Errors, MoreThreadsThanCoresAreCappedNotAnError) {
  // max_threads is "at most n": millions must not build an arena of millions
  // of slots (that crashed inside TBB); the result equals the serial one.
  const TestTable t = Items();
  Req r;
  for (int64_t i = 0; i < 20000; ++i) r.ids.push_back((i * 37) % 1000);
  r.shape = {1000, 20};
  QueryOptions serial;
  serial.max_threads = 1;
  auto want = EmbeddingBag(t.view(), r.Get(), serial);
  ASSERT_TRUE(want.ok()) << want.status().message();
  for (int threads : {2, 10000000, std::numeric_limits<int>::max()}) {
    QueryOptions o;
    o.max_threads = threads;
    auto got = EmbeddingBag(t.view(), r.Get(), o);
    ASSERT_TRUE(got.ok()) << threads << ": " << got.status().message();
    EXPECT_EQ(got->values, want->values) << threads;
  }
}

TEST(Errors, BagCountsNoMemoryCanHoldAreRefused) {
  // 2-D indices with 0 columns: any number of (empty) bags, no data behind
  // them. A count whose bytes overflow is refused before anything is
  // allocated (it used to escape as a length_error).
  const TestTable t = Items();
  Req r;
  r.shape = {int64_t{1} << 62, 0};
  ExpectError(t.view(), r.Get(), {},
              "4611686018427387904 bags of dim 4 need more memory than can be addressed");
  // [2^40, 0]: addressable, but 32 TiB of output and bookkeeping; refused
  // by the library with the size, not left to the OOM killer.
  r.shape = {int64_t{1} << 40, 0};
  ExpectError(t.view(), r.Get(), {},
              "this request asks for 1099511627776 bags of dim 4, which would need "
              "35184372088832 bytes; this process may use");
  // A modest count of empty bags is fine: zeros, as torch.
  r.shape = {3, 0};
  auto ok = EmbeddingBag(t.view(), r.Get(), {});
  ASSERT_TRUE(ok.ok()) << ok.status().message();
  EXPECT_EQ(ok->values, std::vector<float>(12, 0.0f));
}

TEST(Errors, ManyOffsetsOverAWideTableAreRefusedWithTheSize) {
  // 1-D indices: 100 offsets cost 800 bytes, but each bag is a row of output,
  // and rows of 2^28 floats make 100 GiB. Refused before anything is
  // allocated (the planner never reads a row, so one 64-byte row backs the
  // view).
  std::vector<uint8_t> row(64, 0);
  TableView wide;
  wide.data = row.data();
  wide.rows = 1;
  wide.dim = int64_t{1} << 28;
  wide.row_stride = RowStrideBytes(DType::kF32, wide.dim);
  wide.dtype = DType::kF32;
  wide.name = "wide";
  Req r;
  r.offsets = std::vector<int64_t>(100, 0);
  ExpectError(
      wide, r.Get(), {},
      "this request asks for 100 bags of dim 268435456, which would need 107374184000 bytes");
}

TEST(Errors, BatchedBagsWithNoBagsPerSampleReturnAtOnce) {
  // K = 0 with a batch nothing backs (2^62 x 0 indices, 2^62 x 0 ends): no
  // bags, an empty result -- not a loop over the batch (which never ended).
  const TestTable t = Items();
  BatchedBagRequest r;
  r.indices = std::span<const int64_t>();
  r.ends = std::span<const int64_t>();
  r.batch = int64_t{1} << 62;
  r.items = 0;
  r.bags_per_sample = 0;
  std::vector<float> out;
  const Status s = BatchedEmbeddingBag(t.view(), r, {}, out);
  EXPECT_TRUE(s.ok()) << s.message();
  auto fresh = BatchedEmbeddingBag(t.view(), r, {});
  ASSERT_TRUE(fresh.ok()) << fresh.status().message();
  EXPECT_TRUE(fresh->values.empty());
  EXPECT_EQ(fresh->shape, (std::vector<int64_t>{int64_t{1} << 62, 0, 4}));
}

TEST(Errors, OutputBufferOfTheWrongSize) {
  const TestTable t = Items();  // dim 4
  Req r{{0, 1, 2}, std::vector<int64_t>{0, 1}, {}, {}};
  std::vector<float> small(7, 42.0f);
  const Status s = EmbeddingBag(t.view(), r.Get(), {}, small);
  EXPECT_EQ(s.code(), Status::Code::kInvalidArgument);
  EXPECT_NE(s.message().find("output buffer has 7 floats but 8 are needed"), std::string::npos)
      << s.message();
  EXPECT_EQ(small, std::vector<float>(7, 42.0f));
  std::vector<float> big(9, 42.0f);
  EXPECT_FALSE(EmbeddingBag(t.view(), r.Get(), {}, big).ok());
  EXPECT_EQ(big, std::vector<float>(9, 42.0f));
}

TEST(Errors, BatchedEnds) {
  const TestTable t = Items();
  const std::vector<int64_t> ids = {0, 1, 2, 3, 4, 5};
  std::vector<int64_t> ends = {0, 2, 1, 1};  // sample 0 decreasing
  BatchedBagRequest r;
  r.indices = std::span<const int64_t>(ids);
  r.ends = std::span<const int64_t>(ends);
  r.batch = 2;
  r.items = 3;
  r.bags_per_sample = 2;
  const size_t out = 2 * 2 * 4;
  ends = {2, 1, 0, 0};
  ExpectBatchedError(t.view(), r, {},
                     "ends must be non-decreasing: ends[0, 1] = 1 is less than ends[0, 0] = 2",
                     out);
  ends = {0, 3, 0, 0};
  ExpectBatchedError(t.view(), r, {}, "ends[0, 1] = 3 is outside [-1, 2]", out);
  ends = {0, 1, -2, 0};
  ExpectBatchedError(t.view(), r, {}, "ends[1, 0] = -2 is outside [-1, 2]", out);
  ends = {0, 1, 0, 0};
  std::vector<float> weights(5, 1.0f);
  r.weights = std::span<const float>(weights);
  ExpectBatchedError(t.view(), r, {}, "per_sample_weights has 5 entries but indices has 6", out);
  r.weights.reset();
  r.items = 4;
  ExpectBatchedError(t.view(), r, {}, "indices has 6 entries but batch x items = 2 x 4 = 8", out);
  r.items = 3;
  r.bags_per_sample = 3;
  ExpectBatchedError(t.view(), r, {}, "ends has 4 entries but batch x bags_per_sample", out);
  r.bags_per_sample = 2;
  QueryOptions ilo;
  ilo.include_last_offset = true;
  ExpectBatchedError(t.view(), r, ilo, "include_last_offset does not apply to batched bags", out);
  // An id inside a bag is checked.
  std::vector<int64_t> bad_ids = ids;
  bad_ids[4] = 5000;
  r.indices = std::span<const int64_t>(bad_ids);
  ends = {0, 2, 0, 1};
  ExpectBatchedError(t.view(), r, {}, "indices[4] = 5000 is out of range for table 'items'", out);
  // Wrong output size.
  r.indices = std::span<const int64_t>(ids);
  std::vector<float> wrong(5, 42.0f);
  const Status s = BatchedEmbeddingBag(t.view(), r, {}, wrong);
  EXPECT_NE(s.message().find("output buffer has 5 floats but 16 are needed"), std::string::npos)
      << s.message();
  EXPECT_EQ(wrong, std::vector<float>(5, 42.0f));
}

TEST(Errors, BadTableViews) {
  Req r{{0}, std::vector<int64_t>{0}, {}, {}};
  TableView v;
  v.rows = 3;
  v.dim = 4;
  v.row_stride = 16;
  v.name = "broken";
  ExpectError(v, r.Get(), {}, "table 'broken' has 3 rows but no data");
  std::vector<float> data(12);
  v.data = reinterpret_cast<const uint8_t*>(data.data());
  v.row_stride = 8;
  ExpectError(v, r.Get(), {}, "row_stride 8 bytes, less than a row (16 bytes)");
  v.row_stride = 16;
  v.dim = -1;
  ExpectError(v, r.Get(), {}, "negative shape");
  v.dim = 4;
  v.dtype = static_cast<DType>(99);
  ExpectError(v, r.Get(), {}, "unknown dtype");
}

TEST(Errors, EmptyTable) {
  const TestTable t({}, 0, 4, DType::kF32);
  Req r{{0}, std::vector<int64_t>{0}, {}, {}};
  ExpectError(t.view(), r.Get(), {}, "indices[0] = 0 is out of range for table 'items' (0 rows)");
  QueryOptions o;
  o.padding_idx = 0;
  Req empty{{}, std::vector<int64_t>{0}, {}, {}};
  ExpectError(t.view(), empty.Get(), o, "padding_idx must be within the number of embeddings");
}

TEST(Errors, NullData) {
  const TestTable t = Items();
  BagRequest r;
  r.indices.size = 3;  // no data pointer
  std::vector<int64_t> offsets = {0};
  r.offsets = std::span<const int64_t>(offsets);
  ExpectError(t.view(), r, {}, "indices has 3 entries but no data");
}

}  // namespace
}  // namespace embstore
