// StagingPool: one aligned region of host memory carved into extents that
// hold the bytes of in-flight NVMe reads and writes. Its size bounds the
// bytes in flight; the NVMe tier registers it with io_uring as fixed buffers.
//
// Thread-safety: none; the owner serializes calls.
#ifndef KVTIER_SRC_TIERS_NVME_STAGING_POOL_H_
#define KVTIER_SRC_TIERS_NVME_STAGING_POOL_H_

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <set>

#include "absl/status/statusor.h"

namespace kvtier::nvme {

class StagingPool {
 public:
  static constexpr uint64_t kAlignment = 4096;
  // The mapping is aligned to and sized in units of this (x86-64's PMD size).
  static constexpr uint64_t kHugePageBytes = 2ull << 20;

  // Maps `bytes` (a positive multiple of 4096) of anonymous memory, aligned
  // to kHugePageBytes and advised to use transparent huge pages before it is
  // touched up front (so direct I/O from one extent needs few physically
  // contiguous segments). ResourceExhausted when the mapping fails.
  static absl::StatusOr<std::unique_ptr<StagingPool>> Create(uint64_t bytes);
  ~StagingPool();
  StagingPool(const StagingPool&) = delete;
  StagingPool& operator=(const StagingPool&) = delete;

  std::byte* base() const { return base_; }
  uint64_t size() const { return size_; }
  uint64_t free_bytes() const { return free_bytes_; }

  // First-fit extent of `bytes` (a positive multiple of 4096); returns its
  // offset from base(), or nullopt when no free extent is large enough.
  std::optional<uint64_t> Allocate(uint64_t bytes);
  // Returns an extent from Allocate; neighbours coalesce.
  void Free(uint64_t offset, uint64_t bytes);
  // True when Allocate(bytes) would succeed now.
  bool CanAllocate(uint64_t bytes) const;

 private:
  StagingPool(std::byte* base, uint64_t size, uint64_t mapped);
  void Insert(uint64_t offset, uint64_t bytes);
  void Erase(std::map<uint64_t, uint64_t>::iterator it);

  std::byte* base_;
  uint64_t size_;
  uint64_t mapped_;  // bytes mapped at base_: size_ rounded up to kHugePageBytes
  uint64_t free_bytes_;
  std::map<uint64_t, uint64_t> free_;  // offset -> length
  std::multiset<uint64_t> lengths_;    // lengths of the free extents
};

}  // namespace kvtier::nvme

#endif  // KVTIER_SRC_TIERS_NVME_STAGING_POOL_H_
