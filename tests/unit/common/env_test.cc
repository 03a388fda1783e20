#include "src/common/env.h"

#include "src/common/temp_path.h"

#include <errno.h>

#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/fault_env.h"
#include "tests/testing/status_matchers.h"

namespace kvtier {
namespace {

using ::kvtier::testing::FaultInjectionEnv;
using ::kvtier::testing::IoFault;
using ::kvtier::testing::StatusIs;
using ::testing::HasSubstr;

class EnvTest : public ::testing::Test {
 protected:
  void SetUp() override {
    absl::StatusOr<std::string> dir = MakeTempDir("/tmp", "kvtier-env-");
    ASSERT_TRUE(dir.ok()) << dir.status();
    dir_ = *dir;
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::string dir_;
};

TEST(ErrnoToStatus, MapsCodesAndKeepsTheText) {
  EXPECT_THAT(ErrnoToStatus(ENOENT, "open /x"),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("open /x: No such file")));
  EXPECT_THAT(ErrnoToStatus(EROFS, "c"), StatusIs(absl::StatusCode::kPermissionDenied));
  EXPECT_THAT(ErrnoToStatus(ENOSPC, "c"), StatusIs(absl::StatusCode::kResourceExhausted));
  EXPECT_THAT(ErrnoToStatus(EINVAL, "c"), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(ErrnoToStatus(EIO, "c"),
              StatusIs(absl::StatusCode::kUnavailable, HasSubstr("Input/output error")));
  EXPECT_THAT(ErrnoToStatus(EXDEV, "c"), StatusIs(absl::StatusCode::kInternal));
}

TEST_F(EnvTest, FilesReadWriteAllocateAndReportPaths) {
  Env* env = Env::Default();
  std::string path = dir_ + "/f";
  ASSERT_OK_AND_ASSIGN(PathInfo missing, env->GetPathInfo(path));
  EXPECT_EQ(missing.kind, PathKind::kMissing);
  FileOpenOptions fo;
  fo.create = true;
  fo.direct = true;
  fo.lock = true;
  ASSERT_OK_AND_ASSIGN(auto file, env->OpenFile(path, fo));
  ASSERT_OK(file->Allocate(1 << 20));
  ASSERT_OK_AND_ASSIGN(uint64_t size, file->Size());
  EXPECT_EQ(size, 1u << 20);
  AlignedBuffer w(8192), r(8192);
  std::memset(w.data(), 0x3C, w.size());
  ASSERT_OK(file->WriteAt(4096, w.span()));
  ASSERT_OK(file->Sync());
  ASSERT_OK(file->ReadAt(4096, r.span()));
  EXPECT_EQ(std::memcmp(w.data(), r.data(), 8192), 0);
  EXPECT_THAT(file->ReadAt((1 << 20) - 4096, AlignedBuffer(8192).span()),
              StatusIs(absl::StatusCode::kOutOfRange, HasSubstr(path)));
  // The lock keeps a second opener out.
  EXPECT_THAT(env->OpenFile(path, fo),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("in use")));
  ASSERT_OK_AND_ASSIGN(PathInfo info, env->GetPathInfo(dir_));
  EXPECT_EQ(info.kind, PathKind::kDirectory);
  EXPECT_THAT(env->OpenFile(dir_ + "/none/f", fo),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr(dir_ + "/none/f")));
}

TEST_F(EnvTest, AsyncIoWritesReadsAndSyncs) {
  Env* env = Env::Default();
  FileOpenOptions fo;
  fo.create = true;
  fo.direct = true;
  ASSERT_OK_AND_ASSIGN(auto file, env->OpenFile(dir_ + "/a", fo));
  ASSERT_OK(file->Allocate(1 << 20));
  ASSERT_OK_AND_ASSIGN(auto io, env->NewAsyncIo(AsyncIoOptions{4}));
  AlignedBuffer buf(4 * 4096);
  for (int i = 0; i < 4; ++i) std::memset(buf.data() + i * 4096, i + 1, 4096);
  absl::Span<std::byte> whole = buf.span();
  ASSERT_OK(io->RegisterBuffers({&whole, 1}));
  std::vector<IoRequest> writes(4);
  for (int i = 0; i < 4; ++i) {
    writes[i] = IoRequest{IoOpcode::kWrite,
                          file.get(),
                          static_cast<uint64_t>(i) * 8192,
                          buf.data() + i * 4096,
                          4096,
                          i % 2 == 0 ? 0 : -1,
                          static_cast<uint64_t>(100 + i)};
  }
  ASSERT_OK(io->Submit(writes));
  std::vector<IoCompletion> done(4);
  size_t got = 0;
  while (got < 4) {
    ASSERT_OK_AND_ASSIGN(size_t n,
                         io->Reap(absl::MakeSpan(done).subspan(got), absl::InfiniteDuration()));
    got += n;
  }
  for (const IoCompletion& c : done) EXPECT_EQ(c.result, 4096) << c.tag;
  IoRequest sync{IoOpcode::kDataSync, file.get(), 0, nullptr, 0, -1, 7};
  ASSERT_OK(io->Submit({&sync, 1}));
  ASSERT_OK_AND_ASSIGN(size_t n, io->Reap(absl::MakeSpan(done), absl::InfiniteDuration()));
  ASSERT_EQ(n, 1u);
  EXPECT_EQ(done[0].tag, 7u);
  EXPECT_EQ(done[0].result, 0);
  AlignedBuffer back(4096);
  IoRequest read{IoOpcode::kRead, file.get(), 3 * 8192, back.data(), 4096, -1, 9};
  ASSERT_OK(io->Submit({&read, 1}));
  ASSERT_OK_AND_ASSIGN(n, io->Reap(absl::MakeSpan(done), absl::InfiniteDuration()));
  ASSERT_EQ(n, 1u);
  EXPECT_EQ(done[0].result, 4096);
  EXPECT_EQ(back.data()[0], std::byte{4});
  // An unaligned O_DIRECT read fails with a negative result, not a crash.
  IoRequest bad{IoOpcode::kRead, file.get(), 100, back.data(), 4096, -1, 10};
  ASSERT_OK(io->Submit({&bad, 1}));
  ASSERT_OK_AND_ASSIGN(n, io->Reap(absl::MakeSpan(done), absl::InfiniteDuration()));
  EXPECT_EQ(done[0].result, -EINVAL);
  // Nothing in flight: a timed wait returns empty-handed.
  ASSERT_OK_AND_ASSIGN(n, io->Reap(absl::MakeSpan(done), absl::Milliseconds(20)));
  EXPECT_EQ(n, 0u);
}

TEST_F(EnvTest, FaultEnvInjectsErrorsAndTornWrites) {
  FaultInjectionEnv env;
  FileOpenOptions fo;
  fo.create = true;
  fo.direct = true;
  ASSERT_OK_AND_ASSIGN(auto file, env.OpenFile(dir_ + "/f", fo));
  ASSERT_OK(file->Allocate(1 << 20));
  ASSERT_OK_AND_ASSIGN(auto io, env.NewAsyncIo(AsyncIoOptions{4}));
  AlignedBuffer buf(8192);
  std::memset(buf.data(), 0x77, buf.size());
  env.AddIoFault(IoFault{IoOpcode::kWrite, "", 0, EIO, 4096, 0, 1});
  IoRequest w{IoOpcode::kWrite, file.get(), 0, buf.data(), 8192, -1, 1};
  ASSERT_OK(io->Submit({&w, 1}));
  std::vector<IoCompletion> done(2);
  ASSERT_OK_AND_ASSIGN(size_t n, io->Reap(absl::MakeSpan(done), absl::InfiniteDuration()));
  ASSERT_EQ(n, 1u);
  EXPECT_EQ(done[0].result, -EIO);
  // The torn write left its first 4 KiB only.
  AlignedBuffer back(8192);
  ASSERT_OK(file->ReadAt(0, back.span()));
  EXPECT_EQ(back.data()[0], std::byte{0x77});
  EXPECT_EQ(back.data()[4096], std::byte{0});
  env.FailOpen("/g", EACCES);
  EXPECT_THAT(env.OpenFile(dir_ + "/g", fo), StatusIs(absl::StatusCode::kPermissionDenied));
}

TEST_F(EnvTest, FaultEnvDropsOnlyUnsyncedWrites) {
  FaultInjectionEnv env;
  FileOpenOptions fo;
  fo.create = true;
  fo.direct = true;
  std::string path = dir_ + "/f";
  {
    ASSERT_OK_AND_ASSIGN(auto file, env.OpenFile(path, fo));
    ASSERT_OK(file->Allocate(1 << 20));
    ASSERT_OK_AND_ASSIGN(auto io, env.NewAsyncIo(AsyncIoOptions{4}));
    env.TrackUnsynced(true);
    AlignedBuffer a(4096), b(4096);
    std::memset(a.data(), 0xAA, 4096);
    std::memset(b.data(), 0xBB, 4096);
    std::vector<IoCompletion> done(2);
    IoRequest wa{IoOpcode::kWrite, file.get(), 0, a.data(), 4096, -1, 1};
    ASSERT_OK(io->Submit({&wa, 1}));
    ASSERT_OK(io->Reap(absl::MakeSpan(done), absl::InfiniteDuration()).status());
    IoRequest sync{IoOpcode::kDataSync, file.get(), 0, nullptr, 0, -1, 2};
    ASSERT_OK(io->Submit({&sync, 1}));
    ASSERT_OK(io->Reap(absl::MakeSpan(done), absl::InfiniteDuration()).status());
    IoRequest wb{IoOpcode::kWrite, file.get(), 8192, b.data(), 4096, -1, 3};
    ASSERT_OK(io->Submit({&wb, 1}));
    ASSERT_OK(io->Reap(absl::MakeSpan(done), absl::InfiniteDuration()).status());
    EXPECT_EQ(env.unsynced_writes(), 1u);
    env.Crash();
    EXPECT_THAT(file->Sync(), StatusIs(absl::StatusCode::kUnavailable));
  }
  ASSERT_OK(env.DropUnsyncedWrites(1, 0.0));
  ASSERT_OK_AND_ASSIGN(auto file, Env::Default()->OpenFile(path, FileOpenOptions{}));
  std::vector<std::byte> back(4096);
  ASSERT_OK(file->ReadAt(0, absl::MakeSpan(back)));
  EXPECT_EQ(back[0], std::byte{0xAA});  // synced: kept
  ASSERT_OK(file->ReadAt(8192, absl::MakeSpan(back)));
  EXPECT_EQ(back[0], std::byte{0});  // not synced: lost
}

}  // namespace
}  // namespace kvtier
