// RenormTable (embstore/renorm.h): the rows it writes against a plain
// computation of torch's renorm, what it records, and what it refuses.
#include "embstore/renorm.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "test_util.h"

namespace embstore {
namespace {

using embstore::testing::TempDir;
using ::testing::HasSubstr;

constexpr int64_t kRows = 40, kDim = 6;

// A store holding table "t" (kRows x kDim f32, version 1): rows of norm 0.1
// up to about 4, so that max_norm 1 scales some rows and leaves others.
class RenormTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto store = Store::Open(tmp_ / "db", StoreOptions());
    ASSERT_TRUE(store.ok()) << store.status().message();
    store_ = std::move(store).value();
    values_ = embstore::testing::RandomFloats(kRows * kDim, 5);
    for (int64_t r = 0; r < kRows; ++r) {
      for (int64_t j = 0; j < kDim; ++j) values_[r * kDim + j] *= 0.05f * static_cast<float>(r + 1);
    }
    TableSpec spec;
    spec.rows = kRows;
    spec.dim = kDim;
    spec.source = "test rows";
    auto info = store_->WriteTable("t", spec, [&](int64_t first, int64_t count, float* out) {
      std::memcpy(out, values_.data() + first * kDim, sizeof(float) * count * kDim);
      return Status::OK();
    });
    ASSERT_TRUE(info.ok()) << info.status().message();
  }

  // The current version of "t", as floats.
  std::vector<float> CurrentRows() {
    auto snap = store_->GetSnapshot("t");
    EXPECT_TRUE(snap.ok());
    const TableView v = snap->view();
    std::vector<float> rows(static_cast<size_t>(v.rows * v.dim));
    for (int64_t r = 0; r < v.rows; ++r) std::memcpy(&rows[r * v.dim], v.Row(r), 4 * v.dim);
    return rows;
  }

  // Renormalizes values_ as torch does, in plain double arithmetic; returns
  // how many rows it scaled.
  int64_t Expected(double max_norm, double p, std::vector<float>* rows) const {
    *rows = values_;
    int64_t scaled = 0;
    for (int64_t r = 0; r < kRows; ++r) {
      float* row = rows->data() + r * kDim;
      double norm = 0;
      for (int64_t j = 0; j < kDim; ++j) {
        const double a = std::abs(static_cast<double>(row[j]));
        norm = std::isinf(p) ? std::max(norm, a) : norm + std::pow(a, p);
      }
      if (!std::isinf(p)) norm = std::pow(norm, 1.0 / p);
      if (norm > max_norm) {
        const float scale = static_cast<float>(max_norm / (norm + 1e-7));
        for (int64_t j = 0; j < kDim; ++j) row[j] *= scale;
        ++scaled;
      }
    }
    return scaled;
  }

  void ExpectRenormalized(double max_norm, double p) {
    std::vector<float> want;
    const int64_t want_scaled = Expected(max_norm, p, &want);
    ASSERT_GT(want_scaled, 0);
    ASSERT_LT(want_scaled, kRows);
    RenormOptions o;
    o.max_norm = max_norm;
    o.norm_type = p;
    auto r = RenormTable(*store_, "t", o);
    ASSERT_TRUE(r.ok()) << r.status().message();
    EXPECT_EQ(r->rows_scaled, want_scaled);
    EXPECT_EQ(r->info.version, 2u);
    const std::vector<float> got = CurrentRows();
    ASSERT_EQ(got.size(), want.size());
    for (size_t i = 0; i < got.size(); ++i) {
      EXPECT_NEAR(got[i], want[i], 1e-6f * (1.0f + std::abs(want[i]))) << "value " << i;
    }
  }

  TempDir tmp_;
  std::unique_ptr<Store> store_;
  std::vector<float> values_;
};

TEST_F(RenormTest, ScalesRowsAboveMaxNormInTheTwoNorm) { ExpectRenormalized(1.0, 2.0); }

TEST_F(RenormTest, ScalesRowsAboveMaxNormInTheOneNorm) { ExpectRenormalized(2.0, 1.0); }

TEST_F(RenormTest, ScalesRowsAboveMaxNormInTheInfNorm) {
  ExpectRenormalized(0.5, std::numeric_limits<double>::infinity());
}

TEST_F(RenormTest, RecordsItsSourceAndKeepsThePreviousVersion) {
  RenormOptions o;
  o.max_norm = 0.5;
  int64_t last_done = 0, last_total = 0;
  o.progress = [&](int64_t done, int64_t total) {
    last_done = done;
    last_total = total;
  };
  auto r = RenormTable(*store_, "t", o);
  ASSERT_TRUE(r.ok()) << r.status().message();
  EXPECT_EQ(r->info.source, "renorm of t v1 (max_norm=0.5, norm_type=2) from test rows");
  EXPECT_EQ(r->info.rows, kRows);
  EXPECT_EQ(r->info.dim, kDim);
  EXPECT_EQ(r->info.dtype, DType::kF32);
  EXPECT_EQ(last_done, kRows);
  EXPECT_EQ(last_total, kRows);
  auto entries = store_->ListEntries();
  ASSERT_TRUE(entries.ok());
  ASSERT_EQ(entries->size(), 1u);
  ASSERT_EQ((*entries)[0].versions.size(), 2u);
  EXPECT_EQ((*entries)[0].versions[1].version, 1u);
}

TEST_F(RenormTest, RefusesMaxNormThatIsNotFiniteAndPositive) {
  for (double m : {0.0, -1.0, std::numeric_limits<double>::infinity(),
                   std::numeric_limits<double>::quiet_NaN()}) {
    RenormOptions o;
    o.max_norm = m;
    auto r = RenormTable(*store_, "t", o);
    ASSERT_FALSE(r.ok()) << m;
    EXPECT_EQ(r.status().code(), Status::Code::kInvalidArgument) << m;
    EXPECT_EQ(r.status().message(), "max_norm must be a finite number > 0") << m;
    EXPECT_EQ(CheckRenormOptions(o).message(), r.status().message());
  }
  EXPECT_EQ(store_->GetInfo("t")->version, 1u);
}

TEST_F(RenormTest, RefusesNegativeOrNanNormType) {
  for (double p : {-1.0, -0.5, std::numeric_limits<double>::quiet_NaN()}) {
    RenormOptions o;
    o.max_norm = 1;
    o.norm_type = p;
    auto r = RenormTable(*store_, "t", o);
    ASSERT_FALSE(r.ok()) << p;
    EXPECT_EQ(r.status().code(), Status::Code::kInvalidArgument) << p;
    EXPECT_EQ(r.status().message(), "norm_type must be >= 0, inf or -inf (as torch's norm)");
  }
  EXPECT_EQ(store_->GetInfo("t")->version, 1u);
}

TEST_F(RenormTest, AcceptsTheNormTypesTorchAccepts) {
  for (double p : {0.0, 0.5, std::numeric_limits<double>::infinity(),
                   -std::numeric_limits<double>::infinity()}) {
    RenormOptions o;
    o.max_norm = 1;
    o.norm_type = p;
    EXPECT_TRUE(CheckRenormOptions(o).ok()) << p;
  }
}

TEST_F(RenormTest, UnknownTableIsNotFound) {
  RenormOptions o;
  o.max_norm = 1;
  auto r = RenormTable(*store_, "nope", o);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Status::Code::kNotFound);
  EXPECT_THAT(r.status().message(), HasSubstr("unknown table 'nope'"));
}

}  // namespace
}  // namespace embstore
