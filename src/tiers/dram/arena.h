// The DRAM arena: one bounded region of host memory for chunk slots.
//
// The arena is a shared file mapping, so another process (a local engine
// talking to kvtierd) can map the same pages from the file descriptor. In
// order of preference it is:
//   1. a memfd backed by huge pages when the system has them reserved
//      (MFD_HUGETLB) and huge_pages is set;
//   2. memory from ArenaOptions::allocator when one is given (kvtierd with
//      node-to-node transfer lets UCX allocate it, so that readers on the same
//      host can map it and read it one-sided); it must be a shared mapping of
//      a file whose descriptor comes with it;
//   3. a memfd of ordinary pages with a transparent-huge-page hint.
// Every kind is used the same way: base(), size() and an fd() that maps the
// same bytes in another process. Memory is carved into equal slabs;
// SlabAllocator (slab_allocator.h) hands slabs to slot classes.
//
// Thread-safety: immutable after Create; the bytes themselves are guarded by
// the owner's slot protocol (pins).
#ifndef KVTIER_SRC_TIERS_DRAM_ARENA_H_
#define KVTIER_SRC_TIERS_DRAM_ARENA_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"

namespace kvtier {

// Memory another component allocated for the arena: a MAP_SHARED mapping of
// a file at `base`, at least as long as asked for.
struct ArenaMemory {
  std::byte* base = nullptr;  // start of the mapping (page aligned)
  uint64_t size = 0;          // bytes mapped at base
  int fd = -1;                // a descriptor of the file behind the mapping; the arena closes it
  std::function<void()> release;  // unmaps the memory; called once, when the arena goes
  std::string source;             // what provided it, e.g. "ucx-posix" (for logs and stats)
};
// Allocates `bytes` of arena memory; an error makes the arena use a memfd.
using ArenaAllocator = std::function<absl::StatusOr<ArenaMemory>(uint64_t bytes)>;

struct ArenaOptions {
  uint64_t capacity_bytes = 0;        // bytes to map; rounded down to slab_bytes
  uint64_t slab_bytes = 64ull << 20;  // bytes per slab (multiple of 2 MiB)
  bool huge_pages = true;             // try MFD_HUGETLB first
  bool prefault = false;              // touch every page at Create
  ArenaAllocator allocator;           // when set, tried before the ordinary-page memfd

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
  // The file behind the mapping (owned by the arena), for sharing: mapped
  // MAP_SHARED from offset 0 it shows the arena's bytes.
  int fd() const { return fd_; }
  bool huge_pages() const { return huge_pages_; }
  // Where the memory came from: "memfd-hugetlb", "memfd" or the allocator's
  // ArenaMemory::source.
  const std::string& source() const { return source_; }
  // Why ArenaOptions::allocator's memory is not used (empty when it is, or
  // when there is no allocator).
  const std::string& allocator_skipped() const { return allocator_skipped_; }

 private:
  Arena() = default;

  std::byte* base_ = nullptr;
  uint64_t size_ = 0;
  uint64_t slab_bytes_ = 0;
  int fd_ = -1;
  bool huge_pages_ = false;
  std::string source_;
  std::string allocator_skipped_;
  std::function<void()> release_;  // set for allocator memory, else munmap
};

}  // namespace kvtier

#endif  // KVTIER_SRC_TIERS_DRAM_ARENA_H_
