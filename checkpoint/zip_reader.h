// Internal: a read-only view of a zip archive (.npz, torch.save .pt/.pth) that
// hands out members as ByteSources without loading them into memory.
//
// The central directory (ZIP64 included) is parsed here so that a stored
// member's data offset is known and its bytes can be pread directly; deflated
// members are decompressed as a forward-only stream with libzip.
//
// Thread-safety: a ZipArchive may be used from several threads (its directory
// is immutable after Open; small member reads share one libzip handle under a
// mutex); each source it hands out has its own handle and is thread-compatible.
#ifndef EMBSTORE_CHECKPOINT_ZIP_READER_H_
#define EMBSTORE_CHECKPOINT_ZIP_READER_H_

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "checkpoint/checkpoint_internal.h"
#include "embstore/status.h"
#include "util/mutex.h"
#include "util/thread_annotations.h"

struct zip;  // libzip's zip_t

namespace embstore::storage::ckpt {

struct ZipMember {
  std::string name;     // raw bytes of the stored name
  uint64_t index = 0;   // position in the central directory
  uint16_t flags = 0;   // general purpose bit flags
  uint16_t method = 0;  // 0 stored, 8 deflate
  uint64_t compressed_size = 0;
  uint64_t uncompressed_size = 0;
  uint64_t local_header_offset = 0;
  uint32_t crc32 = 0;  // of the uncompressed data, from the central directory
};

class ZipArchive {
 public:
  // Limits on what Open accepts (central directory size, member count).
  static constexpr uint64_t kMaxCentralDirectoryBytes = uint64_t{256} << 20;
  static constexpr uint64_t kMaxMembers = uint64_t{1} << 20;

  // Parses the central directory of `file`. InvalidArgument when it is not a zip
  // archive, Corruption when its directory is damaged, NotSupported for
  // multi-disk archives.
  static Result<std::unique_ptr<ZipArchive>> Open(std::shared_ptr<File> file);
  ~ZipArchive();
  ZipArchive(const ZipArchive&) = delete;
  ZipArchive& operator=(const ZipArchive&) = delete;

  const std::string& path() const { return file_->path(); }
  const std::vector<ZipMember>& members() const { return members_; }
  // The first member called `name`, or nullptr.
  const ZipMember* Find(std::string_view name) const;

  // The member's uncompressed bytes from `skip` on: a pread-backed region for a
  // stored member, a forward-only decompression stream for a deflated one.
  // NotSupported for encrypted members and other compression methods.
  Result<std::unique_ptr<ByteSource>> OpenMember(const ZipMember& member, uint64_t skip = 0) const;
  // Reads the whole member into memory; InvalidArgument when it is larger than
  // `max_bytes`.
  Result<std::string> ReadMember(const ZipMember& member, uint64_t max_bytes) const;
  // Reads up to `max_bytes` from the member's start (less when it is shorter).
  Result<std::string> ReadMemberPrefix(const ZipMember& member, uint64_t max_bytes) const;

 private:
  explicit ZipArchive(std::shared_ptr<File> file) : file_(std::move(file)) {}
  Status ParseCentralDirectory();
  // Offset of the member's data, read from its local header.
  Result<uint64_t> DataOffset(const ZipMember& member) const;

  std::shared_ptr<File> file_;
  uint64_t central_directory_offset_ = 0;  // member data must end before this
  std::vector<ZipMember> members_;
  std::unordered_map<std::string, size_t> by_name_;
  // libzip handle shared by ReadMemberPrefix calls, opened on first use.
  mutable Mutex shared_libzip_mu_;
  mutable ::zip* shared_libzip_ GUARDED_BY(shared_libzip_mu_) = nullptr;
};

}  // namespace embstore::storage::ckpt

#endif  // EMBSTORE_CHECKPOINT_ZIP_READER_H_
