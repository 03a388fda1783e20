// The embedded cache over DRAM and a real NVMe tier (io_uring on a volume
// file in a temporary folder): demotion, promotion, restarts, damage,
// faults, the asynchronous reads and concurrency.
#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <filesystem>
#include <future>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kvtier/cache.h"
#include "kvtier/namespace.h"
#include "src/common/temp_path.h"
#include "src/core/chunk_format.h"
#include "src/core/embedded_cache.h"
#include "tests/testing/cache_fixtures.h"
#include "tests/testing/fault_env.h"
#include "tests/testing/status_matchers.h"

namespace kvtier {
namespace {

using ::kvtier::testing::FaultInjectionEnv;
using ::kvtier::testing::IoFault;
using ::kvtier::testing::KvFor;
using ::kvtier::testing::SmallModel;
using ::kvtier::testing::StatusIs;
using ::kvtier::testing::Tokens;
using ::testing::AllOf;
using ::testing::HasSubstr;

constexpr size_t kPayload = 32 << 10;  // one full chunk of SmallModel()

bool IsRoot() { return ::geteuid() == 0; }

bool Shell(const std::string& command) { return std::system(command.c_str()) == 0; }

class TempFolder {
 public:
  TempFolder() {
    absl::StatusOr<std::string> p = MakeTempDir("/tmp", "kvtier-cache-nvme-");
    path_ = p.ok() ? *p : "/tmp";
  }
  ~TempFolder() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }
  std::string volume() const { return path_ + "/kvtier-nvme.dat"; }

 private:
  std::string path_;
};

// DRAM of one 2 MiB slab (56 chunks of 32 KiB) over 64 MiB of NVMe.
CacheOptions TieredOptions(const std::string& folder) {
  CacheOptions o;
  o.dram_capacity_bytes = 2ull << 20;
  o.slab_bytes = 2ull << 20;
  o.huge_pages = false;
  o.index_shards = 8;
  o.register_with_gpu = false;
  o.nvme.path = folder;
  o.nvme.capacity_bytes = 64ull << 20;
  o.nvme.slot_payload_bytes = {kPayload};
  o.nvme.io_mode = "direct";
  o.nvme.queue_depth = 8;
  o.nvme.max_inflight_bytes = 16ull << 20;
  return o;
}

class CacheNvmeTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_OK_AND_ASSIGN(ns_, Namespace::Create(SmallModel())); }

  void Open(const CacheOptions& options, const EmbeddedCacheSeams& seams = {}) {
    cache_.reset();
    ASSERT_OK_AND_ASSIGN(cache_, EmbeddedCache::Create(options, seams));
  }

  std::vector<ChunkRef> Chain(size_t chunks, uint32_t seed) {
    absl::StatusOr<std::vector<ChunkRef>> c = ns_->Chunks(Tokens(64 * chunks, seed));
    EXPECT_TRUE(c.ok());
    return c.ok() ? *c : std::vector<ChunkRef>{};
  }

  absl::Status SaveAll(const std::vector<ChunkRef>& chunks) {
    for (const ChunkRef& c : chunks) {
      absl::Status s = cache_->Save(*ns_, c, KvFor(c, ns_->PayloadBytes(c.num_tokens)));
      if (!s.ok()) return s;
    }
    return absl::OkStatus();
  }

  // Loads every chunk and compares it with what was saved.
  void ExpectAllLoad(const std::vector<ChunkRef>& chunks) {
    std::vector<std::byte> out(kPayload);
    for (size_t i = 0; i < chunks.size(); ++i) {
      absl::StatusOr<size_t> n = cache_->Load(*ns_, chunks[i].key, absl::MakeSpan(out));
      ASSERT_TRUE(n.ok()) << "chunk " << i << ": " << n.status();
      ASSERT_EQ(*n, kPayload);
      ASSERT_TRUE(out == KvFor(chunks[i], kPayload)) << "chunk " << i;
    }
  }

  bool InDram(const ChunkRef& c) { return cache_->dram().CouldExist(ns_->id(), c.key); }
  bool OnNvme(const ChunkRef& c) { return cache_->nvme()->Contains(ns_->id(), c.key); }

  const TierStats& NvmeStats(const CacheStats& s) {
    EXPECT_EQ(s.tiers.size(), 2u);
    EXPECT_EQ(s.tiers.back().tier, Tier::kNvme);
    return s.tiers.back();
  }

  std::optional<Namespace> ns_;
  std::unique_ptr<EmbeddedCache> cache_;
};

