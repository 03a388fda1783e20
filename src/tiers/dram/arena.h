// The DRAM arena: one bounded region of host memory for chunk slots.
//
// The arena is a memfd mapped shared, so another process (a local engine
// talking to kvtierd) can map the same pages from the file descriptor. It is
// backed by huge pages when the system has them reserved (MFD_HUGETLB), else by
// ordinary pages with a transparent-huge-page hint. Memory is carved into
// equal slabs; SlabAllocator (slab_allocator.h) hands slabs to slot classes.
//
// Thread-safety: immutable after Create; the bytes themselves are guarded by
// the owner's slot protocol (pins).
#ifndef KVTIER_SRC_TIERS_DRAM_ARENA_H_
#define KVTIER_SRC_TIERS_DRAM_ARENA_H_

#include <cstddef>
#include <cstdint>
#include <memory>

#include "absl/status/statusor.h"

namespace kvtier {

struct ArenaOptions {
  uint64_t capacity_bytes = 0;        // bytes to map; rounded down to slab_bytes
  uint64_t slab_bytes = 64ull << 20;  // bytes per slab (multiple of 2 MiB)
  bool huge_pages = true;             // try MFD_HUGETLB first
  bool prefault = false;              // touch every page at Create

  absl::Status Validate() const;
};

class Arena {
 public:
  // InvalidArgument for bad options (zero or absurd capacity, capacity below
  // one slab); ResourceExhausted when the memory cannot be mapped.
  static absl::StatusOr<std::unique_ptr<Arena>> Create(const ArenaOptions& options);
  ~Arena();
  Arena(const Arena&) = delete;
  Arena& operator=(const Arena&) = delete;

  std::byte* base() const { return base_; }
  uint64_t size() const { return size_; }
  uint64_t slab_bytes() const { return slab_bytes_; }
  uint32_t num_slabs() const { return static_cast<uint32_t>(size_ / slab_bytes_); }
  std::byte* slab(uint32_t index) const { return base_ + uint64_t{index} * slab_bytes_; }
  // The memfd behind the mapping (owned by the arena), for sharing.
  int fd() const { return fd_; }
  bool huge_pages() const { return huge_pages_; }

 private:
  Arena(std::byte* base, uint64_t size, uint64_t slab_bytes, int fd, bool huge_pages)
      : base_(base), size_(size), slab_bytes_(slab_bytes), fd_(fd), huge_pages_(huge_pages) {}

  std::byte* base_;
  uint64_t size_;
  uint64_t slab_bytes_;
  int fd_;
  bool huge_pages_;
};

}  // namespace kvtier

#endif  // KVTIER_SRC_TIERS_DRAM_ARENA_H_
