#include "src/common/env.h"

#include <errno.h>
#include <fcntl.h>
#include <liburing.h>
#include <linux/fs.h>
#include <string.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace kvtier {

std::string ErrnoText(int err) {
  char buf[256];
  // GNU strerror_r returns the message (possibly not in buf).
  const char* text = strerror_r(err, buf, sizeof(buf));
  return text;
}

absl::Status ErrnoToStatus(int err, absl::string_view context) {
  std::string message = absl::StrCat(context, ": ", ErrnoText(err));
  switch (err) {
    case ENOENT:
    case ENOTDIR:
      return absl::NotFoundError(message);
    case EACCES:
    case EPERM:
    case EROFS:
      return absl::PermissionDeniedError(message);
    case ENOSPC:
    case EDQUOT:
    case EFBIG:
      return absl::ResourceExhaustedError(message);
    case EINVAL:
    case EISDIR:
      return absl::InvalidArgumentError(message);
    case EAGAIN:
    case EBUSY:
    case EIO:
    case EINTR:
    case ENOMEM:
      return absl::UnavailableError(message);
    default:
      return absl::InternalError(message);
  }
}

AlignedBuffer::AlignedBuffer(size_t size) : size_(size) {
  if (size == 0) return;
  void* p = std::aligned_alloc(kAlignment, (size + kAlignment - 1) / kAlignment * kAlignment);
  if (p == nullptr) std::abort();  // out of memory: nothing sensible to return
  std::memset(p, 0, size);
  data_ = static_cast<std::byte*>(p);
}

AlignedBuffer::AlignedBuffer(AlignedBuffer&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)), size_(std::exchange(other.size_, 0)) {}

AlignedBuffer& AlignedBuffer::operator=(AlignedBuffer&& other) noexcept {
  if (this != &other) {
    std::free(data_);
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
  }
  return *this;
}

AlignedBuffer::~AlignedBuffer() { std::free(data_); }

namespace {

class PosixFile final : public File {
 public:
  PosixFile(std::string path, int fd, bool block_device)
      : path_(std::move(path)), fd_(fd), block_device_(block_device) {}
  ~PosixFile() override { ::close(fd_); }

  const std::string& path() const override { return path_; }
  bool is_block_device() const override { return block_device_; }
  int NativeHandle() const override { return fd_; }

  absl::Status ReadAt(uint64_t offset, absl::Span<std::byte> dst) override {
    size_t done = 0;
    while (done < dst.size()) {
      ssize_t n =
          ::pread(fd_, dst.data() + done, dst.size() - done, static_cast<off_t>(offset + done));
      if (n < 0) {
        if (errno == EINTR) continue;
        return ErrnoToStatus(errno, absl::StrCat("read of ", dst.size(), " bytes at offset ",
                                                 offset, " in ", path_));
      }
      if (n == 0) {
        return absl::OutOfRangeError(absl::StrCat("read of ", dst.size(), " bytes at offset ",
                                                  offset, " in ", path_, ": end of file after ",
                                                  done, " bytes"));
      }
      done += static_cast<size_t>(n);
    }
    return absl::OkStatus();
  }

  absl::Status WriteAt(uint64_t offset, absl::Span<const std::byte> src) override {
    size_t done = 0;
    while (done < src.size()) {
      ssize_t n =
          ::pwrite(fd_, src.data() + done, src.size() - done, static_cast<off_t>(offset + done));
      if (n < 0) {
        if (errno == EINTR) continue;
        return ErrnoToStatus(errno, absl::StrCat("write of ", src.size(), " bytes at offset ",
                                                 offset, " in ", path_));
      }
      done += static_cast<size_t>(n);
    }
    return absl::OkStatus();
  }

  absl::Status Sync() override {
    if (::fdatasync(fd_) != 0) return ErrnoToStatus(errno, absl::StrCat("fdatasync ", path_));
    return absl::OkStatus();
  }

  absl::StatusOr<uint64_t> Size() override {
    if (block_device_) {
      uint64_t bytes = 0;
      if (::ioctl(fd_, BLKGETSIZE64, &bytes) != 0) {
        return ErrnoToStatus(errno, absl::StrCat("ioctl(BLKGETSIZE64) ", path_));
      }
      return bytes;
    }
    struct stat st;
    if (::fstat(fd_, &st) != 0) return ErrnoToStatus(errno, absl::StrCat("fstat ", path_));
    return static_cast<uint64_t>(st.st_size);
  }