TEST_F(CacheNvmeTest, ChunksEvictedFromDramComeBackFromNvmeByteForByte) {
  TempFolder dir;
  Open(TieredOptions(dir.path()));
  std::vector<ChunkRef> chain = Chain(200, 1);
  ASSERT_OK(SaveAll(chain));
  cache_->WaitForDemotions();

  // Far more than DRAM holds, all still cached: the prefix crosses tiers.
  ASSERT_OK_AND_ASSIGN(LookupResult r, cache_->Lookup(*ns_, Namespace::Keys(chain)));
  ASSERT_EQ(r.matched, chain.size());
  size_t on_nvme = 0;
  for (size_t i = 0; i < chain.size(); ++i) {
    if (InDram(chain[i])) {
      EXPECT_EQ(r.chunks[i].tier, Tier::kDram) << i;
    } else {
      EXPECT_TRUE(OnNvme(chain[i])) << i;
      EXPECT_EQ(r.chunks[i].tier, Tier::kNvme) << i;
      ++on_nvme;
    }
  }
  EXPECT_GT(on_nvme, 100u);
  CacheStats before = cache_->Stats();
  EXPECT_TRUE(before.tiering.nvme_enabled);
  EXPECT_EQ(before.tiering.demoted, before.tiers[0].evictions);
  EXPECT_EQ(NvmeStats(before).chunks, before.tiering.demoted);
  EXPECT_EQ(NvmeStats(before).bytes_written, before.tiering.demoted * kPayload);

  ExpectAllLoad(chain);
  // Loading in chain order promotes the NVMe chunks, which pushes the ones
  // that were in DRAM down to NVMe in turn: those come from NVMe too.
  CacheStats after = cache_->Stats();
  EXPECT_GE(NvmeStats(after).hits, on_nvme);
  EXPECT_EQ(NvmeStats(after).bytes_read, NvmeStats(after).hits * kPayload);
  EXPECT_EQ(after.tiering.promoted, NvmeStats(after).hits);
  EXPECT_EQ(NvmeStats(after).corrupt_chunks, 0u);
  EXPECT_TRUE(InDram(chain.back()));
  // NVMe keeps its copy of a promoted chunk, so evicting it again writes
  // nothing: no chunk is written twice.
  cache_->WaitForDemotions();
  EXPECT_LE(cache_->Stats().tiering.demoted, chain.size());
  EXPECT_GT(cache_->Stats().tiering.demotion_already_stored, 0u);

  // Remove takes a chunk out of both tiers.
  ChunkRef nvme_only;
  for (const ChunkRef& c : chain) {
    if (!InDram(c) && OnNvme(c)) nvme_only = c;
  }
  ASSERT_FALSE(nvme_only.key.IsZero());
  ASSERT_OK_AND_ASSIGN(size_t removed, cache_->Remove(*ns_, nvme_only.key));
  EXPECT_EQ(removed, 1u);
  std::vector<std::byte> out(kPayload);
  EXPECT_THAT(cache_->Load(*ns_, nvme_only.key, absl::MakeSpan(out)),
              StatusIs(absl::StatusCode::kNotFound));
  EXPECT_THAT(cache_->Remove(*ns_, nvme_only.key), StatusIs(absl::StatusCode::kNotFound));
}

