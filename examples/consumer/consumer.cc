// consumer: a small serving-style program over an installed embstore.
//
//   consumer --db DIR --table NAME [--threads 4] [--until-version V]
//            [--seconds 60] [--device cpu|cuda] [--check-pattern]
//
// It opens a store another process writes, serves embedding-bag requests
// from several threads, each request on the snapshot current when it
// started, and follows new versions of the table as the writer publishes
// them (without reopening the store): a follower thread swaps the served
// snapshot when GetInfo reports a newer version; requests in flight finish
// on the snapshot they started with, which stays mapped. It stops once it
// has served version V (or after --seconds, then exit 1).
//
// --check-pattern: the tables hold tag * 65536 + row * 16 + column (what
// make_npy writes), and every pooled result must match the pattern of the
// snapshot it was computed on: a result mixing two versions, or a wrong
// row, fails the run (exit 1).
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "embstore/engine.h"
#include "embstore/query.h"
#include "embstore/store.h"
#include "embstore/version.h"

namespace {

struct Args {
  std::string db, table;
  int threads = 4;
  uint64_t until_version = 0;  // 0: serve the current version once, then stop
  int seconds = 60;
  embstore::Device device = embstore::Device::kCpu;
  bool check_pattern = false;
};

int Usage(const char* why) {
  std::fprintf(stderr,
               "consumer: %s\nusage: consumer --db DIR --table NAME [--threads N] "
               "[--until-version V] [--seconds S] [--device cpu|cuda] [--check-pattern]\n",
               why);
  return 2;
}

// The snapshot being served, swapped by the follower.
class Served {
 public:
  std::shared_ptr<const embstore::TableSnapshot> Get() const {
    std::lock_guard<std::mutex> lock(mu_);
    return current_;
  }
  void Set(std::shared_ptr<const embstore::TableSnapshot> s) {
    std::lock_guard<std::mutex> lock(mu_);
    current_ = std::move(s);
  }

 private:
  mutable std::mutex mu_;
  std::shared_ptr<const embstore::TableSnapshot> current_;
};

// A snapshot held for serving. When the last request using it lets go, the
// engine forgets its rows before the mapping goes: a GPU engine caches rows by
// the table's address, and the next version may be mapped at the same one.
std::shared_ptr<const embstore::TableSnapshot> Hold(embstore::TableSnapshot snap,
                                                    embstore::Engine* engine) {
  return std::shared_ptr<const embstore::TableSnapshot>(
      new embstore::TableSnapshot(std::move(snap)), [engine](const embstore::TableSnapshot* s) {
        (void)engine->Forget(s->view());
        delete s;
      });
}

// What pooling `bag` (sum) must give on a pattern table of `tag`.
bool MatchesPattern(const std::vector<int64_t>& ids, const std::vector<int64_t>& offsets,
                    const std::vector<float>& out, int64_t dim, int64_t tag) {
  const size_t bags = offsets.size();
  for (size_t b = 0; b < bags; ++b) {
    const size_t end = b + 1 < bags ? static_cast<size_t>(offsets[b + 1]) : ids.size();
    for (int64_t c = 0; c < dim; ++c) {
      double want = 0;
      for (size_t i = static_cast<size_t>(offsets[b]); i < end; ++i) {
        want += static_cast<double>(tag * 65536 + ids[i] * 16 + c);
      }
      if (out[b * dim + c] != static_cast<float>(want)) return false;
    }
  }
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    const std::string k = argv[i];
    auto value = [&]() -> const char* { return i + 1 < argc ? argv[++i] : nullptr; };
    const char* v = nullptr;
    if (k == "--check-pattern") {
      a.check_pattern = true;
    } else if ((v = value()) == nullptr) {
      return Usage(("missing value after " + k).c_str());
    } else if (k == "--db") {
      a.db = v;
    } else if (k == "--table") {
      a.table = v;
    } else if (k == "--threads") {
      a.threads = std::atoi(v);
    } else if (k == "--until-version") {
      a.until_version = std::strtoull(v, nullptr, 10);
    } else if (k == "--seconds") {
      a.seconds = std::atoi(v);
    } else if (k == "--device") {
      auto d = embstore::ParseDevice(v);
      if (!d) return Usage("--device must be cpu or cuda");
      a.device = *d;
    } else {
      return Usage(("unknown option " + k).c_str());
    }
  }
  if (a.db.empty() || a.table.empty()) return Usage("--db and --table are required");
  if (a.threads < 1 || a.threads > 64) return Usage("--threads must be 1..64");
  if (a.seconds < 1) return Usage("--seconds must be >= 1");

  // The headers this program was compiled with and the library it runs with
  // must share a major version (docs/api.md).
  const embstore::VersionInfo lib = embstore::Version();
  if (lib.major != EMBSTORE_VERSION_MAJOR) {
    std::fprintf(stderr, "consumer: built against embstore %s but running with %s\n",
                 EMBSTORE_VERSION_STRING, lib.string);
    return 1;
  }
  std::printf("consumer: embstore %s, %d threads on %s\n", lib.string, a.threads,
              embstore::DeviceName(a.device));

