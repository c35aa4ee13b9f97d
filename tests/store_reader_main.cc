// embstore_test_reader: a process that holds a Store open, for the
// multi-process tests (tests/multiprocess_test.cc).
//
//   embstore_test_reader loop DB TABLE STOPFILE   snapshot + check values until STOPFILE exists
//   embstore_test_reader follow DB TABLE          report when a new version is seen
//   embstore_test_reader hold DB TABLE            hold a snapshot until killed
//   embstore_test_reader write-slow DB TABLE RELEASEFILE
//                                                 write TABLE, holding the writer lock until
//                                                 RELEASEFILE exists
//
// Tables hold tag * 65536 + row * 16 + column (exact in float32): one tag per
// published version. Lines go to stdout, flushed; exit 0 on success, 1 on a
// failed check (with a "FAIL ..." line), 2 on bad usage. Every loop is bounded.
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <set>
#include <string>
#include <thread>

#include "embstore/store.h"

namespace {

using embstore::Status;
using embstore::TableSnapshot;

bool Exists(const std::string& p) {
  struct stat st;
  return ::stat(p.c_str(), &st) == 0;
}

float At(const TableSnapshot& s, int64_t r, int64_t c) {
  return reinterpret_cast<const float*>(s.view().Row(r))[c];
}

// The tag of a snapshot, or -1 when its rows are not all of one tag.
int64_t CheckedTag(const TableSnapshot& s) {
  const auto v = s.view();
  if (v.rows == 0 || v.dim != 16) return -1;
  const int64_t tag = static_cast<int64_t>(At(s, 0, 0)) / 65536;
  for (int64_t r = 0; r < v.rows; r += 37) {
    for (int64_t c = 0; c < v.dim; ++c) {
      if (At(s, r, c) != static_cast<float>(tag * 65536 + r * 16 + c)) return -1;
    }
  }
  return tag;
}

int Fail(const std::string& what) {
  std::printf("FAIL %s\n", what.c_str());
  std::fflush(stdout);
  return 1;
}

using Clock = std::chrono::steady_clock;

}  // namespace

int main(int argc, char** argv) {
  if (argc < 4) {
    std::fprintf(stderr, "usage: embstore_test_reader loop|follow|hold|write-slow DB TABLE ...\n");
    return 2;
  }
  const std::string mode = argv[1], db = argv[2], table = argv[3];
  embstore::StoreOptions options;
  options.create_if_missing = false;
  auto opened = embstore::Store::Open(db, options);
  if (!opened.ok()) return Fail("open: " + opened.status().ToString());
  embstore::Store& store = **opened;

  if (mode == "loop" && argc == 5) {
    const std::string stop = argv[4];
    std::set<int64_t> tags;
    int64_t queries = 0;
    const auto deadline = Clock::now() + std::chrono::seconds(120);
    while (!Exists(stop) && Clock::now() < deadline) {
      auto snap = store.GetSnapshot(table);
      if (!snap.ok())
        return Fail("snapshot " + std::to_string(queries) + ": " + snap.status().ToString());
      const int64_t tag = CheckedTag(*snap);
      if (tag < 0) return Fail("values of version " + std::to_string(snap->info().version));
      tags.insert(tag);
      ++queries;
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    std::string seen;
    for (int64_t t : tags) seen += (seen.empty() ? "" : ",") + std::to_string(t);
    std::printf("ok queries=%lld tags=%s\n", static_cast<long long>(queries), seen.c_str());
    return 0;
  }
  if (mode == "follow" && argc == 4) {
    auto first = store.GetSnapshot(table);
    if (!first.ok()) return Fail("snapshot: " + first.status().ToString());
    const int64_t first_tag = CheckedTag(*first);
    std::printf("ready %llu\n", static_cast<unsigned long long>(first->info().version));
    std::fflush(stdout);
    const auto deadline = Clock::now() + std::chrono::seconds(20);
    while (Clock::now() < deadline) {
      auto snap = store.GetSnapshot(table);
      if (!snap.ok()) return Fail("snapshot: " + snap.status().ToString());
      if (snap->info().version != first->info().version) {
        const int64_t tag = CheckedTag(*snap);
        std::printf("followed %llu tag %lld old-intact %s\n",
                    static_cast<unsigned long long>(snap->info().version),
                    static_cast<long long>(tag),
                    CheckedTag(*first) == first_tag && first_tag >= 0 ? "yes" : "no");
        std::fflush(stdout);
        return 0;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    return Fail("no new version within 20 s");
  }
  if (mode == "hold" && argc == 4) {
    auto snap = store.GetSnapshot(table);
    if (!snap.ok()) return Fail("snapshot: " + snap.status().ToString());
    if (CheckedTag(*snap) < 0) return Fail("values");
    std::printf("ready %s\n", snap->info().file.c_str());
    std::fflush(stdout);
    std::this_thread::sleep_for(std::chrono::seconds(60));  // the test kills it long before
    return 0;
  }
  if (mode == "write-slow" && argc == 5) {
    const std::string release = argv[4];
    embstore::TableSpec spec;
    spec.rows = 64;
    spec.dim = 16;
    spec.replace = true;
    spec.source = "write-slow";
    bool told = false;
    auto r = store.WriteTable(table, spec, [&](int64_t first, int64_t count, float* out) {
      if (!told) {
        std::printf("writing %d\n", static_cast<int>(::getpid()));
        std::fflush(stdout);
        told = true;
      }
      const auto deadline = Clock::now() + std::chrono::seconds(30);
      while (!Exists(release) && Clock::now() < deadline)
        std::this_thread::sleep_for(std::chrono::milliseconds(2));
      for (int64_t i = 0; i < count; ++i)
        for (int64_t c = 0; c < 16; ++c)
          out[i * 16 + c] = static_cast<float>(50 * 65536 + (first + i) * 16 + c);
      return Status::OK();
    });
    if (!r.ok()) return Fail("write: " + r.status().ToString());
    std::printf("wrote %llu\n", static_cast<unsigned long long>(r->version));
    return 0;
  }
  std::fprintf(stderr, "embstore_test_reader: bad arguments\n");
  return 2;
}
