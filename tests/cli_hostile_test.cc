// Hostile situations, through the CLI: planted links, --out into the store,
// full and read-only disks, resource limits, damaged checkpoints, values
// beyond float32, write errors on stdout, and the README's exit codes.
#include <fcntl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "test_util.h"

namespace embstore {
namespace {

using embstore::testing::CliSetup;
using embstore::testing::CommandResult;
using embstore::testing::ReadBytes;
using embstore::testing::RunCli;
using embstore::testing::RunCliWith;
using embstore::testing::TempDir;
using embstore::testing::WriteBytes;
using ::testing::HasSubstr;
using ::testing::Not;

const std::string kCheckpoints = std::string(EMBSTORE_SOURCE_DIR) + "/tests/data/checkpoints";

std::set<std::string> Names(const std::string& dir) {
  std::set<std::string> out;
  for (auto& e : std::filesystem::directory_iterator(dir)) out.insert(e.path().filename());
  return out;
}

class HostileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    values_ = embstore::testing::RandomFloats(64 * 8, 5);
    embstore::testing::WriteF32Npy(tmp_ / "w.npy", {64, 8}, values_);
    db_ = tmp_ / "db";
    ASSERT_EQ(
        RunCli({"import", "--db", db_, "--table", "items", "--from", tmp_ / "w.npy"}).exit_code, 0);
    std::filesystem::create_directory(tmp_ / "out");
  }
  void ExpectVerifies() {
    auto v = RunCli({"verify", "--db", db_});
    EXPECT_EQ(v.exit_code, 0) << v.out << v.err;
  }
  TempDir tmp_;
  std::string db_;
  std::vector<float> values_;
};

// 1. A link planted at the temporary name an output used to take
//    (OUT.tmp-PID) is never followed: the victim is untouched, and the output
//    is a regular file of its own.
TEST_F(HostileTest, PlantedTemporaryLinkIsNeverFollowed) {
  const std::string victim = tmp_ / "victim";
  for (const std::vector<std::string>& cmd :
       {std::vector<std::string>{"export", "--db", db_, "--table", "items", "--out"},
        std::vector<std::string>{"query", "--db", db_, "--table", "items", "--indices", "1,2",
                                 "--offsets", "0", "--out"}}) {
    WriteBytes(victim, "precious");
    const std::string out = tmp_ / "out/x.npy";
    std::filesystem::remove(out);
    CliSetup s;
    s.links.emplace_back(out + ".tmp-{pid}", victim);
    std::vector<std::string> args = cmd;
    args.push_back(out);
    auto r = RunCliWith(args, s);
    EXPECT_EQ(r.exit_code, 0) << r.err;
    EXPECT_EQ(ReadBytes(victim), "precious") << cmd[0];
    EXPECT_FALSE(std::filesystem::is_symlink(out)) << cmd[0];
    EXPECT_TRUE(std::filesystem::is_regular_file(out)) << cmd[0];
    for (const std::string& n : Names(tmp_ / "out")) {
      // Only the planted link and the output: no temporary of ours is left.
      EXPECT_TRUE(n == "x.npy" || std::filesystem::is_symlink(tmp_ / ("out/" + n))) << n;
      if (n != "x.npy") std::filesystem::remove(tmp_ / ("out/" + n));
    }
  }
}

// 2. --out never writes into the store, however the path is spelled.
TEST_F(HostileTest, OutputIntoTheStoreIsRefused) {
  ASSERT_EQ(RunCli({"import", "--db", db_, "--table", "other", "--from", tmp_ / "w.npy"}).exit_code,
            0);
  std::filesystem::create_directory_symlink(db_ + "/tables", tmp_ / "alias");
  std::filesystem::create_hard_link(db_ + "/tables/items.v1.emb", tmp_ / "out/hard.emb");
  const std::vector<std::string> spellings = {db_ + "/tables/items.v1.emb",
                                              tmp_ / "alias/items.v1.emb",
                                              tmp_ / "out/../db/tables/items.v1.emb",
                                              db_ + "/CATALOG",
                                              db_ + "/tables/new.npy",
                                              tmp_ / "out/hard.emb"};
  for (const std::string& out : spellings) {
    auto r = RunCli({"export", "--db", db_, "--table", "other", "--out", out});
    EXPECT_EQ(r.exit_code, 1) << out << "\n" << r.err;
    EXPECT_THAT(r.err, HasSubstr("store")) << r.err;
    r = RunCli({"query", "--db", db_, "--table", "other", "--indices", "1", "--offsets", "0",
                "--out", out});
    EXPECT_EQ(r.exit_code, 1) << out << "\n" << r.err;
  }
  ExpectVerifies();
  EXPECT_FALSE(std::filesystem::exists(db_ + "/tables/new.npy"));
}

