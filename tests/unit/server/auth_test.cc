#include "src/server/auth.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/status_matchers.h"

namespace kvtier::server {
namespace {

using ::kvtier::testing::StatusIs;

DaemonConfig TwoTenants() {
  DaemonConfig c;
  c.admin_token = "admin-token-0123456789";
  c.tenants.push_back({"a", "tenant-a-token-012345", {"salt-a"}, {}, true});
  c.tenants.push_back({"b", "tenant-b-token-012345", {}, {"model-b"}, false});
  return c;
}

NamespaceOptions Ns(const std::string& model, const std::string& salt) {
  NamespaceOptions o;
  o.model_id = model;
  o.cache_salt = salt;
  return o;
}

TEST(Auth, OpenModeAllowsEverything) {
  Authenticator auth{DaemonConfig{}};
  ASSERT_OK_AND_ASSIGN(Principal p, auth.Authenticate(""));
  EXPECT_TRUE(p.admin);
  EXPECT_TRUE(p.shared_memory);
  EXPECT_OK(auth.AuthorizeNamespace(p, Ns("m", "any")));
}

TEST(Auth, TokensIdentifyPrincipals) {
  Authenticator auth(TwoTenants());
  EXPECT_THAT(auth.Authenticate(""), StatusIs(absl::StatusCode::kUnauthenticated));
  EXPECT_THAT(auth.Authenticate("Bearer wrong-token-000000000"),
              StatusIs(absl::StatusCode::kPermissionDenied));
  EXPECT_THAT(auth.Authenticate("tenant-a-token-012345"),  // no scheme
              StatusIs(absl::StatusCode::kPermissionDenied));
  EXPECT_THAT(auth.Authenticate("Bearer tenant-a-token-01234"),  // a prefix
              StatusIs(absl::StatusCode::kPermissionDenied));
  ASSERT_OK_AND_ASSIGN(Principal a, auth.Authenticate("Bearer tenant-a-token-012345"));
  EXPECT_EQ(a.name, "a");
  EXPECT_FALSE(a.admin);
  EXPECT_TRUE(a.shared_memory);
  ASSERT_OK_AND_ASSIGN(Principal b, auth.Authenticate("bearer  tenant-b-token-012345 "));
  EXPECT_EQ(b.name, "b");
  EXPECT_FALSE(b.shared_memory);
  ASSERT_OK_AND_ASSIGN(Principal admin, auth.Authenticate("Bearer admin-token-0123456789"));
  EXPECT_TRUE(admin.admin);
}

TEST(Auth, TenantsSeeOnlyTheirNamespaces) {
  Authenticator auth(TwoTenants());
  Principal a = *auth.AuthenticateToken("tenant-a-token-012345");
  Principal b = *auth.AuthenticateToken("tenant-b-token-012345");
  Principal admin = *auth.AuthenticateToken("admin-token-0123456789");
  EXPECT_OK(auth.AuthorizeNamespace(a, Ns("anything", "salt-a")));
  EXPECT_THAT(auth.AuthorizeNamespace(a, Ns("anything", "salt-b")),
              StatusIs(absl::StatusCode::kPermissionDenied));
  EXPECT_THAT(auth.AuthorizeNamespace(a, Ns("anything", "")),
              StatusIs(absl::StatusCode::kPermissionDenied));
  EXPECT_OK(auth.AuthorizeNamespace(b, Ns("model-b", "whatever")));
  EXPECT_THAT(auth.AuthorizeNamespace(b, Ns("model-a", "")),
              StatusIs(absl::StatusCode::kPermissionDenied));
  EXPECT_OK(auth.AuthorizeNamespace(admin, Ns("model-a", "salt-b")));
  EXPECT_THAT(auth.RequireAdmin(a, "Evict"), StatusIs(absl::StatusCode::kPermissionDenied));
  EXPECT_OK(auth.RequireAdmin(admin, "Evict"));
}

TEST(Auth, ConstantTimeEquals) {
  EXPECT_TRUE(ConstantTimeEquals("abc", "abc"));
  EXPECT_FALSE(ConstantTimeEquals("abc", "abd"));
  EXPECT_FALSE(ConstantTimeEquals("abc", "abcd"));
  EXPECT_FALSE(ConstantTimeEquals("", "a"));
  EXPECT_TRUE(ConstantTimeEquals("", ""));
}

}  // namespace
}  // namespace kvtier::server
