#include "src/tiers/nvme/nvme_tier.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "src/common/bytes.h"
#include "src/core/hash.h"
#include "src/tiers/nvme/nvme_format.h"
#include "tests/testing/fault_env.h"
#include "tests/testing/status_matchers.h"
#include "tests/unit/tiers/nvme_crash_options.h"
#include "tests/unit/tiers/nvme_test_util.h"

namespace kvtier {
namespace {

using ::kvtier::nvme_test::kNs;
using ::kvtier::nvme_test::MakeChunk;
using ::kvtier::nvme_test::TempDir;
using ::kvtier::nvme_test::TestChunk;
using ::kvtier::testing::FaultInjectionEnv;
using ::kvtier::testing::IoFault;
using ::kvtier::testing::StatusIs;
using ::testing::AllOf;
using ::testing::AnyOf;
using ::testing::HasSubstr;

constexpr size_t k64K = 64 << 10;
constexpr size_t k256K = 256 << 10;
constexpr size_t k1M = 1 << 20;
constexpr size_t k4M = 4 << 20;

// A class holding `slots` chunks of `payload` bytes.
NvmeSlotClass Class(size_t payload, uint64_t slots) {
  uint64_t max_chunk = payload + kChunkHeaderBytes;
  return NvmeSlotClass{max_chunk, slots * (AlignUp(max_chunk, 4096) + 4096)};
}

NvmeTierOptions Options(const std::string& dir, std::vector<NvmeSlotClass> classes,
                        Env* env = nullptr) {
  NvmeTierOptions o;
  o.path = dir;
  o.slot_classes = std::move(classes);
  o.queue_depth = 8;
  o.max_inflight_bytes = 32 << 20;
  o.clean_slots = 0;  // evict only on demand, so eviction counts are exact
  o.env = env;
  return o;
}

// On-demand slot sizes: a volume of `capacity` bytes in regions of
// `region` bytes.
NvmeTierOptions RegionOptions(const std::string& dir, uint64_t capacity, uint64_t region = 4 << 20,
                              Env* env = nullptr) {
  NvmeTierOptions o = Options(dir, {}, env);
  o.capacity_bytes = capacity;
  o.region_bytes = region;
  return o;
}

BlockKey Key(uint64_t i) { return BlockKey{0xABCD, i}; }

// Reads `key` through the sync API into a fresh buffer and compares it with
// `expected`.
void ExpectStored(NvmeTier& tier, const TestChunk& expected) {
  std::vector<std::byte> out(expected.encoded.size() + 100);
  absl::StatusOr<size_t> n =
      tier.Get(expected.meta.namespace_id, expected.meta.key, absl::MakeSpan(out));
  ASSERT_TRUE(n.ok()) << n.status();
  ASSERT_EQ(*n, expected.encoded.size());
  out.resize(*n);
  EXPECT_TRUE(out == expected.encoded) << "bytes differ for " << expected.meta.key.ToHex();
}

// Returns the slot holding `key` by reading every commit record of the
// closed volume at `path`.
std::optional<uint32_t> SlotOf(const std::string& path, const BlockKey& key,
                               nvme::VolumeGeometry* geometry_out = nullptr) {
  std::ifstream f(path, std::ios::binary);
  std::vector<char> sector(4096);
  f.read(sector.data(), 4096);
  absl::StatusOr<nvme::Superblock> sb =
      nvme::DecodeSuperblock({reinterpret_cast<const std::byte*>(sector.data()), sector.size()});
  if (!sb.ok()) return std::nullopt;
  if (geometry_out != nullptr) *geometry_out = sb->geometry;
  for (uint32_t s = 0; s < sb->geometry.total_slots; ++s) {
    f.seekg(static_cast<std::streamoff>(sb->geometry.SlotOffset(s)));
    f.read(sector.data(), 4096);
    nvme::SlotRecord r = nvme::DecodeSlotRecord(
        {reinterpret_cast<const std::byte*>(sector.data()), sector.size()}, sb->generation, s);
    if (r.kind == nvme::SlotRecordKind::kCommitted && r.chunk.key == key) return s;
  }
  return std::nullopt;
}

void FlipByte(const std::string& path, uint64_t offset) {
  int fd = ::open(path.c_str(), O_RDWR);
  ASSERT_GE(fd, 0);
  unsigned char b = 0;
  ASSERT_EQ(::pread(fd, &b, 1, static_cast<off_t>(offset)), 1);
  b ^= 0x5A;
  ASSERT_EQ(::pwrite(fd, &b, 1, static_cast<off_t>(offset)), 1);
  ::fsync(fd);
  ::close(fd);
}

bool IsRoot() { return ::geteuid() == 0; }

// ---- options and open errors --------------------------------------------------

TEST(NvmeTier, BadOptionsNameTheField) {
  TempDir dir;
  auto check = [&](NvmeTierOptions o, const char* field) {
    EXPECT_THAT(NvmeTier::Create(o),
                StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr(field)));
  };
  NvmeTierOptions o = Options(dir.path(), {Class(k64K, 4)});
  o.path = "";
  check(o, "path");
  o = Options(dir.path(), {});
  check(o, "capacity_bytes");
  o = Options(dir.path(), {Class(k64K, 4)});
  o.capacity_bytes = 64 << 20;
  check(o, "capacity_bytes");
  o = RegionOptions(dir.path(), 64 << 20, (1 << 20) + 4096);
  check(o, "region_bytes");
  o = RegionOptions(dir.path(), 1 << 20, 4 << 20);
  check(o, "capacity_bytes");
  o = RegionOptions(dir.path(), 256 << 20, 64 << 20);
  o.max_inflight_bytes = 4 << 20;  // below the largest slot of a 64 MiB region
  check(o, "max_inflight_bytes");
  o = Options(dir.path(), {Class(k64K, 4)});
  o.durability = "fsync";
  check(o, "durability");
  o = Options(dir.path(), {Class(k256K, 4), Class(k64K, 4)});
  check(o, "slot_classes[1].max_chunk_bytes");
  o = Options(dir.path(), {NvmeSlotClass{k64K, 100}});
  check(o, "slot_classes[0].capacity_bytes");
  o = Options(dir.path(), {NvmeSlotClass{10, 1 << 20}});
  check(o, "slot_classes[0].max_chunk_bytes");
  o = Options(dir.path(), {Class(k64K, 4)});
  o.io_mode = "mmap";
  check(o, "io_mode");
  o = Options(dir.path(), {Class(k64K, 4)});
  o.queue_depth = 0;
  check(o, "queue_depth");
  o = Options(dir.path(), {Class(k1M, 4)});
  o.max_inflight_bytes = 64 << 10;
  check(o, "max_inflight_bytes");
  o = Options(dir.path(), {Class(k64K, 4)});
  o.eviction_policy = "random";
  check(o, "eviction_policy");
  o = Options(dir.path(), {Class(k64K, 4)});
  o.clean_slots = -2;
  check(o, "clean_slots");
}

TEST(NvmeTier, MissingFolderIsNotFoundNamingThePath) {
  TempDir dir;
  std::string missing = dir.path() + "/does-not-exist";
  EXPECT_THAT(NvmeTier::Create(Options(missing, {Class(k64K, 4)})),
              StatusIs(absl::StatusCode::kNotFound,
                       AllOf(HasSubstr(missing), HasSubstr("No such file or directory"))));
}

// Mounts a small file system for the test's lifetime (root only).
class Mount {
 public:
  Mount(const std::string& dir, const std::string& command) : dir_(dir) {
    ok_ = IsRoot() && nvme_test::Run("mkdir -p " + dir + " && " + command + " 2>/dev/null");
  }
  ~Mount() {
    if (ok_) nvme_test::Run("umount " + dir_);
  }
  bool ok() const { return ok_; }

 private:
  std::string dir_;
  bool ok_ = false;
};

TEST(NvmeTier, ReadOnlyFolderIsPermissionDenied) {
  TempDir dir;
  std::string ro = dir.path() + "/ro";
  std::optional<Mount> mount;
  if (IsRoot()) {
    // Root ignores permission bits: use a read-only file system instead.
    mount.emplace(ro, "mount -t tmpfs -o ro,size=1m tmpfs " + ro);
    if (!mount->ok()) GTEST_SKIP() << "cannot mount a read-only tmpfs here";
  } else {
    ASSERT_TRUE(nvme_test::Run("mkdir " + ro + " && chmod 0555 " + ro));
  }
  NvmeTierOptions o = Options(ro, {Class(k64K, 4)});
  o.io_mode = "buffered";
  EXPECT_THAT(NvmeTier::Create(o),
              StatusIs(absl::StatusCode::kPermissionDenied,
                       AllOf(HasSubstr(ro), AnyOf(HasSubstr("Read-only file system"),
                                                  HasSubstr("Permission denied")))));
}

TEST(NvmeTier, InjectedReadOnlyAndEnospcAtCreate) {
  TempDir dir;
  FaultInjectionEnv env;
  env.FailOpen("kvtier-nvme.dat", EROFS);
  EXPECT_THAT(NvmeTier::Create(Options(dir.path(), {Class(k64K, 4)}, &env)),
              StatusIs(absl::StatusCode::kPermissionDenied,
                       AllOf(HasSubstr(dir.volume()), HasSubstr("Read-only file system"))));
  env.ClearFaults();
  env.FailAllocate(ENOSPC);
  EXPECT_THAT(NvmeTier::Create(Options(dir.path(), {Class(k64K, 4)}, &env)),
              StatusIs(absl::StatusCode::kResourceExhausted,
                       AllOf(HasSubstr(dir.volume()), HasSubstr("No space left on device"))));
  // The half-made volume file is gone.
  EXPECT_FALSE(std::filesystem::exists(dir.volume()));
}

TEST(NvmeTier, DirectRefusedByTheFileSystemSuggestsBuffered) {
  TempDir dir;
  FaultInjectionEnv env;
  env.FailOpen("kvtier-nvme.dat", EINVAL, /*direct_only=*/true);
  EXPECT_THAT(NvmeTier::Create(Options(dir.path(), {Class(k64K, 4)}, &env)),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       AllOf(HasSubstr("io_mode"), HasSubstr("buffered"), HasSubstr("O_DIRECT"),
                             HasSubstr(dir.volume()))));
  NvmeTierOptions o = Options(dir.path(), {Class(k64K, 4)}, &env);
  o.io_mode = "buffered";
  ASSERT_OK_AND_ASSIGN(auto tier, NvmeTier::Create(o));
  TestChunk c = MakeChunk(Key(1), k64K);
  ASSERT_OK(tier->Put(c.meta, c.encoded));
  ExpectStored(*tier, c);
  EXPECT_EQ(tier->DetailedStats().io_mode, "buffered");
}

TEST(NvmeTier, EnospcOnATinyExt4VolumeFailsCreate) {
  if (!IsRoot()) GTEST_SKIP() << "mounting a loop ext4 image needs root";
  TempDir dir;
  std::string image = dir.path() + "/fs.img";
  std::string mnt = dir.path() + "/mnt";
  if (!nvme_test::Run("truncate -s 8M " + image + " && mkfs.ext4 -q -F " + image +
                      " >/dev/null 2>&1")) {
    GTEST_SKIP() << "mkfs.ext4 is not available";
  }
  Mount m(mnt, "mount -o loop " + image + " " + mnt);
  if (!m.ok()) GTEST_SKIP() << "cannot loop-mount an ext4 image here";
  EXPECT_THAT(
      NvmeTier::Create(Options(mnt, {Class(k1M, 32)})),
      StatusIs(absl::StatusCode::kResourceExhausted,
               AllOf(HasSubstr(mnt + "/kvtier-nvme.dat"), HasSubstr("No space left on device"))));
  EXPECT_FALSE(std::filesystem::exists(mnt + "/kvtier-nvme.dat"));
  // A volume that fits works on the same file system, with O_DIRECT.
  ASSERT_OK_AND_ASSIGN(auto tier, NvmeTier::Create(Options(mnt, {Class(k64K, 8)})));
  TestChunk c = MakeChunk(Key(1), k64K);
  ASSERT_OK(tier->Put(c.meta, c.encoded));
  ExpectStored(*tier, c);
  ASSERT_OK(tier->Close());
}

TEST(NvmeTier, EnospcOnATinyTmpfsFailsCreateInBufferedMode) {
  if (!IsRoot()) GTEST_SKIP() << "mounting tmpfs needs root";
  TempDir dir;
  std::string mnt = dir.path() + "/mnt";
  Mount m(mnt, "mount -t tmpfs -o size=4m tmpfs " + mnt);
  if (!m.ok()) GTEST_SKIP() << "cannot mount tmpfs here";
  NvmeTierOptions o = Options(mnt, {Class(k1M, 8)});
  o.io_mode = "buffered";
  EXPECT_THAT(NvmeTier::Create(o),
              StatusIs(absl::StatusCode::kResourceExhausted, HasSubstr("No space left on device")));
}

// ---- round trips ----------------------------------------------------------------

// (payload bytes, durability, layout)
class NvmeRoundTrip
    : public ::testing::TestWithParam<std::tuple<size_t, std::string, std::string>> {};

