// Many processes, one store: reader processes (the CLI and a program that
// holds a Store open) beside writer processes, some SIGKILLed at random points.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <mutex>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "embstore/store.h"
#include "test_util.h"

namespace embstore {
namespace {

using embstore::testing::RunCli;
using embstore::testing::TempDir;
using Clock = std::chrono::steady_clock;

constexpr int64_t kDim = 16;

// A [rows, 16] table of tag * 65536 + row * 16 + column: exact in float32, so
// any value says which version (tag) it came from.
void WriteTagged(const std::string& path, int64_t rows, int64_t tag) {
  std::vector<float> v(static_cast<size_t>(rows * kDim));
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < kDim; ++c)
      v[static_cast<size_t>(r * kDim + c)] = static_cast<float>(tag * 65536 + r * 16 + c);
  embstore::testing::WriteF32Npy(path, {rows, kDim}, v);
}

// A child process with its stdout on a pipe.
class Child {
 public:
  explicit Child(const std::vector<std::string>& argv) {
    int fds[2];
    if (::pipe2(fds, O_CLOEXEC) != 0) std::abort();
    pid_ = ::fork();
    if (pid_ == 0) {
      ::dup2(fds[1], 1);
      std::vector<std::string> copy = argv;
      std::vector<char*> args;
      for (std::string& a : copy) args.push_back(a.data());
      args.push_back(nullptr);
      ::execv(args[0], args.data());
      _exit(127);
    }
    ::close(fds[1]);
    fd_ = fds[0];
  }
  ~Child() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      Wait();
    }
    if (fd_ >= 0) ::close(fd_);
  }
  pid_t pid() const { return pid_; }

  // The next line of output, or "" at end of output or after `timeout`.
  std::string ReadLine(std::chrono::milliseconds timeout = std::chrono::seconds(30)) {
    const auto deadline = Clock::now() + timeout;
    while (true) {
      const size_t nl = buf_.find('\n');
      if (nl != std::string::npos) {
        std::string line = buf_.substr(0, nl);
        buf_.erase(0, nl + 1);
        return line;
      }
      const auto left =
          std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
      if (left <= 0) return "";
      pollfd p{fd_, POLLIN, 0};
      if (::poll(&p, 1, static_cast<int>(left)) <= 0) continue;
      char chunk[4096];
      const ssize_t n = ::read(fd_, chunk, sizeof chunk);
      if (n <= 0) return "";
      buf_.append(chunk, static_cast<size_t>(n));
    }
  }
  // Exit code, or 128 + signal.
  int Wait() {
    int status = 0;
    ::waitpid(pid_, &status, 0);
    pid_ = -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  }
  void Kill() { ::kill(pid_, SIGKILL); }

 private:
  pid_t pid_ = -1;
  int fd_ = -1;
  std::string buf_;
};

std::string Reader() { return EMBSTORE_TEST_READER; }

std::set<std::string> FilesIn(const std::string& dir) {
  std::set<std::string> out;
  for (auto& e : std::filesystem::directory_iterator(dir)) out.insert(e.path().filename());
  return out;
}

std::set<std::string> CatalogFiles(const std::string& db) {
  std::set<std::string> out;
  auto store = Store::Open(db, StoreOptions());
  EXPECT_TRUE(store.ok());
  if (!store.ok()) return out;
  auto entries = (*store)->ListEntries();
  EXPECT_TRUE(entries.ok());
  for (const TableEntry& e : *entries)
    for (const TableInfo& v : e.versions) out.insert(v.file);
  return out;
}

