// The page prefetcher (QueryOptions::prefetch, engine/page_prefetch.h):
// results identical with it on, auto and off (tmpfs, a disk file whose pages
// were dropped, a small memory cgroup, concurrent readers while another
// process replaces and drops the table), its options refused when bad, and
// its counters showing that it ran.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/vfs.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "embstore/query.h"
#include "embstore/store.h"
#include "engine/kernels_ref.h"
#include "store_test_util.h"
#include "test_util.h"

namespace embstore {
namespace {

using Prefetch = QueryOptions::Prefetch;
using testing::RunCli;
using testing::TempDir;

constexpr long kTmpfsMagic = 0x01021994;

bool OnTmpfs(const std::string& path) {
  struct statfs fs;
  return ::statfs(path.c_str(), &fs) == 0 && fs.f_type == kTmpfsMagic;
}

// A directory on a disk file system: the test's working directory (ctest
// runs in the build tree), where TMPDIR may be a tmpfs.
struct DiskDir : TempDir {
  DiskDir() : TempDir(".") {}
};

// Writes `rows` x `dim` random rows (seeded) as table `name` in `dtype`.
TableInfo WriteRandom(Store& store, const std::string& name, int64_t rows, int64_t dim, DType dtype,
                      uint32_t seed) {
  TableSpec spec;
  spec.rows = rows;
  spec.dim = dim;
  spec.dtype = dtype;
  spec.source = "page_prefetch_test";
  auto info = store.WriteTable(name, spec, [&](int64_t first, int64_t count, float* out) {
    std::mt19937 rng(seed + static_cast<uint32_t>(first));
    std::normal_distribution<float> d(0.0f, 1.0f);
    for (int64_t i = 0; i < count * dim; ++i) out[i] = d(rng);
    return Status::OK();
  });
  EXPECT_TRUE(info.ok()) << info.status().ToString();
  return info.ok() ? *info : TableInfo();
}

// Drops a file's clean pages from the page cache (a disk file system does;
// tmpfs keeps them). None may be mapped by this process yet.
void DropPages(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY);
  ASSERT_GE(fd, 0) << path;
  ASSERT_EQ(::fdatasync(fd), 0);
  ASSERT_EQ(::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED), 0);
  ::close(fd);
}

struct Request {
  std::vector<int64_t> ids;
  std::vector<int64_t> offsets;
  std::vector<float> weights;
  BagRequest Bags(bool weighted) const {
    BagRequest r;
    r.indices = std::span<const int64_t>(ids);
    r.offsets = IndexArray(std::span<const int64_t>(offsets));
    if (weighted) r.weights = std::span<const float>(weights);
    return r;
  }
};

// `lookups` uniform ids in bags of 0..2*mean entries (some empty).
Request RandomRequest(int64_t rows, int64_t lookups, int mean, uint32_t seed) {
  Request r;
  std::mt19937_64 rng(seed);
  for (int64_t i = 0; i < lookups; ++i) r.ids.push_back(static_cast<int64_t>(rng() % rows));
  for (int64_t at = 0; at < lookups;) {
    r.offsets.push_back(at);
    at += static_cast<int64_t>(rng() % (2 * mean + 1));
  }
  std::normal_distribution<float> d(0.0f, 1.0f);
  for (int64_t i = 0; i < lookups; ++i) r.weights.push_back(d(rng));
  return r;
}

std::vector<float> Pool(const TableView& view, const BagRequest& req, QueryOptions qo,
                        Prefetch prefetch, int depth) {
  qo.prefetch = prefetch;
  qo.prefetch_depth = depth;
  auto out = EmbeddingBag(view, req, qo);
  EXPECT_TRUE(out.ok()) << out.status().ToString();
  return out.ok() ? out->values : std::vector<float>();
}

