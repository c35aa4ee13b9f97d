// rival_dependency DIR: a program that carries its own, different copy of a
// library embstore uses inside, and uses embstore beside it.
//
// Its copy of nlohmann_json is "another version": json::dump is replaced
// (an explicit specialization, a strong definition of the very symbol
// embstore's catalog writer instantiates). The program is linked with
// -rdynamic, as plugin hosts such as Python are, so the definition is in
// the process's global scope. Were libembstore to export its own
// instantiation (default visibility), the dynamic linker would bind
// embstore's calls to this rival and the store's catalog would be written
// as garbage: the reopen below would fail. libembstore exports only
// embstore:: symbols (cmake/embstore.map), so each side keeps its own copy.
// The program also runs TBB work of its own while embstore pools.
//
// Exit 0 and "rival_dependency: ok" when both sides worked.
#include <tbb/blocked_range.h>
#include <tbb/parallel_reduce.h>

#include <cstdio>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "embstore/query.h"
#include "embstore/store.h"

// The rival copy's json::dump: the same mangled name as embstore's internal
// instantiation, different behaviour.
template <>
std::string nlohmann::json::dump(const int, const char, const bool,
                                 const nlohmann::json::error_handler_t) const {
  return "rival json";
}

namespace {
int Fail(const std::string& what) {
  std::fprintf(stderr, "rival_dependency: FAIL %s\n", what.c_str());
  return 1;
}
}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) return Fail("usage: rival_dependency DIR");
  const std::string dir = argv[1];

  // The program's own json: its copy is in use.
  if (nlohmann::json{{"a", 1}}.dump() != "rival json") return Fail("the rival json is not in use");

  const int64_t rows = 1000, dim = 8;
  {
    auto store = embstore::Store::Open(dir, {});
    if (!store.ok()) return Fail(store.status().ToString());
    embstore::TableSpec spec;
    spec.rows = rows;
    spec.dim = dim;
    spec.source = "rival_dependency";
    auto info = (*store)->WriteTable("t", spec, [&](int64_t first, int64_t count, float* out) {
      for (int64_t r = 0; r < count; ++r) {
        for (int64_t c = 0; c < dim; ++c)
          out[r * dim + c] = static_cast<float>((first + r) * 10 + c);
      }
      return embstore::Status::OK();
    });
    if (!info.ok()) return Fail(info.status().ToString());
  }
  // A new Store reads the catalog the first one wrote.
  auto store = embstore::Store::Open(dir, {});
  if (!store.ok()) return Fail("reopen: " + store.status().ToString());
  auto snap = (*store)->GetSnapshot("t");
  if (!snap.ok()) return Fail("snapshot: " + snap.status().ToString());
  if (snap->info().rows != rows || snap->info().source != "rival_dependency") {
    return Fail("the catalog does not hold what was written");
  }
  if (!(*store)->VerifyTable("t").ok()) return Fail("verify");

  // TBB of the program's own, while embstore pools with its TBB inside.
  const double total = tbb::parallel_reduce(
      tbb::blocked_range<int64_t>(0, 1 << 20), 0.0,
      [](const tbb::blocked_range<int64_t>& r, double acc) {
        for (int64_t i = r.begin(); i < r.end(); ++i) acc += 1.0;
        return acc;
      },
      [](double x, double y) { return x + y; });
  if (total != static_cast<double>(1 << 20)) return Fail("the program's own TBB work");

  std::vector<int64_t> ids(rows);
  for (int64_t i = 0; i < rows; ++i) ids[i] = i;
  const std::vector<int64_t> offsets = {0};
  embstore::BagRequest req;
  req.indices = std::span<const int64_t>(ids);
  req.offsets = embstore::IndexArray(std::span<const int64_t>(offsets));
  embstore::QueryOptions qo;
  qo.mode = embstore::PoolingMode::kSum;
  auto out = embstore::EmbeddingBag(snap->view(), req, qo);
  if (!out.ok()) return Fail(out.status().ToString());
  for (int64_t c = 0; c < dim; ++c) {
    const double want = 10.0 * (rows * (rows - 1) / 2) + static_cast<double>(c * rows);
    if (out->values[c] != static_cast<float>(want)) return Fail("pooled value");
  }
  std::printf("rival_dependency: ok\n");
  return 0;
}