TEST_F(CacheNvmeTest, PinOfAnNvmeChunkPromotesIt) {
  TempFolder dir;
  Open(TieredOptions(dir.path()));
  std::vector<ChunkRef> chain = Chain(120, 2);
  ASSERT_OK(SaveAll(chain));
  cache_->WaitForDemotions();
  ASSERT_FALSE(InDram(chain[0]));
  ASSERT_TRUE(OnNvme(chain[0]));
  ASSERT_FALSE(InDram(chain[1]));
  ASSERT_TRUE(OnNvme(chain[1]));
  const CacheStats before = cache_->Stats();
  ASSERT_OK_AND_ASSIGN(ChunkPin pin, cache_->Pin(*ns_, chain[0].key));
  const CacheStats pinned = cache_->Stats();
  EXPECT_TRUE(InDram(chain[0]));
  ASSERT_EQ(pin.payload().size(), kPayload);
  EXPECT_TRUE(
      std::equal(pin.payload().begin(), pin.payload().end(), KvFor(chain[0], kPayload).begin()));
  // One hit, in the tier that served it, as a Load of such a chunk counts:
  // the pin of the promoted copy is no second (DRAM) hit.
  EXPECT_EQ(NvmeStats(pinned).hits - NvmeStats(before).hits, 1u);
  EXPECT_EQ(pinned.tiers[0].hits, before.tiers[0].hits);
  EXPECT_EQ(pinned.tiers[0].bytes_read, before.tiers[0].bytes_read);
  std::vector<std::byte> out(kPayload);
  ASSERT_OK(cache_->Load(*ns_, chain[1].key, absl::MakeSpan(out)).status());
  const CacheStats loaded = cache_->Stats();
  EXPECT_EQ(NvmeStats(loaded).hits - NvmeStats(pinned).hits, 1u);
  EXPECT_EQ(loaded.tiers[0].hits, pinned.tiers[0].hits);
  EXPECT_EQ(loaded.tiers[0].misses - pinned.tiers[0].misses,
            pinned.tiers[0].misses - before.tiers[0].misses);
}

TEST_F(CacheNvmeTest, SecondChanceDemotesOnlyChunksReadWhileInDram) {
  TempFolder dir;
  CacheOptions o = TieredOptions(dir.path());
  o.nvme.admission = "second-chance";
  Open(o);
  // 20 one-chunk chains; every other one is read before DRAM pressure.
  std::vector<ChunkRef> roots;
  for (uint32_t i = 0; i < 20; ++i) roots.push_back(Chain(1, 100 + i)[0]);
  ASSERT_OK(SaveAll(roots));
  std::vector<std::byte> out(kPayload);
  for (size_t i = 0; i < roots.size(); i += 2) {
    ASSERT_OK(cache_->Load(*ns_, roots[i].key, absl::MakeSpan(out)).status());
  }
  std::vector<ChunkRef> filler = Chain(150, 3);
  ASSERT_OK(SaveAll(filler));
  cache_->WaitForDemotions();
  for (size_t i = 0; i < roots.size(); ++i) {
    ASSERT_FALSE(InDram(roots[i])) << i;
    EXPECT_EQ(OnNvme(roots[i]), i % 2 == 0) << i;
  }
  CacheStats st = cache_->Stats();
  EXPECT_EQ(st.tiering.demoted, 10u);
  EXPECT_EQ(st.tiering.skipped_admission, st.tiers[0].evictions - 10);
  // The admitted ones load from NVMe; the others are gone.
  for (size_t i = 0; i < roots.size(); ++i) {
    absl::StatusOr<size_t> n = cache_->Load(*ns_, roots[i].key, absl::MakeSpan(out));
    if (i % 2 == 0) {
      ASSERT_TRUE(n.ok()) << n.status();
      EXPECT_TRUE(out == KvFor(roots[i], kPayload));
    } else {
      EXPECT_THAT(n, StatusIs(absl::StatusCode::kNotFound));
    }
  }
}

TEST_F(CacheNvmeTest, RestartFindsTheNvmeChunks) {
  TempFolder dir;
  std::vector<ChunkRef> chain = Chain(150, 4);
  std::vector<ChunkRef> on_nvme;
  // Slot sizes chosen on demand (regions), and saves flushed to the device.
  CacheOptions o = TieredOptions(dir.path());
  o.nvme.slot_payload_bytes.clear();
  o.nvme.durability = "power";
  o.nvme.persist_on_close_seconds = 0;  // only what DRAM evicted reaches NVMe
  Open(o);
  ASSERT_OK(SaveAll(chain));
  cache_->WaitForDemotions();
  for (const ChunkRef& c : chain) {
    if (OnNvme(c)) on_nvme.push_back(c);
  }
  ASSERT_GT(on_nvme.size(), 50u);
  ASSERT_OK(cache_->Close());

  // A new cache on the same folder: DRAM starts empty, NVMe has its chunks.
  Open(o);
  CacheStats st = cache_->Stats();
  EXPECT_EQ(st.tiering.nvme_open_source, "snapshot");
  EXPECT_EQ(st.tiering.nvme_recovered_chunks, on_nvme.size());
  EXPECT_EQ(NvmeStats(st).chunks, on_nvme.size());
  for (const ChunkRef& c : on_nvme) EXPECT_TRUE(OnNvme(c));
  // Evicted chunks went down the chain from its tail, so the chain's first
  // chunks are among them: the prefix is found on NVMe.
  ASSERT_TRUE(OnNvme(chain[0]));
  ASSERT_OK_AND_ASSIGN(LookupResult r, cache_->Lookup(*ns_, Namespace::Keys(chain)));
  ASSERT_GT(r.matched, 0u);
  EXPECT_EQ(r.chunks[0].tier, Tier::kNvme);
  ExpectAllLoad(on_nvme);
}

