// Env: the seam between kvtier and the operating system's files and
// asynchronous I/O.
//
// Everything that touches a file on behalf of a tier goes through an Env, so
// tests can wrap the real one (EnvWrapper) and inject failures the real
// system cannot produce on demand: EIO, ENOSPC, torn writes, lost unsynced
// writes (tests/testing/fault_env.h). Env::Default() is the POSIX
// implementation: open(2)/pread(2)/pwrite(2)/fdatasync(2) for synchronous
// work and io_uring (liburing) for AsyncIo.
//
// Errors carry the path and the strerror text, and their codes follow errno:
// ENOENT -> NotFound, EACCES/EPERM/EROFS -> PermissionDenied, ENOSPC/EDQUOT ->
// ResourceExhausted, EINVAL -> InvalidArgument, EAGAIN/EBUSY/EIO/EINTR ->
// Unavailable, anything else -> Internal (see ErrnoToStatus).
//
// Thread-safety: Env and File methods are safe to call from any thread.
// AsyncIo: Submit calls must be serialized by the caller; Reap is called by
// one thread at a time and may run concurrently with Submit.
#ifndef KVTIER_SRC_COMMON_ENV_H_
#define KVTIER_SRC_COMMON_ENV_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "absl/strings/string_view.h"
#include "absl/time/time.h"

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace kvtier {

// A Status for a failed system call: `context` (which should name the path
// and the operation) followed by ": " and strerror(err). The code follows the
// table above.
absl::Status ErrnoToStatus(int err, absl::string_view context);

// strerror(err) as a std::string (thread-safe).
std::string ErrnoText(int err);

enum class PathKind : uint8_t {
  kMissing = 0,
  kDirectory = 1,
  kRegularFile = 2,
  kBlockDevice = 3,
  kOther = 4,
};

struct FileOpenOptions {
  bool create = false;     // create the file (mode 0644) when it is missing
  bool direct = false;     // O_DIRECT: I/O bypasses the page cache; buffers,
                           // offsets and lengths must be 4096-aligned
  bool read_only = false;  // O_RDONLY instead of O_RDWR
  bool lock = false;       // take an exclusive advisory lock (flock); a lock
                           // held elsewhere fails with FailedPrecondition
};

// An open file or block device. Synchronous positional I/O for setup work
// (superblocks, recovery scans, snapshots); bulk I/O goes through AsyncIo.
class File {
 public:
  virtual ~File() = default;

  virtual const std::string& path() const = 0;
  virtual bool is_block_device() const = 0;

  // Reads exactly dst.size() bytes at `offset`. OutOfRange when the file ends
  // first.
  virtual absl::Status ReadAt(uint64_t offset, absl::Span<std::byte> dst) = 0;
  // Writes all of `src` at `offset`.
  virtual absl::Status WriteAt(uint64_t offset, absl::Span<const std::byte> src) = 0;
  // fdatasync: every completed write to this file is durable when it returns.
  virtual absl::Status Sync() = 0;
  // Size in bytes (a block device's capacity for devices).
  virtual absl::StatusOr<uint64_t> Size() = 0;
  // Reserves [0, bytes) on the file system (fallocate), growing the file, so
  // later writes in the range cannot fail for lack of space.
  // ResourceExhausted (ENOSPC) when the file system is too small.
  virtual absl::Status Allocate(uint64_t bytes) = 0;
  // The descriptor, for the AsyncIo of the Env that opened this file.
  virtual int NativeHandle() const = 0;
};

enum class IoOpcode : uint8_t {
  kNop = 0,       // completes with result 0; wakes a waiting Reap
  kRead = 1,      // read `len` bytes at `offset` into `buf`
  kWrite = 2,     // write `len` bytes from `buf` at `offset`
  kDataSync = 3,  // fdatasync(file): covers every write completed before it
                  // was submitted
};

struct IoRequest {
  IoOpcode opcode = IoOpcode::kNop;
  File* file = nullptr;  // opened by the same Env; unused for kNop
  uint64_t offset = 0;   // bytes
  std::byte* buf = nullptr;
  uint32_t len = 0;    // bytes
  int buf_index = -1;  // index of the registered buffer holding [buf, buf + len), or -1
  uint64_t tag = 0;    // returned with the completion
};

struct IoCompletion {
  uint64_t tag = 0;
  int32_t result = 0;  // bytes transferred (0 for kNop/kDataSync), or -errno
};

struct AsyncIoOptions {
  uint32_t depth = 32;  // requests in flight at most (submitted, not yet reaped)
};

// A submission/completion queue pair (io_uring in the POSIX Env).
class AsyncIo {
 public:
  virtual ~AsyncIo() = default;

  virtual uint32_t depth() const = 0;

  // Registers `buffers` so requests naming them by index skip per-request
  // page pinning (io_uring fixed buffers). Replaces any earlier
  // registration. An error leaves nothing registered; callers fall back to
  // buf_index = -1.
  virtual absl::Status RegisterBuffers(absl::Span<const absl::Span<std::byte>> buffers) = 0;

  // Queues and submits `requests`. REQUIRES: the caller keeps at most depth()
  // requests outstanding (submitted and not yet returned by Reap), and calls
  // Submit from one thread at a time. Unavailable when the kernel refuses
  // the submission.
  virtual absl::Status Submit(absl::Span<const IoRequest> requests) = 0;

  // Returns up to out.size() completions, waiting up to `timeout` for the
  // first one (zero: no waiting; absl::InfiniteDuration(): as long as it
  // takes). Returns 0 when the timeout passes first. Kernels without timed
  // waits (before 5.11) wait for a completion whatever the timeout.
  virtual absl::StatusOr<size_t> Reap(absl::Span<IoCompletion> out, absl::Duration timeout) = 0;
};

struct PathInfo {
  PathKind kind = PathKind::kMissing;
  uint64_t size = 0;  // bytes, for regular files
};

class Env {
 public:
  virtual ~Env() = default;

  // The process-wide POSIX Env; never destroyed.
  static Env* Default();

  // What is at `path`; kMissing (not an error) when nothing is.
  virtual absl::StatusOr<PathInfo> GetPathInfo(const std::string& path) = 0;

  virtual absl::StatusOr<std::unique_ptr<File>> OpenFile(const std::string& path,
                                                         const FileOpenOptions& options) = 0;

  // Removes a file. NotFound when it does not exist.
  virtual absl::Status DeleteFile(const std::string& path) = 0;

  // fsync on a directory, so a file created in it survives a crash.
  virtual absl::Status SyncDirectory(const std::string& path) = 0;

  // A new queue pair of `options.depth` entries. Unavailable when the kernel
  // has io_uring disabled or out of resources.
  virtual absl::StatusOr<std::unique_ptr<AsyncIo>> NewAsyncIo(const AsyncIoOptions& options) = 0;
};

// Forwards every call to another Env; subclasses override what they change.
class EnvWrapper : public Env {
 public:
  explicit EnvWrapper(Env* target) : target_(target) {}
  Env* target() const { return target_; }

  absl::StatusOr<PathInfo> GetPathInfo(const std::string& path) override {
    return target_->GetPathInfo(path);
  }
  absl::StatusOr<std::unique_ptr<File>> OpenFile(const std::string& path,
                                                 const FileOpenOptions& options) override {
    return target_->OpenFile(path, options);
  }
  absl::Status DeleteFile(const std::string& path) override { return target_->DeleteFile(path); }
  absl::Status SyncDirectory(const std::string& path) override {
    return target_->SyncDirectory(path);
  }
  absl::StatusOr<std::unique_ptr<AsyncIo>> NewAsyncIo(const AsyncIoOptions& options) override {
    return target_->NewAsyncIo(options);
  }

 private:
  Env* target_;
};

// A heap buffer aligned for O_DIRECT (4096 bytes), zero-filled. Move-only.
class AlignedBuffer {
 public:
  static constexpr size_t kAlignment = 4096;

  AlignedBuffer() = default;
  explicit AlignedBuffer(size_t size);
  AlignedBuffer(AlignedBuffer&& other) noexcept;
  AlignedBuffer& operator=(AlignedBuffer&& other) noexcept;
  AlignedBuffer(const AlignedBuffer&) = delete;
  AlignedBuffer& operator=(const AlignedBuffer&) = delete;
  ~AlignedBuffer();

  std::byte* data() const { return data_; }
  size_t size() const { return size_; }
  absl::Span<std::byte> span() const { return {data_, size_}; }

 private:
  std::byte* data_ = nullptr;
  size_t size_ = 0;
};

}  // namespace kvtier

#endif  // KVTIER_SRC_COMMON_ENV_H_
