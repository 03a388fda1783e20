#include "src/server/auth.h"

#include <algorithm>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace kvtier::server {

Authenticator::Authenticator(const DaemonConfig& config)
    : open_mode_(config.open_mode()), admin_token_(config.admin_token), tenants_(config.tenants) {
  for (const TenantConfig& t : tenants_) tenant_tokens_.emplace_back(t.token);
}

absl::StatusOr<Principal> Authenticator::Authenticate(absl::string_view authorization) const {
  if (open_mode_) return AuthenticateToken("");
  absl::string_view v = absl::StripAsciiWhitespace(authorization);
  if (v.empty()) {
    return absl::UnauthenticatedError(
        "authorization: this daemon needs a bearer token (metadata 'authorization: Bearer "
        "<token>')");
  }
  constexpr absl::string_view kBearer = "bearer ";
  if (v.size() <= kBearer.size() || !absl::StartsWithIgnoreCase(v, kBearer)) {
    return absl::PermissionDeniedError("authorization: expected 'Bearer <token>'");
  }
  return AuthenticateToken(absl::StripAsciiWhitespace(v.substr(kBearer.size())));
}

absl::StatusOr<Principal> Authenticator::AuthenticateToken(absl::string_view token) const {
  if (open_mode_) return Principal{"local", /*admin=*/true, /*shared_memory=*/true, -1};
  if (token.empty()) {
    return absl::UnauthenticatedError("authorization: this daemon needs a bearer token");
  }
  // Every token is compared, so the time taken does not tell which matched.
  int match = -2;
  if (admin_token_.Accepts(token)) match = -1;
  for (size_t i = 0; i < tenant_tokens_.size(); ++i) {
    if (tenant_tokens_[i].Accepts(token)) match = static_cast<int>(i);
  }
  if (match == -2) return absl::PermissionDeniedError("authorization: unknown token");
  if (match == -1) return Principal{"admin", /*admin=*/true, /*shared_memory=*/true, -1};
  const TenantConfig& t = tenants_[match];
  return Principal{t.name, /*admin=*/false, t.shared_memory, match};
}

absl::Status Authenticator::AuthorizeNamespace(const Principal& who,
                                               const NamespaceOptions& ns) const {
  if (who.admin) return absl::OkStatus();
  if (who.tenant < 0 || static_cast<size_t>(who.tenant) >= tenants_.size()) {
    return absl::PermissionDeniedError("namespace: not allowed");
  }
  const TenantConfig& t = tenants_[who.tenant];
  const bool salt_ok =
      t.cache_salts.empty() ||
      std::find(t.cache_salts.begin(), t.cache_salts.end(), ns.cache_salt) != t.cache_salts.end();
  const bool model_ok = t.model_ids.empty() || std::find(t.model_ids.begin(), t.model_ids.end(),
                                                         ns.model_id) != t.model_ids.end();
  if (!salt_ok || !model_ok) {
    return absl::PermissionDeniedError(absl::StrCat(
        "namespace: tenant '", t.name, "' may not use this namespace (",
        !salt_ok ? "namespace.cache_salt" : "namespace.model_id", " is not among its grants)"));
  }
  return absl::OkStatus();
}

absl::Status Authenticator::RequireAdmin(const Principal& who, absl::string_view what) const {
  if (who.admin) return absl::OkStatus();
  return absl::PermissionDeniedError(absl::StrCat(what, " needs the admin token"));
}

}  // namespace kvtier::server
