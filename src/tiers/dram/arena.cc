#include "src/tiers/dram/arena.h"

#include <linux/memfd.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>
#include <utility>

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

namespace {

// A memfd of `size` bytes (huge pages when `huge`) mapped shared; the mapped
// address, or MAP_FAILED with `fd` closed.
void* MapMemfd(uint64_t size, bool huge, bool prefault, int* fd) {
  *fd = memfd_create("kvtier-dram", MFD_CLOEXEC | (huge ? MFD_HUGETLB : 0));
  if (*fd < 0) return MAP_FAILED;
  if (ftruncate(*fd, static_cast<off_t>(size)) != 0) {
    close(*fd);
    *fd = -1;
    return MAP_FAILED;
  }
  const int flags = MAP_SHARED | (prefault ? MAP_POPULATE : 0);
  void* p = mmap(nullptr, size, PROT_READ | PROT_WRITE, flags, *fd, 0);
  if (p == MAP_FAILED) {
    const int err = errno;
    close(*fd);
    *fd = -1;
    errno = err;
  }
  return p;
}

// Checks allocator memory against the contract of ArenaMemory; empty when it
// holds.
std::string CheckAllocated(const ArenaMemory& m, uint64_t size) {
  if (m.base == nullptr) return "no address";
  if (m.size < size) return absl::StrCat(m.size, " bytes, asked for ", size);
  if (reinterpret_cast<uintptr_t>(m.base) % static_cast<uintptr_t>(sysconf(_SC_PAGESIZE)) != 0) {
    return "not page aligned";
  }
  if (m.fd < 0) return "no file descriptor to share";
  struct stat st;
  if (fstat(m.fd, &st) != 0) return absl::StrCat("fstat: ", std::strerror(errno));
  if (static_cast<uint64_t>(st.st_size) < size) {
    return absl::StrCat("the file holds ", st.st_size, " bytes, asked for ", size);
  }
  return "";
}

}  // namespace

absl::StatusOr<std::unique_ptr<Arena>> Arena::Create(const ArenaOptions& options) {
  if (absl::Status s = options.Validate(); !s.ok()) return s;
  const uint64_t size = options.capacity_bytes / options.slab_bytes * options.slab_bytes;
  std::unique_ptr<Arena> a(new Arena());
  a->size_ = size;
  a->slab_bytes_ = options.slab_bytes;

  void* p = MAP_FAILED;
  if (options.huge_pages) {
    // Reserved huge pages (or too few of them) fail here: ordinary pages follow.
    p = MapMemfd(size, /*huge=*/true, options.prefault, &a->fd_);
    if (p != MAP_FAILED) {
      a->huge_pages_ = true;
      a->source_ = "memfd-hugetlb";
      if (options.allocator) a->allocator_skipped_ = "huge pages in use";
    }
  }
  if (p == MAP_FAILED && options.allocator) {
    absl::StatusOr<ArenaMemory> m = options.allocator(size);
    if (!m.ok()) {
      a->allocator_skipped_ = std::string(m.status().message());
    } else if (std::string bad = CheckAllocated(*m, size); !bad.empty()) {
      a->allocator_skipped_ = absl::StrCat(m->source, ": ", bad);
      if (m->fd >= 0) close(m->fd);
      if (m->release) m->release();
    } else {
      p = m->base;
      a->fd_ = m->fd;
      a->release_ = std::move(m->release);
      a->source_ = m->source.empty() ? "allocator" : m->source;
      if (options.prefault) {
        // New shared-memory pages read as zero: writing zeros only allocates them.
        const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
        volatile std::byte* bytes = m->base;
        for (uint64_t off = 0; off < size; off += page) bytes[off] = std::byte{0};
      }
    }
  }
  if (p == MAP_FAILED) {
    p = MapMemfd(size, /*huge=*/false, options.prefault, &a->fd_);
    if (p == MAP_FAILED) {
      return absl::ResourceExhaustedError(absl::StrCat("dram arena: cannot map a memfd of ", size,
                                                       " bytes: ", std::strerror(errno)));
    }
    a->source_ = "memfd";
  }
  if (!a->huge_pages_) madvise(p, size, MADV_HUGEPAGE);  // a hint; failure is harmless
  a->base_ = static_cast<std::byte*>(p);
  return a;
}

Arena::~Arena() {
  if (base_ != nullptr) {
    if (release_) {
      release_();
    } else {
      munmap(base_, size_);
    }
  }
  if (fd_ >= 0) close(fd_);
}

}  // namespace kvtier
