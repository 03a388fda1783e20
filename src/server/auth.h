// Bearer-token authentication and per-tenant namespace authorization.
//
// Tokens travel in the `authorization` metadata as "Bearer <token>". With no
// token configured (open mode) every caller is the local principal with every
// right; kvtierd then serves the Unix socket only, whose file mode guards it.
// Otherwise a caller is the tenant whose token it sent, or the admin.
//
// Codes: UNAUTHENTICATED when a token is needed and none was sent,
// PERMISSION_DENIED for an unknown token, a namespace outside the tenant's
// grants, or an admin-only call by a tenant. Messages never say whether
// anything is cached.
//
// Thread-safety: all methods are const and thread-safe. The tokens are
// Secrets the daemon may Set while it runs (re-read token files); names,
// grants and open mode are fixed at construction.
#ifndef KVTIER_SRC_SERVER_AUTH_H_
#define KVTIER_SRC_SERVER_AUTH_H_

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "kvtier/namespace.h"
#include "src/common/secret.h"
#include "src/server/config.h"

namespace kvtier::server {

struct Principal {
  std::string name;            // tenant name, "admin", or "local" (open mode)
  bool admin = false;          // may Evict, read Config, use every namespace
  bool shared_memory = false;  // may map the DRAM arena
  int tenant = -1;             // index into the tenant list; -1 for admin / local
};

class Authenticator {
 public:
  explicit Authenticator(const DaemonConfig& config);

  bool open_mode() const { return open_mode_; }

  // Finds the principal for an `authorization` value (empty when absent).
  absl::StatusOr<Principal> Authenticate(absl::string_view authorization) const;
  // Same for a bare token (the shared-memory side channel sends one).
  absl::StatusOr<Principal> AuthenticateToken(absl::string_view token) const;

  // PERMISSION_DENIED unless `who` may use namespace `ns`.
  absl::Status AuthorizeNamespace(const Principal& who, const NamespaceOptions& ns) const;
  // PERMISSION_DENIED unless `who` is the admin.
  absl::Status RequireAdmin(const Principal& who, absl::string_view what) const;

  // The tokens, shared with the authenticator: Set replaces them for the
  // next call.
  const Secret& admin_token() const { return admin_token_; }
  const Secret& tenant_token(size_t i) const { return tenant_tokens_[i]; }

 private:
  bool open_mode_;
  Secret admin_token_;
  std::vector<TenantConfig> tenants_;  // grants (their `token` is not read)
  std::vector<Secret> tenant_tokens_;  // tenants_[i]'s tokens
};

using ::kvtier::ConstantTimeEquals;

}  // namespace kvtier::server

#endif  // KVTIER_SRC_SERVER_AUTH_H_