  absl::Status Allocate(uint64_t bytes) override {
    if (block_device_) {
      return absl::InvalidArgumentError(
          absl::StrCat("allocate ", path_, ": a block device has a fixed size"));
    }
    int rc = ::fallocate(fd_, 0, 0, static_cast<off_t>(bytes));
    if (rc != 0 && (errno == EOPNOTSUPP || errno == ENOSYS)) {
      // No fallocate on this file system: the size is set, space is not
      // reserved, and a write may fail with ENOSPC later.
      rc = ::ftruncate(fd_, static_cast<off_t>(bytes));
    }
    if (rc != 0) {
      return ErrnoToStatus(errno, absl::StrCat("cannot reserve ", bytes, " bytes for ", path_));
    }
    return absl::OkStatus();
  }

 private:
  std::string path_;
  int fd_;
  bool block_device_;
};

class UringAsyncIo final : public AsyncIo {
 public:
  explicit UringAsyncIo(uint32_t depth) : depth_(depth) {}
  ~UringAsyncIo() override {
    if (initialized_) io_uring_queue_exit(&ring_);
  }

  absl::Status Init() {
    int rc = io_uring_queue_init(depth_, &ring_, 0);
    if (rc < 0) {
      return ErrnoToStatus(-rc, absl::StrCat("io_uring_queue_init(", depth_, ")"));
    }
    initialized_ = true;
    return absl::OkStatus();
  }

  uint32_t depth() const override { return depth_; }

  absl::Status RegisterBuffers(absl::Span<const absl::Span<std::byte>> buffers) override {
    if (registered_) {
      io_uring_unregister_buffers(&ring_);
      registered_ = false;
    }
    if (buffers.empty()) return absl::OkStatus();
    std::vector<iovec> iov;
    iov.reserve(buffers.size());
    for (const auto& b : buffers) iov.push_back(iovec{b.data(), b.size()});
    int rc = io_uring_register_buffers(&ring_, iov.data(), static_cast<unsigned>(iov.size()));
    if (rc < 0) return ErrnoToStatus(-rc, "io_uring_register_buffers");
    registered_ = true;
    return absl::OkStatus();
  }

  absl::Status Submit(absl::Span<const IoRequest> requests) override {
    for (const IoRequest& r : requests) {
      io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
      if (sqe == nullptr) {
        // Cannot happen while callers respect depth(); flush what is queued
        // and try once more.
        if (absl::Status s = SubmitQueued(); !s.ok()) return s;
        sqe = io_uring_get_sqe(&ring_);
        if (sqe == nullptr) {
          return absl::UnavailableError(
              absl::StrCat("io_uring: submission queue of ", depth_, " entries is full"));
        }
      }
      int fd = r.file != nullptr ? r.file->NativeHandle() : -1;
      switch (r.opcode) {
        case IoOpcode::kNop:
          io_uring_prep_nop(sqe);
          break;
        case IoOpcode::kRead:
          if (r.buf_index >= 0) {
            io_uring_prep_read_fixed(sqe, fd, r.buf, r.len, r.offset, r.buf_index);
          } else {
            io_uring_prep_read(sqe, fd, r.buf, r.len, r.offset);
          }
          break;
        case IoOpcode::kWrite:
          if (r.buf_index >= 0) {
            io_uring_prep_write_fixed(sqe, fd, r.buf, r.len, r.offset, r.buf_index);
          } else {
            io_uring_prep_write(sqe, fd, r.buf, r.len, r.offset);
          }
          break;
        case IoOpcode::kDataSync:
          io_uring_prep_fsync(sqe, fd, IORING_FSYNC_DATASYNC);
          break;
      }
      io_uring_sqe_set_data64(sqe, r.tag);
    }
    return SubmitQueued();
  }

