// embstore_test_cold_reader: the process page_prefetch_test runs inside a
// small memory cgroup.
//
//   embstore_test_cold_reader DB TABLE CGROUP_DIR HEADROOM_MIB LOOKUPS
//
// Opens the store and the table, then limits its own cgroup (already joined
// by the parent) to the memory it uses now plus HEADROOM_MIB (v1
// memory.limit_in_bytes or v2 memory.max: the table's pages it reads are
// charged there too), and pools three fresh sets of LOOKUPS uniform ids
// (bags of 20, sum, all threads), with the prefetcher on, auto and off, each
// checked against the same ids pooled again with it off. Prints
//   ok limit=N on=H auto=H off=H rows_checked=C rows_missing=M seconds=S,S,S
// (H: FNV-1a of the result's bytes) and exits 0 when every result equals its
// check; otherwise a "FAIL ..." line and exit 1 (2: bad usage).
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "embstore/query.h"
#include "embstore/store.h"

namespace {

int Fail(const std::string& what) {
  std::printf("FAIL %s\n", what.c_str());
  std::fflush(stdout);
  return 1;
}

uint64_t Fnv(const std::vector<float>& v) {
  uint64_t h = 1469598103934665603ull;
  const auto* p = reinterpret_cast<const unsigned char*>(v.data());
  for (size_t i = 0; i < v.size() * sizeof(float); ++i) h = (h ^ p[i]) * 1099511628211ull;
  return h;
}

bool ReadInt(const std::string& path, int64_t* out) {
  std::ifstream f(path);
  return static_cast<bool>(f >> *out);
}

bool WriteInt(const std::string& path, int64_t v) {
  std::ofstream f(path);
  f << v;
  f.flush();
  return static_cast<bool>(f);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 6) {
    std::fprintf(stderr,
                 "usage: embstore_test_cold_reader DB TABLE CGROUP_DIR HEADROOM_MIB LOOKUPS\n");
    return 2;
  }
  const std::string db = argv[1], table = argv[2], cg = argv[3];
  const int64_t headroom = std::atoll(argv[4]) << 20;
  const int64_t lookups = std::atoll(argv[5]);
  embstore::StoreOptions options;
  options.create_if_missing = false;
  auto store = embstore::Store::Open(db, options);
  if (!store.ok()) return Fail("open: " + store.status().ToString());
  auto snap = (*store)->GetSnapshot(table);
  if (!snap.ok()) return Fail("snapshot: " + snap.status().ToString());
  const embstore::TableView view = snap->view();

  // Limit the cgroup to what this process holds now plus the headroom.
  const bool v2 = std::ifstream(cg + "/memory.max").good();
  int64_t usage = 0;
  if (!ReadInt(cg + (v2 ? "/memory.current" : "/memory.usage_in_bytes"), &usage))
    return Fail("cannot read the cgroup's usage in " + cg);
  const int64_t limit = usage + headroom;
  if (!WriteInt(cg + (v2 ? "/memory.max" : "/memory.limit_in_bytes"), limit))
    return Fail("cannot set the cgroup's limit in " + cg);

  // One fresh set of ids per mode, so that each mode starts on pages that
  // are not in memory; each result is checked against the same ids pooled
  // again with the prefetcher off.
  uint64_t hash[3] = {0, 0, 0}, check[3] = {0, 0, 0};
  double seconds[3] = {0, 0, 0};
  const embstore::QueryOptions::Prefetch modes[3] = {embstore::QueryOptions::Prefetch::kOn,
                                                     embstore::QueryOptions::Prefetch::kAuto,
                                                     embstore::QueryOptions::Prefetch::kOff};
  for (int m = 0; m < 3; ++m) {
    std::mt19937_64 rng(99 + m);
    std::vector<int64_t> ids(static_cast<size_t>(lookups));
    for (int64_t& id : ids) id = static_cast<int64_t>(rng() % static_cast<uint64_t>(view.rows));
    std::vector<int64_t> offsets;
    for (int64_t i = 0; i < lookups; i += 20) offsets.push_back(i);
    embstore::BagRequest req;
    req.indices = std::span<const int64_t>(ids);
    req.offsets = embstore::IndexArray(std::span<const int64_t>(offsets));
    embstore::QueryOptions qo;
    qo.mode = embstore::PoolingMode::kSum;
    qo.prefetch = modes[m];
    qo.prefetch_depth = m == 0 ? 32 : 64;
    const auto t0 = std::chrono::steady_clock::now();
    auto out = embstore::EmbeddingBag(view, req, qo);
    if (!out.ok()) return Fail(std::string("query: ") + out.status().ToString());
    seconds[m] = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    hash[m] = Fnv(out->values);
    qo.prefetch = embstore::QueryOptions::Prefetch::kOff;
    auto again = embstore::EmbeddingBag(view, req, qo);
    if (!again.ok()) return Fail(std::string("query: ") + again.status().ToString());
    check[m] = Fnv(again->values);
  }
  const bool same = hash[0] == check[0] && hash[1] == check[1] && hash[2] == check[2];
  const embstore::PrefetchStats ps = embstore::GetPrefetchStats();
  std::printf(
      "%s limit=%lld on=%llx auto=%llx off=%llx rows_checked=%lld rows_missing=%lld "
      "seconds=%.3f,%.3f,%.3f\n",
      same ? "ok" : "FAIL", static_cast<long long>(limit), static_cast<unsigned long long>(hash[0]),
      static_cast<unsigned long long>(hash[1]), static_cast<unsigned long long>(hash[2]),
      static_cast<long long>(ps.rows_checked), static_cast<long long>(ps.rows_missing), seconds[0],
      seconds[1], seconds[2]);
  std::fflush(stdout);
  return same ? 0 : 1;
}