TEST_F(HostileTest, EmptyOutputPathIsRefused) {
  auto r = RunCli({"export", "--db", db_, "--table", "items", "--out", ""});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr("--out must name a file")) << r.err;
}

// 4. Opening to read leaves the store as it found it: no file is created,
//    changed or removed by any number of reads.
TEST_F(HostileTest, ReadsLeaveTheStoreAsTheyFoundIt) {
  auto snapshot = [&] {
    std::map<std::string, std::pair<uintmax_t, int64_t>> files;
    for (auto& e : std::filesystem::recursive_directory_iterator(db_)) {
      struct stat st {};
      ::lstat(e.path().c_str(), &st);
      files[e.path().string()] = {st.st_size, st.st_mtim.tv_sec * 1000000000 + st.st_mtim.tv_nsec};
    }
    return files;
  };
  const auto before = snapshot();
  for (int i = 0; i < 10; ++i) {
    ASSERT_EQ(RunCli({"list", "--db", db_}).exit_code, 0);
    ASSERT_EQ(RunCli({"query", "--db", db_, "--table", "items", "--indices", "1", "--offsets", "0"})
                  .exit_code,
              0);
    ASSERT_EQ(RunCli({"info", "--db", db_, "--table", "items"}).exit_code, 0);
    ASSERT_EQ(RunCli({"verify", "--db", db_}).exit_code, 0);
  }
  EXPECT_EQ(snapshot(), before);
}

// 3. Reads work on a full disk and on a read-only mount; writes fail clearly
//    and leave the store as it was. Needs a tmpfs of its own (root); skipped,
//    saying so, where none can be mounted.
TEST_F(HostileTest, FullAndReadOnlyDisks) {
  const std::string mnt = tmp_ / "mnt";
  std::filesystem::create_directory(mnt);
  if (::mount("tmpfs", mnt.c_str(), "tmpfs", 0, "size=4m") != 0) {
    GTEST_SKIP() << "cannot mount a tmpfs here (" << std::strerror(errno)
                 << "): the full- and read-only-disk cases need one";
  }
  struct Unmount {
    std::string path;
    ~Unmount() { ::umount2(path.c_str(), MNT_DETACH); }
  } unmount{mnt};
  const std::string db = mnt + "/db";
  ASSERT_EQ(RunCli({"import", "--db", db, "--table", "items", "--from", tmp_ / "w.npy"}).exit_code,
            0);
  ASSERT_EQ(
      RunCli({"import", "--db", db, "--table", "items", "--from", tmp_ / "w.npy", "--replace"})
          .exit_code,
      0);
  const std::string list_before = RunCli({"list", "--db", db, "--versions"}).out;
  // Fill the disk.
  {
    const int fd = ::open((mnt + "/filler").c_str(), O_WRONLY | O_CREAT, 0644);
    ASSERT_GE(fd, 0);
    std::vector<char> block(64 << 10, 'x');
    while (::write(fd, block.data(), block.size()) > 0) {
    }
    ::close(fd);
  }
  auto reads = [&](const std::string& when) {
    auto r = RunCli({"list", "--db", db, "--versions"});
    EXPECT_EQ(r.exit_code, 0) << when << r.err;
    EXPECT_EQ(r.out, list_before) << when;
    r = RunCli({"info", "--db", db, "--table", "items"});
    EXPECT_EQ(r.exit_code, 0) << when << r.err;
    r = RunCli({"query", "--db", db, "--table", "items", "--indices", "1,2,3", "--offsets", "0,1"});
    EXPECT_EQ(r.exit_code, 0) << when << r.err;
    r = RunCli({"verify", "--db", db});
    EXPECT_EQ(r.exit_code, 0) << when << r.out << r.err;
    r = RunCli({"export", "--db", db, "--table", "items", "--out", tmp_ / "out/e.npy"});
    EXPECT_EQ(r.exit_code, 0) << when << r.err;
    EXPECT_EQ(embstore::testing::ReadF32Npy(tmp_ / "out/e.npy"), values_) << when;
    r = RunCli({"inspect", tmp_ / "w.npy"});
    EXPECT_EQ(r.exit_code, 0) << when << r.err;
  };
  reads("full disk: ");
  auto w =
      RunCli({"import", "--db", db, "--table", "items", "--from", tmp_ / "w.npy", "--replace"});
  EXPECT_EQ(w.exit_code, 2) << w.err;
  EXPECT_THAT(w.err, HasSubstr("No space left on device")) << w.err;
  w = RunCli({"import", "--db", db, "--table", "fresh", "--from", tmp_ / "w.npy"});
  EXPECT_EQ(w.exit_code, 2) << w.err;
  EXPECT_EQ(RunCli({"list", "--db", db, "--versions"}).out, list_before);
  for (const std::string& n : Names(db + "/tables")) EXPECT_THAT(n, Not(HasSubstr(".tmp-"))) << n;
  for (const std::string& n : Names(db)) EXPECT_THAT(n, Not(HasSubstr(".tmp-"))) << n;
  // Read-only.
  std::filesystem::remove(mnt + "/filler");
  ASSERT_EQ(::mount("tmpfs", mnt.c_str(), "tmpfs", MS_REMOUNT | MS_RDONLY, "size=4m"), 0)
      << std::strerror(errno);
  reads("read-only mount: ");
  w = RunCli({"drop", "--db", db, "--table", "items"});
  EXPECT_EQ(w.exit_code, 2) << w.err;
  EXPECT_THAT(w.err, HasSubstr("Read-only file system")) << w.err;
  EXPECT_EQ(RunCli({"list", "--db", db, "--versions"}).out, list_before);
}

