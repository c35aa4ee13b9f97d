#include "golden_cases.h"

#include <cmath>
#include <cstring>
#include <exception>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <utility>

#include "checkpoint/npy.h"

namespace embstore::testing {
namespace {

using nlohmann::json;

std::vector<float> Floats(const json& values) {
  std::vector<float> out;
  for (const json& v : values) {
    out.push_back(v.is_null() ? std::numeric_limits<float>::quiet_NaN()
                              : static_cast<float>(NumberOrInf(v)));
  }
  return out;
}

Result<GoldenTable> LoadTable(const std::string& dir, const std::string& name, const json& info) {
  GoldenTable t;
  t.name = name;
  t.file = dir + "/" + info.at("file").get<std::string>();
  auto npy = storage::LoadNpy(t.file);
  if (!npy.ok()) return npy.status();
  if (npy->header.descr != "<f4" || npy->header.shape.size() != 2) {
    return Status::InvalidArgument(t.file + ": expected a 2-D float32 array, found " +
                                   npy->header.descr);
  }
  t.rows = npy->header.shape[0];
  t.dim = npy->header.shape[1];
  if (t.rows != info.at("rows").get<int64_t>() || t.dim != info.at("dim").get<int64_t>()) {
    return Status::InvalidArgument(t.file + ": shape differs from the golden file's rows, dim");
  }
  t.values.resize(npy->data.size() / sizeof(float));
  std::memcpy(t.values.data(), npy->data.data(), t.values.size() * sizeof(float));
  return t;
}

Result<GoldenCase> ParseCase(const json& c) {
  GoldenCase g;
  g.name = c.at("name").get<std::string>();
  g.table = c.at("table").get<std::string>();
  if (Field(c, "source").is_string()) g.source = c["source"].get<std::string>();
  if (Field(c, "kind").is_string()) g.kind = c["kind"].get<std::string>();
  const std::string mode = c.at("mode").get<std::string>();
  const std::optional<PoolingMode> parsed = ParsePoolingMode(mode);
  if (!parsed.has_value()) return Status::InvalidArgument("case " + g.name + ": mode " + mode);
  g.options.mode = *parsed;
  if (!Field(c, "padding_idx").is_null()) g.options.padding_idx = c["padding_idx"].get<int64_t>();
  if (!Field(c, "max_norm").is_null()) g.options.max_norm = c["max_norm"].get<double>();
  if (!Field(c, "norm_type").is_null()) g.options.norm_type = NumberOrInf(c["norm_type"]);
  if (Field(c, "include_last_offset").is_boolean()) {
    g.options.include_last_offset = c["include_last_offset"].get<bool>();
  }
  g.indices = TypedIds(c.at("indices"), Field(c, "index_dtype"));
  if (Field(c, "indices_shape").is_array()) {
    g.indices_shape = c["indices_shape"].get<std::vector<int64_t>>();
  }
  g.batched = g.kind == "batched";
  if (g.batched) {
    g.ends = TypedIds(c.at("ends"), Field(c, "ends_dtype"));
    g.ends_shape = c.at("ends_shape").get<std::vector<int64_t>>();
    if (g.indices_shape.size() != 2 || g.ends_shape.size() != 2) {
      return Status::InvalidArgument("case " + g.name +
                                     ": batched cases need indices_shape [B, N] and ends_shape "
                                     "[B, K]");
    }
    if (!Field(c, "weights").is_null()) g.weights = Floats(c["weights"]);
  } else {
    if (!Field(c, "offsets").is_null()) {
      g.offsets = TypedIds(c["offsets"], Field(c, "offsets_dtype"));
    }
    if (!Field(c, "per_sample_weights").is_null()) g.weights = Floats(c["per_sample_weights"]);
  }
  g.expected_shape = c.at("expected_shape").get<std::vector<int64_t>>();
  g.expected = Floats(c.at("expected"));
  return g;
}

Status ParseCases(const json& doc, const char* list, std::vector<GoldenCase>* out) {
  if (!doc.contains(list)) return Status::InvalidArgument(std::string("no \"") + list + "\"");
  for (const json& c : doc[list]) {
    auto g = ParseCase(c);
    if (!g.ok()) return g.status();
    out->push_back(std::move(g).value());
  }
  return Status::OK();
}

}  // namespace

TableView GoldenTable::View() const {
  TableView v;
  v.data = reinterpret_cast<const uint8_t*>(values.data());
  v.rows = rows;
  v.dim = dim;
  v.row_stride = static_cast<size_t>(dim) * sizeof(float);
  v.dtype = DType::kF32;
  v.name = name;
  return v;
}

BagRequest GoldenCase::Bag() const {
  BagRequest r;
  r.indices = indices.Array();
  r.indices_shape = indices_shape;
  if (offsets.has_value()) r.offsets = offsets->Array();
  if (weights.has_value()) r.weights = std::span<const float>(*weights);
  return r;
}

BatchedBagRequest GoldenCase::Batched() const {
  BatchedBagRequest r;
  r.indices = indices.Array();
  r.ends = ends.Array();
  r.batch = indices_shape.at(0);
  r.items = indices_shape.at(1);
  r.bags_per_sample = ends_shape.at(1);
  if (weights.has_value()) r.weights = std::span<const float>(*weights);
  return r;
}

double GoldenCase::Tolerance() const {
  const double p = options.norm_type;
  return options.max_norm.has_value() && p != 1 && p != 2 && !std::isinf(p) ? 1e-4 : 1e-5;
}

::testing::AssertionResult GoldenCase::MatchesTorch(std::span<const float> got) const {
  if (got.size() != expected.size()) {
    return ::testing::AssertionFailure() << got.size() << " values, torch has " << expected.size();
  }
  const double tol = Tolerance();
  const bool exact =
      options.mode == PoolingMode::kMax && !options.max_norm.has_value() && !weights.has_value();
  ::testing::AssertionResult result = ::testing::AssertionSuccess();
  int bad = 0;
  for (size_t i = 0; i < expected.size(); ++i) {
    const float e = expected[i], g = got[i];
    const bool ok = std::isnan(e) ? std::isnan(g)
                    : exact       ? (g == e && std::signbit(g) == std::signbit(e))
                                  : std::fabs(double{g} - e) <= tol + tol * std::fabs(double{e});
    if (ok) continue;
    if (bad == 0) result = ::testing::AssertionFailure();
    if (bad++ < 5) result << "element " << i << ": got " << g << ", torch " << e << "; ";
  }
  if (bad > 5) result << bad << " elements differ";
  return result;
}

std::string GoldenDir() {
  const std::string built = std::string(EMBSTORE_SOURCE_DIR) + "/tests/golden";
  return std::ifstream(built + "/embedding_bag.json").good() ? built : "tests/golden";
}

Result<GoldenFile> LoadGoldenFile(const std::string& dir) {
  const std::string path = dir + "/embedding_bag.json";
  std::ifstream in(path);
  if (!in.good()) {
    return Status::NotFound("golden file missing: " + path +
                            " (generate it with tests/golden/gen_goldens.py)");
  }
  GoldenFile file;
  file.dir = dir;
  try {
    const json doc = json::parse(in);
    if (!doc.contains("tables")) return Status::InvalidArgument(path + " has no \"tables\"");
    for (const auto& [name, info] : doc["tables"].items()) {
      auto table = LoadTable(dir, name, info);
      if (!table.ok()) return table.status();
      file.tables.emplace(name, std::move(table).value());
    }
    Status st = ParseCases(doc, "cases", &file.cases);
    if (st.ok()) st = ParseCases(doc, "extension_cases", &file.extension_cases);
    if (!st.ok()) return st.WithContext(path);
    for (const auto* list : {&file.cases, &file.extension_cases}) {
      for (const GoldenCase& c : *list) {
        if (!file.tables.count(c.table)) {
          return Status::InvalidArgument(path + ": case " + c.name + ": unknown table " + c.table);
        }
      }
    }
  } catch (const std::exception& e) {
    return Status::InvalidArgument("cannot parse " + path + ": " + e.what());
  }
  return file;
}

}  // namespace embstore::testing