// Every mode, layout and dtype on a store in tmpfs (every page resident: the
// prefetcher looks them up and asks for none).
TEST(PagePrefetch, SameResultsInEveryModeOnTmpfs) {
  if (!OnTmpfs("/dev/shm")) GTEST_SKIP() << "/dev/shm is not a tmpfs on this machine";
  char tmpl[] = "/dev/shm/embstore-prefetch-XXXXXX";
  const std::string dir = ::mkdtemp(tmpl);
  {
    auto store = OpenOrDie(dir + "/db");
    ASSERT_NE(store, nullptr);
    const int64_t rows = 3000, dim = 24;  // 96-byte rows: pages hold 42.7 of them
    int cases = 0;
    for (const DType dtype : {DType::kF32, DType::kF16, DType::kBF16, DType::kInt8Rowwise}) {
      const std::string name = std::string("t_") + DTypeName(dtype);
      WriteRandom(*store, name, rows, dim, dtype, 7);
      auto snap = store->GetSnapshot(name);
      ASSERT_TRUE(snap.ok());
      const TableView view = snap->view();
      ASSERT_TRUE(OnTmpfs(dir));
      const Request req = RandomRequest(rows, 20000, 10, 3);
      for (const PoolingMode mode : {PoolingMode::kSum, PoolingMode::kMean, PoolingMode::kMax}) {
        for (const bool weighted : {false, true}) {
          for (const int threads : {1, 0}) {
            QueryOptions qo;
            qo.mode = mode;
            qo.max_threads = threads;
            if (weighted) qo.max_norm = 2.5;  // and renorm on the weighted ones
            if (!weighted) qo.padding_idx = req.ids[5];
            const BagRequest bags = req.Bags(weighted);
            const std::vector<float> off = Pool(view, bags, qo, Prefetch::kOff, 64);
            ASSERT_FALSE(off.empty());
            const PrefetchStats before = GetPrefetchStats();
            for (const int depth : {1, 3, 64, 65536}) {
              EXPECT_EQ(Pool(view, bags, qo, Prefetch::kOn, depth), off)
                  << DTypeName(dtype) << " " << PoolingModeName(mode) << " depth " << depth;
              ++cases;
            }
            EXPECT_EQ(Pool(view, bags, qo, Prefetch::kAuto, 64), off);
            const PrefetchStats after = GetPrefetchStats();
            // The prefetching runs looked the rows up (each of the table's 71
            // pages about once per chunk), and found them resident.
            EXPECT_GE(after.rows_checked - before.rows_checked, 4 * 20);
            EXPECT_EQ(after.rows_missing, before.rows_missing);
          }
        }
      }
      // Batched bags (inclusive ends), through the same windows.
      const int64_t batch = 500, items = 12, k = 3;
      std::vector<int64_t> ids(batch * items), ends(batch * k);
      std::mt19937 rng(5);
      for (int64_t& id : ids) id = static_cast<int64_t>(rng() % rows);
      for (int64_t b = 0; b < batch; ++b) {
        ends[b * k] = static_cast<int64_t>(rng() % 4) - 1;
        ends[b * k + 1] = ends[b * k] + static_cast<int64_t>(rng() % 5);
        ends[b * k + 2] = items - 1 - static_cast<int64_t>(rng() % 2);
      }
      BatchedBagRequest br;
      br.indices = std::span<const int64_t>(ids);
      br.ends = IndexArray(std::span<const int64_t>(ends));
      br.batch = batch;
      br.items = items;
      br.bags_per_sample = k;
      QueryOptions qo;
      qo.mode = PoolingMode::kSum;
      qo.prefetch = Prefetch::kOff;
      auto off = BatchedEmbeddingBag(view, br, qo);
      ASSERT_TRUE(off.ok()) << off.status().ToString();
      qo.prefetch = Prefetch::kOn;
      qo.prefetch_depth = 5;
      auto on = BatchedEmbeddingBag(view, br, qo);
      ASSERT_TRUE(on.ok());
      EXPECT_EQ(on->values, off->values);
      ++cases;
    }
    EXPECT_EQ(cases, 4 * (3 * 2 * 2 * 4 + 1));
  }
  std::error_code ec;
  std::filesystem::remove_all(dir, ec);
}