// Parses `embstore query` output of single-row bags for `ids`; returns the
// one tag all values agree on, or -1.
int64_t TagOfQuery(const std::string& out, const std::vector<int64_t>& ids) {
  std::istringstream in(out);
  std::string line;
  int64_t tag = -2;
  size_t bag = 0;
  while (std::getline(in, line)) {
    if (bag >= ids.size()) return -1;
    std::istringstream values(line);
    double x = 0;
    for (int64_t c = 0; c < kDim; ++c) {
      if (!(values >> x)) return -1;
      const double base = static_cast<double>(ids[bag] * 16 + c);
      const double t = (x - base) / 65536.0;
      if (tag == -2) tag = static_cast<int64_t>(t);
      if (x != static_cast<double>(tag * 65536) + base) return -1;
    }
    ++bag;
  }
  return bag == ids.size() ? tag : -1;
}

class MultiProcessTest : public ::testing::Test {
 protected:
  void SetUp() override { db_ = tmp_ / "db"; }
  TempDir tmp_;
  std::string db_;
};

// Three reader processes query in loops, and a fourth holds a Store open,
// while other processes replace the table twelve times, create and drop
// another, and import a large version that is SIGKILLed at random points.
// Every query succeeds with one version's exact values, every replace
// succeeds, and afterwards verify is clean and only retained files remain.
TEST_F(MultiProcessTest, ReadersQueryWhileWritersReplaceDropAndDie) {
  const int64_t rows = 4096;
  for (int64_t tag = 1; tag <= 13; ++tag)
    WriteTagged(tmp_ / ("v" + std::to_string(tag) + ".npy"), rows, tag);
  WriteTagged(tmp_ / "big.npy", 256 * 1024, 99);  // 16 MiB: long enough to be killed mid-way
  ASSERT_EQ(
      RunCli({"import", "--db", db_, "--table", "items", "--from", tmp_ / "v1.npy"}).exit_code, 0);

  const std::string stop = tmp_ / "stop";
  Child holder({Reader(), "loop", db_, "items", stop});
  std::atomic<bool> done{false};
  std::atomic<int> queries{0}, failures{0};
  std::mutex mu;
  std::set<int64_t> seen;
  std::string first_failure;
  const std::vector<int64_t> ids = {0, 5, 17, 1000, 4095};
  std::vector<std::thread> readers;
  for (int t = 0; t < 3; ++t) {
    readers.emplace_back([&] {
      for (int i = 0; i < 100000 && !done.load(); ++i) {
        auto r = RunCli({"query", "--db", db_, "--table", "items", "--mode", "sum", "--indices",
                         "0,5,17,1000,4095", "--offsets", "0,1,2,3,4"});
        const int64_t tag = r.exit_code == 0 ? TagOfQuery(r.out, ids) : -1;
        ++queries;
        std::lock_guard<std::mutex> lock(mu);
        if (tag < 0) {
          ++failures;
          if (first_failure.empty())
            first_failure = std::to_string(r.exit_code) + " " + r.out + r.err;
        } else {
          seen.insert(tag);
        }
      }
    });
  }
  std::mt19937 rng(1234);
  int killed_mid_way = 0;
  for (int64_t tag = 2; tag <= 13; ++tag) {
    // A writer killed at a random point.
    {
      std::vector<std::string> argv = {EMBSTORE_CLI, "import",         "--db",
                                       db_,          "--table",        "items",
                                       "--from",     tmp_ / "big.npy", "--replace"};
      Child w(argv);
      std::this_thread::sleep_for(
          std::chrono::milliseconds(std::uniform_int_distribution<int>(0, 80)(rng)));
      w.Kill();
      killed_mid_way += w.Wait() == 128 + SIGKILL;
    }
    // A table made and dropped beside.
    if (tag % 3 == 0) {
      ASSERT_EQ(RunCli({"import", "--db", db_, "--table", "scratch", "--from", tmp_ / "v1.npy"})
                    .exit_code,
                0);
    }
    if (tag % 3 == 1 && tag > 3) {
      ASSERT_EQ(RunCli({"drop", "--db", db_, "--table", "scratch"}).exit_code, 0);
    }
    auto r = RunCli({"import", "--db", db_, "--table", "items", "--from",
                     tmp_ / ("v" + std::to_string(tag) + ".npy"), "--replace"});
    ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
    // A rollback (the previous tag again) and a renorm that scales no row
    // (the same values, a new version) also publish under the readers.
    if (tag == 7) {
      r = RunCli({"rollback", "--db", db_, "--table", "items"});
      ASSERT_EQ(r.exit_code, 0) << r.err;
      std::this_thread::sleep_for(std::chrono::milliseconds(150));
      r = RunCli({"renorm", "--db", db_, "--table", "items", "--max-norm", "1e30"});
      ASSERT_EQ(r.exit_code, 0) << r.err;
    }
    // Let the readers see this version before the next one.
    std::this_thread::sleep_for(std::chrono::milliseconds(150));
  }
  done = true;
  for (auto& t : readers) t.join();
  embstore::testing::WriteBytes(stop, "");
  const std::string summary = holder.ReadLine();
  EXPECT_EQ(holder.Wait(), 0) << summary;
  EXPECT_EQ(summary.rfind("ok queries=", 0), 0u) << summary;

  std::printf("%d CLI queries, versions seen %zu, writers killed mid-way %d, holder: %s\n",
              queries.load(), seen.size(), killed_mid_way, summary.c_str());
  std::fflush(stdout);
  EXPECT_EQ(failures.load(), 0) << first_failure;
  EXPECT_GE(queries.load(), 30);
  EXPECT_GT(killed_mid_way, 0);
  for (int64_t tag : seen) EXPECT_TRUE((tag >= 1 && tag <= 13) || tag == 99) << tag;
  EXPECT_GE(seen.size(), 4u);  // the readers saw the versions change under them
  EXPECT_TRUE(seen.count(13));
  auto v = RunCli({"verify", "--db", db_});
  EXPECT_EQ(v.exit_code, 0) << v.out << v.err;
  EXPECT_EQ(FilesIn(db_ + "/tables"), CatalogFiles(db_));
  auto info = RunCli({"info", "--db", db_, "--table", "items"});
  EXPECT_NE(info.out.find("retained:      v"), std::string::npos) << info.out;
}