// 5. Resource limits give errors, not signals, and leave no temporary.
TEST_F(HostileTest, FileSizeLimitIsAnErrorAndLeavesNoTemporary) {
  CliSetup s;
  s.file_size_limit = 1024;  // the export is 2 KiB + header
  auto r = RunCliWith({"export", "--db", db_, "--table", "items", "--out", tmp_ / "out/x.npy"}, s);
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_THAT(r.err, HasSubstr("File too large")) << r.err;
  std::string ids;
  for (int i = 0; i < 64; ++i) {
    if (i > 0) ids += ',';
    ids += std::to_string(i);
  }
  r = RunCliWith({"query", "--db", db_, "--table", "items", "--indices", ids, "--offsets", ids,
                  "--out", tmp_ / "out/q.npy"},
                 s);  // 64 x 8 floats: 2 KiB
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_TRUE(Names(tmp_ / "out").empty());
}

TEST_F(HostileTest, AddressSpaceLimitIsAnErrorOrWorks) {
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
  GTEST_SKIP() << "a sanitizer build reserves terabytes of address space for its shadow "
                  "memory; the limit is tested in the Release build";
#endif
  CliSetup s;
  s.address_space_limit = 400000 * 1024;  // ulimit -v 400000
  for (const std::vector<std::string>& cmd :
       {std::vector<std::string>{"list", "--db", db_},
        std::vector<std::string>{"query", "--db", db_, "--table", "items", "--indices", "1,2,3",
                                 "--offsets", "0,1"}}) {
    auto r = RunCliWith(cmd, s);
    EXPECT_TRUE(r.exit_code == 0 || (r.exit_code == 2 && !r.err.empty()))
        << cmd[0] << ": exit " << r.exit_code << "\n"
        << r.err;
    EXPECT_LT(r.exit_code, 128) << cmd[0] << " was killed by a signal";
  }
}

// 6. No silent corruption: a flipped byte in a stored .npz member fails its
//    CRC-32; safetensors with a duplicate key or overlapping tensors are refused.
TEST_F(HostileTest, DamagedCheckpointsAreRefused) {
  std::string npz = ReadBytes(kCheckpoints + "/stored.npz");
  const size_t member = npz.find("\x93NUMPY");
  ASSERT_NE(member, std::string::npos);
  const size_t header_len = static_cast<unsigned char>(npz[member + 8]) |
                            (static_cast<unsigned char>(npz[member + 9]) << 8);
  npz[member + 10 + header_len + 1] ^= 0x40;  // a data byte of the first member
  WriteBytes(tmp_ / "flipped.npz", npz);
  auto r = RunCli(
      {"import", "--db", db_, "--table", "f", "--from", tmp_ / "flipped.npz", "--tensor", "a"});
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_THAT(r.err, HasSubstr("CRC-32")) << r.err;
  EXPECT_THAT(RunCli({"list", "--db", db_}).out, Not(HasSubstr("f\t")));
  ASSERT_EQ(RunCli({"import", "--db", db_, "--table", "a", "--from", kCheckpoints + "/stored.npz",
                    "--tensor", "a"})
                .exit_code,
            0);

  auto safetensors = [&](const std::string& header, size_t data_bytes) {
    std::string out(8, '\0');
    uint64_t n = header.size();
    for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((n >> (8 * i)) & 0xff);
    return out + header + std::string(data_bytes, '\0');
  };
  WriteBytes(tmp_ / "dup.safetensors",
             safetensors("{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                         "\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]}}",
                         16));
  r = RunCli({"inspect", tmp_ / "dup.safetensors"});
  EXPECT_EQ(r.exit_code, 2) << r.out;
  EXPECT_THAT(r.err, HasSubstr("'w' is named twice")) << r.err;
  WriteBytes(tmp_ / "overlap.safetensors",
             safetensors("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                         "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
                         12));
  r = RunCli({"import", "--db", db_, "--table", "o", "--from", tmp_ / "overlap.safetensors",
              "--tensor", "a"});
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_THAT(r.err, HasSubstr("overlap")) << r.err;
}