// A table on disk whose pages were dropped: the prefetcher finds them
// missing and reads them ahead, and the results are the same as without it.
TEST(PagePrefetch, ReadsDroppedPagesAheadWithTheSameResults) {
  DiskDir dir;
  ASSERT_FALSE(OnTmpfs(dir.path())) << "the working directory must be on a disk file system";
  const int64_t rows = 65536, dim = 64;  // 16 MiB of f32
  std::string file;
  {
    auto store = OpenOrDie(dir / "db");
    ASSERT_NE(store, nullptr);
    file = dir / ("db/tables/" + WriteRandom(*store, "t", rows, dim, DType::kF32, 11).file);
  }
  DropPages(file);
  auto store = OpenOrDie(dir / "db");
  ASSERT_NE(store, nullptr);
  auto snap = store->GetSnapshot("t");
  ASSERT_TRUE(snap.ok());
  const TableView view = snap->view();
  {
    const long page = ::sysconf(_SC_PAGESIZE);
    int resident = 0;
    for (int64_t r = 0; r < rows; r += rows / 64) {
      unsigned char v = 0;
      const uintptr_t a = reinterpret_cast<uintptr_t>(view.Row(r)) & ~uintptr_t(page - 1);
      ASSERT_EQ(::mincore(reinterpret_cast<void*>(a), 1, &v), 0);
      resident += v & 1;
    }
    if (resident == 64) GTEST_SKIP() << "this file system kept the dropped pages";
  }
  const Request req = RandomRequest(rows, 8000, 20, 21);
  QueryOptions qo;
  qo.mode = PoolingMode::kSum;
  const PrefetchStats before = GetPrefetchStats();
  const std::vector<float> on = Pool(view, req.Bags(false), qo, Prefetch::kOn, 16);
  const PrefetchStats after = GetPrefetchStats();
  // Mostly missing: every page is asked for, one row in 8 looked up.
  EXPECT_GT(after.rows_missing - before.rows_missing, 200) << "the dropped pages were not missed";
  EXPECT_GE(after.rows_checked - before.rows_checked, 8000 / 8);
  EXPECT_LT(after.rows_checked - before.rows_checked, 8000);
  EXPECT_GE(after.pages_read - before.pages_read, 2000);
  EXPECT_GT(after.cold_chunks, before.cold_chunks);
  EXPECT_EQ(Pool(view, req.Bags(false), qo, Prefetch::kOff, 64), on);
  EXPECT_EQ(Pool(view, req.Bags(false), qo, Prefetch::kAuto, 64), on);
  // Against the reference twin too (the pages the prefetcher read are the rows).
  auto ref = engine::EmbeddingBagRef(view, req.Bags(false), qo);
  ASSERT_TRUE(ref.ok());
  ASSERT_EQ(ref->values.size(), on.size());
  for (size_t i = 0; i < on.size(); ++i) ASSERT_NEAR(on[i], ref->values[i], 1e-4) << i;
}