// A process holding a Store sees a version another process publishes
// within a second, without reopening; its old snapshot stays intact.
TEST_F(MultiProcessTest, LongLivedReaderFollowsWithinASecond) {
  WriteTagged(tmp_ / "a.npy", 512, 1);
  WriteTagged(tmp_ / "b.npy", 512, 2);
  ASSERT_EQ(RunCli({"import", "--db", db_, "--table", "t", "--from", tmp_ / "a.npy"}).exit_code, 0);
  Child follower({Reader(), "follow", db_, "t"});
  ASSERT_EQ(follower.ReadLine(), "ready 1");
  auto r = RunCli({"import", "--db", db_, "--table", "t", "--from", tmp_ / "b.npy", "--replace"});
  const auto published = Clock::now();
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const std::string line = follower.ReadLine(std::chrono::seconds(20));
  const auto seen_after =
      std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - published);
  EXPECT_EQ(line, "followed 2 tag 2 old-intact yes");
  EXPECT_LT(seen_after.count(), 1000)
      << "the reader saw the new version after " << seen_after.count() << " ms";
  EXPECT_EQ(follower.Wait(), 0);
}

// A reader SIGKILLed while it holds a snapshot of a version that writers
// have since let go of (its file deleted while mapped) leaves nothing behind.
TEST_F(MultiProcessTest, KilledReaderLeaksNothing) {
  for (int64_t tag = 1; tag <= 4; ++tag)
    WriteTagged(tmp_ / ("v" + std::to_string(tag) + ".npy"), 512, tag);
  ASSERT_EQ(RunCli({"import", "--db", db_, "--table", "t", "--from", tmp_ / "v1.npy"}).exit_code,
            0);
  Child holder({Reader(), "hold", db_, "t"});
  ASSERT_EQ(holder.ReadLine(), "ready t.v1.emb");
  for (int64_t tag = 2; tag <= 4; ++tag) {
    ASSERT_EQ(RunCli({"import", "--db", db_, "--table", "t", "--from",
                      tmp_ / ("v" + std::to_string(tag) + ".npy"), "--replace"})
                  .exit_code,
              0);
  }
  // v1 left the retained set: its file is gone from the store while the
  // reader still maps it.
  EXPECT_EQ(FilesIn(db_ + "/tables"), (std::set<std::string>{"t.v3.emb", "t.v4.emb"}));
  const std::string maps =
      embstore::testing::ReadBytes("/proc/" + std::to_string(holder.pid()) + "/maps");
  EXPECT_NE(maps.find("t.v1.emb (deleted)"), std::string::npos);
  holder.Kill();
  EXPECT_EQ(holder.Wait(), 128 + SIGKILL);
  EXPECT_EQ(FilesIn(db_ + "/tables"), (std::set<std::string>{"t.v3.emb", "t.v4.emb"}));
  EXPECT_EQ(FilesIn(db_), (std::set<std::string>{"CATALOG", "LOCK", "catalog", "tables"}));
  EXPECT_EQ(RunCli({"verify", "--db", db_}).exit_code, 0);
}