// 7. Values beyond float32 are refused, never stored as inf or NaN.
TEST_F(HostileTest, ValuesBeyondFloat32AreRefused) {
  embstore::testing::WriteF32Npy(tmp_ / "wide.npy", {2, 4},
                                 {3.4e38f, -3.4e38f, 0.0f, 1.0f, 1, 2, 3, 4});
  auto r = RunCli(
      {"import", "--db", db_, "--table", "q", "--from", tmp_ / "wide.npy", "--dtype", "int8"});
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_THAT(r.err, HasSubstr("row 0 spans a range")) << r.err;
  // The same values as f32 are finite and fine.
  ASSERT_EQ(RunCli({"import", "--db", db_, "--table", "q", "--from", tmp_ / "wide.npy"}).exit_code,
            0);
  // A float64 1e39 would become inf in float32.
  std::vector<double> d = {1.0, 2.0, 1e39, 4.0};
  ASSERT_TRUE(storage::WriteNpy(tmp_ / "big64.npy", "<f8", {2, 2},
                                {reinterpret_cast<const uint8_t*>(d.data()), d.size() * 8})
                  .ok());
  r = RunCli({"import", "--db", db_, "--table", "d", "--from", tmp_ / "big64.npy"});
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_THAT(r.err, HasSubstr("beyond the float32 range")) << r.err;
  EXPECT_THAT(RunCli({"list", "--db", db_}).out, Not(HasSubstr("d\t")));
}

// 8. Output that cannot be written is an error.
TEST_F(HostileTest, StdoutWriteErrorsExitTwo) {
  CliSetup full;
  full.stdout_path = "/dev/full";
  auto r = RunCliWith({"list", "--db", db_}, full);
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_THAT(r.err, HasSubstr("cannot write the output")) << r.err;
  r = RunCliWith({"query", "--db", db_, "--table", "items", "--indices", "1,2", "--offsets", "0"},
                 full);
  EXPECT_EQ(r.exit_code, 2) << r.err;
  r = RunCliWith({"inspect", tmp_ / "w.npy"}, full);
  EXPECT_EQ(r.exit_code, 2) << r.err;
}

// 9. Messages say what is wrong.
TEST_F(HostileTest, APipeIsNamedAsOne) {
  ASSERT_EQ(::mkfifo((tmp_ / "fifo").c_str(), 0644), 0);
  auto r = RunCli({"import", "--db", db_, "--table", "p", "--from", tmp_ / "fifo"});
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_THAT(r.err, HasSubstr("is a pipe or a device, not a regular file")) << r.err;
}

