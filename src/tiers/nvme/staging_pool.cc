#include "src/tiers/nvme/staging_pool.h"

#include <errno.h>
#include <sys/mman.h>

#include <iterator>

#include "absl/strings/str_cat.h"
#include "src/common/env.h"

namespace kvtier::nvme {

absl::StatusOr<std::unique_ptr<StagingPool>> StagingPool::Create(uint64_t bytes) {
  if (bytes == 0 || bytes % kAlignment != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("staging pool: ", bytes, " bytes is not a positive multiple of 4096"));
  }
  void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
  if (p == MAP_FAILED) {
    absl::Status s = ErrnoToStatus(errno, absl::StrCat("mmap of a ", bytes, "-byte staging pool"));
    return absl::ResourceExhaustedError(s.message());
  }
  ::madvise(p, bytes, MADV_HUGEPAGE);  // advisory; failure changes nothing
  return std::unique_ptr<StagingPool>(new StagingPool(static_cast<std::byte*>(p), bytes));
}

StagingPool::StagingPool(std::byte* base, uint64_t size)
    : base_(base), size_(size), free_bytes_(0) {
  Insert(0, size);
}

StagingPool::~StagingPool() { ::munmap(base_, size_); }

void StagingPool::Insert(uint64_t offset, uint64_t bytes) {
  free_.emplace(offset, bytes);
  lengths_.insert(bytes);
  free_bytes_ += bytes;
}

void StagingPool::Erase(std::map<uint64_t, uint64_t>::iterator it) {
  lengths_.erase(lengths_.find(it->second));
  free_bytes_ -= it->second;
  free_.erase(it);
}

bool StagingPool::CanAllocate(uint64_t bytes) const {
  return !lengths_.empty() && *lengths_.rbegin() >= bytes;
}

std::optional<uint64_t> StagingPool::Allocate(uint64_t bytes) {
  if (bytes == 0 || !CanAllocate(bytes)) return std::nullopt;
  for (auto it = free_.begin(); it != free_.end(); ++it) {
    if (it->second < bytes) continue;
    uint64_t offset = it->first;
    uint64_t rest = it->second - bytes;
    Erase(it);
    if (rest > 0) Insert(offset + bytes, rest);
    return offset;
  }
  return std::nullopt;
}

void StagingPool::Free(uint64_t offset, uint64_t bytes) {
  auto next = free_.lower_bound(offset);
  if (next != free_.end() && offset + bytes == next->first) {
    bytes += next->second;
    Erase(next);
  }
  auto after = free_.lower_bound(offset);
  if (after != free_.begin()) {
    auto prev = std::prev(after);
    if (prev->first + prev->second == offset) {
      offset = prev->first;
      bytes += prev->second;
      Erase(prev);
    }
  }
  Insert(offset, bytes);
}

}  // namespace kvtier::nvme