// While one process writes, a second writer waits --lock-wait and fails
// naming the first; readers are not held up; the write goes through after.
TEST_F(MultiProcessTest, SecondWriterWaitsThenNamesTheWriter) {
  WriteTagged(tmp_ / "a.npy", 64, 1);
  ASSERT_EQ(RunCli({"import", "--db", db_, "--table", "t", "--from", tmp_ / "a.npy"}).exit_code, 0);
  const std::string release = tmp_ / "release";
  Child writer({Reader(), "write-slow", db_, "slow", release});
  const std::string line = writer.ReadLine();
  ASSERT_EQ(line, "writing " + std::to_string(writer.pid()));
  const auto start = Clock::now();
  auto r = RunCli(
      {"import", "--db", db_, "--table", "u", "--from", tmp_ / "a.npy", "--lock-wait", "0.3"});
  const auto waited = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - start);
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(
      r.err.find("another process (pid " + std::to_string(writer.pid()) + ") is writing to " + db_),
      std::string::npos)
      << r.err;
  EXPECT_GE(waited.count(), 300);
  EXPECT_EQ(RunCli({"drop", "--db", db_, "--table", "t", "--lock-wait", "0"}).exit_code, 2);
  // Readers run beside the writer.
  auto q = RunCli(
      {"query", "--db", db_, "--table", "t", "--indices", "3", "--offsets", "0", "--mode", "sum"});
  EXPECT_EQ(q.exit_code, 0) << q.err;
  EXPECT_EQ(TagOfQuery(q.out, {3}), 1);
  EXPECT_EQ(RunCli({"list", "--db", db_}).exit_code, 0);
  EXPECT_EQ(RunCli({"verify", "--db", db_}).exit_code, 0);
  EXPECT_EQ(RunCli({"info", "--db", db_, "--table", "t"}).exit_code, 0);
  EXPECT_EQ(RunCli({"export", "--db", db_, "--table", "t", "--out", tmp_ / "t.npy"}).exit_code, 0);
  EXPECT_EQ(RunCli({"inspect", tmp_ / "t.npy"}).exit_code, 0);
  embstore::testing::WriteBytes(release, "");
  EXPECT_EQ(writer.ReadLine(), "wrote 1");
  EXPECT_EQ(writer.Wait(), 0);
  EXPECT_EQ(RunCli({"import", "--db", db_, "--table", "u", "--from", tmp_ / "a.npy"}).exit_code, 0);
  auto list = RunCli({"list", "--db", db_});
  EXPECT_NE(list.out.find("slow\t64\t16"), std::string::npos) << list.out;
  EXPECT_NE(list.out.find("u\t64\t16"), std::string::npos) << list.out;
}

}  // namespace
}  // namespace embstore
