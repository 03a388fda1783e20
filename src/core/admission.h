// Admission policies: whether a chunk leaving one tier is worth writing to
// the next one down (DRAM -> NVMe demotion). The tier manager asks the policy
// once per demoted chunk; a refused chunk is simply dropped.
//
// Thread-safety: Admit may be called from any number of threads at once
// (implementations here are stateless).
#ifndef KVTIER_SRC_CORE_ADMISSION_H_
#define KVTIER_SRC_CORE_ADMISSION_H_

#include <cstdint>
#include <memory>
#include <string_view>

#include "absl/status/statusor.h"
#include "src/tiers/tier.h"

namespace kvtier {

class AdmissionPolicy {
 public:
  virtual ~AdmissionPolicy() = default;
  virtual std::string_view Name() const = 0;

  // True when `meta` should be written to the lower tier. `access_count` is
  // how many times the chunk was read (loaded or pinned) while it was in the
  // tier it is leaving; a chunk that was only saved has 0.
  virtual bool Admit(const ChunkMeta& meta, uint64_t access_count) const = 0;
};

// "all": admits every chunk.
std::unique_ptr<AdmissionPolicy> NewAdmitAllPolicy();

// "second-chance": admits only chunks read at least once, so chunks that
// were saved and never reused do not cost NVMe writes.
std::unique_ptr<AdmissionPolicy> NewSecondChancePolicy();

// Builds a policy by name; InvalidArgument naming `admission_policy`
// otherwise.
absl::StatusOr<std::unique_ptr<AdmissionPolicy>> NewAdmissionPolicy(absl::string_view name);

}  // namespace kvtier

#endif  // KVTIER_SRC_CORE_ADMISSION_H_