  embstore::StoreOptions so;
  so.create_if_missing = false;
  auto store = embstore::Store::Open(a.db, so);
  if (!store.ok()) {
    std::fprintf(stderr, "consumer: %s\n", store.status().ToString().c_str());
    return 1;
  }
  embstore::EngineOptions eo;
  eo.device = a.device;
  auto engine = embstore::Engine::Create(eo);
  if (!engine.ok()) {
    std::fprintf(stderr, "consumer: %s\n", engine.status().ToString().c_str());
    return 1;
  }

  Served served;
  auto first = (*store)->GetSnapshot(a.table);
  if (!first.ok()) {
    std::fprintf(stderr, "consumer: %s\n", first.status().ToString().c_str());
    return 1;
  }
  served.Set(Hold(std::move(first).value(), engine->get()));
  std::printf("consumer: serving %s version %llu\n", a.table.c_str(),
              static_cast<unsigned long long>(served.Get()->info().version));
  std::fflush(stdout);

  const uint64_t target = a.until_version > 0 ? a.until_version : served.Get()->info().version;
  std::atomic<bool> stop{false};
  std::atomic<int64_t> queries{0}, wrong{0}, errors{0}, on_target{0};
  std::mutex seen_mu;
  std::set<uint64_t> seen;

  std::vector<std::thread> workers;
  for (int t = 0; t < a.threads; ++t) {
    workers.emplace_back([&, t] {
      std::mt19937_64 rng(1234 + t);
      std::vector<int64_t> ids, offsets;
      std::vector<float> out;
      while (!stop.load()) {
        // Hold the snapshot for the whole request.
        const std::shared_ptr<const embstore::TableSnapshot> snap = served.Get();
        const embstore::TableView view = snap->view();
        ids.clear();
        offsets.clear();
        for (int b = 0; b < 32; ++b) {
          offsets.push_back(static_cast<int64_t>(ids.size()));
          const int n = 1 + static_cast<int>(rng() % 4);
          for (int i = 0; i < n; ++i) ids.push_back(static_cast<int64_t>(rng() % view.rows));
        }
        embstore::BagRequest req;
        req.indices = std::span<const int64_t>(ids);
        req.offsets = embstore::IndexArray(std::span<const int64_t>(offsets));
        embstore::QueryOptions qo;
        qo.mode = embstore::PoolingMode::kSum;
        qo.max_threads = 1;
        out.assign(offsets.size() * static_cast<size_t>(view.dim), 0.0f);
        (void)(*engine)->Prefetch(view, std::span<const int64_t>(ids));
        const embstore::Status st = (*engine)->EmbeddingBag(view, req, qo, out);
        if (!st.ok()) {
          if (errors.fetch_add(1) == 0)
            std::fprintf(stderr, "consumer: %s\n", st.ToString().c_str());
          continue;
        }
        queries.fetch_add(1);
        if (a.check_pattern) {
          const int64_t tag =
              static_cast<int64_t>(reinterpret_cast<const float*>(view.Row(0))[0]) / 65536;
          if (!MatchesPattern(ids, offsets, out, view.dim, tag)) wrong.fetch_add(1);
        }
        const uint64_t version = snap->info().version;
        if (version >= target) on_target.fetch_add(1);
        std::lock_guard<std::mutex> lock(seen_mu);
        seen.insert(version);
      }
    });
  }

  // The follower: publishes of another process appear through GetInfo.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(a.seconds);
  bool timed_out = false;
  while (true) {
    if (on_target.load() >= a.threads) break;
    if (std::chrono::steady_clock::now() > deadline) {
      timed_out = true;
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    auto info = (*store)->GetInfo(a.table);
    if (!info.ok() || info->version == served.Get()->info().version) continue;
    auto next = (*store)->GetSnapshot(a.table);
    if (!next.ok()) continue;  // replaced again meanwhile, or dropped: try again
    served.Set(Hold(std::move(next).value(), engine->get()));
    std::printf("consumer: now serving version %llu\n",
                static_cast<unsigned long long>(served.Get()->info().version));
    std::fflush(stdout);
  }
  stop.store(true);
  for (auto& w : workers) w.join();

  std::string versions;
  for (uint64_t v : seen) versions += (versions.empty() ? "" : ",") + std::to_string(v);
  const embstore::CacheStats stats = (*engine)->stats();
  std::printf(
      "consumer: %lld requests (%lld batches, %lld prefetches) over versions %s; "
      "%lld wrong, %lld errors\n",
      static_cast<long long>(queries.load()), static_cast<long long>(stats.batches),
      static_cast<long long>(stats.prefetch_requests), versions.c_str(),
      static_cast<long long>(wrong.load()), static_cast<long long>(errors.load()));
  if (timed_out) {
    std::fprintf(stderr, "consumer: version %llu did not appear within %d s\n",
                 static_cast<unsigned long long>(target), a.seconds);
    return 1;
  }
  return wrong.load() == 0 && errors.load() == 0 ? 0 : 1;
}