TEST(PagePrefetch, RefusesBadOptionsAndRequestsAsWithoutIt) {
  TempDir dir;
  auto store = OpenOrDie(dir / "db");
  ASSERT_NE(store, nullptr);
  WriteRandom(*store, "t", 100, 8, DType::kF32, 1);
  auto snap = store->GetSnapshot("t");
  ASSERT_TRUE(snap.ok());
  const TableView view = snap->view();
  const std::vector<int64_t> ids = {1, 2, 100};
  const std::vector<int64_t> offsets = {0};
  BagRequest req;
  req.indices = std::span<const int64_t>(ids);
  req.offsets = IndexArray(std::span<const int64_t>(offsets));
  std::string message;
  for (const Prefetch p : {Prefetch::kOff, Prefetch::kOn, Prefetch::kAuto}) {
    QueryOptions qo;
    qo.prefetch = p;
    auto r = EmbeddingBag(view, req, qo);
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.status().code(), Status::Code::kInvalidArgument);
    if (message.empty()) message = r.status().message();
    EXPECT_EQ(r.status().message(), message);  // the same message in every mode
  }
  EXPECT_NE(message.find("out of range"), std::string::npos) << message;
  const std::vector<int64_t> good = {1, 2, 99};
  req.indices = std::span<const int64_t>(good);
  for (const int depth : {0, -1, 65537, 1 << 30}) {
    QueryOptions qo;
    qo.prefetch_depth = depth;
    auto r = EmbeddingBag(view, req, qo);
    ASSERT_FALSE(r.ok()) << depth;
    EXPECT_EQ(r.status().message(),
              "prefetch_depth must be in [1, 65536] (got " + std::to_string(depth) + ")");
  }
  QueryOptions bad;
  bad.prefetch = static_cast<Prefetch>(7);
  auto r = EmbeddingBag(view, req, bad);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().message(), "unknown prefetch mode 7 (expected auto, on or off)");
  // A request too large for memory is refused before anything is read.
  BagRequest huge;
  huge.indices = std::span<const int64_t>(good.data(), 0);
  huge.indices_shape = {int64_t{1} << 40, 0};
  QueryOptions on;
  on.prefetch = Prefetch::kOn;
  auto h = EmbeddingBag(view, huge, on);
  ASSERT_FALSE(h.ok());
  EXPECT_NE(h.status().message().find("need"), std::string::npos) << h.status().message();
  EXPECT_EQ(PrefetchName(Prefetch::kAuto), std::string("auto"));
  EXPECT_EQ(ParsePrefetch("on"), Prefetch::kOn);
  EXPECT_EQ(ParsePrefetch("off"), Prefetch::kOff);
  EXPECT_FALSE(ParsePrefetch("yes").has_value());
}

// Rows hold tag * 65536 + row * 16 + column (exact in float32).
std::string WriteTagged(const std::string& path, int64_t rows, int64_t tag) {
  std::vector<float> v(static_cast<size_t>(rows * 16));
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < 16; ++c) v[r * 16 + c] = static_cast<float>(tag * 65536 + r * 16 + c);
  testing::WriteF32Npy(path, {rows, 16}, v);
  return path;
}

// Readers pool with the prefetcher (threads of this process, real
// snapshots) while another process replaces and drops the table: no crash,
// every result is exactly one version's.
TEST(PagePrefetch, ReadersWhileAnotherProcessReplacesAndDrops) {
  TempDir dir;
  const int64_t rows = 4096;
  for (int tag = 1; tag <= 6; ++tag)
    WriteTagged(dir / ("v" + std::to_string(tag) + ".npy"), rows, tag);
  const std::string db = dir / "db";
  ASSERT_EQ(RunCli({"import", "--db", db, "--table", "t", "--from", dir / "v1.npy"}).exit_code, 0);
  std::atomic<bool> done{false};
  std::atomic<int> pooled{0}, wrong{0}, absent{0};
  std::vector<std::thread> readers;
  for (int t = 0; t < 3; ++t) {
    readers.emplace_back([&, t] {
      StoreOptions so;
      so.refresh_interval = std::chrono::milliseconds(10);
      auto store = OpenOrDie(db, so);
      if (store == nullptr) return;
      std::mt19937_64 rng(t);
      for (int i = 0; i < 200000 && !done.load(); ++i) {
        auto snap = store->GetSnapshot("t");
        if (!snap.ok()) {  // dropped just now
          ++absent;
          std::this_thread::sleep_for(std::chrono::milliseconds(1));
          continue;
        }
        std::vector<int64_t> ids(256);
        for (int64_t& id : ids) id = static_cast<int64_t>(rng() % rows);
        std::vector<int64_t> offsets;
        for (int64_t b = 0; b < 256; b += 4) offsets.push_back(b);
        BagRequest req;
        req.indices = std::span<const int64_t>(ids);
        req.offsets = IndexArray(std::span<const int64_t>(offsets));
        QueryOptions qo;
        qo.mode = PoolingMode::kMax;
        qo.max_threads = t == 2 ? 0 : 1;
        qo.prefetch = t == 1 ? Prefetch::kAuto : Prefetch::kOn;
        qo.prefetch_depth = 1 + t * 7;
        auto out = EmbeddingBag(snap->view(), req, qo);
        if (!out.ok()) {
          ++wrong;
          continue;
        }
        // Max of a bag: the row with the largest id, column c.
        const float tag = std::floor(out->values[0] / 65536.0f);
        for (size_t b = 0; b < offsets.size(); ++b) {
          int64_t top = 0;
          for (int64_t k = 0; k < 4; ++k) top = std::max(top, ids[offsets[b] + k]);
          for (int64_t c = 0; c < 16; ++c) {
            if (out->values[b * 16 + c] != tag * 65536.0f + static_cast<float>(top * 16 + c)) {
              ++wrong;
              b = offsets.size();
              break;
            }
          }
        }
        ++pooled;
      }
    });
  }
  for (int tag = 2; tag <= 6; ++tag) {
    auto r = RunCli({"import", "--db", db, "--table", "t", "--from",
                     dir / ("v" + std::to_string(tag) + ".npy"), "--replace"});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    std::this_thread::sleep_for(std::chrono::milliseconds(60));
    if (tag == 4) {
      ASSERT_EQ(RunCli({"drop", "--db", db, "--table", "t"}).exit_code, 0);
      std::this_thread::sleep_for(std::chrono::milliseconds(60));
      ASSERT_EQ(RunCli({"import", "--db", db, "--table", "t", "--from", dir / "v4.npy"}).exit_code,
                0);
    }
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(60));
  done = true;
  for (auto& t : readers) t.join();
  EXPECT_EQ(wrong.load(), 0);
  EXPECT_GE(pooled.load(), 30);
  std::printf("pooled %d, table absent %d times\n", pooled.load(), absent.load());
}