  absl::StatusOr<size_t> Reap(absl::Span<IoCompletion> out, absl::Duration timeout) override {
    if (out.empty()) return size_t{0};
    io_uring_cqe* cqe = nullptr;
    if (timeout > absl::ZeroDuration()) {
      // A timed wait needs IORING_FEAT_EXT_ARG; without it liburing would
      // take a submission entry, which only the submitting thread may do.
      const bool timed =
          timeout != absl::InfiniteDuration() && (ring_.features & IORING_FEAT_EXT_ARG) != 0;
      for (;;) {
        int rc;
        if (timed) {
          const int64_t ns = absl::ToInt64Nanoseconds(timeout);
          __kernel_timespec ts{ns / 1000000000, ns % 1000000000};
          rc = io_uring_wait_cqe_timeout(&ring_, &cqe, &ts);
          if (rc == -ETIME) return size_t{0};
        } else {
          rc = io_uring_wait_cqe(&ring_, &cqe);
        }
        if (rc == 0) break;
        if (rc == -EINTR || rc == -EAGAIN) continue;
        return ErrnoToStatus(-rc, "io_uring_wait_cqe");
      }
    }
    size_t n = 0;
    while (n < out.size() && io_uring_peek_cqe(&ring_, &cqe) == 0) {
      out[n].tag = io_uring_cqe_get_data64(cqe);
      out[n].result = cqe->res;
      io_uring_cqe_seen(&ring_, cqe);
      ++n;
    }
    return n;
  }

 private:
  absl::Status SubmitQueued() {
    for (;;) {
      int rc = io_uring_submit(&ring_);
      if (rc >= 0) {
        // A short count leaves entries in the ring; push them too.
        if (io_uring_sq_ready(&ring_) == 0) return absl::OkStatus();
        continue;
      }
      if (rc == -EINTR || rc == -EAGAIN || rc == -EBUSY) continue;
      return ErrnoToStatus(-rc, "io_uring_submit");
    }
  }

  const uint32_t depth_;
  io_uring ring_{};
  bool initialized_ = false;
  bool registered_ = false;
};

class PosixEnv final : public Env {
 public:
  absl::StatusOr<PathInfo> GetPathInfo(const std::string& path) override {
    struct stat st;
    if (::stat(path.c_str(), &st) != 0) {
      if (errno == ENOENT) return PathInfo{PathKind::kMissing, 0};
      return ErrnoToStatus(errno, absl::StrCat("stat ", path));
    }
    PathInfo info;
    if (S_ISDIR(st.st_mode)) {
      info.kind = PathKind::kDirectory;
    } else if (S_ISREG(st.st_mode)) {
      info.kind = PathKind::kRegularFile;
      info.size = static_cast<uint64_t>(st.st_size);
    } else if (S_ISBLK(st.st_mode)) {
      info.kind = PathKind::kBlockDevice;
    } else {
      info.kind = PathKind::kOther;
    }
    return info;
  }

  absl::StatusOr<std::unique_ptr<File>> OpenFile(const std::string& path,
                                                 const FileOpenOptions& options) override {
    int flags = O_CLOEXEC | (options.read_only ? O_RDONLY : O_RDWR);
    if (options.create) flags |= O_CREAT;
    if (options.direct) flags |= O_DIRECT;
    int fd = ::open(path.c_str(), flags, 0644);
    if (fd < 0) return ErrnoToStatus(errno, absl::StrCat("open ", path));
    struct stat st;
    if (::fstat(fd, &st) != 0) {
      int err = errno;
      ::close(fd);
      return ErrnoToStatus(err, absl::StrCat("fstat ", path));
    }
    if (options.lock && ::flock(fd, LOCK_EX | LOCK_NB) != 0) {
      int err = errno;
      ::close(fd);
      if (err == EWOULDBLOCK) {
        return absl::FailedPreconditionError(
            absl::StrCat(path, " is in use by another process (flock: ", ErrnoText(err), ")"));
      }
      return ErrnoToStatus(err, absl::StrCat("flock ", path));
    }
    return std::make_unique<PosixFile>(path, fd, S_ISBLK(st.st_mode));
  }

  absl::Status DeleteFile(const std::string& path) override {
    if (::unlink(path.c_str()) != 0) return ErrnoToStatus(errno, absl::StrCat("unlink ", path));
    return absl::OkStatus();
  }

  absl::Status SyncDirectory(const std::string& path) override {
    int fd = ::open(path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return ErrnoToStatus(errno, absl::StrCat("open directory ", path));
    int rc = ::fsync(fd);
    int err = errno;
    ::close(fd);
    if (rc != 0) return ErrnoToStatus(err, absl::StrCat("fsync directory ", path));
    return absl::OkStatus();
  }

  absl::StatusOr<std::unique_ptr<AsyncIo>> NewAsyncIo(const AsyncIoOptions& options) override {
    auto io = std::make_unique<UringAsyncIo>(options.depth);
    if (absl::Status s = io->Init(); !s.ok()) return s;
    return io;
  }
};

}  // namespace

Env* Env::Default() {
  static Env* env = new PosixEnv();
  return env;
}

}  // namespace kvtier