TEST_F(CacheNvmeTest, CloseCopiesDramChunksToNvmeSoARestartFindsThemAll) {
  TempFolder dir;
  std::vector<ChunkRef> chain = Chain(150, 7);
  CacheOptions o = TieredOptions(dir.path());
  Open(o);
  ASSERT_OK(SaveAll(chain));
  cache_->WaitForDemotions();
  size_t in_dram_only = 0;
  for (const ChunkRef& c : chain) in_dram_only += InDram(c) && !OnNvme(c);
  ASSERT_GT(in_dram_only, 20u);
  ASSERT_OK(cache_->Close());
  EXPECT_EQ(cache_->persisted_on_close(), in_dram_only);

  Open(o);
  EXPECT_EQ(cache_->Stats().tiering.nvme_recovered_chunks, chain.size());
  ASSERT_OK_AND_ASSIGN(LookupResult r, cache_->Lookup(*ns_, Namespace::Keys(chain)));
  EXPECT_EQ(r.matched, chain.size());
  for (const ChunkLocation& loc : r.chunks) EXPECT_EQ(loc.tier, Tier::kNvme);
  ExpectAllLoad(chain);
}

TEST_F(CacheNvmeTest, DamagedNvmeChunkIsACountedMissNeverData) {
  TempFolder dir;
  std::vector<ChunkRef> chain = Chain(150, 5);
  Open(TieredOptions(dir.path()));
  ASSERT_OK(SaveAll(chain));
  cache_->WaitForDemotions();
  ASSERT_TRUE(OnNvme(chain[3]));
  ASSERT_OK_AND_ASSIGN(NvmeChunkInfo info, cache_->nvme()->Describe(ns_->id(), chain[3].key));
  ASSERT_OK(cache_->Close());
  cache_.reset();

  // Flip one payload byte (the slot's first 4 KiB is its commit record, then
  // the 64-byte chunk header).
  const uint64_t offset = info.volume_offset + 4096 + kChunkHeaderBytes + 1000;
  int fd = ::open(dir.volume().c_str(), O_RDWR);
  ASSERT_GE(fd, 0);
  unsigned char b = 0;
  ASSERT_EQ(::pread(fd, &b, 1, offset), 1);
  b ^= 0x5A;
  ASSERT_EQ(::pwrite(fd, &b, 1, offset), 1);
  ::close(fd);

  Open(TieredOptions(dir.path()));
  ASSERT_TRUE(OnNvme(chain[3]));  // the commit record is intact
  std::vector<std::byte> out(kPayload, std::byte{0x33});
  EXPECT_THAT(cache_->Load(*ns_, chain[3].key, absl::MakeSpan(out)),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("NVMe")));
  CacheStats st = cache_->Stats();
  EXPECT_EQ(NvmeStats(st).corrupt_chunks, 1u);
  EXPECT_EQ(NvmeStats(st).misses, 1u);
  EXPECT_EQ(st.tiering.promoted, 0u);
  EXPECT_FALSE(InDram(chain[3]));
  EXPECT_FALSE(OnNvme(chain[3]));
  // The chain's cached prefix now ends before it; its neighbours are intact.
  ASSERT_OK_AND_ASSIGN(LookupResult r, cache_->Lookup(*ns_, Namespace::Keys(chain)));
  EXPECT_EQ(r.matched, 3u);
  ExpectAllLoad({chain[0], chain[1], chain[2], chain[4]});
  EXPECT_EQ(cache_->Stats().tiering.promoted, 4u);
}

