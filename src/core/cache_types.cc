// Out-of-line parts of the value types in kvtier/cache.h.
#include <utility>

#include "kvtier/cache.h"

namespace kvtier {

std::string_view TierName(Tier tier) {
  switch (tier) {
    case Tier::kNone:
      return "none";
    case Tier::kGpu:
      return "gpu";
    case Tier::kDram:
      return "dram";
    case Tier::kNvme:
      return "nvme";
    case Tier::kBlob:
      return "blob";
    case Tier::kRemote:
      return "remote";
  }
  return "unknown";
}

ChunkPin::ChunkPin(ChunkPin&& other) noexcept
    : releaser_(std::exchange(other.releaser_, nullptr)),
      handle_(other.handle_),
      payload_(other.payload_),
      num_tokens_(other.num_tokens_) {}

ChunkPin& ChunkPin::operator=(ChunkPin&& other) noexcept {
  if (this != &other) {
    Release();
    releaser_ = std::exchange(other.releaser_, nullptr);
    handle_ = other.handle_;
    payload_ = other.payload_;
    num_tokens_ = other.num_tokens_;
  }
  return *this;
}

ChunkPin::~ChunkPin() { Release(); }

void ChunkPin::Release() {
  if (releaser_ != nullptr) {
    releaser_->ReleasePin(handle_);
    releaser_ = nullptr;
    payload_ = {};
  }
}

}  // namespace kvtier