TEST_P(NvmeRoundTrip, PutGetByteIdentical) {
  const auto& [payload, durability, layout] = GetParam();
  TempDir dir;
  NvmeTierOptions o = layout == "regions"
                          ? RegionOptions(dir.path(), 128 << 20, 32 << 20)
                          : Options(dir.path(), {Class(k256K, 4), Class(k1M, 4), Class(k4M, 4)});
  o.durability = durability;
  ASSERT_OK_AND_ASSIGN(auto tier, NvmeTier::Create(o));
  std::vector<TestChunk> chunks;
  for (uint64_t i = 0; i < 3; ++i) chunks.push_back(MakeChunk(Key(i + 1), payload));
  // Sync Put, async Put with a callback, and the future form.
  ASSERT_OK(tier->Put(chunks[0].meta, chunks[0].encoded));
  std::promise<absl::Status> p;
  ASSERT_OK(
      tier->PutAsync(chunks[1].meta, chunks[1].encoded, [&p](absl::Status s) { p.set_value(s); }));
  ASSERT_OK(p.get_future().get());
  ASSERT_OK(tier->PutAsync(chunks[2].meta, chunks[2].encoded).get());

  for (const TestChunk& c : chunks) {
    ASSERT_TRUE(tier->Contains(kNs, c.meta.key));
    ExpectStored(*tier, c);
    // Aligned and unaligned buffers alike are read through the staging
    // memory (stage_reads, the default; direct reads are tested below).
    ASSERT_OK_AND_ASSIGN(NvmeChunkInfo info, tier->Describe(kNs, c.meta.key));
    EXPECT_EQ(info.encoded_bytes, c.encoded.size());
    AlignedBuffer aligned(info.direct_bytes);
    ASSERT_OK_AND_ASSIGN(size_t n, tier->GetAsync(kNs, c.meta.key, aligned.span()).get());
    ASSERT_EQ(n, c.encoded.size());
    EXPECT_EQ(std::memcmp(aligned.data(), c.encoded.data(), n), 0);
    AlignedBuffer unaligned(info.direct_bytes + 4096);
    absl::Span<std::byte> shifted = unaligned.span().subspan(8, c.encoded.size());
    ASSERT_OK_AND_ASSIGN(n, tier->GetAsync(kNs, c.meta.key, shifted).get());
    EXPECT_EQ(std::memcmp(shifted.data(), c.encoded.data(), n), 0);
  }
  TierStats s = tier->Stats();
  EXPECT_EQ(s.tier, Tier::kNvme);
  EXPECT_EQ(s.chunks, 3u);
  EXPECT_EQ(s.saves, 3u);
  EXPECT_EQ(s.hits, 9u);
  EXPECT_EQ(s.bytes_written, 3 * payload);
  EXPECT_EQ(s.corrupt_chunks, 0u);
  NvmeTierStats d = tier->DetailedStats();
  EXPECT_EQ(d.staged_reads, 9u);
  EXPECT_EQ(d.direct_reads, 0u);
  EXPECT_EQ(d.io_mode, "direct");
  EXPECT_EQ(d.open_source, "new");
  EXPECT_EQ(d.durability, durability);
  EXPECT_EQ(d.layout, layout);
  // "power" flushes each step; "process" flushes only region headers.
  const uint64_t region_flushes = layout == "regions" ? 1 : 0;
  if (durability == "power") {
    EXPECT_GE(d.flushes, region_flushes + 2);
  } else {
    EXPECT_EQ(d.flushes, region_flushes);
    ASSERT_OK(tier->Flush());  // makes completed saves power-safe
    EXPECT_EQ(tier->DetailedStats().flushes, region_flushes + 1);
  }
  if (layout == "regions") {
    EXPECT_EQ(d.regions_assigned, 1u);
    ASSERT_EQ(d.slot_sizes.size(), 1u);
    EXPECT_GE(d.slot_sizes[0], payload + kChunkHeaderBytes);
    EXPECT_LE(d.slot_sizes[0], (payload + kChunkHeaderBytes) * 9 / 8 + 4096);
    EXPECT_EQ(s.capacity_bytes, d.regions * (32u << 20));
  }
}

INSTANTIATE_TEST_SUITE_P(Sizes, NvmeRoundTrip,
                         ::testing::Combine(::testing::Values(k256K, k1M, k4M),
                                            ::testing::Values("process", "power"),
                                            ::testing::Values("classes", "regions")),
                         [](const auto& info) {
                           return absl::StrCat(std::get<0>(info.param) >> 10, "KiB_",
                                               std::get<1>(info.param), "_",
                                               std::get<2>(info.param));
                         });

TEST(NvmeTier, GetRejectsSmallBuffersAndReportsMisses) {
  TempDir dir;
  ASSERT_OK_AND_ASSIGN(auto tier, NvmeTier::Create(Options(dir.path(), {Class(k64K, 4)})));
  TestChunk c = MakeChunk(Key(1), k64K);
  ASSERT_OK(tier->Put(c.meta, c.encoded));
  std::vector<std::byte> small(c.encoded.size() - 1);
  EXPECT_THAT(tier->Get(kNs, Key(1), absl::MakeSpan(small)),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("out")));
  std::vector<std::byte> out(c.encoded.size());
  EXPECT_THAT(tier->Get(kNs, Key(2), absl::MakeSpan(out)), StatusIs(absl::StatusCode::kNotFound));
  EXPECT_THAT(tier->Get(kNs + 1, Key(1), absl::MakeSpan(out)),
              StatusIs(absl::StatusCode::kNotFound));
  EXPECT_FALSE(tier->CouldExist(kNs, Key(2)));
  EXPECT_TRUE(tier->CouldExist(kNs, Key(1)));
  EXPECT_EQ(tier->Stats().misses, 2u);
}

TEST(NvmeTier, PutRejectsBadChunks) {
  TempDir dir;
  ASSERT_OK_AND_ASSIGN(auto tier, NvmeTier::Create(Options(dir.path(), {Class(k64K, 4)})));
  TestChunk c = MakeChunk(Key(1), k64K);
  ChunkMeta wrong = c.meta;
  wrong.key = Key(2);
  EXPECT_THAT(tier->Put(wrong, c.encoded),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("meta")));
  std::vector<std::byte> damaged = c.encoded;
  damaged[1000] ^= std::byte{1};
  EXPECT_THAT(tier->Put(c.meta, damaged),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("checksum")));
  EXPECT_FALSE(tier->CouldExist(kNs, Key(1)));
  TestChunk big = MakeChunk(Key(3), k256K);
  EXPECT_THAT(tier->Put(big.meta, big.encoded),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("largest slot class")));
  EXPECT_THAT(tier->Put(c.meta, absl::MakeSpan(c.encoded).subspan(0, 100)),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("encoded")));
  // The tier still works.
  ASSERT_OK(tier->Put(c.meta, c.encoded));
  ExpectStored(*tier, c);
}

TEST(NvmeTier, SavingAStoredKeyChangesNothing) {
  TempDir dir;
  ASSERT_OK_AND_ASSIGN(auto tier, NvmeTier::Create(Options(dir.path(), {Class(k64K, 4)})));
  TestChunk c = MakeChunk(Key(1), k64K);
  // Two saves of the same key in flight at once: the second joins the first.
  auto f1 = tier->PutAsync(c.meta, c.encoded);
  auto f2 = tier->PutAsync(c.meta, c.encoded);
  ASSERT_OK(f1.get());
  ASSERT_OK(f2.get());
  ASSERT_OK(tier->Put(c.meta, c.encoded));
  EXPECT_EQ(tier->Stats().saves, 1u);
  EXPECT_EQ(tier->Stats().chunks, 1u);
  ExpectStored(*tier, c);
}

TEST(NvmeTier, SyncCallsFromACallbackAreRefused) {
  TempDir dir;
  ASSERT_OK_AND_ASSIGN(auto tier, NvmeTier::Create(Options(dir.path(), {Class(k64K, 4)})));
  TestChunk c = MakeChunk(Key(1), k64K);
  std::promise<absl::Status> inner;
  ASSERT_OK(tier->PutAsync(c.meta, c.encoded, [&](absl::Status) {
    std::vector<std::byte> out(c.encoded.size());
    inner.set_value(tier->Get(kNs, Key(1), absl::MakeSpan(out)).status());
  }));
  EXPECT_THAT(inner.get_future().get(),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("callback")));
}

TEST(NvmeTier, SecondOpenOfTheSameVolumeFails) {
  TempDir dir;
  ASSERT_OK_AND_ASSIGN(auto tier, NvmeTier::Create(Options(dir.path(), {Class(k64K, 4)})));
  NvmeTierOptions o = Options(dir.path(), {Class(k64K, 4)});
  o.lock_wait_ms = 100;
  EXPECT_THAT(NvmeTier::Create(o),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("in use")));
}

TEST(NvmeTier, ReopenWithOtherSlotClassesFails) {
  TempDir dir;
  { ASSERT_OK_AND_ASSIGN(auto tier, NvmeTier::Create(Options(dir.path(), {Class(k64K, 4)}))); }
  EXPECT_THAT(NvmeTier::Create(Options(dir.path(), {Class(k64K, 8)})),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("slot_classes")));
}

// ---- restart ---------------------------------------------------------------------

// Saves a few chains over two classes and returns the chunks.
std::vector<TestChunk> SaveChains(NvmeTier& tier, int chains) {
  std::vector<TestChunk> chunks;
  for (int c = 0; c < chains; ++c) {
    BlockKey parent;
    for (int i = 0; i < 3; ++i) {
      BlockKey key = Key(static_cast<uint64_t>(c * 10 + i + 1));
      chunks.push_back(MakeChunk(key, i == 2 ? k256K : k64K, parent));
      EXPECT_OK(tier.Put(chunks.back().meta, chunks.back().encoded));
      parent = key;
    }
  }
  return chunks;
}

void ExpectAllStored(NvmeTier& tier, const std::vector<TestChunk>& chunks) {
  for (const TestChunk& c : chunks) {
    ASSERT_TRUE(tier.Contains(kNs, c.meta.key)) << c.meta.key.ToHex();
    ExpectStored(tier, c);
    ASSERT_OK_AND_ASSIGN(NvmeChunkInfo info, tier.Describe(kNs, c.meta.key));
    EXPECT_EQ(info.meta.parent, c.meta.parent);
    EXPECT_EQ(info.meta.num_tokens, c.meta.num_tokens);
  }
}

TEST(NvmeTier, ReopenRebuildsTheIndexByScanning) {
  TempDir dir;
  // Small slots are scanned in multi-slot runs, large ones sector by sector.
  NvmeTierOptions o = Options(dir.path(), {Class(4000, 300), Class(k64K, 16), Class(k256K, 8)});
  o.write_snapshot = false;
  std::vector<TestChunk> chunks;
  {
    ASSERT_OK_AND_ASSIGN(auto tier, NvmeTier::Create(o));
    chunks = SaveChains(*tier, 4);
    for (uint64_t i = 0; i < 290; ++i) {
      chunks.push_back(MakeChunk(Key(5000 + i), 4000));
      ASSERT_OK(tier->PutAsync(chunks.back().meta, chunks.back().encoded).get());
    }
    ASSERT_OK(tier->Remove(kNs, Key(5000)));
    chunks.erase(chunks.end() - 290);
  }
  ASSERT_OK_AND_ASSIGN(auto tier, NvmeTier::Create(o));
  NvmeTierStats d = tier->DetailedStats();
  EXPECT_EQ(d.open_source, "scan");
  EXPECT_EQ(d.recovered_chunks, chunks.size());
  EXPECT_EQ(d.damaged_records, 0u);
  ExpectAllStored(*tier, chunks);
  EXPECT_FALSE(tier->Contains(kNs, Key(5000)));  // removed before the restart
  // New saves after a scan do not collide with recovered ones.
  TestChunk more = MakeChunk(Key(99), k64K);
  ASSERT_OK(tier->Put(more.meta, more.encoded));
  chunks.push_back(more);
  ExpectAllStored(*tier, chunks);
}

TEST(NvmeTier, ReopenUsesTheSnapshotAndNeverTrustsItAfterACrash) {
  TempDir dir;
  NvmeTierOptions o = Options(dir.path(), {Class(k64K, 16), Class(k256K, 8)});
  o.durability = "power";  // the simulated power loss keeps only flushed writes
  std::vector<TestChunk> chunks;
  {
    ASSERT_OK_AND_ASSIGN(auto tier, NvmeTier::Create(o));
    chunks = SaveChains(*tier, 3);
    ASSERT_OK(tier->Remove(kNs, chunks[0].meta.key));
    chunks.erase(chunks.begin());
    ASSERT_OK(tier->Close());
  }
  FaultInjectionEnv env;
  o.env = &env;
  {
    ASSERT_OK_AND_ASSIGN(auto tier, NvmeTier::Create(o));
    EXPECT_EQ(tier->DetailedStats().open_source, "snapshot");
    EXPECT_EQ(tier->DetailedStats().recovered_chunks, chunks.size());
    ExpectAllStored(*tier, chunks);
    EXPECT_FALSE(tier->Contains(kNs, Key(1)));
    // More saves, then the process "dies": every later write fails, so Close
    // cannot write a new snapshot.
    TestChunk more = MakeChunk(Key(77), k64K);
    ASSERT_OK(tier->Put(more.meta, more.encoded));
    chunks.push_back(more);
    env.Crash();
    EXPECT_FALSE(tier->Close().ok());
  }
  ASSERT_OK(env.DropUnsyncedWrites(1, 1.0));
  ASSERT_OK_AND_ASSIGN(auto tier, NvmeTier::Create(o));
  // The snapshot read at the previous open was invalidated on disk, so this
  // open scans and finds the chunk saved after it.
  EXPECT_EQ(tier->DetailedStats().open_source, "scan");
  ExpectAllStored(*tier, chunks);
  EXPECT_FALSE(tier->Contains(kNs, Key(1)));
}

TEST(NvmeTier, CorruptSnapshotIsIgnored) {
  for (int variant = 0; variant < 2; ++variant) {
    SCOPED_TRACE(variant == 0 ? "records" : "header");
    TempDir dir;
    NvmeTierOptions o = Options(dir.path(), {Class(k64K, 16), Class(k256K, 8)});
    std::vector<TestChunk> chunks;
    {
      ASSERT_OK_AND_ASSIGN(auto tier, NvmeTier::Create(o));
      chunks = SaveChains(*tier, 3);
    }
    nvme::VolumeGeometry g;
    ASSERT_TRUE(SlotOf(dir.volume(), chunks[0].meta.key, &g).has_value());
    FlipByte(dir.volume(), g.snapshot_offset + (variant == 0 ? 4096 + 40 : 48));
    ASSERT_OK_AND_ASSIGN(auto tier, NvmeTier::Create(o));
    NvmeTierStats d = tier->DetailedStats();
    EXPECT_EQ(d.open_source, "scan");
    EXPECT_THAT(d.snapshot_rejected, HasSubstr("checksum"));
    ExpectAllStored(*tier, chunks);
  }
}

TEST(NvmeTier, RemoveIsDurable) {
  TempDir dir;
  NvmeTierOptions o = Options(dir.path(), {Class(k64K, 4)});
  o.write_snapshot = false;
  TestChunk a = MakeChunk(Key(1), k64K);
  TestChunk b = MakeChunk(Key(2), k64K);
  {
    ASSERT_OK_AND_ASSIGN(auto tier, NvmeTier::Create(o));
    ASSERT_OK(tier->Put(a.meta, a.encoded));
    ASSERT_OK(tier->Put(b.meta, b.encoded));
    ASSERT_OK(tier->Remove(kNs, Key(1)));
    EXPECT_THAT(tier->Remove(kNs, Key(1)), StatusIs(absl::StatusCode::kNotFound));
    EXPECT_FALSE(tier->Contains(kNs, Key(1)));
    EXPECT_EQ(tier->DetailedStats().removes, 1u);
  }
  ASSERT_OK_AND_ASSIGN(auto tier, NvmeTier::Create(o));
  EXPECT_FALSE(tier->Contains(kNs, Key(1)));
  ExpectStored(*tier, b);
}

// ---- failed opens -------------------------------------------------------------------

std::string FileBytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::ostringstream s;
  s << f.rdbuf();
  return s.str();
}

// Counts the requests an AsyncIo was given and the completions it handed
// back, and hands back at most one completion per Reap, so a caller that
// stops reaping at the first bad completion leaves the others unreaped.
class ReapCountingEnv : public EnvWrapper {
 public:
  using EnvWrapper::EnvWrapper;