TEST_F(CacheNvmeTest, FailingWritesAreSkippedDemotionsAndDramKeepsServing) {
  TempFolder dir;
  FaultInjectionEnv env;
  Open(TieredOptions(dir.path()), EmbeddedCacheSeams{&env});
  env.AddIoFault(IoFault{IoOpcode::kWrite, "kvtier-nvme.dat"});
  std::vector<ChunkRef> chain = Chain(100, 6);
  ASSERT_OK(SaveAll(chain));
  cache_->WaitForDemotions();
  CacheStats st = cache_->Stats();
  const uint64_t evicted = st.tiers[0].evictions;
  ASSERT_GT(evicted, 0u);
  EXPECT_EQ(st.tiering.demoted, 0u);
  EXPECT_EQ(st.tiering.skipped_io_error, evicted);
  EXPECT_EQ(NvmeStats(st).save_rejections, evicted);
  EXPECT_EQ(NvmeStats(st).chunks, 0u);
  // DRAM serves what it holds; the rest is a miss, not an error.
  size_t served = 0;
  std::vector<std::byte> out(kPayload);
  for (const ChunkRef& c : chain) {
    absl::StatusOr<size_t> n = cache_->Load(*ns_, c.key, absl::MakeSpan(out));
    if (n.ok()) {
      EXPECT_TRUE(out == KvFor(c, kPayload));
      ++served;
    } else {
      EXPECT_THAT(n, StatusIs(absl::StatusCode::kNotFound));
    }
  }
  EXPECT_EQ(served, chain.size() - evicted);

  // Once the disk works again, demotions resume.
  env.ClearFaults();
  ASSERT_OK(SaveAll(Chain(40, 7)));
  cache_->WaitForDemotions();
  EXPECT_GT(cache_->Stats().tiering.demoted, 0u);
  cache_.reset();  // before the env it uses
}

TEST_F(CacheNvmeTest, SaturatedNvmeSkipsDemotionsWithoutBlockingSaves) {
  TempFolder dir;
  FaultInjectionEnv env;
  CacheOptions o = TieredOptions(dir.path());
  o.nvme.max_inflight_bytes = 48 << 10;  // one 32 KiB chunk's slot in flight
  Open(o, EmbeddedCacheSeams{&env});
  env.Hold(IoOpcode::kWrite);  // the first demotion stays in flight
  std::vector<ChunkRef> chain = Chain(100, 8);
  ASSERT_OK(SaveAll(chain));  // returns although nothing reached the disk
  CacheStats st = cache_->Stats();
  const uint64_t evicted = st.tiers[0].evictions;
  EXPECT_EQ(st.tiering.demotions_in_flight, 1u);
  EXPECT_EQ(st.tiering.skipped_busy, evicted - 1);
  env.ReleaseHeld();
  cache_->WaitForDemotions();
  st = cache_->Stats();
  EXPECT_EQ(st.tiering.demoted, 1u);
  EXPECT_EQ(NvmeStats(st).chunks, 1u);
  EXPECT_EQ(st.tiering.demotions_in_flight, 0u);
  cache_.reset();  // before the env it uses
}

// RemoveNamespace waits for the namespace's demotions still being written:
// once written they would bring removed chunks back.
TEST_F(CacheNvmeTest, RemoveNamespaceCoversDemotionsInFlight) {
  TempFolder dir;
  FaultInjectionEnv env;
  CacheOptions o = TieredOptions(dir.path());
  o.nvme.max_inflight_bytes = 48 << 10;  // one 32 KiB chunk's slot in flight
  Open(o, EmbeddedCacheSeams{&env});
  env.Hold(IoOpcode::kWrite);  // the first demotion stays in flight
  std::vector<ChunkRef> chain = Chain(100, 9);
  ASSERT_OK(SaveAll(chain));
  ASSERT_EQ(cache_->Stats().tiering.demotions_in_flight, 1u);
  std::atomic<bool> done{false};
  std::thread remover([&] {
    cache_->RemoveNamespace(ns_->id());
    done.store(true);
  });
  absl::SleepFor(absl::Milliseconds(200));
  EXPECT_FALSE(done.load()) << "returned while a demotion of the namespace was being written";
  env.ReleaseHeld();
  remover.join();
  cache_->WaitForDemotions();
  for (const ChunkRef& c : chain) EXPECT_FALSE(OnNvme(c));
  ASSERT_OK_AND_ASSIGN(LookupResult r, cache_->Lookup(*ns_, Namespace::Keys(chain)));
  EXPECT_EQ(r.matched, 0u);
  cache_.reset();  // before the env it uses
}