// The memory cgroup this process is in, as a directory, and whether it is v2.
bool MemoryCgroupDir(std::string* dir, bool* v2) {
  std::ifstream cg("/proc/self/cgroup");
  std::string line;
  while (std::getline(cg, line)) {
    const size_t a = line.find(':'), b = line.find(':', a + 1);
    if (a == std::string::npos || b == std::string::npos) continue;
    const std::string controllers = line.substr(a + 1, b - a - 1);
    const std::string rel = line.substr(b + 1);
    if (controllers == "memory" || controllers.find("memory,") != std::string::npos ||
        controllers.find(",memory") != std::string::npos) {
      *dir = "/sys/fs/cgroup/memory" + rel;
      *v2 = false;
      return std::filesystem::exists(*dir + "/memory.limit_in_bytes");
    }
    if (line.rfind("0::", 0) == 0 &&
        std::filesystem::exists("/sys/fs/cgroup" + rel + "/memory.max")) {
      *dir = "/sys/fs/cgroup" + rel;
      *v2 = true;
    }
  }
  return !dir->empty();
}

#if defined(__SANITIZE_THREAD__)
constexpr bool kThreadSanitizer = true;
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
constexpr bool kThreadSanitizer = true;
#else
constexpr bool kThreadSanitizer = false;
#endif
#else
constexpr bool kThreadSanitizer = false;
#endif