  absl::StatusOr<std::unique_ptr<AsyncIo>> NewAsyncIo(const AsyncIoOptions& options) override {
    absl::StatusOr<std::unique_ptr<AsyncIo>> io = target()->NewAsyncIo(options);
    if (!io.ok()) return io.status();
    return std::unique_ptr<AsyncIo>(new CountingIo(*std::move(io), &unreaped_));
  }

  // Requests submitted but not reaped when their AsyncIo was destroyed.
  uint64_t unreaped() const { return unreaped_.load(); }

 private:
  class CountingIo final : public AsyncIo {
   public:
    CountingIo(std::unique_ptr<AsyncIo> base, std::atomic<uint64_t>* unreaped)
        : base_(std::move(base)), unreaped_(unreaped) {}
    ~CountingIo() override { *unreaped_ += submitted_.load() - reaped_.load(); }

    uint32_t depth() const override { return base_->depth(); }
    absl::Status RegisterBuffers(absl::Span<const absl::Span<std::byte>> buffers) override {
      return base_->RegisterBuffers(buffers);
    }
    absl::Status Submit(absl::Span<const IoRequest> requests) override {
      absl::Status s = base_->Submit(requests);
      if (s.ok()) submitted_ += requests.size();
      return s;
    }
    absl::StatusOr<size_t> Reap(absl::Span<IoCompletion> out, absl::Duration timeout) override {
      absl::StatusOr<size_t> n =
          base_->Reap(out.subspan(0, std::min<size_t>(out.size(), 1)), timeout);
      if (n.ok()) reaped_ += *n;
      return n;
    }

   private:
    std::unique_ptr<AsyncIo> base_;
    std::atomic<uint64_t>* unreaped_;
    std::atomic<uint64_t> submitted_{0};
    std::atomic<uint64_t> reaped_{0};
  };

  std::atomic<uint64_t> unreaped_{0};
};

// Fails I/O at one offset of the volume, which FaultInjectionEnv cannot aim
// at: asynchronous reads there (the request becomes a no-op whose result is
// rewritten to EIO), synchronous reads or writes there (EIO). It can also
// fail the first Reap of its AsyncIo, and then counts (and refuses) any
// later use of that ring.
class SectorFaultEnv : public EnvWrapper {
 public:
  explicit SectorFaultEnv(Env* target = Env::Default()) : EnvWrapper(target) {}

  void FailAsyncReadsAt(uint64_t offset) { async_read_offset_ = offset; }
  void FailSyncReadsAt(uint64_t offset) { sync_read_offset_ = offset; }
  void FailSyncWritesAt(uint64_t offset) { sync_write_offset_ = offset; }
  void FailFirstReap() { fail_first_reap_ = true; }

  uint64_t faults_fired() const { return fired_.load(); }
  // Submit or Reap calls on a ring after its Reap failed.
  uint64_t reused() const { return reused_.load(); }

  absl::StatusOr<std::unique_ptr<File>> OpenFile(const std::string& path,
                                                 const FileOpenOptions& options) override {
    absl::StatusOr<std::unique_ptr<File>> f = target()->OpenFile(path, options);
    if (!f.ok()) return f.status();
    return std::unique_ptr<File>(new FaultyFile(*std::move(f), this));
  }

  absl::StatusOr<std::unique_ptr<AsyncIo>> NewAsyncIo(const AsyncIoOptions& options) override {
    absl::StatusOr<std::unique_ptr<AsyncIo>> io = target()->NewAsyncIo(options);
    if (!io.ok()) return io.status();
    return std::unique_ptr<AsyncIo>(new FaultyIo(*std::move(io), this));
  }

 private:
  static constexpr uint64_t kNone = ~0ull;

  class FaultyFile final : public File {
   public:
    FaultyFile(std::unique_ptr<File> base, SectorFaultEnv* env)
        : base_(std::move(base)), env_(env) {}
    const std::string& path() const override { return base_->path(); }
    bool is_block_device() const override { return base_->is_block_device(); }
    absl::Status ReadAt(uint64_t offset, absl::Span<std::byte> dst) override {
      if (offset == env_->sync_read_offset_) return env_->Fire("read");
      return base_->ReadAt(offset, dst);
    }
    absl::Status WriteAt(uint64_t offset, absl::Span<const std::byte> src) override {
      if (offset == env_->sync_write_offset_) return env_->Fire("write");
      return base_->WriteAt(offset, src);
    }
    absl::Status Sync() override { return base_->Sync(); }
    absl::StatusOr<uint64_t> Size() override { return base_->Size(); }
    absl::Status Allocate(uint64_t bytes) override { return base_->Allocate(bytes); }
    int NativeHandle() const override { return base_->NativeHandle(); }

   private:
    std::unique_ptr<File> base_;
    SectorFaultEnv* env_;
  };

  class FaultyIo final : public AsyncIo {
   public:
    FaultyIo(std::unique_ptr<AsyncIo> base, SectorFaultEnv* env)
        : base_(std::move(base)), env_(env) {}

    uint32_t depth() const override { return base_->depth(); }
    absl::Status RegisterBuffers(absl::Span<const absl::Span<std::byte>> buffers) override {
      return base_->RegisterBuffers(buffers);
    }
    absl::Status Submit(absl::Span<const IoRequest> requests) override {
      if (broken_) {
        ++env_->reused_;
        return absl::FailedPreconditionError("ring used after its failure");
      }
      std::vector<IoRequest> copy(requests.begin(), requests.end());
      for (IoRequest& r : copy) {
        if (r.opcode != IoOpcode::kRead || r.offset != env_->async_read_offset_) continue;
        r.opcode = IoOpcode::kNop;
        ++env_->fired_;
        std::lock_guard<std::mutex> lock(mu_);
        faulted_.insert(r.tag);
      }
      return base_->Submit(copy);
    }
    absl::StatusOr<size_t> Reap(absl::Span<IoCompletion> out, absl::Duration timeout) override {
      if (broken_) {
        ++env_->reused_;
        return absl::FailedPreconditionError("ring used after its failure");
      }
      if (env_->fail_first_reap_.exchange(false)) {
        broken_ = true;
        ++env_->fired_;
        return absl::UnavailableError("injected reap failure");
      }
      absl::StatusOr<size_t> n = base_->Reap(out, timeout);
      if (!n.ok()) return n;
      std::lock_guard<std::mutex> lock(mu_);
      for (size_t i = 0; i < *n; ++i) {
        if (faulted_.erase(out[i].tag) > 0) out[i].result = -EIO;
      }
      return n;
    }

   private:
    std::unique_ptr<AsyncIo> base_;
    SectorFaultEnv* env_;
    std::atomic<bool> broken_{false};
    std::mutex mu_;
    std::multiset<uint64_t> faulted_;
  };

  absl::Status Fire(const char* what) {
    ++fired_;
    return ErrnoToStatus(EIO, absl::StrCat("injected ", what, " fault"));
  }

  std::atomic<uint64_t> async_read_offset_{kNone};
  std::atomic<uint64_t> sync_read_offset_{kNone};
  std::atomic<uint64_t> sync_write_offset_{kNone};
  std::atomic<bool> fail_first_reap_{false};
  std::atomic<uint64_t> fired_{0};
  std::atomic<uint64_t> reused_{0};
};