TEST_F(CacheNvmeTest, StartupFaultsNameThePath) {
  TempFolder dir;
  const std::string missing = dir.path() + "/not-there";
  EXPECT_THAT(Cache::Create(TieredOptions(missing)),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr(missing)));

  CacheOptions bad = TieredOptions(dir.path());
  bad.nvme.io_mode = "mmap";
  EXPECT_THAT(Cache::Create(bad),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("nvme.io_mode")));
  bad = TieredOptions(dir.path());
  bad.nvme.admission = "sometimes";
  EXPECT_THAT(Cache::Create(bad),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("nvme.admission")));
  bad = TieredOptions(dir.path());
  bad.nvme.durability = "eventually";
  EXPECT_THAT(Cache::Create(bad),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("nvme.durability")));
  bad = TieredOptions(dir.path());
  bad.nvme.max_inflight_bytes = 5000;
  EXPECT_THAT(Cache::Create(bad),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("nvme.max_inflight_bytes")));
  bad = TieredOptions(dir.path());
  bad.nvme.slot_payload_bytes = {64 << 10, 32 << 10};
  EXPECT_THAT(Cache::Create(bad), StatusIs(absl::StatusCode::kInvalidArgument,
                                           HasSubstr("nvme.slot_payload_bytes[1]")));

  // A volume in use by another cache.
  ASSERT_OK_AND_ASSIGN(auto first, Cache::Create(TieredOptions(dir.path())));
  CacheOptions again = TieredOptions(dir.path());
  EXPECT_THAT(Cache::Create(again),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr(dir.volume())));
  first.reset();

  if (!IsRoot()) GTEST_SKIP() << "mounting a small tmpfs needs root";
  const std::string mnt = dir.path() + "/small";
  if (!Shell("mkdir -p " + mnt + " && mount -t tmpfs -o size=8m tmpfs " + mnt + " 2>/dev/null")) {
    GTEST_SKIP() << "cannot mount tmpfs here";
  }
  CacheOptions small = TieredOptions(mnt);
  small.nvme.io_mode = "buffered";
  absl::StatusOr<std::unique_ptr<Cache>> c = Cache::Create(small);
  EXPECT_THAT(c, StatusIs(absl::StatusCode::kResourceExhausted,
                          AllOf(HasSubstr(mnt), HasSubstr("No space left on device"))));
  Shell("umount " + mnt);
}

TEST_F(CacheNvmeTest, PrefetchAndLoadAsyncNeverWaitForTheDisk) {
  TempFolder dir;
  Open(TieredOptions(dir.path()));
  std::vector<ChunkRef> chain = Chain(150, 9);
  ASSERT_OK(SaveAll(chain));
  cache_->WaitForDemotions();
  std::vector<ChunkRef> head(chain.begin(), chain.begin() + 20);
  for (const ChunkRef& c : head) ASSERT_FALSE(InDram(c));

  // LoadAsync of an NVMe chunk: the callback runs later, with the bytes.
  std::vector<std::byte> out(kPayload);
  std::future<absl::StatusOr<size_t>> f =
      cache_->LoadAsync(*ns_, chain[30].key, absl::MakeSpan(out));
  ASSERT_OK_AND_ASSIGN(size_t n, f.get());
  EXPECT_EQ(n, kPayload);
  EXPECT_TRUE(out == KvFor(chain[30], kPayload));
  EXPECT_TRUE(InDram(chain[30]));
  // A DRAM hit and a miss answer before LoadAsync returns.
  bool called = false;
  cache_->LoadAsync(*ns_, chain[30].key, absl::MakeSpan(out), [&](absl::StatusOr<size_t> r) {
    EXPECT_TRUE(r.ok());
    called = true;
  });
  EXPECT_TRUE(called);
  called = false;
  cache_->LoadAsync(*ns_, BlockKey{1, 2}, absl::MakeSpan(out), [&](absl::StatusOr<size_t> r) {
    EXPECT_THAT(r, StatusIs(absl::StatusCode::kNotFound));
    called = true;
  });
  EXPECT_TRUE(called);
  // Too small a buffer: InvalidArgument, nothing read.
  std::vector<std::byte> small(100);
  EXPECT_THAT(cache_->LoadAsync(*ns_, chain[31].key, absl::MakeSpan(small)).get(),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("smaller")));

  // Prefetch brings the head of the chain up into DRAM.
  std::future<absl::StatusOr<PrefetchResult>> p = cache_->Prefetch(*ns_, Namespace::Keys(head));
  ASSERT_OK_AND_ASSIGN(PrefetchResult pr, p.get());
  EXPECT_EQ(pr.requested, head.size());
  EXPECT_EQ(pr.promoted, head.size());
  EXPECT_EQ(pr.failed, 0u);
  for (const ChunkRef& c : head) EXPECT_TRUE(InDram(c));
  ASSERT_OK_AND_ASSIGN(LookupResult r, cache_->Lookup(*ns_, Namespace::Keys(head)));
  for (const ChunkLocation& loc : r.chunks) EXPECT_EQ(loc.tier, Tier::kDram);
  EXPECT_EQ(cache_->Stats().tiering.prefetched, head.size());
  // Nothing left to move: done at once.
  ASSERT_OK_AND_ASSIGN(pr, cache_->Prefetch(*ns_, Namespace::Keys(head)).get());
  EXPECT_EQ(pr.requested, 0u);
  // A bad chain is refused.
  std::vector<BlockKey> twice = {chain[0].key, chain[0].key};
  EXPECT_THAT(cache_->Prefetch(*ns_, twice).get(),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("repeats")));
  ExpectAllLoad(head);
}