TEST_F(HostileTest, InspectWithoutAFileSaysSoInItsOwnWords) {
  auto r = RunCli({"inspect"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr("a checkpoint FILE is required")) << r.err;
  EXPECT_THAT(r.err, Not(HasSubstr("--file"))) << r.err;
}

TEST_F(HostileTest, ALoopOfSymbolicLinksIsNamed) {
  std::filesystem::create_symlink(tmp_ / "out/loop1", tmp_ / "out/loop2");
  std::filesystem::create_symlink(tmp_ / "out/loop2", tmp_ / "out/loop1");
  auto r = RunCli({"export", "--db", db_, "--table", "items", "--out", tmp_ / "out/loop1"});
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_THAT(r.err, HasSubstr("loop of symbolic links")) << r.err;
}

// Keys with NUL, tab, newline or nothing at all are printed unambiguously by
// inspect, and --tensor takes what inspect prints.
TEST_F(HostileTest, OddKeysAreShownAndNamedUnambiguously) {
  std::string header =
      "{\"a\\tb\":{\"dtype\":\"F32\",\"shape\":[1,2],\"data_offsets\":[0,8]},"
      "\"\":{\"dtype\":\"F32\",\"shape\":[1,2],\"data_offsets\":[8,16]},"
      "\"n\\u0000l\\n\":{\"dtype\":\"F32\",\"shape\":[1,2],\"data_offsets\":[16,24]}}";
  std::string file(8, '\0');
  for (int i = 0; i < 8; ++i) file[i] = static_cast<char>((header.size() >> (8 * i)) & 0xff);
  file += header;
  for (float v : {1.0f, 2.0f, 3.0f, 4.0f, 5.0f, 6.0f})
    file.append(reinterpret_cast<const char*>(&v), 4);
  WriteBytes(tmp_ / "odd.safetensors", file);
  auto r = RunCli({"inspect", tmp_ / "odd.safetensors"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("\"a\\tb\"\tf32\t[1, 2]\n")) << r.out;
  EXPECT_THAT(r.out, HasSubstr("\"\"\tf32\t[1, 2]\n")) << r.out;
  EXPECT_THAT(r.out, HasSubstr("\"n\\x00l\\n\"\tf32\t[1, 2]\n")) << r.out;
  r = RunCli({"import", "--db", db_, "--from", tmp_ / "odd.safetensors", "--tensor", "\"a\\tb\"=t1",
              "--tensor", "\"n\\x00l\\n\"=t3"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  r = RunCli({"query", "--db", db_, "--table", "t3", "--indices", "0", "--offsets", "0"});
  EXPECT_EQ(r.out, "5 6\n");
  r = RunCli({"query", "--db", db_, "--table", "t1", "--indices", "0", "--offsets", "0"});
  EXPECT_EQ(r.out, "1 2\n");
}

// The README's exit-code table: 0 success; 1 bad usage or bad input; 2 I/O
// error or corruption.
TEST_F(HostileTest, ExitCodesAreTheReadmes) {
  struct Case {
    std::vector<std::string> args;
    int code;
  };
  WriteBytes(tmp_ / "text.txt", "not a checkpoint");
  std::string truncated = ReadBytes(kCheckpoints + "/training.pt");
  WriteBytes(tmp_ / "truncated.pt", truncated.substr(0, truncated.size() / 2));
  const std::vector<Case> cases = {
      {{"list", "--db", db_}, 0},
      {{"list", "--db", db_, "--bogus"}, 1},  // unknown flag
      {{"query", "--db", db_, "--table", "items", "--indices", "64", "--offsets", "0"},
       1},                                            // bad index
      {{"info", "--db", db_, "--table", "nope"}, 1},  // unknown table
      {{"import", "--db", db_, "--table", "t", "--from", tmp_ / "text.txt"},
       1},  // not a checkpoint
      {{"import", "--db", db_, "--table", "items", "--from", tmp_ / "w.npy"}, 1},    // exists
      {{"import", "--db", db_, "--table", "t", "--from", tmp_ / "missing.npy"}, 1},  // no such file
      {{"import", "--db", db_, "--table", "t", "--from", tmp_ / "truncated.pt"}, 2},  // damaged
      {{"list", "--db", tmp_ / "nostore"}, 1},
  };
  for (const Case& c : cases) {
    auto r = RunCli(c.args);
    EXPECT_EQ(r.exit_code, c.code) << c.args[0] << " " << c.args.back() << "\n" << r.err;
  }
  // Corruption: a damaged table file fails verify, a missing one fails query.
  std::string bytes = ReadBytes(db_ + "/tables/items.v1.emb");
  bytes[bytes.size() - 7] ^= 1;
  WriteBytes(db_ + "/tables/items.v1.emb", bytes);
  EXPECT_EQ(RunCli({"verify", "--db", db_}).exit_code, 2);
  std::filesystem::remove(db_ + "/tables/items.v1.emb");
  auto r = RunCli({"query", "--db", db_, "--table", "items", "--indices", "1", "--offsets", "0"});
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_THAT(r.err, HasSubstr("missing")) << r.err;
  WriteBytes(db_ + "/CATALOG", "embstore-catalog 2 generation 1\n{}\nxxh64 0\n");
  EXPECT_EQ(RunCli({"list", "--db", db_}).exit_code, 2);  // unreadable store
}

}  // namespace
}  // namespace embstore