// Waits (up to 10 s) until `done` holds.
template <typename F>
bool Eventually(F done) {
  for (int i = 0; i < 1000; ++i) {
    if (done()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return done();
}

TEST(NvmeTier, AFailedOpenWritesNoSnapshotAndLosesNothing) {
  TempDir dir;
  NvmeTierOptions o = Options(dir.path(), {Class(k64K, 16)});
  TestChunk a = MakeChunk(Key(1), k64K);
  {
    NvmeTierOptions first = o;
    first.write_snapshot = false;  // the next open scans
    ASSERT_OK_AND_ASSIGN(auto tier, NvmeTier::Create(first));
    ASSERT_OK(tier->Put(a.meta, a.encoded));
  }
  {
    FaultInjectionEnv env;
    NvmeTierOptions faulty = o;
    faulty.env = &env;
    env.AddIoFault(IoFault{IoOpcode::kRead, "", 0, EIO, 0, 0, 1});
    EXPECT_THAT(NvmeTier::Create(faulty),
                StatusIs(absl::StatusCode::kUnavailable, HasSubstr("recovery read")));
    EXPECT_EQ(env.faults_fired(), 1u);
  }
  // The failed open left no (empty) snapshot behind: this open scans and
  // finds the chunk.
  ASSERT_OK_AND_ASSIGN(auto tier, NvmeTier::Create(o));
  NvmeTierStats d = tier->DetailedStats();
  EXPECT_EQ(d.open_source, "scan");
  EXPECT_EQ(d.recovered_chunks, 1u);
  ExpectStored(*tier, a);
}

TEST(NvmeTier, AFailedOpenLeavesTheVolumeByteIdentical) {
  TempDir dir;
  NvmeTierOptions o = Options(dir.path(), {Class(k64K, 4)});
  TestChunk a = MakeChunk(Key(1), k64K);
  {
    ASSERT_OK_AND_ASSIGN(auto tier, NvmeTier::Create(o));
    ASSERT_OK(tier->Put(a.meta, a.encoded));
  }
  const std::string before = FileBytes(dir.volume());
  ASSERT_FALSE(before.empty());
  EXPECT_THAT(NvmeTier::Create(Options(dir.path(), {Class(k64K, 8)})),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("slot_classes")));
  EXPECT_TRUE(FileBytes(dir.volume()) == before) << "another geometry";
  EXPECT_THAT(NvmeTier::Create(RegionOptions(dir.path(), 64 << 20)),
              StatusIs(absl::StatusCode::kFailedPrecondition));
  EXPECT_TRUE(FileBytes(dir.volume()) == before) << "another layout";
  // The volume still opens from its snapshot.
  ASSERT_OK_AND_ASSIGN(auto tier, NvmeTier::Create(o));
  EXPECT_EQ(tier->DetailedStats().open_source, "snapshot");
  ExpectStored(*tier, a);
}

// A first start that stopped after allocating the volume file and before
// writing its superblock leaves a file of zeros: the next start formats it
// instead of refusing to start until someone deletes it.
TEST(NvmeTier, AVolumeFileOfZerosIsFormatted) {
  TempDir dir;
  NvmeTierOptions o = Options(dir.path(), {Class(k64K, 4)});
  {
    std::ofstream f(dir.volume(), std::ios::binary);
    const std::string zeros(1 << 20, '\0');
    for (int i = 0; i < 4; ++i) f.write(zeros.data(), static_cast<std::streamsize>(zeros.size()));
  }
  ASSERT_OK_AND_ASSIGN(auto tier, NvmeTier::Create(o));
  EXPECT_EQ(tier->DetailedStats().open_source, "new");
  TestChunk a = MakeChunk(Key(1), k64K);
  ASSERT_OK(tier->Put(a.meta, a.encoded));
  ExpectStored(*tier, a);
  tier.reset();
  // A file with other bytes is still not taken.
  {
    std::fstream f(dir.volume(), std::ios::binary | std::ios::in | std::ios::out);
    f.write("junk", 4);
  }
  EXPECT_THAT(NvmeTier::Create(o), StatusIs(absl::StatusCode::kFailedPrecondition,
                                            HasSubstr("does not hold a kvtier NVMe volume")));
}

TEST(NvmeTier, AFailedRecoveryReadWaitsForTheReadsStillInFlight) {
  TempDir dir;
  NvmeTierOptions o = Options(dir.path(), {Class(k64K, 16)});
  o.write_snapshot = false;  // the next open scans 16 commit sectors, 8 at a time
  {
    ASSERT_OK_AND_ASSIGN(auto tier, NvmeTier::Create(o));
    TestChunk a = MakeChunk(Key(1), k64K);
    ASSERT_OK(tier->Put(a.meta, a.encoded));
  }
  FaultInjectionEnv faults;
  ReapCountingEnv env(&faults);
  o.env = &env;
  // The first read of the scan fails at once, while the others of its window
  // are still in flight into the scan's buffer.
  faults.AddIoFault(IoFault{IoOpcode::kRead, "", 0, EIO, 0, 0, 1});
  EXPECT_THAT(NvmeTier::Create(o),
              StatusIs(absl::StatusCode::kUnavailable, HasSubstr("recovery read")));
  EXPECT_EQ(faults.faults_fired(), 1u);
  EXPECT_EQ(env.unreaped(), 0u);
}

// Drops `c` from `tier` through a failed read (its record stays on disk: a
// leftover copy) and returns the offset of its slot's commit sector.
uint64_t DropLeavingACopy(FaultInjectionEnv& env, NvmeTier& tier, const TestChunk& c) {
  absl::StatusOr<NvmeChunkInfo> info = tier.Describe(kNs, c.meta.key);
  EXPECT_TRUE(info.ok()) << info.status();
  env.AddIoFault(IoFault{IoOpcode::kRead, "", 0, EIO, 0, 0, 1});
  std::vector<std::byte> out(c.encoded.size());
  EXPECT_THAT(tier.Get(kNs, c.meta.key, absl::MakeSpan(out)),
              StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_FALSE(tier.Contains(kNs, c.meta.key));
  return info.ok() ? info->volume_offset : 0;
}

// A volume whose snapshot lists one free slot that still holds a's record
// (its commit sector is read at open); b is live. Returns that sector's
// offset.
uint64_t MakeSnapshotWithALeftoverCopy(const NvmeTierOptions& o, const TestChunk& a,
                                       const TestChunk& b) {
  FaultInjectionEnv env;
  NvmeTierOptions first = o;
  first.env = &env;
  first.write_snapshot = true;
  absl::StatusOr<std::unique_ptr<NvmeTier>> tier = NvmeTier::Create(first);
  EXPECT_TRUE(tier.ok()) << tier.status();
  if (!tier.ok()) return 0;
  EXPECT_OK((*tier)->Put(a.meta, a.encoded));
  EXPECT_OK((*tier)->Put(b.meta, b.encoded));
  const uint64_t sector = DropLeavingACopy(env, **tier, a);
  EXPECT_OK((*tier)->Close());
  return sector;
}

TEST(NvmeTier, ARingThatFailsWhileReadingTheSnapshotsSlotsFailsTheOpenUnused) {
  TempDir dir;
  NvmeTierOptions o = Options(dir.path(), {Class(k64K, 4)});
  TestChunk a = MakeChunk(Key(1), k64K);
  TestChunk b = MakeChunk(Key(2), k64K);
  MakeSnapshotWithALeftoverCopy(o, a, b);
  {
    SectorFaultEnv env;
    env.FailFirstReap();  // the read of the free slot's commit sector
    NvmeTierOptions faulty = o;
    faulty.env = &env;
    EXPECT_THAT(NvmeTier::Create(faulty), StatusIs(absl::StatusCode::kUnavailable,
                                                   AllOf(HasSubstr("the snapshot was not used"),
                                                         HasSubstr("injected reap failure"))));
    EXPECT_EQ(env.faults_fired(), 1u);
    // Its read may still complete into the ring: no scan reads through it.
    EXPECT_EQ(env.reused(), 0u);
  }
  // The failed open left the volume as it was.
  ASSERT_OK_AND_ASSIGN(auto tier, NvmeTier::Create(o));
  EXPECT_EQ(tier->DetailedStats().open_source, "snapshot");
  ExpectStored(*tier, b);
}

TEST(NvmeTier, ASnapshotThatCannotBeReadSaysWhy) {
  TempDir dir;
  NvmeTierOptions o = Options(dir.path(), {Class(k64K, 4)});
  TestChunk a = MakeChunk(Key(1), k64K);
  TestChunk b = MakeChunk(Key(2), k64K);
  MakeSnapshotWithALeftoverCopy(o, a, b);
  nvme::VolumeGeometry g;
  ASSERT_TRUE(SlotOf(dir.volume(), Key(2), &g).has_value());
  SectorFaultEnv env;
  env.FailSyncReadsAt(g.snapshot_offset + 4096);  // its records
  o.env = &env;
  ASSERT_OK_AND_ASSIGN(auto tier, NvmeTier::Create(o));
  NvmeTierStats d = tier->DetailedStats();
  EXPECT_EQ(env.faults_fired(), 1u);
  EXPECT_EQ(d.open_source, "scan");
  EXPECT_THAT(d.snapshot_rejected, HasSubstr("cannot read the snapshot records"));
  ExpectStored(*tier, b);
}

// ---- leftover copies ---------------------------------------------------------------

// A slot whose chunk left without its commit record being overwritten (a
// failed read dropped it, or a save evicted it and failed) still holds the
// chunk's record: a later Remove of the same key must cover it too.
class NvmeLeftoverCopy : public ::testing::TestWithParam<std::string> {
 protected:
  NvmeTierOptions Opts(const std::string& dir, uint64_t slots, Env* env) {
    NvmeTierOptions o = Options(dir, {Class(k64K, slots)}, env);
    o.durability = GetParam();
    o.write_snapshot = false;  // Close as after a crash: the next open scans
    return o;
  }
};

// Get with an injected read error: the chunk is dropped, its record stays.
void DropByAFailedRead(FaultInjectionEnv& env, NvmeTier& tier, const TestChunk& c) {
  env.AddIoFault(IoFault{IoOpcode::kRead, "", 0, EIO, 0, 0, 1});
  std::vector<std::byte> out(c.encoded.size());
  EXPECT_THAT(tier.Get(kNs, c.meta.key, absl::MakeSpan(out)),
              StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_FALSE(tier.Contains(kNs, c.meta.key));
}

TEST_P(NvmeLeftoverCopy, ARemovedChunkStaysRemovedAfterAFailedRead) {
  TempDir dir;
  FaultInjectionEnv env;
  NvmeTierOptions o = Opts(dir.path(), 4, &env);
  TestChunk a = MakeChunk(Key(1), k64K);
  {
    ASSERT_OK_AND_ASSIGN(auto tier, NvmeTier::Create(o));
    ASSERT_OK(tier->Put(a.meta, a.encoded));
    DropByAFailedRead(env, *tier, a);
    ASSERT_OK(tier->Put(a.meta, a.encoded));  // into another (clean) slot
    ASSERT_OK(tier->Remove(kNs, Key(1)));
  }
  ASSERT_OK_AND_ASSIGN(auto tier, NvmeTier::Create(o));
  EXPECT_EQ(tier->DetailedStats().open_source, "scan");
  EXPECT_FALSE(tier->Contains(kNs, Key(1)));
  EXPECT_EQ(tier->DetailedStats().recovered_chunks, 0u);
}

TEST_P(NvmeLeftoverCopy, ARemovedChunkStaysRemovedAfterASaveEvictedItAndFailed) {
  TempDir dir;
  FaultInjectionEnv env;
  NvmeTierOptions o = Opts(dir.path(), 2, &env);
  TestChunk a = MakeChunk(Key(1), k64K);
  TestChunk b = MakeChunk(Key(2), k64K);
  TestChunk c = MakeChunk(Key(3), k64K);
  {
    ASSERT_OK_AND_ASSIGN(auto tier, NvmeTier::Create(o));
    ASSERT_OK(tier->Put(a.meta, a.encoded));
    ASSERT_OK(tier->Put(b.meta, b.encoded));
    // c evicts a, and fails before a's record is overwritten: "process"
    // fails the save's one write and the tombstone retiring it, "power" the
    // tombstone that comes first.
    const int64_t writes = GetParam() == "process" ? 2 : 1;
    env.AddIoFault(IoFault{IoOpcode::kWrite, "", 0, EIO, 0, 0, writes});
    EXPECT_FALSE(tier->Put(c.meta, c.encoded).ok());
    EXPECT_EQ(env.faults_fired(), static_cast<uint64_t>(writes));
    EXPECT_FALSE(tier->Contains(kNs, Key(1)));
    ASSERT_OK(tier->Remove(kNs, Key(2)));     // frees a clean slot
    ASSERT_OK(tier->Put(a.meta, a.encoded));  // a goes there
    ASSERT_OK(tier->Remove(kNs, Key(1)));
  }
  ASSERT_OK_AND_ASSIGN(auto tier, NvmeTier::Create(o));
  EXPECT_FALSE(tier->Contains(kNs, Key(1)));
  EXPECT_FALSE(tier->Contains(kNs, Key(2)));
  EXPECT_FALSE(tier->Contains(kNs, Key(3)));
}

TEST_P(NvmeLeftoverCopy, ALeftoverCopyIsStillCoveredAfterAReopenFromTheSnapshot) {
  TempDir dir;
  FaultInjectionEnv env;
  NvmeTierOptions o = Opts(dir.path(), 4, &env);
  TestChunk a = MakeChunk(Key(1), k64K);
  {
    NvmeTierOptions snapshot = o;
    snapshot.write_snapshot = true;
    ASSERT_OK_AND_ASSIGN(auto tier, NvmeTier::Create(snapshot));
    ASSERT_OK(tier->Put(a.meta, a.encoded));
    DropByAFailedRead(env, *tier, a);
  }
  {
    ASSERT_OK_AND_ASSIGN(auto tier, NvmeTier::Create(o));
    EXPECT_EQ(tier->DetailedStats().open_source, "snapshot");
    EXPECT_FALSE(tier->Contains(kNs, Key(1)));
    ASSERT_OK(tier->Put(a.meta, a.encoded));
    ASSERT_OK(tier->Remove(kNs, Key(1)));
  }
  ASSERT_OK_AND_ASSIGN(auto tier, NvmeTier::Create(o));
  EXPECT_EQ(tier->DetailedStats().open_source, "scan");
  EXPECT_FALSE(tier->Contains(kNs, Key(1)));
}

TEST_P(NvmeLeftoverCopy, KeysOfListsLeftoverCopiesSoRemovingANamespaceCoversThem) {
  TempDir dir;
  FaultInjectionEnv env;
  NvmeTierOptions o = Opts(dir.path(), 4, &env);
  TestChunk a = MakeChunk(Key(1), k64K);
  TestChunk b = MakeChunk(Key(2), k64K);
  TestChunk other = MakeChunk(Key(3), k64K, BlockKey{}, kNs + 1);
  {
    ASSERT_OK_AND_ASSIGN(auto tier, NvmeTier::Create(o));
    ASSERT_OK(tier->Put(a.meta, a.encoded));
    ASSERT_OK(tier->Put(b.meta, b.encoded));
    ASSERT_OK(tier->Put(other.meta, other.encoded));
    DropLeavingACopy(env, *tier, a);
    EXPECT_EQ(tier->DetailedStats().leftover_copies, 1u);
    // As the embedded cache's RemoveNamespace does: Remove every key listed.
    std::vector<BlockKey> keys = tier->KeysOf(kNs);
    EXPECT_THAT(keys, ::testing::UnorderedElementsAre(Key(1), Key(2)));
    for (const BlockKey& k : keys) {
      EXPECT_THAT(tier->Remove(kNs, k),
                  AnyOf(StatusIs(absl::StatusCode::kOk), StatusIs(absl::StatusCode::kNotFound)));
    }
    EXPECT_TRUE(tier->KeysOf(kNs).empty());
    EXPECT_EQ(tier->DetailedStats().leftover_copies, 0u);
    EXPECT_EQ(tier->KeysOf(kNs + 1).size(), 1u);
  }
  ASSERT_OK_AND_ASSIGN(auto tier, NvmeTier::Create(o));
  EXPECT_EQ(tier->DetailedStats().open_source, "scan");
  EXPECT_FALSE(tier->Contains(kNs, Key(1)));
  EXPECT_FALSE(tier->Contains(kNs, Key(2)));
  ExpectStored(*tier, other);
}

TEST_P(NvmeLeftoverCopy, AnUnreadableSlotListedByTheSnapshotIsTombstonedNotFatal) {
  TempDir dir;
  NvmeTierOptions o = Opts(dir.path(), 4, nullptr);
  TestChunk a = MakeChunk(Key(1), k64K);
  TestChunk b = MakeChunk(Key(2), k64K);
  const uint64_t sector = MakeSnapshotWithALeftoverCopy(o, a, b);
  {
    SectorFaultEnv env;
    env.FailAsyncReadsAt(sector);  // every read of a's old commit sector
    NvmeTierOptions faulty = o;
    faulty.env = &env;
    ASSERT_OK_AND_ASSIGN(auto tier, NvmeTier::Create(faulty));
    NvmeTierStats d = tier->DetailedStats();
    EXPECT_EQ(env.faults_fired(), 1u);
    EXPECT_EQ(d.open_source, "snapshot");
    EXPECT_EQ(d.snapshot_rejected, "");
    EXPECT_EQ(d.read_errors, 1u);
    EXPECT_EQ(d.tombstones, 1u);  // over the record it could not read
    EXPECT_EQ(d.withheld_slots, 0u);
    ExpectStored(*tier, b);
    ASSERT_OK(tier->Put(a.meta, a.encoded));
    ASSERT_OK(tier->Remove(kNs, Key(1)));
  }
  // Reopened as after a crash: the old record of a did not come back.
  ASSERT_OK_AND_ASSIGN(auto tier, NvmeTier::Create(o));
  EXPECT_EQ(tier->DetailedStats().open_source, "scan");
  EXPECT_FALSE(tier->Contains(kNs, Key(1)));
  ExpectStored(*tier, b);
}

TEST_P(NvmeLeftoverCopy, AnUnreadableSlotThatCannotBeTombstonedIsWithheld) {
  TempDir dir;
  NvmeTierOptions o = Opts(dir.path(), 2, nullptr);
  TestChunk a = MakeChunk(Key(1), k64K);
  TestChunk b = MakeChunk(Key(2), k64K);
  TestChunk c = MakeChunk(Key(3), k64K);
  const uint64_t sector = MakeSnapshotWithALeftoverCopy(o, a, b);
  {
    SectorFaultEnv env;
    env.FailAsyncReadsAt(sector);
    env.FailSyncWritesAt(sector);
    NvmeTierOptions faulty = o;
    faulty.env = &env;
    faulty.write_snapshot = true;
    ASSERT_OK_AND_ASSIGN(auto tier, NvmeTier::Create(faulty));
    NvmeTierStats d = tier->DetailedStats();
    EXPECT_EQ(env.faults_fired(), 2u);
    EXPECT_EQ(d.open_source, "snapshot");
    EXPECT_EQ(d.withheld_slots, 1u);
    // The withheld slot is not used: c evicts b instead.
    ASSERT_OK(tier->Put(c.meta, c.encoded));
    EXPECT_EQ(tier->Stats().evictions, 1u);
    EXPECT_FALSE(tier->Contains(kNs, Key(2)));
  }
  {
    // The snapshot still lists it; readable now, its record names a.
    ASSERT_OK_AND_ASSIGN(auto tier, NvmeTier::Create(o));
    NvmeTierStats d = tier->DetailedStats();
    EXPECT_EQ(d.open_source, "snapshot");
    EXPECT_EQ(d.withheld_slots, 0u);
    EXPECT_EQ(d.leftover_copies, 1u);
    EXPECT_THAT(tier->KeysOf(kNs), ::testing::UnorderedElementsAre(Key(1), Key(3)));
    EXPECT_THAT(tier->Remove(kNs, Key(1)), StatusIs(absl::StatusCode::kNotFound));
  }
  ASSERT_OK_AND_ASSIGN(auto tier, NvmeTier::Create(o));
  EXPECT_FALSE(tier->Contains(kNs, Key(1)));
  ExpectStored(*tier, c);
}

TEST_P(NvmeLeftoverCopy, APutOfTheSameKeyDuringARemoveIsANewChunkAndStays) {
  TempDir dir;
  FaultInjectionEnv env;
  NvmeTierOptions o = Opts(dir.path(), 4, &env);
  TestChunk a = MakeChunk(Key(1), k64K);
  {
    ASSERT_OK_AND_ASSIGN(auto tier, NvmeTier::Create(o));
    ASSERT_OK(tier->Put(a.meta, a.encoded));
    env.Hold(IoOpcode::kWrite);
    std::future<absl::Status> removed =
        std::async(std::launch::async, [&] { return tier->Remove(kNs, Key(1)); });
    ASSERT_TRUE(Eventually([&] { return env.held() == 1; }));  // the tombstone
    EXPECT_FALSE(tier->CouldExist(kNs, Key(1)));
    std::future<absl::Status> saved = tier->PutAsync(a.meta, a.encoded);
    ASSERT_TRUE(Eventually([&] { return env.held() == 2; }));  // the new save
    env.ReleaseHeld();
    ASSERT_OK(removed.get());
    ASSERT_OK(saved.get());
    EXPECT_EQ(tier->DetailedStats().removes, 1u);
    ExpectStored(*tier, a);
  }
  // Saved after the Remove: it survives a crash too.
  ASSERT_OK_AND_ASSIGN(auto tier, NvmeTier::Create(o));
  EXPECT_EQ(tier->DetailedStats().open_source, "scan");
  ExpectStored(*tier, a);
}

INSTANTIATE_TEST_SUITE_P(Modes, NvmeLeftoverCopy, ::testing::Values("process", "power"),
                         [](const auto& info) { return info.param; });

// "process": each failed save into a slot leaves its key there as a
// leftover copy (and the tombstone retiring it fails too). Past a few, the
// slot is kept out of use instead of remembering more.
TEST(NvmeTier, ASlotWhoseSavesKeepFailingIsWithheldRatherThanGrowing) {
  TempDir dir;
  FaultInjectionEnv env;
  NvmeTierOptions o = Options(dir.path(), {Class(k64K, 1)}, &env);
  o.write_snapshot = false;
  {
    ASSERT_OK_AND_ASSIGN(auto tier, NvmeTier::Create(o));
    env.AddIoFault(IoFault{IoOpcode::kWrite, "", 0, EIO, 0, 0, -1});
    uint64_t failed = 0;
    for (uint64_t i = 1; i <= 20; ++i) {
      TestChunk c = MakeChunk(Key(i), k64K);
      absl::Status s = tier->Put(c.meta, c.encoded);
      if (absl::IsResourceExhausted(s)) break;
      EXPECT_THAT(s, StatusIs(absl::StatusCode::kUnavailable));
      ++failed;
      // The save and the tombstone retiring its record both failed.
      ASSERT_TRUE(Eventually([&] { return tier->DetailedStats().write_errors == 2 * failed; }));
    }
    NvmeTierStats d = tier->DetailedStats();
    EXPECT_EQ(failed, 8u);
    EXPECT_EQ(d.leftover_copies, 8u);
    EXPECT_EQ(d.withheld_slots, 1u);
    env.ClearFaults();
    // A Remove of one of them tombstones the slot, which is then usable.
    EXPECT_THAT(tier->Remove(kNs, Key(3)), StatusIs(absl::StatusCode::kNotFound));
    d = tier->DetailedStats();
    EXPECT_EQ(d.leftover_copies, 0u);
    EXPECT_EQ(d.withheld_slots, 0u);
    TestChunk c = MakeChunk(Key(100), k64K);
    ASSERT_OK(tier->Put(c.meta, c.encoded));
    ExpectStored(*tier, c);
  }
  ASSERT_OK_AND_ASSIGN(auto tier, NvmeTier::Create(o));
  EXPECT_EQ(tier->DetailedStats().recovered_chunks, 1u);
  EXPECT_TRUE(tier->Contains(kNs, Key(100)));
}

TEST(NvmeTier, DirectReadsFillAnAlignedBufferAndStillCatchDamage) {
  TempDir dir;
  NvmeTierOptions o = Options(dir.path(), {Class(k256K, 4)});
  o.stage_reads = false;
  o.write_snapshot = false;
  std::vector<TestChunk> chunks;
  {
    ASSERT_OK_AND_ASSIGN(auto tier, NvmeTier::Create(o));
    for (uint64_t i = 0; i < 2; ++i) {
      chunks.push_back(MakeChunk(Key(i + 1), k256K));
      ASSERT_OK(tier->Put(chunks.back().meta, chunks.back().encoded));
    }
  }
  // One payload byte of chunk 1 flipped on disk.
  nvme::VolumeGeometry g;
  std::optional<uint32_t> slot = SlotOf(dir.volume(), chunks[1].meta.key, &g);
  ASSERT_TRUE(slot.has_value());
  FlipByte(dir.volume(), g.SlotOffset(*slot) + 4096 + 64 + 1000);
  ASSERT_OK_AND_ASSIGN(auto tier, NvmeTier::Create(o));
  ASSERT_OK_AND_ASSIGN(NvmeChunkInfo info, tier->Describe(kNs, chunks[0].meta.key));
  AlignedBuffer aligned(info.direct_bytes);
  ASSERT_OK_AND_ASSIGN(size_t n, tier->GetAsync(kNs, chunks[0].meta.key, aligned.span()).get());
  ASSERT_EQ(n, chunks[0].encoded.size());
  EXPECT_EQ(std::memcmp(aligned.data(), chunks[0].encoded.data(), n), 0);
  EXPECT_THAT(tier->GetAsync(kNs, chunks[1].meta.key, aligned.span()).get(),
              StatusIs(absl::StatusCode::kDataLoss, HasSubstr("checksum")));
  EXPECT_FALSE(tier->Contains(kNs, chunks[1].meta.key));
  // An unaligned buffer still goes through the staging memory.
  AlignedBuffer unaligned(info.direct_bytes + 4096);
  absl::Span<std::byte> shifted = unaligned.span().subspan(8, chunks[0].encoded.size());
  ASSERT_OK_AND_ASSIGN(n, tier->GetAsync(kNs, chunks[0].meta.key, shifted).get());
  EXPECT_EQ(std::memcmp(shifted.data(), chunks[0].encoded.data(), n), 0);
  NvmeTierStats d = tier->DetailedStats();
  EXPECT_EQ(d.direct_reads, 2u);
  EXPECT_EQ(d.staged_reads, 1u);
  EXPECT_EQ(tier->Stats().corrupt_chunks, 1u);
}

// ---- integrity -------------------------------------------------------------------

class NvmeDurability : public ::testing::TestWithParam<std::string> {};

TEST_P(NvmeDurability, FlippedBytesAreDetectedAndNeverServed) {
  TempDir dir;
  NvmeTierOptions o = Options(dir.path(), {Class(k64K, 40)});
  o.durability = GetParam();
  o.write_snapshot = false;
  std::vector<TestChunk> chunks;
  {
    ASSERT_OK_AND_ASSIGN(auto tier, NvmeTier::Create(o));
    for (uint64_t i = 0; i < 40; ++i) {
      chunks.push_back(MakeChunk(Key(i + 1), k64K));
      ASSERT_OK(tier->Put(chunks.back().meta, chunks.back().encoded));
    }
  }
  // Damage: chunks 0..9 in the payload, 10..14 in the chunk header, 15..19
  // in the commit record; 20..39 stay intact.
  std::mt19937_64 rng(42);
  nvme::VolumeGeometry g;
  for (uint64_t i = 0; i < 20; ++i) {
    std::optional<uint32_t> slot = SlotOf(dir.volume(), chunks[i].meta.key, &g);
    ASSERT_TRUE(slot.has_value());
    uint64_t base = g.SlotOffset(*slot);
    uint64_t offset;
    if (i < 10) {
      offset = base + 4096 + 64 + rng() % k64K;
    } else if (i < 15) {
      offset = base + 4096 + rng() % 64;
    } else {
      offset = base + rng() % 128;
    }
    FlipByte(dir.volume(), offset);
  }
  ASSERT_OK_AND_ASSIGN(auto tier, NvmeTier::Create(o));
  EXPECT_EQ(tier->DetailedStats().damaged_records, 5u);
  for (uint64_t i = 0; i < 40; ++i) {
    std::vector<std::byte> out(chunks[i].encoded.size());
    absl::StatusOr<size_t> n = tier->Get(kNs, chunks[i].meta.key, absl::MakeSpan(out));
    if (i < 15) {
      EXPECT_THAT(n, StatusIs(absl::StatusCode::kDataLoss)) << i;
      // Dropped: the next read is a plain miss.
      EXPECT_FALSE(tier->Contains(kNs, chunks[i].meta.key));
    } else if (i < 20) {
      EXPECT_THAT(n, StatusIs(absl::StatusCode::kNotFound)) << i;
    } else {
      ASSERT_TRUE(n.ok()) << n.status();
      EXPECT_TRUE(out == chunks[i].encoded) << i;
    }
  }
  EXPECT_EQ(tier->Stats().corrupt_chunks, 15u);
  EXPECT_EQ(tier->Stats().chunks, 20u);
  // Freed slots are reused.
  for (uint64_t i = 0; i < 20; ++i) {
    TestChunk c = MakeChunk(Key(100 + i), k64K);
    ASSERT_OK(tier->Put(c.meta, c.encoded));
    ExpectStored(*tier, c);
  }
  EXPECT_EQ(tier->Stats().evictions, 0u);
}

INSTANTIATE_TEST_SUITE_P(Modes, NvmeDurability, ::testing::Values("process", "power"),
                         [](const auto& info) { return info.param; });

// ---- faults at run time -------------------------------------------------------------

TEST(NvmeTier, InjectedWriteAndFlushErrorsFailThePut) {
  TempDir dir;
  FaultInjectionEnv env;
  NvmeTierOptions o = Options(dir.path(), {Class(k64K, 8)}, &env);
  o.durability = "power";
  ASSERT_OK_AND_ASSIGN(auto tier, NvmeTier::Create(o));
  TestChunk a = MakeChunk(Key(1), k64K);
  env.AddIoFault(IoFault{IoOpcode::kWrite, "", 0, EIO, 0, 0, 1});
  EXPECT_THAT(tier->Put(a.meta, a.encoded),
              StatusIs(absl::StatusCode::kUnavailable,
                       AllOf(HasSubstr("Input/output error"), HasSubstr(dir.volume()))));
  EXPECT_FALSE(tier->CouldExist(kNs, Key(1)));
  env.AddIoFault(IoFault{IoOpcode::kDataSync, "", 0, EIO, 0, 0, 1});
  EXPECT_THAT(tier->Put(a.meta, a.encoded),
              StatusIs(absl::StatusCode::kUnavailable, HasSubstr("fdatasync")));
  env.AddIoFault(IoFault{IoOpcode::kWrite, "", 4096, ENOSPC, 0, 0, 1});
  EXPECT_THAT(tier->Put(a.meta, a.encoded),
              StatusIs(absl::StatusCode::kResourceExhausted, HasSubstr("No space left on device")));
  EXPECT_EQ(env.faults_fired(), 3u);
  NvmeTierStats d = tier->DetailedStats();
  EXPECT_EQ(d.write_errors, 3u);
  EXPECT_EQ(d.tier.chunks, 0u);
  // Faults cleared: the same save works.
  ASSERT_OK(tier->Put(a.meta, a.encoded));
  ExpectStored(*tier, a);
}

TEST(NvmeTier, ProcessDurabilityFailsOnWriteErrorsAndReportsFlushErrorsFromFlush) {
  TempDir dir;
  FaultInjectionEnv env;
  ASSERT_OK_AND_ASSIGN(auto tier, NvmeTier::Create(Options(dir.path(), {Class(k64K, 8)}, &env)));
  EXPECT_EQ(tier->DetailedStats().durability, "process");
  TestChunk a = MakeChunk(Key(1), k64K);
  // One write per save: the commit record and the data area together.
  env.AddIoFault(IoFault{IoOpcode::kWrite, "", 4096 + (68 << 10), EIO, 0, 0, 1});
  EXPECT_THAT(tier->Put(a.meta, a.encoded), StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_FALSE(tier->CouldExist(kNs, Key(1)));
  // No flush on the save path: a failing fdatasync does not touch Put...
  ASSERT_OK(tier->Put(a.meta, a.encoded));
  EXPECT_EQ(tier->DetailedStats().flushes, 0u);
  // ...but Flush reports it.
  env.AddIoFault(IoFault{IoOpcode::kDataSync, "", 0, EIO, 0, 0, 1});
  EXPECT_FALSE(tier->Flush().ok());
  ASSERT_OK(tier->Flush());
  ExpectStored(*tier, a);
}

TEST(NvmeTier, InjectedReadErrorIsAMissAndDropsTheChunk) {
  TempDir dir;
  FaultInjectionEnv env;
  ASSERT_OK_AND_ASSIGN(auto tier, NvmeTier::Create(Options(dir.path(), {Class(k64K, 8)}, &env)));
  TestChunk a = MakeChunk(Key(1), k64K);
  ASSERT_OK(tier->Put(a.meta, a.encoded));
  env.AddIoFault(IoFault{IoOpcode::kRead, "", 0, EIO, 0, 0, 1});
  std::vector<std::byte> out(a.encoded.size());
  EXPECT_THAT(tier->Get(kNs, Key(1), absl::MakeSpan(out)),
              StatusIs(absl::StatusCode::kUnavailable, HasSubstr("Input/output error")));
  EXPECT_EQ(tier->DetailedStats().read_errors, 1u);
  EXPECT_FALSE(tier->Contains(kNs, Key(1)));
}

TEST(NvmeTier, TornWritesNeverBecomeVisible) {
  TempDir dir;
  FaultInjectionEnv env;
  NvmeTierOptions o = Options(dir.path(), {Class(k256K, 8)}, &env);
  o.durability = "power";  // a data write and a commit write per save
  o.write_snapshot = false;
  TestChunk intact = MakeChunk(Key(1), k256K);
  TestChunk torn_data = MakeChunk(Key(2), k256K);
  TestChunk torn_commit = MakeChunk(Key(3), k256K);
  {
    ASSERT_OK_AND_ASSIGN(auto tier, NvmeTier::Create(o));
    ASSERT_OK(tier->Put(intact.meta, intact.encoded));
    // The data write reaches the disk only in part.
    env.AddIoFault(IoFault{IoOpcode::kWrite, "", 0, EIO, 8192, 0, 1});
    EXPECT_THAT(tier->Put(torn_data.meta, torn_data.encoded),
                StatusIs(absl::StatusCode::kUnavailable));
    // The commit record write (4 KiB) is torn after its first 512 bytes.
    env.AddIoFault(IoFault{IoOpcode::kWrite, "", 4096, EIO, 512, 0, 1});
    EXPECT_THAT(tier->Put(torn_commit.meta, torn_commit.encoded),
                StatusIs(absl::StatusCode::kUnavailable));
    EXPECT_EQ(env.faults_fired(), 2u);
  }
  ASSERT_OK_AND_ASSIGN(auto tier, NvmeTier::Create(o));
  ExpectStored(*tier, intact);
  EXPECT_FALSE(tier->Contains(kNs, Key(2)));
  // The torn commit may have reached the disk whole (its record fits in the
  // first 512 bytes); then the chunk must be intact.
  if (tier->Contains(kNs, Key(3))) ExpectStored(*tier, torn_commit);
  EXPECT_EQ(tier->Stats().corrupt_chunks, 0u);
}

TEST(NvmeTier, ATornSaveWithProcessDurabilityIsRetiredAndNeverServed) {
  TempDir dir;
  FaultInjectionEnv env;
  NvmeTierOptions o = Options(dir.path(), {Class(k256K, 8)}, &env);
  o.write_snapshot = false;
  TestChunk intact = MakeChunk(Key(1), k256K);
  TestChunk retired = MakeChunk(Key(2), k256K);
  TestChunk stuck = MakeChunk(Key(3), k256K);
  {
    ASSERT_OK_AND_ASSIGN(auto tier, NvmeTier::Create(o));
    ASSERT_OK(tier->Put(intact.meta, intact.encoded));
    // The save's one write lands in part (its record and 4 KiB of data);
    // the tier then replaces the record with a tombstone.
    env.AddIoFault(IoFault{IoOpcode::kWrite, "", 0, EIO, 8192, 0, 1});
    EXPECT_THAT(tier->Put(retired.meta, retired.encoded), StatusIs(absl::StatusCode::kUnavailable));
    ASSERT_OK(tier->Close());  // waits for the tombstone
    EXPECT_EQ(tier->DetailedStats().tombstones, 1u);
  }
  {
    ASSERT_OK_AND_ASSIGN(auto tier, NvmeTier::Create(o));
    EXPECT_FALSE(tier->Contains(kNs, Key(2)));
    ExpectStored(*tier, intact);
    // Now the tombstone fails too: the record stays over partial data.
    env.AddIoFault(IoFault{IoOpcode::kWrite, "", 0, EIO, 8192, 0, 1});
    env.AddIoFault(IoFault{IoOpcode::kWrite, "", 4096, EIO, 0, 0, 1});
    EXPECT_THAT(tier->Put(stuck.meta, stuck.encoded), StatusIs(absl::StatusCode::kUnavailable));
    ASSERT_OK(tier->Close());
    EXPECT_EQ(env.faults_fired(), 3u);
  }
  ASSERT_OK_AND_ASSIGN(auto tier, NvmeTier::Create(o));
  ExpectStored(*tier, intact);
  EXPECT_FALSE(tier->Contains(kNs, Key(2)));
  // Listed from its record, but its bytes are refused, never served.
  ASSERT_TRUE(tier->Contains(kNs, Key(3)));
  std::vector<std::byte> out(stuck.encoded.size());
  EXPECT_THAT(tier->Get(kNs, Key(3), absl::MakeSpan(out)), StatusIs(absl::StatusCode::kDataLoss));
  EXPECT_FALSE(tier->Contains(kNs, Key(3)));
  EXPECT_EQ(tier->Stats().corrupt_chunks, 1u);
}

// Power cut in the middle of a write storm: every write not covered by a
// completed flush may be lost, sector by sector. Saves acknowledged before
// the cut (and not evicted since) must be intact, removed chunks must stay
// removed, and nothing visible may be damaged. With `evicting`, the storm
// overflows the tier, so slots of evicted chunks are rewritten.
void RunPowerLoss(uint64_t seed, bool evicting) {
  SCOPED_TRACE(absl::StrCat("seed ", seed, evicting ? " evicting" : ""));
  TempDir dir;
  FaultInjectionEnv env;
  NvmeTierOptions o =
      Options(dir.path(),
              evicting ? std::vector<NvmeSlotClass>{Class(k64K, 24), Class(k256K, 12)}
                       : std::vector<NvmeSlotClass>{Class(k64K, 96), Class(k256K, 48)},
              &env);
  o.queue_depth = 8;
  o.max_inflight_bytes = 4 << 20;
  // Evicting: some slots are tombstoned ahead of need, others on demand.
  if (evicting) o.clean_slots = 3;
  o.durability = "power";
  std::vector<TestChunk> all;
  std::set<uint64_t> removed;
  std::set<uint64_t> must_survive;  // acknowledged and still resident at the cut
  std::mutex mu;
  std::condition_variable cv;
  std::set<uint64_t> acked;
  uint64_t finished = 0;
  uint64_t submitted = 0;
  std::atomic<bool> crashed{false};
  {
    ASSERT_OK_AND_ASSIGN(auto tier, NvmeTier::Create(o));
    // Phase 1: durable chunks, half of them removed (their slots are reused
    // below, after tombstones).
    for (uint64_t i = 0; i < 20; ++i) {
      all.push_back(MakeChunk(Key(i + 1), i % 3 == 0 ? k256K : k64K));
      ASSERT_OK(tier->Put(all.back().meta, all.back().encoded));
      acked.insert(i);
    }
    for (uint64_t i = 0; i < 20; i += 2) {
      ASSERT_OK(tier->Remove(kNs, all[i].meta.key));
      removed.insert(i);
      acked.erase(i);
    }
    env.TrackUnsynced(true);
    // Phase 2: a storm of async saves; the power fails after a random
    // number of acknowledgements.
    std::mt19937_64 rng(seed);
    const uint64_t cut = 10 + rng() % 40;
    const uint64_t storm = 100;
    for (uint64_t i = 20; i < 20 + storm; ++i) {
      all.push_back(MakeChunk(Key(i + 1), i % 3 == 0 ? k256K : k64K));
    }
    std::thread crasher([&] {
      std::unique_lock<std::mutex> lock(mu);
      cv.wait(lock, [&] { return acked.size() >= 10 + cut || finished == storm; });
      env.Crash();
      crashed = true;
    });
    for (uint64_t i = 20; i < 20 + storm && !crashed; ++i) {
      for (;;) {
        absl::Status s = tier->PutAsync(all[i].meta, all[i].encoded, [&, i](absl::Status st) {
          std::lock_guard<std::mutex> lock(mu);
          if (st.ok()) acked.insert(i);
          ++finished;
          cv.notify_all();
        });
        if (s.ok()) {
          std::lock_guard<std::mutex> lock(mu);
          ++submitted;
          break;
        }
        // No room in flight, or every slot of the class busy: retry.
        if (!absl::IsUnavailable(s) && !absl::IsResourceExhausted(s)) {
          ADD_FAILURE() << s;
          break;
        }
        std::this_thread::sleep_for(std::chrono::microseconds(200));
      }
    }
    {
      std::unique_lock<std::mutex> lock(mu);
      cv.wait(lock, [&] { return finished == submitted; });
      finished = storm;  // releases the crasher if the storm ended first
      cv.notify_all();
    }
    crasher.join();
    ASSERT_OK(tier->Flush());
    for (uint64_t i : acked) {
      if (tier->Contains(kNs, all[i].meta.key)) must_survive.insert(i);
    }
    if (evicting) {
      EXPECT_GT(tier->Stats().evictions, 0u);
    } else {
      EXPECT_EQ(tier->Stats().evictions, 0u);
    }
    tier->Close().IgnoreError();
  }
  ASSERT_OK(env.DropUnsyncedWrites(seed, 0.5));
  o.env = nullptr;
  ASSERT_OK_AND_ASSIGN(auto tier, NvmeTier::Create(o));
  EXPECT_EQ(tier->DetailedStats().open_source, "scan");
  for (uint64_t i : must_survive) {
    ASSERT_TRUE(tier->Contains(kNs, all[i].meta.key)) << "acknowledged chunk " << i << " lost";
    ExpectStored(*tier, all[i]);
  }
  for (uint64_t i : removed) {
    EXPECT_FALSE(tier->Contains(kNs, all[i].meta.key)) << "removed chunk " << i << " is back";
  }
  // Anything else present (unacknowledged, or evicted before its slot was
  // rewritten) must be intact.
  for (uint64_t i = 0; i < all.size(); ++i) {
    if (must_survive.contains(i) || !tier->Contains(kNs, all[i].meta.key)) continue;
    ExpectStored(*tier, all[i]);
  }
  EXPECT_EQ(tier->Stats().corrupt_chunks, 0u);
}

// Power cut with durability "process": writes not covered by a flush may be
// lost or land partly, in any order, so unflushed saves may vanish and a
// commit record may describe other bytes. What must hold: chunks made
// durable by Flush() and still resident at the cut survive intact, removed
// chunks stay removed, and a read never returns bytes other than the
// chunk's own (a mismatch is a DataLoss miss).
// A save of the storm: done, or refused because every slot was busy or no
// room was in flight.
void CheckStormSave(const absl::Status& s) {
  EXPECT_TRUE(s.ok() || absl::IsResourceExhausted(s) || absl::IsUnavailable(s)) << s;
}

void RunProcessPowerLoss(uint64_t seed) {
  SCOPED_TRACE(absl::StrCat("seed ", seed));
  TempDir dir;
  FaultInjectionEnv env;
  // Small classes: the storm evicts, so slots are reused without flushes.
  NvmeTierOptions o = Options(dir.path(), {Class(k64K, 16), Class(k256K, 8)}, &env);
  o.queue_depth = 8;
  o.max_inflight_bytes = 4 << 20;
  o.clean_slots = 2;
  o.write_snapshot = false;
  std::vector<TestChunk> all;
  std::set<uint64_t> removed;
  std::set<uint64_t> flushed;  // made durable by Flush()
  std::set<uint64_t> must_survive;
  std::mt19937_64 rng(seed);
  {
    ASSERT_OK_AND_ASSIGN(auto tier, NvmeTier::Create(o));
    for (uint64_t i = 0; i < 12; ++i) {
      all.push_back(MakeChunk(Key(i + 1), i % 3 == 0 ? k256K : k64K));
      ASSERT_OK(tier->Put(all.back().meta, all.back().encoded));
    }
    for (uint64_t i = 0; i < 12; i += 3) {
      ASSERT_OK(tier->Remove(kNs, all[i].meta.key));
      removed.insert(i);
    }
    ASSERT_OK(tier->Flush());
    for (uint64_t i = 0; i < 12; ++i) {
      if (!removed.contains(i)) flushed.insert(i);
    }
    env.TrackUnsynced(true);
    const uint64_t storm = 60 + rng() % 40;
    std::vector<std::future<absl::Status>> futures;
    for (uint64_t i = 12; i < 12 + storm; ++i) {
      all.push_back(MakeChunk(Key(i + 1), i % 3 == 0 ? k256K : k64K));
      futures.push_back(tier->PutAsync(all.back().meta, all.back().encoded));
      if (futures.size() % 8 == 0) {
        for (auto& f : futures) CheckStormSave(f.get());
        futures.clear();
      }
    }
    for (auto& f : futures) CheckStormSave(f.get());
    EXPECT_GT(tier->Stats().evictions, 0u);
    EXPECT_GT(env.unsynced_writes(), 0u);
    for (uint64_t i : flushed) {
      if (tier->Contains(kNs, all[i].meta.key)) must_survive.insert(i);
    }
    env.Crash();
    tier->Close().IgnoreError();
  }
  // Each unflushed write of the storm reaches the disk or not, sector by
  // sector, at random.
  ASSERT_OK(env.DropUnsyncedWrites(seed, 0.5));
  o.env = nullptr;
  ASSERT_OK_AND_ASSIGN(auto tier, NvmeTier::Create(o));
  for (uint64_t i : must_survive) {
    ASSERT_TRUE(tier->Contains(kNs, all[i].meta.key)) << "flushed chunk " << i << " lost";
    ExpectStored(*tier, all[i]);
  }
  for (uint64_t i : removed) {
    EXPECT_FALSE(tier->Contains(kNs, all[i].meta.key)) << "removed chunk " << i << " is back";
  }
  for (uint64_t i = 0; i < all.size(); ++i) {
    if (!tier->Contains(kNs, all[i].meta.key)) continue;
    std::vector<std::byte> out(all[i].encoded.size());
    absl::StatusOr<size_t> n = tier->Get(kNs, all[i].meta.key, absl::MakeSpan(out));
    if (n.ok()) {
      EXPECT_TRUE(out == all[i].encoded) << "chunk " << i << " served with other bytes";
    } else {
      EXPECT_THAT(n, StatusIs(absl::StatusCode::kDataLoss)) << i;
    }
  }
}

TEST(NvmeTier, ProcessDurabilityPowerLossNeverServesOtherBytes) {
  for (uint64_t seed = 1; seed <= 5; ++seed) RunProcessPowerLoss(seed);
}

TEST(NvmeTier, PowerLossLosesNothingAcknowledged) {
  for (uint64_t seed = 1; seed <= 5; ++seed) RunPowerLoss(seed, /*evicting=*/false);
}

TEST(NvmeTier, PowerLossWhileEvictingNeverExposesStaleSlots) {
  for (uint64_t seed = 1; seed <= 5; ++seed) RunPowerLoss(seed, /*evicting=*/true);
}

// ---- eviction, pinning and backpressure ---------------------------------------------

TEST(NvmeTier, EvictsChainTailsFirstInLruOrder) {
  TempDir dir;
  ASSERT_OK_AND_ASSIGN(auto tier, NvmeTier::Create(Options(dir.path(), {Class(k64K, 4)})));
  // Chain 1 <- 2 <- 3 and a lone chunk 4.
  TestChunk c1 = MakeChunk(Key(1), k64K);
  TestChunk c2 = MakeChunk(Key(2), k64K, Key(1));
  TestChunk c3 = MakeChunk(Key(3), k64K, Key(2));
  TestChunk c4 = MakeChunk(Key(4), k64K);
  for (const TestChunk* c : {&c1, &c2, &c3, &c4}) ASSERT_OK(tier->Put(c->meta, c->encoded));
  // Reading 4 makes 3 the least recently used tail.
  ExpectStored(*tier, c4);
  TestChunk c5 = MakeChunk(Key(5), k64K);
  ASSERT_OK(tier->Put(c5.meta, c5.encoded));
  EXPECT_FALSE(tier->Contains(kNs, Key(3)));
  // Now 2 is a tail and older than 4 and 5; 1 still has a child.
  TestChunk c6 = MakeChunk(Key(6), k64K);
  ASSERT_OK(tier->Put(c6.meta, c6.encoded));
  EXPECT_FALSE(tier->Contains(kNs, Key(2)));
  EXPECT_TRUE(tier->Contains(kNs, Key(1)));
  TestChunk c7 = MakeChunk(Key(7), k64K);
  ASSERT_OK(tier->Put(c7.meta, c7.encoded));
  EXPECT_FALSE(tier->Contains(kNs, Key(1)));
  EXPECT_TRUE(tier->Contains(kNs, Key(4)));
  EXPECT_EQ(tier->Stats().evictions, 3u);
}

TEST(NvmeTier, CleanSlotsAreKeptReadyByEvictingEarly) {
  TempDir dir;
  NvmeTierOptions o = Options(dir.path(), {Class(k64K, 32)});
  o.durability = "power";  // "process" saves need no clean slots
  o.clean_slots = 4;
  ASSERT_OK_AND_ASSIGN(auto tier, NvmeTier::Create(o));
  std::vector<TestChunk> chunks;
  for (uint64_t i = 0; i < 40; ++i) {
    chunks.push_back(MakeChunk(Key(i + 1), k64K));
    ASSERT_OK(tier->Put(chunks.back().meta, chunks.back().encoded));
  }
  ASSERT_OK(tier->Flush());
  // Four slots stay free (tombstoned ahead of need); the newest 28 chunks
  // are resident.
  TierStats s = tier->Stats();
  EXPECT_EQ(s.chunks, 28u);
  EXPECT_EQ(s.evictions, 12u);
  for (uint64_t i = 12; i < 40; ++i) ExpectStored(*tier, chunks[i]);
  for (uint64_t i = 0; i < 12; ++i) EXPECT_FALSE(tier->Contains(kNs, chunks[i].meta.key));
  EXPECT_GE(tier->DetailedStats().tombstones, 12u);
}

TEST(NvmeTier, AChildSavedBeforeItsParentStillProtectsIt) {
  TempDir dir;
  ASSERT_OK_AND_ASSIGN(auto tier, NvmeTier::Create(Options(dir.path(), {Class(k64K, 3)})));
  // Demotion from DRAM sends tails first: the child arrives before its parent.
  TestChunk child = MakeChunk(Key(2), k64K, Key(1));
  TestChunk parent = MakeChunk(Key(1), k64K);
  TestChunk other = MakeChunk(Key(3), k64K);
  ASSERT_OK(tier->Put(child.meta, child.encoded));
  ASSERT_OK(tier->Put(parent.meta, parent.encoded));
  ASSERT_OK(tier->Put(other.meta, other.encoded));
  // The parent is older than `other` but has a resident child, so the child
  // (the oldest tail) goes first, then the parent.
  TestChunk n1 = MakeChunk(Key(4), k64K);
  ASSERT_OK(tier->Put(n1.meta, n1.encoded));
  EXPECT_FALSE(tier->Contains(kNs, Key(2)));
  EXPECT_TRUE(tier->Contains(kNs, Key(1)));
  TestChunk n2 = MakeChunk(Key(5), k64K);
  ASSERT_OK(tier->Put(n2.meta, n2.encoded));
  EXPECT_FALSE(tier->Contains(kNs, Key(1)));
  EXPECT_TRUE(tier->Contains(kNs, Key(3)));
}

TEST(NvmeTier, NothingEvictableIsResourceExhausted) {
  TempDir dir;
  FaultInjectionEnv env;
  ASSERT_OK_AND_ASSIGN(auto tier, NvmeTier::Create(Options(dir.path(), {Class(k64K, 1)}, &env)));
  TestChunk a = MakeChunk(Key(1), k64K);
  TestChunk b = MakeChunk(Key(2), k64K);
  env.Hold(IoOpcode::kWrite);
  auto fa = tier->PutAsync(a.meta, a.encoded);  // owns the only slot, held
  EXPECT_THAT(tier->PutAsync(b.meta, b.encoded).get(),
              StatusIs(absl::StatusCode::kResourceExhausted, HasSubstr("evictable")));
  EXPECT_EQ(tier->Stats().save_rejections, 1u);
  env.ReleaseHeld();
  ASSERT_OK(fa.get());
  ASSERT_OK(tier->Put(b.meta, b.encoded));  // evicts a
  EXPECT_FALSE(tier->Contains(kNs, Key(1)));
  ExpectStored(*tier, b);
}

TEST(NvmeTier, AChunkBeingReadIsNeverReused) {
  TempDir dir;
  FaultInjectionEnv env;
  ASSERT_OK_AND_ASSIGN(auto tier, NvmeTier::Create(Options(dir.path(), {Class(k64K, 1)}, &env)));
  TestChunk a = MakeChunk(Key(1), k64K);
  TestChunk b = MakeChunk(Key(2), k64K);
  ASSERT_OK(tier->Put(a.meta, a.encoded));
  env.Hold(IoOpcode::kRead);
  std::vector<std::byte> out(a.encoded.size());
  auto read = tier->GetAsync(kNs, Key(1), absl::MakeSpan(out));
  EXPECT_EQ(tier->Stats().pinned_chunks, 1u);
  EXPECT_THAT(tier->Put(b.meta, b.encoded), StatusIs(absl::StatusCode::kResourceExhausted));
  env.ReleaseHeld();
  ASSERT_OK_AND_ASSIGN(size_t n, read.get());
  ASSERT_EQ(n, a.encoded.size());
  EXPECT_TRUE(out == a.encoded);
  ASSERT_OK(tier->Put(b.meta, b.encoded));
  ExpectStored(*tier, b);
}

TEST(NvmeTier, RemoveWhileReadingKeepsTheReadIntact) {
  TempDir dir;
  FaultInjectionEnv env;
  ASSERT_OK_AND_ASSIGN(auto tier, NvmeTier::Create(Options(dir.path(), {Class(k64K, 1)}, &env)));
  TestChunk a = MakeChunk(Key(1), k64K);
  TestChunk b = MakeChunk(Key(2), k64K);
  ASSERT_OK(tier->Put(a.meta, a.encoded));
  env.Hold(IoOpcode::kRead);
  std::vector<std::byte> out(a.encoded.size());
  auto read = tier->GetAsync(kNs, Key(1), absl::MakeSpan(out));
  ASSERT_OK(tier->Remove(kNs, Key(1)));  // tombstone only: the data area is untouched
  // The slot waits for its reader.
  EXPECT_THAT(tier->Put(b.meta, b.encoded), StatusIs(absl::StatusCode::kResourceExhausted));
  env.ReleaseHeld();
  ASSERT_OK(read.get());
  EXPECT_TRUE(out == a.encoded);
  ASSERT_OK(tier->Put(b.meta, b.encoded));
  ExpectStored(*tier, b);
}

TEST(NvmeTier, BackpressureAnswersUnavailable) {
  TempDir dir;
  FaultInjectionEnv env;
  NvmeTierOptions o = Options(dir.path(), {Class(k64K, 8)}, &env);
  const uint64_t per_put = 4096 + AlignUp(k64K + kChunkHeaderBytes, 4096);
  o.max_inflight_bytes = 2 * per_put;
  ASSERT_OK_AND_ASSIGN(auto tier, NvmeTier::Create(o));
  std::vector<TestChunk> c;
  for (uint64_t i = 0; i < 4; ++i) c.push_back(MakeChunk(Key(i + 1), k64K));
  env.Hold(IoOpcode::kWrite);
  std::atomic<int> done{0};
  auto count = [&done](absl::Status s) {
    EXPECT_TRUE(s.ok()) << s;
    ++done;
  };
  ASSERT_OK(tier->PutAsync(c[0].meta, c[0].encoded, count));
  ASSERT_OK(tier->PutAsync(c[1].meta, c[1].encoded, count));
  EXPECT_THAT(tier->PutAsync(c[2].meta, c[2].encoded, count),
              StatusIs(absl::StatusCode::kUnavailable, HasSubstr("in-flight")));
  std::vector<std::byte> out(c[0].encoded.size());
  EXPECT_EQ(tier->DetailedStats().busy_rejections, 1u);
  EXPECT_EQ(tier->DetailedStats().inflight_bytes, 2 * per_put);
  // The synchronous Put waits for room instead of failing.
  std::thread sync_put([&] { EXPECT_OK(tier->Put(c[3].meta, c[3].encoded)); });
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_FALSE(tier->CouldExist(kNs, c[3].meta.key));
  env.ReleaseHeld();
  sync_put.join();
  ASSERT_OK(tier->Flush());
  ASSERT_OK(tier->PutAsync(c[2].meta, c[2].encoded).get());
  for (const TestChunk& x : c) ExpectStored(*tier, x);
  EXPECT_EQ(done.load(), 2);
  EXPECT_EQ(tier->DetailedStats().inflight_bytes, 0u);
}

// ---- concurrency -------------------------------------------------------------------

class NvmeConcurrency : public ::testing::TestWithParam<uint32_t> {};

TEST_P(NvmeConcurrency, ManyThreadsByteForByte) {
  TempDir dir;
  constexpr int kThreads = 6;
  constexpr int kPerThread = 24;
  NvmeTierOptions o = Options(
      dir.path(), {Class(k64K, kThreads * kPerThread), Class(k256K, kThreads * kPerThread)});
  o.queue_depth = GetParam();
  o.max_inflight_bytes = 8 << 20;
  ASSERT_OK_AND_ASSIGN(auto tier, NvmeTier::Create(o));
  std::vector<TestChunk> chunks;
  for (int t = 0; t < kThreads; ++t) {
    for (int i = 0; i < kPerThread; ++i) {
      uint64_t id = static_cast<uint64_t>(t * 1000 + i + 1);
      chunks.push_back(MakeChunk(Key(id), (i % 2) ? k256K : k64K));
    }
  }
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937_64 rng(static_cast<uint64_t>(t));
      // Save this thread's chunks (sync and async alternately).
      std::vector<std::future<absl::Status>> futures;
      for (int i = 0; i < kPerThread; ++i) {
        const TestChunk& c = chunks[static_cast<size_t>(t * kPerThread + i)];
        if (i % 2 == 0) {
          if (!tier->Put(c.meta, c.encoded).ok()) ++failures;
        } else {
          for (;;) {
            auto f = tier->PutAsync(c.meta, c.encoded);
            if (f.wait_for(std::chrono::seconds(0)) == std::future_status::ready) {
              absl::Status s = f.get();
              if (absl::IsUnavailable(s)) {
                std::this_thread::yield();
                continue;
              }
              if (!s.ok()) ++failures;
              break;
            }
            futures.push_back(std::move(f));
            break;
          }
        }
      }
      for (auto& f : futures) {
        if (!f.get().ok()) ++failures;
      }
      // Read random chunks of every thread; those not saved yet are misses.
      for (int k = 0; k < 3 * kPerThread; ++k) {
        const TestChunk& c = chunks[rng() % chunks.size()];
        bool aligned = rng() % 2 == 0;
        AlignedBuffer buf(AlignUp(c.encoded.size(), 4096) + 4096);
        absl::Span<std::byte> out = aligned ? buf.span() : buf.span().subspan(24, c.encoded.size());
        absl::StatusOr<size_t> n = tier->Get(kNs, c.meta.key, out);
        if (absl::IsNotFound(n.status())) continue;
        if (!n.ok() || *n != c.encoded.size() ||
            std::memcmp(out.data(), c.encoded.data(), *n) != 0) {
          ++failures;
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(failures.load(), 0);
  for (const TestChunk& c : chunks) ExpectStored(*tier, c);
  EXPECT_EQ(tier->Stats().corrupt_chunks, 0u);
  EXPECT_EQ(tier->Stats().chunks, chunks.size());
}

INSTANTIATE_TEST_SUITE_P(QueueDepths, NvmeConcurrency, ::testing::Values(1u, 4u, 32u),
                         [](const auto& info) { return absl::StrCat("qd", info.param); });

// ---- block device -------------------------------------------------------------------

TEST(NvmeTier, BlockDeviceNeedsFormatDeviceAndPersists) {
  if (!IsRoot()) GTEST_SKIP() << "attaching a loop device needs root";
  TempDir dir;
  std::string image = dir.path() + "/dev.img";
  ASSERT_TRUE(nvme_test::Run("truncate -s 16M " + image));
  std::string out_file = dir.path() + "/loop";
  if (!nvme_test::Run("losetup -f --show " + image + " > " + out_file + " 2>/dev/null")) {
    GTEST_SKIP() << "no loop device available";
  }
  std::string device;
  std::ifstream(out_file) >> device;
  struct Detach {
    std::string d;
    ~Detach() { nvme_test::Run("losetup -d " + d); }
  } detach{device};
  NvmeTierOptions o = Options(device, {Class(k64K, 8), Class(k256K, 4)});
  EXPECT_THAT(NvmeTier::Create(o), StatusIs(absl::StatusCode::kFailedPrecondition,
                                            AllOf(HasSubstr(device), HasSubstr("format_device"))));
  o.format_device = true;
  std::vector<TestChunk> chunks;
  {
    ASSERT_OK_AND_ASSIGN(auto tier, NvmeTier::Create(o));
    EXPECT_EQ(tier->DetailedStats().volume_path, device);
    chunks = SaveChains(*tier, 2);
  }
  o.format_device = false;
  ASSERT_OK_AND_ASSIGN(auto tier, NvmeTier::Create(o));
  EXPECT_EQ(tier->DetailedStats().open_source, "snapshot");
  ExpectAllStored(*tier, chunks);
}

// ---- on-demand slot sizes (regions) -----------------------------------------------

TEST(NvmeTier, RegionsGetSlotSizesOnDemandFromTheLadder) {
  TempDir dir;
  NvmeTierOptions o = RegionOptions(dir.path(), 64 << 20);
  ASSERT_OK_AND_ASSIGN(auto tier, NvmeTier::Create(o));
  NvmeTierStats d = tier->DetailedStats();
  EXPECT_EQ(d.layout, "regions");
  EXPECT_EQ(d.regions_assigned, 0u);
  ASSERT_GE(d.regions, 14u);
  EXPECT_EQ(tier->Stats().capacity_bytes, d.regions * (4u << 20));
  // The last chunk of each request is partial: 60 sizes between 200 KiB
  // and 256 KiB share a few slot sizes instead of one class each.
  std::mt19937_64 rng(3);
  std::vector<TestChunk> chunks;
  for (uint64_t i = 0; i < 60; ++i) {
    chunks.push_back(MakeChunk(Key(i + 1), (200 << 10) + rng() % (56 << 10)));
    ASSERT_OK(tier->Put(chunks.back().meta, chunks.back().encoded));
  }
  chunks.push_back(MakeChunk(Key(100), 5000));  // a small one: another size
  ASSERT_OK(tier->Put(chunks.back().meta, chunks.back().encoded));
  for (const TestChunk& c : chunks) ExpectStored(*tier, c);
  // Each chunk went to the smallest ladder step holding it, and each step
  // got as many regions as its chunks need.
  const std::vector<uint64_t> ladder = nvme::SlotLadder(4 << 20);
  std::map<uint64_t, uint64_t> per_step;
  for (const TestChunk& c : chunks) {
    ++per_step[*std::lower_bound(ladder.begin(), ladder.end(), c.encoded.size())];
  }
  uint64_t regions = 0;
  std::vector<uint64_t> steps;
  for (const auto& [step, n] : per_step) {
    const uint64_t per_region = ((4 << 20) - 4096) / (step + 4096);
    regions += (n + per_region - 1) / per_region;
    steps.push_back(step);
  }
  d = tier->DetailedStats();
  EXPECT_EQ(d.slot_sizes, steps);
  EXPECT_LE(d.slot_sizes.size(), 5u);  // 56 KiB of lengths share four steps
  EXPECT_EQ(d.regions_assigned, regions);
  for (const TestChunk& c : chunks) {
    ASSERT_OK_AND_ASSIGN(NvmeChunkInfo info, tier->Describe(kNs, c.meta.key));
    EXPECT_EQ(info.volume_offset % 4096, 0u);
  }
  // The largest chunk is just under a quarter of a region.
  const uint64_t max_chunk = tier->Capabilities().max_chunk_bytes;
  EXPECT_LT(max_chunk, (4u << 20) / 4);
  EXPECT_GT(max_chunk, (4u << 20) / 4 * 7 / 8);
  TestChunk big = MakeChunk(Key(200), max_chunk);  // header makes it too big
  EXPECT_THAT(tier->Put(big.meta, big.encoded),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("larger than")));
  TestChunk largest = MakeChunk(Key(201), max_chunk - kChunkHeaderBytes);
  ASSERT_OK(tier->Put(largest.meta, largest.encoded));
  ExpectStored(*tier, largest);
}

TEST(NvmeTier, RegionsAreRecoveredByTheSnapshotAndByTheScan) {
  for (bool snapshot : {true, false}) {
    SCOPED_TRACE(snapshot ? "snapshot" : "scan");
    TempDir dir;
    NvmeTierOptions o = RegionOptions(dir.path(), 48 << 20);
    o.write_snapshot = snapshot;
    std::vector<TestChunk> chunks;
    NvmeTierStats before;
    {
      ASSERT_OK_AND_ASSIGN(auto tier, NvmeTier::Create(o));
      // Chains in three sizes; the sizes' regions are assigned in the order
      // of first need, not in slot-size order.
      for (uint64_t c = 0; c < 6; ++c) {
        BlockKey parent;
        for (uint64_t i = 0; i < 4; ++i) {
          BlockKey key = Key(c * 10 + i + 1);
          const size_t bytes = i == 0 ? k256K : i == 1 ? 5000 : i == 2 ? k64K : 3000;
          chunks.push_back(MakeChunk(key, bytes, parent));
          ASSERT_OK(tier->Put(chunks.back().meta, chunks.back().encoded));
          parent = key;
        }
      }
      ASSERT_OK(tier->Remove(kNs, chunks[3].meta.key));
      chunks.erase(chunks.begin() + 3);
      before = tier->DetailedStats();
    }
    ASSERT_OK_AND_ASSIGN(auto tier, NvmeTier::Create(o));
    NvmeTierStats d = tier->DetailedStats();
    EXPECT_EQ(d.open_source, snapshot ? "snapshot" : "scan");
    EXPECT_EQ(d.recovered_chunks, chunks.size());
    EXPECT_EQ(d.regions_assigned, before.regions_assigned);
    EXPECT_EQ(d.slot_sizes, before.slot_sizes);
    EXPECT_EQ(d.damaged_records, 0u);
    ExpectAllStored(*tier, chunks);
    EXPECT_FALSE(tier->Contains(kNs, Key(4)));
    // New saves land in free slots of the recovered regions.
    for (uint64_t i = 0; i < 20; ++i) {
      chunks.push_back(MakeChunk(Key(500 + i), i % 2 == 0 ? 5000 : k64K));
      ASSERT_OK(tier->Put(chunks.back().meta, chunks.back().encoded));
    }
    EXPECT_EQ(tier->DetailedStats().regions_assigned, before.regions_assigned);
    ExpectAllStored(*tier, chunks);
  }
}

TEST(NvmeTier, AFullVolumeEvictsWithinTheSlotSize) {
  TempDir dir;
  // Three regions of 4 MiB.
  NvmeTierOptions o = RegionOptions(dir.path(), (12 << 20) + (1 << 20));
  ASSERT_OK_AND_ASSIGN(auto tier, NvmeTier::Create(o));
  ASSERT_EQ(tier->DetailedStats().regions, 3u);
  // Small chunks take one region; 256 KiB chunks the other two (14 slots each
  // at most), then evict each other, never the small ones.
  std::vector<TestChunk> small;
  for (uint64_t i = 0; i < 10; ++i) {
    small.push_back(MakeChunk(Key(1000 + i), 5000));
    ASSERT_OK(tier->Put(small.back().meta, small.back().encoded));
  }
  for (uint64_t i = 0; i < 60; ++i) {
    TestChunk c = MakeChunk(Key(i + 1), k256K);
    ASSERT_OK(tier->Put(c.meta, c.encoded));
  }
  NvmeTierStats d = tier->DetailedStats();
  EXPECT_EQ(d.regions_assigned, 3u);
  EXPECT_GT(d.tier.evictions, 0u);
  for (const TestChunk& c : small) ExpectStored(*tier, c);
  EXPECT_TRUE(tier->Contains(kNs, Key(60)));
  EXPECT_FALSE(tier->Contains(kNs, Key(1)));  // least recently used went first
  // A third size has no region left: regions do not move between sizes.
  TestChunk other = MakeChunk(Key(5000), k64K);
  EXPECT_THAT(tier->Put(other.meta, other.encoded),
              StatusIs(absl::StatusCode::kResourceExhausted, HasSubstr("no region is free")));
}

TEST(NvmeTier, ReopenWithAnotherLayoutOrGeometryFails) {
  TempDir dir;
  { ASSERT_OK_AND_ASSIGN(auto tier, NvmeTier::Create(Options(dir.path(), {Class(k64K, 4)}))); }
  EXPECT_THAT(
      NvmeTier::Create(RegionOptions(dir.path(), 64 << 20)),
      StatusIs(absl::StatusCode::kFailedPrecondition,
               AllOf(HasSubstr("slot_classes"), HasSubstr("slot classes [4 x 69632"),
                     HasSubstr("on-demand regions"), HasSubstr("the same explicit slot_classes"))));
  TempDir dir2;
  { ASSERT_OK_AND_ASSIGN(auto tier, NvmeTier::Create(RegionOptions(dir2.path(), 64 << 20))); }
  EXPECT_THAT(NvmeTier::Create(Options(dir2.path(), {Class(k64K, 4)})),
              StatusIs(absl::StatusCode::kFailedPrecondition,
                       AllOf(HasSubstr("slot_classes"), HasSubstr("on-demand regions"),
                             HasSubstr("empty slot_classes and the same capacity_bytes"))));
  EXPECT_THAT(NvmeTier::Create(RegionOptions(dir2.path(), 64 << 20, 8 << 20)),
              StatusIs(absl::StatusCode::kFailedPrecondition,
                       AllOf(HasSubstr("capacity_bytes, region_bytes"),
                             HasSubstr("of 4194304 bytes"), HasSubstr("of 8388608 bytes"))));
  EXPECT_THAT(NvmeTier::Create(RegionOptions(dir2.path(), 128 << 20)),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("capacity_bytes")));
  // Durability is not part of the volume: either mode opens it.
  NvmeTierOptions power = RegionOptions(dir2.path(), 64 << 20);
  power.durability = "power";
  ASSERT_OK_AND_ASSIGN(auto tier, NvmeTier::Create(power));
  EXPECT_EQ(tier->DetailedStats().durability, "power");
}

TEST(NvmeTier, AVolumeOfAnOlderFormatIsRefused) {
  TempDir dir;
  NvmeTierOptions o = Options(dir.path(), {Class(k64K, 4)});
  { ASSERT_OK_AND_ASSIGN(auto tier, NvmeTier::Create(o)); }
  // Make it a version 1 superblock, checksum and all.
  std::vector<std::byte> sector(4096);
  {
    std::ifstream f(dir.volume(), std::ios::binary);
    f.read(reinterpret_cast<char*>(sector.data()), 4096);
  }
  const uint32_t v1 = 1;
  std::memcpy(sector.data() + 8, &v1, 4);
  const uint64_t sum = Xxh3_64({sector.data(), 4088});
  std::memcpy(sector.data() + 4088, &sum, 8);
  {
    std::fstream f(dir.volume(), std::ios::binary | std::ios::in | std::ios::out);
    f.write(reinterpret_cast<const char*>(sector.data()), 4096);
  }
  EXPECT_THAT(NvmeTier::Create(o),
              StatusIs(absl::StatusCode::kFailedPrecondition,
                       AllOf(HasSubstr(dir.volume()), HasSubstr("unsupported format version 1"),
                             HasSubstr("delete the file"))));
}

TEST(NvmeTier, ADamagedRegionHeaderLeavesTheRegionUnused) {
  TempDir dir;
  NvmeTierOptions o = RegionOptions(dir.path(), 40 << 20);
  o.write_snapshot = false;
  std::vector<TestChunk> small;
  std::vector<TestChunk> large;
  uint64_t large_region = 0;
  {
    ASSERT_OK_AND_ASSIGN(auto tier, NvmeTier::Create(o));
    for (uint64_t i = 0; i < 8; ++i) {
      small.push_back(MakeChunk(Key(i + 1), 5000));
      ASSERT_OK(tier->Put(small.back().meta, small.back().encoded));
      large.push_back(MakeChunk(Key(i + 101), k256K));
      ASSERT_OK(tier->Put(large.back().meta, large.back().encoded));
    }
    ASSERT_OK_AND_ASSIGN(NvmeChunkInfo info, tier->Describe(kNs, large[0].meta.key));
    // Regions are 4 MiB-aligned relative to the first one, which follows
    // the superblock and snapshot region; the large chunks' region starts
    // at the first region header at or below their slot.
    std::ifstream f(dir.volume(), std::ios::binary);
    std::vector<char> sb(4096);
    f.read(sb.data(), 4096);
    ASSERT_OK_AND_ASSIGN(nvme::Superblock s,
                         nvme::DecodeSuperblock({reinterpret_cast<std::byte*>(sb.data()), 4096}));
    const nvme::VolumeGeometry& g = s.geometry;
    large_region = g.regions_offset +
                   (info.volume_offset - g.regions_offset) / g.region_bytes * g.region_bytes;
  }
  FlipByte(dir.volume(), large_region + 30);
  ASSERT_OK_AND_ASSIGN(auto tier, NvmeTier::Create(o));
  NvmeTierStats d = tier->DetailedStats();
  EXPECT_EQ(d.open_source, "scan");
  EXPECT_EQ(d.damaged_regions, 1u);
  EXPECT_EQ(d.recovered_chunks, small.size());
  for (const TestChunk& c : small) ExpectStored(*tier, c);
  for (const TestChunk& c : large) EXPECT_FALSE(tier->Contains(kNs, c.meta.key));
  // The size gets another region; the damaged one stays out of use, also
  // across a snapshot.
  ASSERT_OK(tier->Put(large[0].meta, large[0].encoded));
  ExpectStored(*tier, large[0]);
  EXPECT_EQ(tier->DetailedStats().regions_assigned, 2u);
  ASSERT_OK(tier->Close());
  o.write_snapshot = true;
  { ASSERT_OK_AND_ASSIGN(auto again, NvmeTier::Create(o)); }
  ASSERT_OK_AND_ASSIGN(auto again, NvmeTier::Create(o));
  EXPECT_EQ(again->DetailedStats().open_source, "snapshot");
  EXPECT_EQ(again->DetailedStats().damaged_regions, 1u);
  ExpectStored(*again, large[0]);
}

// ---- SIGKILL during a write storm ---------------------------------------------------

#ifndef KVTIER_NVME_CRASH_WRITER
#error "KVTIER_NVME_CRASH_WRITER must name the nvme_crash_writer binary"
#endif

// (durability, layout)
class NvmeSigkill : public ::testing::TestWithParam<std::tuple<std::string, std::string>> {};

TEST_P(NvmeSigkill, DuringAWriteStormLosesNothingAcknowledged) {
  const auto& [durability, layout] = GetParam();
  TempDir dir;
  std::map<uint64_t, std::set<uint64_t>> acked;    // round -> acknowledged saves
  std::map<uint64_t, std::set<uint64_t>> removed;  // round -> acknowledged removals
  std::mt19937_64 rng(7);
  for (uint64_t round = 0; round < nvme_test::kCrashRounds; ++round) {
    SCOPED_TRACE(absl::StrCat("round ", round));
    int fds[2];
    ASSERT_EQ(::pipe(fds), 0);
    pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      ::dup2(fds[1], STDOUT_FILENO);
      ::close(fds[0]);
      ::close(fds[1]);
      std::string r = std::to_string(round);
      std::string n = std::to_string(nvme_test::kCrashChunksPerRound);
      ::execl(KVTIER_NVME_CRASH_WRITER, "nvme_crash_writer", dir.path().c_str(), r.c_str(),
              n.c_str(), durability.c_str(), layout.c_str(), static_cast<char*>(nullptr));
      ::_exit(127);
    }
    ::close(fds[1]);
    // Kill after a random number of acknowledgements, mid-storm.
    const uint64_t kill_after = 30 + rng() % 170;
    std::string pending;
    uint64_t saves_seen = 0;
    bool killed = false;
    char buf[4096];
    for (;;) {
      ssize_t got = ::read(fds[0], buf, sizeof(buf));
      if (got <= 0) break;
      pending.append(buf, static_cast<size_t>(got));
      size_t nl;
      while ((nl = pending.find('\n')) != std::string::npos) {
        std::istringstream line(pending.substr(0, nl));
        pending.erase(0, nl + 1);
        char kind;
        uint64_t i;
        line >> kind >> i;
        if (kind == 'P') {
          acked[round].insert(i);
          ++saves_seen;
        } else if (kind == 'r') {
          acked[round].erase(i);  // being removed: may or may not be there
        } else if (kind == 'R') {
          removed[round].insert(i);
        }
      }
      if (!killed && saves_seen >= kill_after) {
        ::kill(pid, SIGKILL);
        killed = true;
      }
    }
    ::close(fds[0]);
    int status = 0;
    ASSERT_EQ(::waitpid(pid, &status, 0), pid);
    ASSERT_TRUE(killed || (WIFEXITED(status) && WEXITSTATUS(status) == 0))
        << "writer failed with status " << status;
    ASSERT_GT(acked[round].size(), 10u);

    // Every acknowledged save of every round is there and byte-identical,
    // every acknowledged removal stays removed, nothing visible is damaged.
    ASSERT_OK_AND_ASSIGN(
        auto tier, NvmeTier::Create(nvme_test::CrashTestOptions(dir.path(), durability, layout)));
    // The writer never closes cleanly, and its open invalidated any snapshot.
    EXPECT_EQ(tier->DetailedStats().open_source, "scan");
    for (uint64_t r = 0; r <= round; ++r) {
      for (uint64_t i : acked[r]) {
        nvme_test::TestChunk c = nvme_test::CrashTestChunk(r, i);
        ASSERT_TRUE(tier->Contains(kNs, c.meta.key)) << "round " << r << " chunk " << i;
        ExpectStored(*tier, c);
      }
      for (uint64_t i : removed[r]) {
        EXPECT_FALSE(tier->Contains(kNs, nvme_test::CrashTestKey(r, i))) << r << " " << i;
      }
      for (uint64_t i = 0; i < nvme_test::kCrashChunksPerRound; ++i) {
        nvme_test::TestChunk c = nvme_test::CrashTestChunk(r, i);
        if (acked[r].contains(i) || !tier->Contains(kNs, c.meta.key)) continue;
        ExpectStored(*tier, c);
      }
    }
    EXPECT_EQ(tier->Stats().corrupt_chunks, 0u);
    EXPECT_EQ(tier->DetailedStats().damaged_records, 0u);
    EXPECT_EQ(tier->DetailedStats().durability, durability);
    EXPECT_EQ(tier->DetailedStats().layout, layout);
    // This Close writes a snapshot: the next writer opens from it.
  }
}

INSTANTIATE_TEST_SUITE_P(Modes, NvmeSigkill,
                         ::testing::Combine(::testing::Values("process", "power"),
                                            ::testing::Values("classes", "regions")),
                         [](const auto& info) {
                           return absl::StrCat(std::get<0>(info.param), "_",
                                               std::get<1>(info.param));
                         });

}  // namespace
}  // namespace kvtier
