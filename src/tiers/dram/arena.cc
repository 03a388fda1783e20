#include "src/tiers/dram/arena.h"

#include <linux/memfd.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace kvtier {
namespace {

constexpr uint64_t kHugePage = 2ull << 20;

uint64_t PhysicalMemoryBytes() {
  long pages = sysconf(_SC_PHYS_PAGES);
  long page_size = sysconf(_SC_PAGESIZE);
  if (pages <= 0 || page_size <= 0) return 0;
  return static_cast<uint64_t>(pages) * static_cast<uint64_t>(page_size);
}

}  // namespace

absl::Status ArenaOptions::Validate() const {
  if (slab_bytes == 0 || slab_bytes % kHugePage != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("slab_bytes = ", slab_bytes, " must be a positive multiple of 2 MiB"));
  }
  if (slab_bytes > (1ull << 32)) {
    return absl::InvalidArgumentError(
        absl::StrCat("slab_bytes = ", slab_bytes, " is above the 4 GiB limit"));
  }
  if (capacity_bytes < slab_bytes) {
    return absl::InvalidArgumentError(absl::StrCat("dram_capacity_bytes = ", capacity_bytes,
                                                   " must hold at least one slab of ", slab_bytes,
                                                   " bytes"));
  }
  uint64_t physical = PhysicalMemoryBytes();
  if (physical != 0 && capacity_bytes > physical) {
    return absl::InvalidArgumentError(absl::StrCat("dram_capacity_bytes = ", capacity_bytes,
                                                   " exceeds this machine's physical memory (",
                                                   physical, " bytes)"));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<Arena>> Arena::Create(const ArenaOptions& options) {
  if (absl::Status s = options.Validate(); !s.ok()) return s;
  const uint64_t size = options.capacity_bytes / options.slab_bytes * options.slab_bytes;

  int fd = -1;
  bool huge = false;
  if (options.huge_pages) {
    fd = memfd_create("kvtier-dram", MFD_CLOEXEC | MFD_HUGETLB);
    if (fd >= 0 && ftruncate(fd, static_cast<off_t>(size)) != 0) {
      close(fd);
      fd = -1;
    }
    huge = fd >= 0;
  }
  if (fd < 0) {
    fd = memfd_create("kvtier-dram", MFD_CLOEXEC);
    if (fd < 0) {
      return absl::ResourceExhaustedError(
          absl::StrCat("dram arena: memfd_create failed: ", std::strerror(errno)));
    }
    if (ftruncate(fd, static_cast<off_t>(size)) != 0) {
      int err = errno;
      close(fd);
      return absl::ResourceExhaustedError(
          absl::StrCat("dram arena: cannot size memfd to ", size, " bytes: ", std::strerror(err)));
    }
  }
  int flags = MAP_SHARED | (options.prefault ? MAP_POPULATE : 0);
  void* p = mmap(nullptr, size, PROT_READ | PROT_WRITE, flags, fd, 0);
  if (p == MAP_FAILED && huge) {
    // Reserved huge pages ran out at map time: fall back to ordinary pages.
    close(fd);
    huge = false;
    fd = memfd_create("kvtier-dram", MFD_CLOEXEC);
    if (fd < 0 || ftruncate(fd, static_cast<off_t>(size)) != 0) {
      if (fd >= 0) close(fd);
      return absl::ResourceExhaustedError("dram arena: memfd fallback failed");
    }
    p = mmap(nullptr, size, PROT_READ | PROT_WRITE, flags, fd, 0);
  }
  if (p == MAP_FAILED) {
    int err = errno;
    close(fd);
    return absl::ResourceExhaustedError(
        absl::StrCat("dram arena: mmap of ", size, " bytes failed: ", std::strerror(err)));
  }
  if (!huge) madvise(p, size, MADV_HUGEPAGE);  // a hint; failure is harmless
  return std::unique_ptr<Arena>(
      new Arena(static_cast<std::byte*>(p), size, options.slab_bytes, fd, huge));
}

Arena::~Arena() {
  munmap(base_, size_);
  close(fd_);
}

}  // namespace kvtier
