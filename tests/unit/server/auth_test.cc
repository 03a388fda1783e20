#include "src/server/auth.h"

#include "src/common/token_list.h"

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

TEST(TokenList, SendsTheFirstAcceptsEach) {
  const std::string list = " new-token-0123456789 \r\n\nold-token-0123456789\n";
  EXPECT_THAT(SplitTokens(list),
              ::testing::ElementsAre("new-token-0123456789", "old-token-0123456789"));
  EXPECT_EQ(SentToken(list), "new-token-0123456789");
  EXPECT_EQ(SentToken("\n \n"), "");
  EXPECT_TRUE(AcceptsToken(list, "new-token-0123456789"));
  EXPECT_TRUE(AcceptsToken(list, "old-token-0123456789"));
  EXPECT_FALSE(AcceptsToken(list, "old-token-012345678"));
  EXPECT_FALSE(AcceptsToken(list, "new-token-0123456789\nold-token-0123456789"));
  EXPECT_FALSE(AcceptsToken(list, ""));
  EXPECT_FALSE(AcceptsToken("", ""));
  EXPECT_OK(CheckTokenList(list, 16));
  EXPECT_OK(CheckTokenList("", 16));
  for (const char* blank : {" ", "\n", " \r\n \n"}) {
    EXPECT_THAT(CheckTokenList(blank, 16),
                StatusIs(absl::StatusCode::kInvalidArgument, ::testing::HasSubstr("no token")));
  }
  EXPECT_THAT(CheckTokenList("short", 16),
              StatusIs(absl::StatusCode::kInvalidArgument, "must be at least 16 characters"));
  EXPECT_THAT(
      CheckTokenList("new-token-0123456789\nshort", 16),
      StatusIs(absl::StatusCode::kInvalidArgument, "must be at least 16 characters (token 2)"));
  EXPECT_THAT(CheckTokenList("new-token-0123456789\nnew-token-0123456789", 16),
              StatusIs(absl::StatusCode::kInvalidArgument, ::testing::HasSubstr("twice")));
}

TEST(Auth, EveryTokenOfAListIsAccepted) {
  DaemonConfig c = TwoTenants();
  c.admin_token = "admin-token-new-0123456789\nadmin-token-0123456789";
  c.tenants[0].token = "tenant-a-token-012345\ntenant-a-token-new-012345";
  c.unix_socket = "/run/kvtier/kvtierd.sock";
  ASSERT_OK(c.Validate());
  Authenticator auth(c);
  for (const char* admin : {"admin-token-new-0123456789", "admin-token-0123456789"}) {
    ASSERT_OK_AND_ASSIGN(Principal p, auth.AuthenticateToken(admin));
    EXPECT_TRUE(p.admin) << admin;
  }
  for (const char* a : {"tenant-a-token-012345", "tenant-a-token-new-012345"}) {
    ASSERT_OK_AND_ASSIGN(Principal p, auth.AuthenticateToken(a));
    EXPECT_EQ(p.name, "a") << a;
  }
  EXPECT_THAT(auth.AuthenticateToken("tenant-a-token-012345\ntenant-a-token-new-012345"),
              StatusIs(absl::StatusCode::kPermissionDenied));
  // A token may belong to one principal only, in any position of a list.
  c.tenants[1].token = "tenant-b-token-012345\nadmin-token-0123456789";
  EXPECT_THAT(c.Validate(), StatusIs(absl::StatusCode::kInvalidArgument,
                                     ::testing::HasSubstr("auth.tenants[1].token")));
  c.tenants[1].token = "tenant-b-token-012345";
  c.admin_token = "admin-token-new-0123456789\nshort";
  EXPECT_THAT(c.Validate(), StatusIs(absl::StatusCode::kInvalidArgument,
                                     ::testing::HasSubstr("auth.admin_token: must be at least")));
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
