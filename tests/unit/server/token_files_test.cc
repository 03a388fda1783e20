#include "src/server/token_files.h"

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

#include "absl/strings/match.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "src/common/temp_path.h"
#include "tests/testing/status_matchers.h"

namespace kvtier::server {
namespace {

class TokenFilesTest : public ::testing::Test {
 protected:
  void SetUp() override {
    absl::StatusOr<std::string> dir = MakeTempDir("/tmp", "kvtier-token-files-");
    ASSERT_TRUE(dir.ok()) << dir.status();
    dir_ = *dir;
    log_file_ = std::tmpfile();
    ASSERT_NE(log_file_, nullptr);
  }
  void TearDown() override {
    std::fclose(log_file_);
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }
  std::string Write(const std::string& text) {
    std::string path = dir_ + "/token";
    std::ofstream(path + ".next") << text;
    std::filesystem::rename(path + ".next", path);
    return path;
  }
  std::string Log() {
    std::fflush(log_file_);
    std::rewind(log_file_);
    std::string out;
    char buf[4096];
    for (size_t n; (n = std::fread(buf, 1, sizeof(buf), log_file_)) > 0;) out.append(buf, n);
    return out;
  }
  int Count(const std::string& text) {
    const std::string log = Log();
    int n = 0;
    for (size_t at = log.find(text); at != std::string::npos; at = log.find(text, at + 1)) ++n;
    return n;
  }

  std::string dir_;
  FILE* log_file_ = nullptr;
};

TEST_F(TokenFilesTest, ChangedFilesSetTheSecretBadOnesLeaveItWithOneWarning) {
  Logger log(LogLevel::kInfo, log_file_);
  const std::string path = Write("first-token-0123456789");
  Secret secret("first-token-0123456789");
  Secret copy = secret;  // NOLINT(performance-unnecessary-copy-initialization): a service's copy
  TokenFiles files(&log, absl::Seconds(60),
                   [](const std::string& setting, const std::string& text) {
                     return absl::StrContains(text, "refused")
                                ? absl::InvalidArgumentError(setting + ": refused by the check")
                                : absl::OkStatus();
                   });
  files.Add("auth.admin_token", path, secret);

  files.Reload();  // unchanged: nothing logged
  EXPECT_EQ(Count("token file"), 0);
  Write("second-token-0123456789\nfirst-token-0123456789\n");
  files.Reload();
  EXPECT_TRUE(copy.Accepts("second-token-0123456789"));
  EXPECT_TRUE(copy.Accepts("first-token-0123456789"));
  EXPECT_EQ(copy.Sent(), "second-token-0123456789");
  EXPECT_EQ(Count("token file read again"), 1);

  // Refused by the check, then unreadable: the tokens stay, one warning each
  // however many rounds.
  Write("refused-token-0123456789");
  files.Reload();
  files.Reload();
  EXPECT_EQ(Count("refused by the check"), 1);
  std::filesystem::remove(path);
  files.Reload();
  files.Reload();
  EXPECT_EQ(Count("cannot read"), 1);
  EXPECT_TRUE(copy.Accepts("second-token-0123456789"));
  EXPECT_FALSE(copy.Accepts("refused-token-0123456789"));
  EXPECT_EQ(Count("the previous tokens stay"), 2);
  // A good file again is taken; the same error later is warned about again.
  Write("third-token-0123456789");
  files.Reload();
  EXPECT_TRUE(copy.Accepts("third-token-0123456789"));
  EXPECT_FALSE(copy.Accepts("second-token-0123456789"));
  std::filesystem::remove(path);
  files.Reload();
  EXPECT_EQ(Count("cannot read"), 2);
  EXPECT_FALSE(absl::StrContains(Log(), "third-token-0123456789")) << "no token in the log";
}

TEST_F(TokenFilesTest, ReloadIfDueWaitsForTheInterval) {
  Logger log(LogLevel::kInfo, log_file_);
  const std::string path = Write("first-token-0123456789");
  Secret secret("first-token-0123456789");
  TokenFiles files(&log, absl::Seconds(60), nullptr);
  files.Add("ucx.peer_token", path, secret);
  Write("second-token-0123456789");
  files.ReloadIfDue(absl::Now());
  EXPECT_EQ(secret.Sent(), "first-token-0123456789") << "before the interval";
  files.ReloadIfDue(absl::Now() + absl::Seconds(61));
  EXPECT_EQ(secret.Sent(), "second-token-0123456789");
}

}  // namespace
}  // namespace kvtier::server
