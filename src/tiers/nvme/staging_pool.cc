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
  // The mapping starts on a huge-page boundary and is a whole number of huge
  // pages, and the huge-page advice comes before any page is touched: memory
  // faulted in before the advice stays in 4 KiB pages, which are scattered in
  // physical memory, so a 1 MiB direct write from it needs 256 segments and
  // the block layer splits it into several device requests.
  const uint64_t mapped = (bytes + kHugePageBytes - 1) / kHugePageBytes * kHugePageBytes;
  void* raw = ::mmap(nullptr, mapped + kHugePageBytes, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (raw == MAP_FAILED) {
    absl::Status s = ErrnoToStatus(errno, absl::StrCat("mmap of a ", bytes, "-byte staging pool"));
    return absl::ResourceExhaustedError(s.message());
  }
  const uintptr_t start = reinterpret_cast<uintptr_t>(raw);
  const uintptr_t aligned = (start + kHugePageBytes - 1) / kHugePageBytes * kHugePageBytes;
  if (aligned > start) ::munmap(raw, aligned - start);
  const uintptr_t end = start + mapped + kHugePageBytes;
  if (end > aligned + mapped) {
    ::munmap(reinterpret_cast<void*>(aligned + mapped), end - (aligned + mapped));
  }
  void* p = reinterpret_cast<void*>(aligned);
  ::madvise(p, mapped, MADV_HUGEPAGE);  // advisory; failure leaves 4 KiB pages
  // Touch every page now (as MAP_POPULATE would have), so the memory is
  // there before the first save.
  if (::madvise(p, mapped, MADV_POPULATE_WRITE) != 0) {
    if (errno == ENOMEM) {
      ::munmap(p, mapped);
      return absl::ResourceExhaustedError(
          absl::StrCat("staging pool: cannot populate ", bytes, " bytes"));
    }
    // Older kernels lack MADV_POPULATE_WRITE: write one byte per page.
    for (uint64_t off = 0; off < mapped; off += kAlignment) static_cast<volatile char*>(p)[off] = 0;
  }
  return std::unique_ptr<StagingPool>(new StagingPool(static_cast<std::byte*>(p), bytes, mapped));
}

StagingPool::StagingPool(std::byte* base, uint64_t size, uint64_t mapped)
    : base_(base), size_(size), mapped_(mapped), free_bytes_(0) {
  Insert(0, size);
}

StagingPool::~StagingPool() { ::munmap(base_, mapped_); }

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