TEST_F(CacheNvmeTest, ConcurrentSavesAndLoadsOfOverlappingChainsStayByteExact) {
  TempFolder dir;
  Open(TieredOptions(dir.path()));
  // Every thread's chains share a 10-chunk prefix, then diverge.
  std::vector<TokenId> shared = Tokens(64 * 10, 10);
  constexpr int kThreads = 4;
  std::vector<std::vector<ChunkRef>> chains(kThreads);
  for (int t = 0; t < kThreads; ++t) {
    std::vector<TokenId> tokens = shared;
    std::vector<TokenId> own = Tokens(64 * 40, 11 + t);
    tokens.insert(tokens.end(), own.begin(), own.end());
    ASSERT_OK_AND_ASSIGN(chains[t], ns_->Chunks(tokens));
  }
  std::atomic<uint64_t> wrong{0};
  std::atomic<uint64_t> loaded{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937 rng(t);
      std::vector<std::byte> out(kPayload);
      const std::vector<ChunkRef>& chain = chains[t];
      for (int round = 0; round < 3; ++round) {
        for (const ChunkRef& c : chain) {
          if (!cache_->Save(*ns_, c, KvFor(c, kPayload)).ok()) ++wrong;
          // Read back a random earlier chunk of this chain, sync or async.
          const ChunkRef& r = chain[rng() % (&c - chain.data() + 1)];
          absl::StatusOr<size_t> n =
              rng() % 2 ? cache_->Load(*ns_, r.key, absl::MakeSpan(out))
                        : cache_->LoadAsync(*ns_, r.key, absl::MakeSpan(out)).get();
          if (n.ok()) {
            ++loaded;
            if (out != KvFor(r, kPayload)) ++wrong;
          } else if (n.status().code() != absl::StatusCode::kNotFound) {
            ++wrong;
          }
        }
      }
    });
  }
  for (std::thread& th : threads) th.join();
  EXPECT_EQ(wrong.load(), 0u);
  EXPECT_GT(loaded.load(), 0u);
  cache_->WaitForDemotions();
  CacheStats st = cache_->Stats();
  EXPECT_GT(st.tiering.demoted, 0u);
  // Nothing was lost: NVMe had room for everything DRAM evicted.
  EXPECT_EQ(st.tiering.skipped_busy + st.tiering.skipped_full + st.tiering.skipped_io_error, 0u);
  for (const std::vector<ChunkRef>& chain : chains) ExpectAllLoad(chain);
  // The chains outgrow DRAM, so reading all of them back promoted chunks
  // from NVMe (whether the threads' own reads did depends on timing).
  EXPECT_GT(cache_->Stats().tiering.promoted, 0u);
}

}  // namespace
}  // namespace kvtier