// A table larger than the memory a child process may use (its own memory
// cgroup: what it holds once started plus 64 MiB): the child's results are the same with the
// prefetcher on, auto and off, it misses pages, and it stays inside the limit.
TEST(PagePrefetch, TableLargerThanACgroupLimit) {
  if (kThreadSanitizer) {
    GTEST_SKIP() << "TSan's shadow of every page read is charged to the cgroup";
  }
  std::string parent;
  bool v2 = false;
  if (::geteuid() != 0 || !MemoryCgroupDir(&parent, &v2)) {
    GTEST_SKIP() << "no memory cgroup this process may make children in";
  }
  const std::string cg = parent + "/embstore-prefetch-" + std::to_string(::getpid());
  std::error_code ec;
  if (!std::filesystem::create_directory(cg, ec)) {
    GTEST_SKIP() << "cannot create a memory cgroup under " << parent << ": " << ec.message();
  }
  if (!std::filesystem::exists(cg + (v2 ? "/memory.max" : "/memory.limit_in_bytes"))) {
    std::filesystem::remove(cg, ec);  // v2 without the memory controller delegated here
    GTEST_SKIP() << "the memory controller is not enabled for cgroups under " << parent;
  }
  DiskDir dir;
  ASSERT_FALSE(OnTmpfs(dir.path()));
  const int64_t rows = 655360, dim = 64;  // 160 MiB, against 64 MiB of headroom
  std::string file;
  {
    auto store = OpenOrDie(dir / "db");
    ASSERT_NE(store, nullptr);
    file = dir / ("db/tables/" + WriteRandom(*store, "t", rows, dim, DType::kF32, 5).file);
  }
  DropPages(file);
  int out_pipe[2];
  ASSERT_EQ(::pipe(out_pipe), 0);
  // Everything the child needs is made before fork (this process has other
  // threads): between fork and exec it only makes system calls.
  const std::string db = dir / "db";
  const std::string procs = cg + "/cgroup.procs";
  const char* argv[] = {
      EMBSTORE_TEST_COLD_READER, db.c_str(), "t", cg.c_str(), "64", "10000", nullptr};
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    ::dup2(out_pipe[1], 1);
    ::close(out_pipe[0]);
    const int fd = ::open(procs.c_str(), O_WRONLY);
    if (fd < 0 || ::write(fd, "0", 1) != 1) ::_exit(126);  // "0": the writing process
    ::close(fd);
    ::execv(argv[0], const_cast<char* const*>(argv));
    ::_exit(127);
  }
  ::close(out_pipe[1]);
  // Bounded wait: 300 s, then the child is killed.
  int status = 0;
  bool exited = false;
  for (int i = 0; i < 3000 && !exited; ++i) {
    exited = ::waitpid(pid, &status, WNOHANG) == pid;
    if (!exited) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  if (!exited) {
    ::kill(pid, SIGKILL);
    ::waitpid(pid, &status, 0);
  }
  std::string line(4096, '\0');
  const ssize_t n = ::read(out_pipe[0], line.data(), line.size());
  line.resize(n > 0 ? static_cast<size_t>(n) : 0);
  ::close(out_pipe[0]);
  int64_t peak = -1, limit = -1;
  std::ifstream(cg + (v2 ? "/memory.peak" : "/memory.max_usage_in_bytes")) >> peak;
  std::ifstream(cg + (v2 ? "/memory.max" : "/memory.limit_in_bytes")) >> limit;
  std::string events;
  {
    std::ifstream f(cg + (v2 ? "/memory.events" : "/memory.oom_control"));
    std::string word;
    int64_t value = 0;
    while (f >> word >> value)
      if (word == "oom_kill") events = std::to_string(value);
  }
  std::filesystem::remove(cg, ec);
  ASSERT_TRUE(exited) << "the child did not finish in 300 s";
  ASSERT_TRUE(WIFEXITED(status)) << "the child died of signal " << WTERMSIG(status) << ": " << line;
  ASSERT_EQ(WEXITSTATUS(status), 0) << line;
  ASSERT_EQ(line.rfind("ok ", 0), 0u) << line;
  int64_t missing = 0, checked = 0;
  ASSERT_EQ(std::sscanf(line.c_str() + line.find("rows_checked="),
                        "rows_checked=%ld rows_missing=%ld", &checked, &missing),
            2)
      << line;
  EXPECT_GE(checked, 2000) << line;  // sampled, by the runs with it on and auto
  EXPECT_GT(missing, 500) << "the table did not stay out of memory: " << line;
  ASSERT_GT(limit, 0);
  EXPECT_LT(limit, rows * dim * 4) << "the limit must be below the table's size";
  if (peak >= 0) {
    EXPECT_LE(peak, limit) << line;
  }
  if (!events.empty()) {
    EXPECT_EQ(events, "0") << "the child was OOM-killed";
  }
  std::printf("%s (peak %lld of %lld bytes)\n", line.c_str(), static_cast<long long>(peak),
              static_cast<long long>(limit));
}

}  // namespace
}  // namespace embstore
