#include "src/core/admission.h"

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace kvtier {
namespace {

class AdmitAll final : public AdmissionPolicy {
 public:
  std::string_view Name() const override { return "all"; }
  bool Admit(const ChunkMeta&, uint64_t) const override { return true; }
};

class SecondChance final : public AdmissionPolicy {
 public:
  std::string_view Name() const override { return "second-chance"; }
  bool Admit(const ChunkMeta&, uint64_t access_count) const override { return access_count > 0; }
};

}  // namespace

std::unique_ptr<AdmissionPolicy> NewAdmitAllPolicy() { return std::make_unique<AdmitAll>(); }

std::unique_ptr<AdmissionPolicy> NewSecondChancePolicy() {
  return std::make_unique<SecondChance>();
}

absl::StatusOr<std::unique_ptr<AdmissionPolicy>> NewAdmissionPolicy(absl::string_view name) {
  if (name == "all") return NewAdmitAllPolicy();
  if (name == "second-chance") return NewSecondChancePolicy();
  return absl::InvalidArgumentError(
      absl::StrCat("admission_policy: unknown policy '", name, "' (known: all, second-chance)"));
}

}  // namespace kvtier
