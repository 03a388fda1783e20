// The Blob tier against a real Azurite (started once for the suite on a free
// loopback port in a fresh folder, killed at the end; each test uses its own
// container) and, for the faults Azurite cannot produce, through a
// fault-injecting proxy in front of it. The last test runs two kvtierd
// processes against it.
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kvtier/cache.h"
#include "kvtier/client.h"
#include "kvtier/namespace.h"
#include "nlohmann/json.hpp"
#include "src/core/chunk_format.h"
#include "src/core/embedded_cache.h"
#include "src/core/replay/cache_replay.h"
#include "src/core/replay/sim.h"
#include "src/tiers/blob/azurite.h"
#include "src/tiers/blob/blob_client.h"
#include "src/tiers/blob/blob_tier.h"
#include "tests/integration/daemon_harness.h"
#include "tests/integration/fault_proxy.h"
#include "tests/testing/cache_fixtures.h"
#include "tests/testing/replay_traces.h"
#include "tests/testing/status_matchers.h"

namespace kvtier {
namespace {

using ::kvtier::testing::Fault;
using ::kvtier::testing::FaultProxy;
using ::kvtier::testing::GeneratedTrace;
using ::kvtier::testing::KvFor;
using ::kvtier::testing::SmallModel;
using ::kvtier::testing::StatusIs;
using ::kvtier::testing::Tokens;
using ::kvtier::testing::Trace;
using ::testing::HasSubstr;

std::vector<std::byte> Bytes(size_t n, uint32_t seed) {
  std::vector<std::byte> v(n);
  uint64_t s = seed * 0x9E3779B97F4A7C15ull + 1;
  for (size_t i = 0; i < n; ++i) {
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    v[i] = static_cast<std::byte>(s >> 56);
  }
  return v;
}

absl::Time In(int ms) { return absl::Now() + absl::Milliseconds(ms); }

// A chunk of namespace `ns` whose key is (0x5eed, n).
ChunkMeta MetaOf(uint64_t ns, uint64_t n) {
  ChunkMeta m;
  m.namespace_id = ns;
  m.key = BlockKey{0x5eed, n};
  m.layout_signature = 7;
  m.num_tokens = 16;
  return m;
}

// Waits (up to 10 s) until `done` holds; returns whether it did.
template <typename Done>
bool WaitFor(Done done) {
  const absl::Time until = In(10000);
  while (!done()) {
    if (absl::Now() > until) return false;
    absl::SleepFor(absl::Milliseconds(5));
  }
  return true;
}

// Collects the tier's log lines.
struct LogLines {
  absl::Mutex mu;
  std::vector<std::string> lines;
  BlobLogFn Fn() {
    return [this](const std::string& line) {
      absl::MutexLock lock(&mu);
      lines.push_back(line);
    };
  }
  bool Has(const std::string& text) {
    absl::MutexLock lock(&mu);
    for (const std::string& l : lines) {
      if (absl::StrContains(l, text)) return true;
    }
    return false;
  }
  // Every line, for failure messages.
  std::string All() {
    absl::MutexLock lock(&mu);
    return absl::StrJoin(lines, "\n");
  }
};

class BlobTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    absl::StatusOr<std::string> bin = FindAzuriteBlob();
    if (!bin.ok()) {
      skip_reason_ = new std::string(bin.status().message());
      return;
    }
    absl::StatusOr<std::unique_ptr<AzuriteProcess>> a = AzuriteProcess::Start();
    if (!a.ok()) {
      start_error_ = new std::string(a.status().ToString());
      return;
    }
    azurite_ = a->release();
  }
  static void TearDownTestSuite() {
    delete azurite_;
    azurite_ = nullptr;
  }

  void SetUp() override {
    if (skip_reason_ != nullptr) {
      // Without node (or the npm package) there is no emulator to test against.
      if (absl::StrContains(*skip_reason_, "node is not installed")) {
        GTEST_SKIP() << "Azurite cannot run here: " << *skip_reason_;
      }
      FAIL() << *skip_reason_;
    }
    ASSERT_EQ(start_error_, nullptr) << *start_error_;
    // A container of its own for each test.
    static int n = 0;
    container_ = absl::StrCat("kvtier-test-", ++n);
  }

  BlobClientOptions ClientOptions(const std::string& endpoint = "") const {
    BlobClientOptions o;
    o.endpoint = endpoint.empty() ? azurite_->endpoint() : endpoint;
    o.account = kAzuriteAccount;
    o.container = container_;
    o.shared_key = kAzuriteKey;
    return o;
  }

  BlobCacheOptions BlobOptions(const std::string& endpoint = "") const {
    BlobCacheOptions o;
    o.endpoint = endpoint.empty() ? azurite_->endpoint() : endpoint;
    o.account = kAzuriteAccount;
    o.container = container_;
    o.shared_key = kAzuriteKey;
    o.policy = "always";
    o.probe = true;
    o.upload_workers = 2;
    o.deadline_ms = 3000;
    o.recheck_ms = 100;
    return o;
  }

  // DRAM of one 2 MiB slab (56 chunks of 32 KiB), no NVMe, Blob as given.
  static CacheOptions Options(const BlobCacheOptions& blob) {
    CacheOptions o;
    o.dram_capacity_bytes = 2ull << 20;
    o.slab_bytes = 2ull << 20;
    o.huge_pages = false;
    o.index_shards = 8;
    o.register_with_gpu = false;
    o.blob = blob;
    return o;
  }

  static std::string ProxyEndpoint(const FaultProxy& proxy) {
    return absl::StrCat("http://127.0.0.1:", proxy.port(), "/", kAzuriteAccount);
  }

  static inline AzuriteProcess* azurite_ = nullptr;
  static inline std::string* skip_reason_ = nullptr;
  static inline std::string* start_error_ = nullptr;
  std::string container_;
};

// ---- the REST client --------------------------------------------------------------

TEST_F(BlobTest, ClientRoundTripsBlocksAndListsWithContinuation) {
  BlobClientOptions o = ClientOptions();
  o.single_put_max_bytes = 1 << 20;
  o.block_bytes = 256 << 10;
  ASSERT_OK_AND_ASSIGN(auto client, BlobClient::Create(o));
  ASSERT_OK(client->CreateContainer(In(5000)));
  ASSERT_OK(client->CreateContainer(In(5000)));  // exists: still OK

  // Put Blob, ranged Get, properties with metadata, Delete.
  const std::vector<std::byte> small = Bytes(100000, 1);
  ASSERT_OK(client->Upload("a/small", small, {{"kvtier_parent", "abc"}}, In(5000)));
  std::vector<std::byte> part(1000);
  ASSERT_OK_AND_ASSIGN(BlobRangeResult r,
                       client->GetRange("a/small", 5000, absl::MakeSpan(part), In(5000)));
  EXPECT_EQ(r.bytes, 1000u);
  EXPECT_EQ(r.blob_size, small.size());
  EXPECT_EQ(r.metadata["kvtier_parent"], "abc");
  EXPECT_TRUE(std::equal(part.begin(), part.end(), small.begin() + 5000));
  ASSERT_OK_AND_ASSIGN(BlobProperties p, client->GetProperties("a/small", In(5000)));
  EXPECT_EQ(p.size, small.size());
  EXPECT_EQ(p.metadata["kvtier_parent"], "abc");
  const uint64_t ok_before = client->Stats().requests_ok;

  // Above the threshold: Put Block x 21 + Put Block List.
  const std::vector<std::byte> large = Bytes((5 << 20) + 123, 2);
  ASSERT_OK(client->Upload("a/large", large, {}, In(20000)));
  EXPECT_EQ(client->Stats().requests_ok - ok_before, 21u + 1u);
  std::vector<std::byte> back(large.size() + 10);
  ASSERT_OK_AND_ASSIGN(r, client->GetRange("a/large", 0, absl::MakeSpan(back), In(10000)));
  EXPECT_EQ(r.bytes, large.size());
  EXPECT_TRUE(std::equal(large.begin(), large.end(), back.begin()));

  ASSERT_OK(client->Delete("a/small", In(5000)));
  EXPECT_THAT(client->GetProperties("a/small", In(5000)), StatusIs(absl::StatusCode::kNotFound));
  EXPECT_THAT(client->Delete("a/small", In(5000)), StatusIs(absl::StatusCode::kNotFound));

  // Listing: 7 blobs under list/, 3 per page; other prefixes stay out.
  for (int i = 0; i < 7; ++i) {
    ASSERT_OK(client->Upload(absl::StrCat("list/", i), Bytes(10 + i, i), {}, In(5000)));
  }
  std::vector<std::string> names;
  std::string marker;
  int pages = 0;
  do {
    ASSERT_OK_AND_ASSIGN(BlobListPage page, client->List("list/", marker, 3, In(5000)));
    EXPECT_LE(page.blobs.size(), 3u);
    for (const BlobListItem& b : page.blobs) {
      names.push_back(b.name);
      EXPECT_EQ(b.size, 10u + (b.name.back() - '0'));
    }
    marker = page.next_marker;
    ++pages;
  } while (!marker.empty() && pages < 10);
  EXPECT_EQ(pages, 3);
  EXPECT_THAT(names, ::testing::ElementsAre("list/0", "list/1", "list/2", "list/3", "list/4",
                                            "list/5", "list/6"));
  EXPECT_EQ(client->Stats().retries, 0u);
}

TEST_F(BlobTest, WrongKeyIsPermissionDeniedNamingTheAccount) {
  BlobClientOptions o = ClientOptions();
  o.shared_key = blob_internal::Base64Encode(std::string(64, 'k'));
  ASSERT_OK_AND_ASSIGN(auto client, BlobClient::Create(o));
  absl::Status s = client->Upload("x", Bytes(10, 1), {}, In(5000));
  EXPECT_THAT(s, StatusIs(absl::StatusCode::kPermissionDenied, HasSubstr("devstoreaccount1")));
  EXPECT_EQ(client->Stats().retries, 0u) << "403 is not retried";

  BlobCacheOptions b = BlobOptions();
  b.shared_key = o.shared_key;
  absl::StatusOr<std::unique_ptr<EmbeddedCache>> cache = EmbeddedCache::Create(Options(b));
  EXPECT_THAT(cache, StatusIs(absl::StatusCode::kPermissionDenied,
                              HasSubstr("storage account 'devstoreaccount1'")));

  // The same with an NVMe tier, which opens before Blob: still the error, and
  // closing the NVMe tier it had opened touches no DRAM tier that never was.
  ::kvtier::testing::TempDir dir;
  CacheOptions tiered = Options(b);
  tiered.nvme.path = dir.path();
  tiered.nvme.capacity_bytes = 16ull << 20;
  tiered.nvme.io_mode = "buffered";
  EXPECT_THAT(EmbeddedCache::Create(tiered),
              StatusIs(absl::StatusCode::kPermissionDenied, HasSubstr("devstoreaccount1")));
}

TEST_F(BlobTest, SasTokenAuthorizesRequests) {
  BlobClientOptions o = ClientOptions();
  ASSERT_OK_AND_ASSIGN(std::string sas, blob_internal::AccountSas(kAzuriteAccount, kAzuriteKey,
                                                                  "rwdlac", In(3600 * 1000)));
  o.shared_key.clear();
  o.sas = sas;
  ASSERT_OK_AND_ASSIGN(auto client, BlobClient::Create(o));
  ASSERT_OK(client->CreateContainer(In(5000)));
  const std::vector<std::byte> data = Bytes(4096, 3);
  ASSERT_OK(client->Upload("sas/one", data, {}, In(5000)));
  std::vector<std::byte> back(4096);
  ASSERT_OK(client->GetRange("sas/one", 0, absl::MakeSpan(back), In(5000)).status());
  EXPECT_EQ(back, data);
  ASSERT_OK_AND_ASSIGN(BlobListPage page, client->List("sas/", "", 0, In(5000)));
  EXPECT_EQ(page.blobs.size(), 1u);

  // A token signed with another key is refused.
  ASSERT_OK_AND_ASSIGN(
      o.sas, blob_internal::AccountSas(kAzuriteAccount, blob_internal::Base64Encode("other-key"),
                                       "rwdlac", In(3600 * 1000)));
  ASSERT_OK_AND_ASSIGN(auto bad, BlobClient::Create(o));
  EXPECT_THAT(bad->GetProperties("sas/one", In(5000)),
              StatusIs(absl::StatusCode::kPermissionDenied, HasSubstr("SAS token")));
}

// ---- the tier inside the embedded cache -------------------------------------------

TEST_F(BlobTest, ChunksWrittenByOneCacheAreLoadedByAnother) {
  ASSERT_OK_AND_ASSIGN(Namespace ns, Namespace::Create(SmallModel()));
  ASSERT_OK_AND_ASSIGN(std::vector<ChunkRef> chain, ns.Chunks(Tokens(4 * 64, 7)));
  ASSERT_EQ(chain.size(), 4u);
  const std::vector<BlockKey> keys = Namespace::Keys(chain);
  const size_t bytes = ns.FullChunkPayloadBytes();
  {
    ASSERT_OK_AND_ASSIGN(auto writer, EmbeddedCache::Create(Options(BlobOptions())));
    for (const ChunkRef& c : chain) ASSERT_OK(writer->Save(ns, c, KvFor(c, bytes)));
    writer->blob()->Flush();
    const CacheStats st = writer->Stats();
    EXPECT_EQ(st.tiering.blob_uploaded, 4u);
    ASSERT_OK_AND_ASSIGN(LookupResult lr, writer->Lookup(ns, keys));
    EXPECT_EQ(lr.matched, 4u);
    EXPECT_EQ(lr.chunks[0].tier, Tier::kDram);
  }
  // Another cache, empty: Lookup probes Blob, Load downloads and promotes.
  ASSERT_OK_AND_ASSIGN(auto reader, EmbeddedCache::Create(Options(BlobOptions())));
  ASSERT_OK_AND_ASSIGN(LookupResult lr, reader->Lookup(ns, keys));
  ASSERT_EQ(lr.matched, 4u);
  for (const ChunkLocation& l : lr.chunks) EXPECT_EQ(l.tier, Tier::kBlob);
  std::vector<std::byte> out(bytes);
  for (const ChunkRef& c : chain) {
    ASSERT_OK_AND_ASSIGN(size_t n, reader->Load(ns, c.key, absl::MakeSpan(out)));
    EXPECT_EQ(n, bytes);
    EXPECT_EQ(out, KvFor(c, bytes));
  }
  ASSERT_OK_AND_ASSIGN(lr, reader->Lookup(ns, keys));
  EXPECT_EQ(lr.chunks[3].tier, Tier::kDram) << "promoted";
  CacheStats st = reader->Stats();
  EXPECT_EQ(st.tiering.blob_promoted, 4u);
  EXPECT_TRUE(st.tiering.blob_enabled);
  ASSERT_EQ(st.tiers.size(), 2u);
  EXPECT_EQ(st.tiers[1].tier, Tier::kBlob);
  EXPECT_EQ(st.tiers[1].hits, 4u);
  EXPECT_GE(st.tiering.blob_probe_hits, 4u);

  // Other namespaces never see them; without probes an empty cache does not either.
  ASSERT_OK_AND_ASSIGN(Namespace other, Namespace::Create(SmallModel("tenant-b")));
  ASSERT_OK_AND_ASSIGN(std::vector<ChunkRef> other_chain, other.Chunks(Tokens(4 * 64, 7)));
  ASSERT_OK_AND_ASSIGN(lr, reader->Lookup(other, Namespace::Keys(other_chain)));
  EXPECT_EQ(lr.matched, 0u);
  EXPECT_THAT(reader->Load(other, keys[0], absl::MakeSpan(out)),
              StatusIs(absl::StatusCode::kNotFound));
  BlobCacheOptions no_probe = BlobOptions();
  no_probe.probe = false;
  ASSERT_OK_AND_ASSIGN(auto blind, EmbeddedCache::Create(Options(no_probe)));
  ASSERT_OK_AND_ASSIGN(lr, blind->Lookup(ns, keys));
  EXPECT_EQ(lr.matched, 0u);
  // Load still asks Blob.
  ASSERT_OK(blind->Load(ns, keys[2], absl::MakeSpan(out)).status());
  // Pin and Prefetch promote too.
  ASSERT_OK_AND_ASSIGN(auto third, EmbeddedCache::Create(Options(BlobOptions())));
  ASSERT_OK_AND_ASSIGN(ChunkPin pin, third->Pin(ns, keys[0]));
  EXPECT_TRUE(
      std::equal(pin.payload().begin(), pin.payload().end(), KvFor(chain[0], bytes).begin()));
  pin.Release();
  ASSERT_OK_AND_ASSIGN(PrefetchResult pr, third->Prefetch(ns, keys).get());
  EXPECT_EQ(pr.requested, 3u);
  EXPECT_EQ(pr.promoted, 3u);
}

// With policy "always" an in-place save (Reserve, write, Commit) is uploaded
// too; handing its bytes to the uploader is not a read of the chunk.
TEST_F(BlobTest, InPlaceSaveIsUploadedWithoutCountingARead) {
  ASSERT_OK_AND_ASSIGN(Namespace ns, Namespace::Create(SmallModel()));
  ASSERT_OK_AND_ASSIGN(std::vector<ChunkRef> chain, ns.Chunks(Tokens(64, 8)));
  const size_t bytes = ns.FullChunkPayloadBytes();
  ASSERT_OK_AND_ASSIGN(auto cache, EmbeddedCache::Create(Options(BlobOptions())));
  ASSERT_OK_AND_ASSIGN(DramTier::SlotReservation r, cache->ReserveSlot(ns, chain[0]));
  const std::vector<std::byte> payload = KvFor(chain[0], bytes);
  ASSERT_EQ(r.payload_bytes, bytes);
  std::memcpy(cache->dram().arena().base() + r.payload_offset, payload.data(), bytes);
  ASSERT_OK(cache->CommitSlot(r.handle));
  cache->blob()->Flush();
  const CacheStats st = cache->Stats();
  EXPECT_EQ(st.tiering.blob_uploaded, 1u);
  EXPECT_EQ(st.tiers[0].hits, 0u);
  EXPECT_EQ(st.tiers[0].bytes_read, 0u);
}

TEST_F(BlobTest, RemoveNamespaceDeletesEveryObjectOfItAndNoOther) {
  ASSERT_OK_AND_ASSIGN(Namespace ns, Namespace::Create(SmallModel()));
  ASSERT_OK_AND_ASSIGN(Namespace other, Namespace::Create(SmallModel("tenant-b")));
  ASSERT_OK_AND_ASSIGN(std::vector<ChunkRef> chain, ns.Chunks(Tokens(3 * 64, 11)));
  ASSERT_OK_AND_ASSIGN(std::vector<ChunkRef> other_chain, other.Chunks(Tokens(2 * 64, 11)));
  const size_t bytes = ns.FullChunkPayloadBytes();
  // One cache writes both namespaces, another writes more of `ns`: removal
  // must reach the objects this node did not write too.
  ASSERT_OK_AND_ASSIGN(auto a, EmbeddedCache::Create(Options(BlobOptions())));
  ASSERT_OK_AND_ASSIGN(auto b, EmbeddedCache::Create(Options(BlobOptions())));
  ASSERT_OK(a->Save(ns, chain[0], KvFor(chain[0], bytes)));
  for (const ChunkRef& c : other_chain) ASSERT_OK(a->Save(other, c, KvFor(c, bytes)));
  for (size_t i = 1; i < chain.size(); ++i)
    ASSERT_OK(b->Save(ns, chain[i], KvFor(chain[i], bytes)));
  a->blob()->Flush();
  b->blob()->Flush();
  ASSERT_OK_AND_ASSIGN(auto client, BlobClient::Create(ClientOptions()));
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  const std::string ns_prefix = absl::StrCat(BlobOptions().prefix, "/", ns.IdHex(), "/");
  const std::string other_prefix = absl::StrCat(BlobOptions().prefix, "/", other.IdHex(), "/");
  ASSERT_OK_AND_ASSIGN(BlobListPage before, client->List(ns_prefix, "", 100, deadline));
  ASSERT_EQ(before.blobs.size(), 3u);

  EXPECT_EQ(a->RemoveNamespace(ns.id()), 1u) << "DRAM held one chunk of ns";
  a->blob()->Flush();
  ASSERT_OK_AND_ASSIGN(BlobListPage after, client->List(ns_prefix, "", 100, deadline));
  EXPECT_TRUE(after.blobs.empty());
  EXPECT_EQ(a->blob()->Stats().namespace_objects_deleted, 3u);
  ASSERT_OK_AND_ASSIGN(BlobListPage kept, client->List(other_prefix, "", 100, deadline));
  EXPECT_EQ(kept.blobs.size(), 2u) << "another namespace is untouched";
  // A fresh cache that probes Blob finds nothing of the removed namespace.
  ASSERT_OK_AND_ASSIGN(auto c, EmbeddedCache::Create(Options(BlobOptions())));
  ASSERT_OK_AND_ASSIGN(LookupResult lr, c->Lookup(ns, Namespace::Keys(chain)));
  EXPECT_EQ(lr.matched, 0u);
  ASSERT_OK_AND_ASSIGN(lr, c->Lookup(other, Namespace::Keys(other_chain)));
  EXPECT_EQ(lr.matched, 2u);
}

TEST_F(BlobTest, OnDemotionUploadsWhatDramEvictsAndQueueBoundSkips) {
  ASSERT_OK_AND_ASSIGN(Namespace ns, Namespace::Create(SmallModel()));
  const size_t bytes = ns.FullChunkPayloadBytes();
  BlobCacheOptions b = BlobOptions();
  b.policy = "on_demotion";
  ASSERT_OK_AND_ASSIGN(auto cache, EmbeddedCache::Create(Options(b)));
  ASSERT_OK_AND_ASSIGN(std::vector<ChunkRef> chain, ns.Chunks(Tokens(80 * 64, 9)));
  for (const ChunkRef& c : chain) ASSERT_OK(cache->Save(ns, c, KvFor(c, bytes)));
  cache->blob()->Flush();
  CacheStats st = cache->Stats();
  const uint64_t evicted = st.tiers[0].evictions;
  ASSERT_GT(evicted, 0u);
  EXPECT_EQ(st.tiering.blob_uploaded + st.tiering.blob_skipped_queue_full, evicted);
  EXPECT_GT(st.tiering.blob_uploaded, 0u);
  // What DRAM evicted is in Blob: the chain is whole again through it.
  ASSERT_OK_AND_ASSIGN(LookupResult lr, cache->Lookup(ns, Namespace::Keys(chain)));
  EXPECT_EQ(lr.matched, chain.size());
  size_t in_blob = 0;
  std::vector<std::byte> out(bytes);
  for (size_t i = 0; i < lr.chunks.size(); ++i) {
    if (lr.chunks[i].tier != Tier::kBlob) continue;
    ++in_blob;
    ASSERT_OK(cache->Load(ns, chain[i].key, absl::MakeSpan(out)).status());
    EXPECT_EQ(out, KvFor(chain[i], bytes));
  }
  EXPECT_EQ(in_blob, st.tiering.blob_uploaded);

  // A queue of one chunk: a burst of evictions skips uploads, counted.
  BlobCacheOptions tiny = b;
  tiny.queue_chunks = 1;
  tiny.upload_workers = 1;
  ASSERT_OK_AND_ASSIGN(auto small, EmbeddedCache::Create(Options(tiny)));
  ASSERT_OK_AND_ASSIGN(std::vector<ChunkRef> chain2, ns.Chunks(Tokens(120 * 64, 10)));
  for (const ChunkRef& c : chain2) ASSERT_OK(small->Save(ns, c, KvFor(c, bytes)));
  small->blob()->Flush();
  st = small->Stats();
  EXPECT_GT(st.tiering.blob_skipped_queue_full, 0u);
  EXPECT_EQ(st.tiering.blob_uploaded + st.tiering.blob_skipped_queue_full, st.tiers[0].evictions);
}

TEST_F(BlobTest, CorruptedOrMisplacedBlobIsACountedMiss) {
  ASSERT_OK_AND_ASSIGN(Namespace ns, Namespace::Create(SmallModel()));
  ASSERT_OK_AND_ASSIGN(Namespace other, Namespace::Create(SmallModel("tenant-b")));
  const size_t bytes = ns.FullChunkPayloadBytes();
  ASSERT_OK_AND_ASSIGN(std::vector<ChunkRef> chain, ns.Chunks(Tokens(2 * 64, 11)));
  ASSERT_OK_AND_ASSIGN(auto writer, EmbeddedCache::Create(Options(BlobOptions())));
  for (const ChunkRef& c : chain) ASSERT_OK(writer->Save(ns, c, KvFor(c, bytes)));
  writer->blob()->Flush();

  // Flip one payload byte of chunk 0 through the REST API.
  ASSERT_OK_AND_ASSIGN(auto client, BlobClient::Create(ClientOptions()));
  const std::string name0 = writer->blob()->ObjectName(ns.id(), chain[0].key);
  std::vector<std::byte> blob(kChunkHeaderBytes + bytes);
  ASSERT_OK(client->GetRange(name0, 0, absl::MakeSpan(blob), In(5000)).status());
  blob[kChunkHeaderBytes + 100] ^= std::byte{0x5a};
  ASSERT_OK(client->Upload(name0, blob, {}, In(5000)));
  // Chunk 1's bytes under another namespace's name for the same key.
  const std::string name1 = writer->blob()->ObjectName(ns.id(), chain[1].key);
  std::vector<std::byte> blob1(kChunkHeaderBytes + bytes);
  ASSERT_OK(client->GetRange(name1, 0, absl::MakeSpan(blob1), In(5000)).status());
  ASSERT_OK(
      client->Upload(writer->blob()->ObjectName(other.id(), chain[1].key), blob1, {}, In(5000)));

  ASSERT_OK_AND_ASSIGN(auto reader, EmbeddedCache::Create(Options(BlobOptions())));
  std::vector<std::byte> out(bytes, std::byte{0});
  EXPECT_THAT(reader->Load(ns, chain[0].key, absl::MakeSpan(out)),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("checksum")));
  EXPECT_THAT(reader->Load(other, chain[1].key, absl::MakeSpan(out)),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("namespace")));
  CacheStats st = reader->Stats();
  ASSERT_EQ(st.tiers.size(), 2u);
  EXPECT_EQ(st.tiers[1].corrupt_chunks, 2u);
  EXPECT_EQ(st.tiers[1].misses, 2u);
  EXPECT_EQ(st.tiering.blob_promoted, 0u);
  // Nothing was served or promoted.
  EXPECT_EQ(out, std::vector<std::byte>(bytes, std::byte{0}));
  ASSERT_OK_AND_ASSIGN(LookupResult lr, reader->Lookup(ns, {chain[0].key}));
  EXPECT_NE(lr.matched > 0 ? lr.chunks[0].tier : Tier::kNone, Tier::kDram);
  // The intact chunk still loads.
  ASSERT_OK(reader->Load(ns, chain[1].key, absl::MakeSpan(out)).status());
  EXPECT_EQ(out, KvFor(chain[1], bytes));
}

TEST_F(BlobTest, OutageDegradesWithinTheDeadlineAndRecoversOnRestart) {
  ASSERT_OK_AND_ASSIGN(Namespace ns, Namespace::Create(SmallModel()));
  const size_t bytes = ns.FullChunkPayloadBytes();
  ASSERT_OK_AND_ASSIGN(std::vector<ChunkRef> chain, ns.Chunks(Tokens(3 * 64, 12)));
  LogLines log;
  BlobCacheOptions b = BlobOptions();
  b.deadline_ms = 1500;
  b.write_deadline_ms = 3000;
  EmbeddedCacheSeams seams;
  seams.blob_log = log.Fn();
  ASSERT_OK_AND_ASSIGN(auto reader, EmbeddedCache::Create(Options(b), seams));
  ASSERT_OK_AND_ASSIGN(auto writer, EmbeddedCache::Create(Options(b)));
  ASSERT_OK(writer->Save(ns, chain[0], KvFor(chain[0], bytes)));
  writer->blob()->Flush();

  azurite_->Stop();
  // Whatever happens below, later tests get Azurite back.
  struct Restarter {
    AzuriteProcess* a;
    bool done = false;
    ~Restarter() {
      if (!done) (void)a->Restart();
    }
  } restarter{azurite_};
  // The engine's calls come back by the deadline, as misses.
  std::vector<std::byte> out(bytes);
  const absl::Time start = absl::Now();
  EXPECT_THAT(reader->Load(ns, chain[0].key, absl::MakeSpan(out)),
              StatusIs(absl::StatusCode::kNotFound));
  EXPECT_LT(absl::Now() - start, absl::Milliseconds(b.deadline_ms) + absl::Seconds(1));
  CacheStats st = reader->Stats();
  EXPECT_TRUE(st.tiering.blob_degraded);
  EXPECT_EQ(st.tiering.blob_degraded_events, 1u);
  EXPECT_GT(st.tiering.blob_requests_connection_error, 0u);
  EXPECT_TRUE(log.Has("degraded to DRAM + NVMe"));
  // Degraded: Lookup and Load answer at once from DRAM; saves still work.
  const absl::Time t2 = absl::Now();
  ASSERT_OK(reader->Save(ns, chain[1], KvFor(chain[1], bytes)));
  ASSERT_OK_AND_ASSIGN(LookupResult lr, reader->Lookup(ns, Namespace::Keys(chain)));
  EXPECT_EQ(lr.matched, 0u);
  EXPECT_THAT(reader->Load(ns, chain[0].key, absl::MakeSpan(out)),
              StatusIs(absl::StatusCode::kNotFound));
  ASSERT_OK(reader->Load(ns, chain[1].key, absl::MakeSpan(out)).status());
  EXPECT_LT(absl::Now() - t2, absl::Milliseconds(500));
  EXPECT_GE(reader->Stats().tiering.blob_skipped_degraded, 1u);

  // Azurite back on the same port: the tier notices and serves again.
  ASSERT_OK(azurite_->Restart());
  restarter.done = true;
  const absl::Time until = absl::Now() + absl::Seconds(15);
  while (reader->Stats().tiering.blob_degraded && absl::Now() < until) {
    absl::SleepFor(absl::Milliseconds(50));
  }
  ASSERT_FALSE(reader->Stats().tiering.blob_degraded);
  EXPECT_TRUE(log.Has("answers again"));
  ASSERT_OK(writer->Save(ns, chain[2], KvFor(chain[2], bytes)));
  writer->blob()->Flush();
  ASSERT_OK(reader->Load(ns, chain[2].key, absl::MakeSpan(out)).status());
  EXPECT_EQ(out, KvFor(chain[2], bytes));
}

// ---- faults Azurite cannot produce, through the proxy ------------------------------

TEST_F(BlobTest, RetriesOf503ResetsAndSlowAnswersSucceedWithinTheDeadline) {
  ASSERT_OK_AND_ASSIGN(auto proxy, FaultProxy::Start(azurite_->port()));
  const std::string via_proxy =
      absl::StrCat("http://127.0.0.1:", proxy->port(), "/", kAzuriteAccount);
  BlobClientOptions o = ClientOptions(via_proxy);
  o.request_timeout_ms = 1500;  // roomy: a loaded machine must not time out a healthy answer
  o.backoff_initial_ms = 10;
  o.backoff_max_ms = 100;
  const std::vector<std::byte> data = Bytes(300000, 5);
  {
    ASSERT_OK_AND_ASSIGN(auto direct, BlobClient::Create(ClientOptions()));
    ASSERT_OK(direct->CreateContainer(In(5000)));
    ASSERT_OK(direct->Upload("faults/one", data, {}, In(5000)));
  }
  struct Case {
    const char* name;
    Fault fault;
    int times;
  };
  const Case cases[] = {
      {"503", Fault{Fault::Kind::kStatus503, {}}, 3},
      {"500", Fault{Fault::Kind::kStatus500, {}}, 2},
      {"reset", Fault{Fault::Kind::kReset, {}}, 2},
      {"slow beyond the attempt timeout", Fault{Fault::Kind::kDelay, absl::Milliseconds(3000)}, 1},
      {"slow within the attempt timeout", Fault{Fault::Kind::kDelay, absl::Milliseconds(150)}, 1},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    // A fresh client: its first request opens a connection and meets the faults.
    ASSERT_OK_AND_ASSIGN(auto client, BlobClient::Create(o));
    proxy->Push(c.fault, c.times);
    std::vector<std::byte> back(data.size());
    const absl::Time deadline = In(8000);
    ASSERT_OK(client->GetRange("faults/one", 0, absl::MakeSpan(back), deadline).status());
    EXPECT_LT(absl::Now(), deadline);
    EXPECT_EQ(back, data);
    const BlobClientStats st = client->Stats();
    const bool slow_ok = absl::StrContains(c.name, "within");
    EXPECT_EQ(st.retries, slow_ok ? 0u : static_cast<uint64_t>(c.times));
  }
  // Uploads retry the same way.
  ASSERT_OK_AND_ASSIGN(auto client, BlobClient::Create(o));
  proxy->Push(Fault{Fault::Kind::kStatus503, {}}, 2);
  ASSERT_OK(client->Upload("faults/two", data, {}, In(4000)));
  EXPECT_EQ(client->Stats().retries, 2u);
  EXPECT_EQ(client->Stats().requests_throttled, 2u);

  // The cache over the proxy: a Load through a burst of 503s is a hit.
  ASSERT_OK_AND_ASSIGN(Namespace ns, Namespace::Create(SmallModel()));
  const size_t bytes = ns.FullChunkPayloadBytes();
  ASSERT_OK_AND_ASSIGN(std::vector<ChunkRef> chain, ns.Chunks(Tokens(64, 13)));
  {
    ASSERT_OK_AND_ASSIGN(auto writer, EmbeddedCache::Create(Options(BlobOptions())));
    ASSERT_OK(writer->Save(ns, chain[0], KvFor(chain[0], bytes)));
    writer->blob()->Flush();
  }
  BlobCacheOptions b = BlobOptions(via_proxy);
  b.backoff_initial_ms = 10;
  ASSERT_OK_AND_ASSIGN(auto reader, EmbeddedCache::Create(Options(b)));
  // Only new connections meet faults: drop the one the container check left.
  proxy->DropConnections();
  proxy->Push(Fault{Fault::Kind::kStatus503, {}}, 3);
  std::vector<std::byte> out(bytes);
  ASSERT_OK(reader->Load(ns, chain[0].key, absl::MakeSpan(out)).status());
  EXPECT_EQ(out, KvFor(chain[0], bytes));
  EXPECT_GE(reader->Stats().tiering.blob_retries, 2u);
  EXPECT_GE(reader->Stats().tiering.blob_requests_throttled, 2u);
  EXPECT_FALSE(reader->Stats().tiering.blob_degraded);
}

TEST_F(BlobTest, PermanentlyFailingEndpointDegradesWithoutPassingTheDeadline) {
  ASSERT_OK_AND_ASSIGN(auto proxy, FaultProxy::Start(azurite_->port()));
  const std::string via_proxy =
      absl::StrCat("http://127.0.0.1:", proxy->port(), "/", kAzuriteAccount);
  ASSERT_OK_AND_ASSIGN(Namespace ns, Namespace::Create(SmallModel()));
  const size_t bytes = ns.FullChunkPayloadBytes();
  ASSERT_OK_AND_ASSIGN(std::vector<ChunkRef> chain, ns.Chunks(Tokens(3 * 64, 14)));
  {
    ASSERT_OK_AND_ASSIGN(auto writer, EmbeddedCache::Create(Options(BlobOptions())));
    for (const ChunkRef& c : chain) ASSERT_OK(writer->Save(ns, c, KvFor(c, bytes)));
    writer->blob()->Flush();
  }
  for (Fault::Kind kind : {Fault::Kind::kStatus503, Fault::Kind::kHang}) {
    SCOPED_TRACE(kind == Fault::Kind::kHang ? "hang" : "503");
    proxy->SetDefault(Fault{Fault::Kind::kPass, {}});
    LogLines log;
    EmbeddedCacheSeams seams;
    seams.blob_log = log.Fn();
    BlobCacheOptions b = BlobOptions(via_proxy);
    b.deadline_ms = 800;
    b.request_timeout_ms = 300;
    b.recheck_ms = 60000;  // stay degraded for the checks below
    ASSERT_OK_AND_ASSIGN(auto reader, EmbeddedCache::Create(Options(b), seams));
    // From now on every connection fails; the pooled one is dropped.
    proxy->SetDefault(Fault{kind, {}});
    proxy->DropConnections();
    std::vector<std::byte> out(bytes);
    absl::Time start = absl::Now();
    ASSERT_OK_AND_ASSIGN(LookupResult lr, reader->Lookup(ns, Namespace::Keys(chain)));
    EXPECT_LT(absl::Now() - start, absl::Milliseconds(b.deadline_ms) + absl::Milliseconds(700));
    EXPECT_EQ(lr.matched, 0u);
    start = absl::Now();
    EXPECT_THAT(reader->Load(ns, chain[0].key, absl::MakeSpan(out)),
                StatusIs(absl::StatusCode::kNotFound));
    EXPECT_LT(absl::Now() - start, absl::Milliseconds(b.deadline_ms) + absl::Milliseconds(700));
    const CacheStats st = reader->Stats();
    EXPECT_TRUE(st.tiering.blob_degraded);
    EXPECT_TRUE(log.Has("unreachable"));
    // Degraded: no more waiting.
    start = absl::Now();
    EXPECT_THAT(reader->Load(ns, chain[1].key, absl::MakeSpan(out)),
                StatusIs(absl::StatusCode::kNotFound));
    EXPECT_LT(absl::Now() - start, absl::Milliseconds(100));
  }
}

// ---- removals racing uploads, the record, block lists --------------------------

// A Remove that comes while the chunk's upload waits in the queue or is in
// flight is not lost: the queued upload never happens, the one in flight is
// deleted when it ends, and neither is recorded.
TEST_F(BlobTest, RemoveOfAQueuedOrInFlightUploadIsNotLost) {
  ASSERT_OK_AND_ASSIGN(auto proxy, FaultProxy::Start(azurite_->port()));
  BlobCacheOptions o = BlobOptions(ProxyEndpoint(*proxy));
  o.upload_workers = 1;
  ASSERT_OK_AND_ASSIGN(auto tier, BlobTier::Create(o));
  ASSERT_OK_AND_ASSIGN(auto client, BlobClient::Create(ClientOptions()));
  const uint64_t ns = 0x1001;
  const std::vector<std::byte> payload = Bytes(64 << 10, 1);
  // The next connection waits a second at the proxy: chunk 1's upload is in
  // flight that long while chunk 2 waits in the queue behind it.
  proxy->DropConnections();
  proxy->Push(Fault{Fault::Kind::kDelay, absl::Milliseconds(1000)});
  ASSERT_TRUE(tier->EnqueuePayload(MetaOf(ns, 1), payload));
  ASSERT_TRUE(tier->EnqueuePayload(MetaOf(ns, 2), payload));
  ASSERT_TRUE(WaitFor([&] { return tier->Stats().queued == 1; }));
  EXPECT_TRUE(tier->Remove(ns, MetaOf(ns, 1).key)) << "in flight";
  EXPECT_TRUE(tier->Remove(ns, MetaOf(ns, 2).key)) << "queued";
  tier->Flush();
  for (uint64_t n : {1, 2}) {
    SCOPED_TRACE(n);
    const BlockKey key = MetaOf(ns, n).key;
    EXPECT_FALSE(tier->Recorded(ns, key));
    EXPECT_THAT(client->GetProperties(tier->ObjectName(ns, key), In(5000)),
                StatusIs(absl::StatusCode::kNotFound));
    EXPECT_THAT(tier->Fetch(ns, key, 7, payload.size(), In(5000)),
                StatusIs(absl::StatusCode::kNotFound));
    EXPECT_FALSE(tier->Remove(ns, key)) << "nothing of it is left";
  }
  const BlobTierStats st = tier->Stats();
  EXPECT_EQ(st.uploaded, 1u) << "the queued upload never happened";
  EXPECT_FALSE(st.degraded);
  // A recorded chunk is removed as before.
  ASSERT_TRUE(tier->EnqueuePayload(MetaOf(ns, 3), payload));
  tier->Flush();
  ASSERT_TRUE(tier->Recorded(ns, MetaOf(ns, 3).key));
  EXPECT_TRUE(tier->Remove(ns, MetaOf(ns, 3).key));
  tier->Flush();
  EXPECT_THAT(client->GetProperties(tier->ObjectName(ns, MetaOf(ns, 3).key), In(5000)),
              StatusIs(absl::StatusCode::kNotFound));
}

// RemoveNamespace drops the namespace's queued uploads and deletes the ones
// in flight when they end (after the namespace's listing has passed them):
// nothing of it is left in Blob or in the record; other namespaces upload.
TEST_F(BlobTest, RemoveNamespaceDropsQueuedUploadsAndDeletesThoseInFlight) {
  ASSERT_OK_AND_ASSIGN(auto proxy, FaultProxy::Start(azurite_->port()));
  BlobCacheOptions o = BlobOptions(ProxyEndpoint(*proxy));
  o.upload_workers = 2;
  ASSERT_OK_AND_ASSIGN(auto tier, BlobTier::Create(o));
  ASSERT_OK_AND_ASSIGN(auto client, BlobClient::Create(ClientOptions()));
  const uint64_t ns = 0x2002, other = 0x2003;
  const std::vector<std::byte> payload = Bytes(64 << 10, 2);
  // Both workers upload chunks of `ns` over connections the proxy holds up
  // for a second; one more chunk of each namespace waits in the queue.
  proxy->DropConnections();
  proxy->Push(Fault{Fault::Kind::kDelay, absl::Milliseconds(1000)}, 2);
  ASSERT_TRUE(tier->EnqueuePayload(MetaOf(ns, 1), payload));
  ASSERT_TRUE(tier->EnqueuePayload(MetaOf(ns, 2), payload));
  ASSERT_TRUE(WaitFor([&] { return tier->Stats().queued == 0; }));
  ASSERT_TRUE(tier->EnqueuePayload(MetaOf(ns, 3), payload));
  ASSERT_TRUE(tier->EnqueuePayload(MetaOf(other, 4), payload));
  EXPECT_EQ(tier->RemoveNamespace(ns), 0u);
  tier->Flush();
  const std::string prefix = absl::StrFormat("%s/%016x/", o.prefix, ns);
  ASSERT_OK_AND_ASSIGN(BlobListPage left, client->List(prefix, "", 100, In(5000)));
  EXPECT_TRUE(left.blobs.empty()) << left.blobs.size() << " objects of the namespace are back";
  for (uint64_t n : {1, 2, 3}) EXPECT_FALSE(tier->Recorded(ns, MetaOf(ns, n).key)) << n;
  EXPECT_TRUE(tier->Recorded(other, MetaOf(other, 4).key));
  ASSERT_OK(client->GetProperties(tier->ObjectName(other, MetaOf(other, 4).key), In(5000)));
  EXPECT_EQ(tier->Stats().uploaded, 3u) << "chunk 3 was never uploaded";
  EXPECT_FALSE(tier->Stats().degraded);
}

// A namespace too large to delete within its time limit (ten write
// deadlines) stops cleanly: it logs what is left, and a healthy endpoint is
// not taken for a failing one. Close cuts a running namespace removal short
// at write_deadline_ms.
TEST_F(BlobTest, LargeNamespaceRemovalStopsAtItsTimeLimitAndClose) {
  ASSERT_OK_AND_ASSIGN(auto client, BlobClient::Create(ClientOptions()));
  ASSERT_OK(client->CreateContainer(In(5000)));
  BlobCacheOptions o = BlobOptions();
  o.upload_workers = 1;
  o.write_deadline_ms = 400;  // the namespace's limit: 4 s
  const uint64_t ns = 0x3003;
  const std::string prefix = absl::StrFormat("%s/%016x/", o.prefix, ns);
  // More objects than one page of 1000, written by 8 threads; deleting them
  // one at a time takes longer than the limit (a few ms each).
  constexpr int kObjects = 3000;
  {
    std::vector<std::thread> writers;
    std::atomic<int> failed{0};
    for (int t = 0; t < 8; ++t) {
      writers.emplace_back([&, t] {
        for (int i = t; i < kObjects; i += 8) {
          if (!client->Upload(absl::StrFormat("%s%032x", prefix, i), Bytes(16, i), {}, In(20000))
                   .ok()) {
            failed.fetch_add(1);
          }
        }
      });
    }
    for (std::thread& w : writers) w.join();
    ASSERT_EQ(failed.load(), 0);
  }
  auto count = [&]() -> size_t {
    size_t n = 0;
    std::string marker;
    do {
      absl::StatusOr<BlobListPage> page = client->List(prefix, marker, 5000, In(10000));
      if (!page.ok()) return 0;
      n += page->blobs.size();
      marker = page->next_marker;
    } while (!marker.empty());
    return n;
  };

  LogLines log;
  ASSERT_OK_AND_ASSIGN(auto tier, BlobTier::Create(o, log.Fn()));
  const absl::Time start = absl::Now();
  (void)tier->RemoveNamespace(ns);
  tier->Flush();
  const absl::Duration took = absl::Now() - start;
  BlobTierStats st = tier->Stats();
  EXPECT_FALSE(st.degraded) << log.All();
  EXPECT_EQ(st.degraded_events, 0u);
  EXPECT_FALSE(log.Has("unreachable"));
  ASSERT_TRUE(log.Has("stopped (out of time)"))
      << "all " << st.namespace_objects_deleted << " deleted in " << took
      << "; the test needs more objects";
  EXPECT_LT(took, absl::Milliseconds(10 * o.write_deadline_ms) + absl::Milliseconds(700));
  EXPECT_GT(st.namespace_objects_deleted, 0u);
  // The deletion the time limit cut short may have landed.
  const size_t left = count();
  EXPECT_GE(left + st.namespace_objects_deleted, static_cast<size_t>(kObjects - 1));
  EXPECT_LE(left + st.namespace_objects_deleted, static_cast<size_t>(kObjects));

  // Close while a removal runs: it waits write_deadline_ms, not the removal.
  LogLines log2;
  ASSERT_OK_AND_ASSIGN(auto closing, BlobTier::Create(o, log2.Fn()));
  (void)closing->RemoveNamespace(ns);
  ASSERT_TRUE(WaitFor([&] { return closing->Stats().namespace_objects_deleted > 0; }));
  const absl::Time close_start = absl::Now();
  closing->Close();
  EXPECT_LT(absl::Now() - close_start, absl::Milliseconds(o.write_deadline_ms + 500));
  EXPECT_TRUE(log2.Has("stopped (out of time)"));
  EXPECT_FALSE(closing->Stats().degraded);
  EXPECT_GT(count(), 0u) << "the removal was cut short";
}

// Two writers of one name above single_put_max stage their blocks under
// IDs of their own: the blob is always one writer's bytes, never a mix.
TEST_F(BlobTest, ConcurrentBlockUploadsOfOneNameNeverMix) {
  BlobClientOptions o = ClientOptions();
  o.single_put_max_bytes = 64 << 10;
  o.block_bytes = 64 << 10;
  ASSERT_OK_AND_ASSIGN(auto a, BlobClient::Create(o));
  ASSERT_OK_AND_ASSIGN(auto b, BlobClient::Create(o));
  ASSERT_OK(a->CreateContainer(In(5000)));
  const std::vector<std::byte> da = Bytes(1 << 20, 41), db = Bytes(1 << 20, 42);
  for (int round = 0; round < 10; ++round) {
    SCOPED_TRACE(round);
    const std::string name = absl::StrCat("mix/", round);
    absl::Notification go;
    absl::Status sa, sb;
    std::thread ta([&] {
      go.WaitForNotification();
      sa = a->Upload(name, da, {}, In(20000));
    });
    std::thread tb([&] {
      go.WaitForNotification();
      sb = b->Upload(name, db, {}, In(20000));
    });
    go.Notify();
    ta.join();
    tb.join();
    // One commit may find its blocks discarded by the other's: that upload
    // fails, which is a miss later, never wrong bytes.
    ASSERT_TRUE(sa.ok() || sb.ok()) << sa << " / " << sb;
    std::vector<std::byte> back(da.size() + 1);
    ASSERT_OK_AND_ASSIGN(BlobRangeResult r, a->GetRange(name, 0, absl::MakeSpan(back), In(10000)));
    ASSERT_EQ(r.bytes, da.size());
    back.resize(r.bytes);
    EXPECT_TRUE(back == da || back == db) << "the blob mixes both writers' blocks";
  }
}

// The record forgets its oldest upload first, and a chunk removed and
// uploaded again counts from its new upload (no stale entry evicts it).
TEST_F(BlobTest, RecordForgetsTheOldestUploadAfterRemovals) {
  BlobCacheOptions o = BlobOptions();
  o.max_record_chunks = 2;
  o.upload_workers = 1;
  ASSERT_OK_AND_ASSIGN(auto tier, BlobTier::Create(o));
  const std::vector<std::byte> payload = Bytes(4096, 5);
  auto upload = [&](uint64_t ns, uint64_t n) {
    EXPECT_TRUE(tier->EnqueuePayload(MetaOf(ns, n), payload)) << n;
    tier->Flush();
  };
  const uint64_t ns = 0x4004;
  upload(ns, 1);
  EXPECT_TRUE(tier->Remove(ns, MetaOf(ns, 1).key));
  tier->Flush();
  upload(ns, 2);
  upload(ns, 1);
  upload(ns, 3);
  EXPECT_TRUE(tier->Recorded(ns, MetaOf(ns, 1).key));
  EXPECT_FALSE(tier->Recorded(ns, MetaOf(ns, 2).key)) << "the oldest";
  EXPECT_TRUE(tier->Recorded(ns, MetaOf(ns, 3).key));
  EXPECT_EQ(tier->Stats().recorded, 2u);

  // The same after a namespace removal.
  const uint64_t ns2 = 0x4005;
  upload(ns2, 1);
  EXPECT_EQ(tier->RemoveNamespace(ns2), 1u);
  tier->Flush();
  upload(ns2, 2);
  upload(ns2, 1);
  upload(ns2, 3);
  EXPECT_TRUE(tier->Recorded(ns2, MetaOf(ns2, 1).key));
  EXPECT_FALSE(tier->Recorded(ns2, MetaOf(ns2, 2).key)) << "the oldest";
  EXPECT_TRUE(tier->Recorded(ns2, MetaOf(ns2, 3).key));
  EXPECT_EQ(tier->Stats().recorded, 2u);
}

// With capacity_bytes an upload past the bound forgets and deletes the least
// recently used of the node's objects; a download and a demotion that finds
// the chunk stored count as uses. What is forgotten is a miss, never other
// bytes, and the recorded bytes stay within the bound.
TEST_F(BlobTest, CapacityDeletesTheLeastRecentlyUsedObjects) {
  const std::vector<std::byte> payload = Bytes(4096, 9);
  const uint64_t object = kChunkHeaderBytes + payload.size();
  BlobCacheOptions o = BlobOptions();
  o.capacity_bytes = 3 * object;
  o.upload_workers = 1;
  ASSERT_OK_AND_ASSIGN(auto tier, BlobTier::Create(o));
  ASSERT_OK_AND_ASSIGN(auto client, BlobClient::Create(ClientOptions()));
  const uint64_t ns = 0x6006;
  auto key = [&](uint64_t n) { return MetaOf(ns, n).key; };
  auto upload = [&](uint64_t n) {
    EXPECT_TRUE(tier->EnqueuePayload(MetaOf(ns, n), payload)) << n;
    tier->Flush();
  };
  auto stored = [&](uint64_t n) {
    return client->GetProperties(tier->ObjectName(ns, key(n)), In(5000)).ok();
  };
  upload(1);
  upload(2);
  upload(3);
  // 1 is read back and 2 offered again (a demotion of a chunk Blob holds):
  // 3 is now the least recently used.
  ASSERT_OK(tier->Fetch(ns, key(1), 7, payload.size(), In(5000)).status());
  EXPECT_FALSE(tier->EnqueuePayload(MetaOf(ns, 2), payload));
  upload(4);
  EXPECT_FALSE(tier->Recorded(ns, key(3)));
  EXPECT_FALSE(stored(3)) << "deleted, not only forgotten";
  EXPECT_THAT(tier->Fetch(ns, key(3), 7, payload.size(), In(5000)),
              StatusIs(absl::StatusCode::kNotFound));
  for (uint64_t n : {1, 2, 4}) {
    EXPECT_TRUE(tier->Recorded(ns, key(n))) << n;
    EXPECT_TRUE(stored(n)) << n;
  }
  BlobTierStats st = tier->Stats();
  EXPECT_EQ(st.recorded, 3u);
  EXPECT_EQ(st.recorded_bytes, 3 * object);
  EXPECT_EQ(st.capacity_deletions, 1u);
  EXPECT_EQ(st.already_stored, 1u);
  // Next goes 1, whose read is older than 2's demotion.
  upload(5);
  EXPECT_FALSE(stored(1));
  EXPECT_TRUE(stored(2));
  ASSERT_OK_AND_ASSIGN(BlobChunk back, tier->Fetch(ns, key(5), 7, payload.size(), In(5000)));
  EXPECT_TRUE(
      std::equal(back.payload().begin(), back.payload().end(), payload.begin(), payload.end()));
  // A removed chunk frees its share: the next upload fits without a deletion.
  EXPECT_TRUE(tier->Remove(ns, key(2)));
  tier->Flush();
  upload(6);
  st = tier->Stats();
  EXPECT_EQ(st.capacity_deletions, 2u);
  EXPECT_EQ(st.recorded_bytes, 3 * object);
  for (uint64_t n : {4, 5, 6}) EXPECT_TRUE(stored(n)) << n;
}

// A cache with a bounded Blob tier reports the bound, the recorded bytes and
// the deletions as the Blob tier's capacity, resident bytes and evictions.
TEST_F(BlobTest, CacheStatsShowTheBlobBound) {
  ASSERT_OK_AND_ASSIGN(Namespace ns, Namespace::Create(SmallModel()));
  ASSERT_OK_AND_ASSIGN(std::vector<ChunkRef> chain, ns.Chunks(Tokens(3 * 64, 8)));
  ASSERT_EQ(chain.size(), 3u);
  const size_t bytes = ns.FullChunkPayloadBytes();
  const uint64_t object = kChunkHeaderBytes + bytes;
  BlobCacheOptions b = BlobOptions();
  b.upload_workers = 1;
  b.capacity_bytes = 2 * object;
  ASSERT_OK_AND_ASSIGN(auto cache, EmbeddedCache::Create(Options(b)));
  for (const ChunkRef& c : chain) ASSERT_OK(cache->Save(ns, c, KvFor(c, bytes)));
  cache->blob()->Flush();
  const CacheStats s = cache->Stats();
  const TierStats* blob = nullptr;
  for (const TierStats& t : s.tiers) {
    if (t.tier == Tier::kBlob) blob = &t;
  }
  ASSERT_NE(blob, nullptr);
  EXPECT_EQ(blob->capacity_bytes, 2 * object);
  EXPECT_EQ(blob->used_bytes, 2 * object);
  EXPECT_EQ(blob->evictions, 1u);
  EXPECT_EQ(blob->chunks, 2u);
}

// ---- trace replay through DRAM and a bounded Blob tier -----------------------------

// One 512-token chunk of DRAM and `blob_objects` objects of Blob.
replay::CacheReplayOptions ReplayOptions(const BlobCacheOptions& blob, uint64_t blob_objects,
                                         const std::string& policy = "lru",
                                         uint64_t dram_chunks = 1) {
  replay::CacheReplayOptions o;
  o.capacity_tokens = dram_chunks * 512;
  o.eviction_policy = policy;
  o.blob_tokens = blob_objects * 512;
  o.blob = blob;
  return o;
}

// Single-chunk requests through one DRAM slot and two Blob objects. DRAM
// evicts its one chunk to Blob at each save or promotion; an upload past
// two objects deletes the least recently used (B lists the objects, least
// recently used first):
//   {1} {2} {3}   misses; uploads of 1 and 2, B [1 2], DRAM {3}
//   {1}  Blob hit: read (B [2 1]), promoted; 3 uploaded, 2 deleted: B [1 3]
//   {2}  miss (deleted); saving it demotes 1, already stored: B [3 1]
//   {3}  Blob hit (B [1 3]); 2 uploaded, 1 deleted: B [3 2]
//   {1}  miss; saving it demotes 3, already stored: B [2 3]
//   {2}  Blob hit (B [3 2]); 1 uploaded, 3 deleted: B [2 1]
//   {3}  miss
// 3 hits, all from Blob, 3 deletions, 5 uploads; an unbounded Blob keeps
// all 6 repeats, DRAM alone none.
TEST_F(BlobTest, ReplayThroughABoundedBlobEvictsTheLeastRecentlyUsedObject) {
  const auto t = Trace({{1}, {2}, {3}, {1}, {2}, {3}, {1}, {2}, {3}});
  ASSERT_OK_AND_ASSIGN(replay::CacheReplayResult r,
                       replay::ReplayThroughCache(t, ReplayOptions(BlobOptions(), 2)));
  EXPECT_EQ(r.geometry.blob_chunks, 2u);
  EXPECT_EQ(r.hit_blocks, 3u);
  EXPECT_EQ(r.TrafficOf(Tier::kBlob).hits, 3u);
  EXPECT_EQ(r.TrafficOf(Tier::kDram).hits, 0u);
  EXPECT_EQ(r.lost_hits, 0u);
  EXPECT_EQ(r.blob_resident_chunks, 2u);
  const uint64_t object = r.geometry.blob_object_bytes;
  bool blob_tier = false;
  for (const replay::TierTraffic& tt : r.tiers) {
    if (tt.tier != Tier::kBlob) continue;
    blob_tier = true;
    EXPECT_EQ(tt.evictions, 3u);
    EXPECT_EQ(tt.bytes_written, 5 * object);
    EXPECT_EQ(tt.bytes_read, 3 * object);
  }
  EXPECT_TRUE(blob_tier) << "the replay reports the Blob tier's traffic";

  container_ += "-unbounded";
  ASSERT_OK_AND_ASSIGN(r, replay::ReplayThroughCache(t, ReplayOptions(BlobOptions(), 64)));
  EXPECT_EQ(r.hit_blocks, 6u);
  ASSERT_OK_AND_ASSIGN(replay::ReplayResult unbounded, replay::ReplayUnbounded(t));
  EXPECT_EQ(unbounded.hit_blocks, 6u);
  replay::CacheReplayOptions dram_only = ReplayOptions(BlobOptions(), 0);
  ASSERT_OK_AND_ASSIGN(r, replay::ReplayThroughCache(t, dram_only));
  EXPECT_EQ(r.hit_blocks, 0u);
}

// With room for every chunk in Blob and uploads waited for, every policy
// gets the unbounded hit count on a generated trace although DRAM alone
// evicts; the bytes of every hit are checked by the replay.
TEST_F(BlobTest, ReplayWithRoomInBlobMatchesUnbounded) {
  const auto t = GeneratedTrace(120, 5);
  ASSERT_OK_AND_ASSIGN(replay::ReplayResult unbounded, replay::ReplayUnbounded(t));
  ASSERT_LT(unbounded.saved_blocks, 4096u);
  int run = 0;
  for (const char* policy : {"lru", "2q-chain"}) {
    container_ = absl::StrCat(container_, "-", ++run);
    replay::CacheReplayOptions o = ReplayOptions(BlobOptions(), 4096, policy, 32);
    ASSERT_OK_AND_ASSIGN(replay::CacheReplayResult r, replay::ReplayThroughCache(t, o));
    o.blob_tokens = 0;
    ASSERT_OK_AND_ASSIGN(replay::CacheReplayResult dram_only, replay::ReplayThroughCache(t, o));
    EXPECT_LT(dram_only.hit_blocks, unbounded.hit_blocks) << policy;
    EXPECT_EQ(r.hit_blocks, unbounded.hit_blocks) << policy;
    EXPECT_EQ(r.TrafficOf(Tier::kDram).hits + r.TrafficOf(Tier::kBlob).hits, r.hit_blocks)
        << policy;
    EXPECT_GT(r.TrafficOf(Tier::kBlob).hits, 0u) << policy;
    EXPECT_EQ(r.lost_hits, 0u) << policy;
  }
}

// `kvtier bench replay --blob-tokens` starts an Azurite of its own and gets
// the hand-traced figures of the bounded replay above.
TEST_F(BlobTest, ReplayCommandAddsABlobTierOfItsOwn) {
  ::kvtier::testing::TempDir dir;
  std::string text;
  for (int i = 0; i < 9; ++i) {
    absl::StrAppend(&text, "{\"timestamp\": ", i, ", \"input_length\": 512, \"output_length\": 1, ",
                    "\"hash_ids\": [", i % 3 + 1, "]}\n");
  }
  const std::string trace = dir.Write("trace.jsonl", text);
  const std::string out = dir.File("out.json");
  const int rc = std::system(
      absl::StrCat(::kvtier::testing::CliPath(), " bench replay --trace ", trace,
                   " --dram-tokens 512 --blob-tokens 1024 --policy lru", " --json > ", out, " 2>&1")
          .c_str());
  std::ifstream f(out);
  const std::string report((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  ASSERT_EQ(rc, 0) << report;
  const nlohmann::json j = nlohmann::json::parse(report.substr(report.find('{')));
  ASSERT_EQ(j["tier_results"].size(), 1u) << report;
  const nlohmann::json& r = j["tier_results"][0];
  EXPECT_EQ(r["blob_tokens"], 1024u);
  EXPECT_EQ(r["blob_chunks"], 2u);
  EXPECT_EQ(r["blob_hits"], 3u);
  EXPECT_EQ(r["dram_hits"], 0u);
  EXPECT_EQ(r["lost_hits"], 0u);
  EXPECT_EQ(r["blob_resident_chunks"], 2u);
  EXPECT_NEAR(r["hit_rate_blocks"].get<double>(), 3.0 / 9.0, 1e-6);
  EXPECT_EQ(j["results"][0]["hit_rate_blocks"], 0.0) << "DRAM alone keeps nothing";
}

// A replay with a Blob bound but no endpoint, or a bound below one chunk,
// is refused, naming the field.
TEST_F(BlobTest, ReplayWithBlobTokensNeedsAnEndpointAndAChunk) {
  replay::CacheReplayOptions o = ReplayOptions(BlobCacheOptions{}, 4);
  EXPECT_THAT(replay::ComputeGeometry(o),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("blob.endpoint")));
  o = ReplayOptions(BlobOptions(), 1);
  o.blob_tokens = 511;
  EXPECT_THAT(replay::ComputeGeometry(o),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("blob_tokens")));
}

// An upload of a chunk whose object is being deleted is skipped, so the
// two never race (an upload landing first would be deleted yet recorded,
// one landing after would stay unrecorded); once the deletion ends the
// chunk uploads and is recorded again.
TEST_F(BlobTest, AnUploadIsSkippedWhileItsObjectIsBeingDeleted) {
  ASSERT_OK_AND_ASSIGN(auto proxy, FaultProxy::Start(azurite_->port()));
  BlobCacheOptions o = BlobOptions(ProxyEndpoint(*proxy));
  o.upload_workers = 1;
  ASSERT_OK_AND_ASSIGN(auto tier, BlobTier::Create(o));
  ASSERT_OK_AND_ASSIGN(auto client, BlobClient::Create(ClientOptions()));
  const uint64_t ns = 0x7007;
  const BlockKey key = MetaOf(ns, 1).key;
  const std::vector<std::byte> payload = Bytes(4096, 3);
  ASSERT_TRUE(tier->EnqueuePayload(MetaOf(ns, 1), payload));
  tier->Flush();
  ASSERT_TRUE(tier->Recorded(ns, key));
  // The deletion's connection waits a second at the proxy.
  proxy->DropConnections();
  proxy->Push(Fault{Fault::Kind::kDelay, absl::Milliseconds(1000)});
  ASSERT_TRUE(tier->Remove(ns, key));
  EXPECT_FALSE(tier->EnqueuePayload(MetaOf(ns, 1), payload)) << "its deletion is pending";
  EXPECT_EQ(tier->Stats().skipped_deleting, 1u);
  tier->Flush();
  EXPECT_FALSE(tier->Recorded(ns, key));
  EXPECT_THAT(client->GetProperties(tier->ObjectName(ns, key), In(5000)),
              StatusIs(absl::StatusCode::kNotFound));
  ASSERT_TRUE(tier->EnqueuePayload(MetaOf(ns, 1), payload));
  tier->Flush();
  EXPECT_TRUE(tier->Recorded(ns, key));
  EXPECT_OK(client->GetProperties(tier->ObjectName(ns, key), In(5000)).status());
}

// A recorded chunk whose object is gone (deleted behind this node's back)
// is a miss, and the record forgets it: Lookup stops matching it.
TEST_F(BlobTest, ARecordedChunkWithoutItsObjectIsForgotten) {
  BlobCacheOptions o = BlobOptions();
  o.probe = false;
  ASSERT_OK_AND_ASSIGN(auto tier, BlobTier::Create(o));
  ASSERT_OK_AND_ASSIGN(auto client, BlobClient::Create(ClientOptions()));
  const uint64_t ns = 0x7008;
  const BlockKey key = MetaOf(ns, 1).key;
  const std::vector<std::byte> payload = Bytes(4096, 4);
  ASSERT_TRUE(tier->EnqueuePayload(MetaOf(ns, 1), payload));
  tier->Flush();
  ASSERT_OK(client->Delete(tier->ObjectName(ns, key), In(5000)));
  ASSERT_EQ(tier->MatchPrefix(ns, {key}, false, In(5000)), 1u) << "still recorded";
  EXPECT_THAT(tier->Fetch(ns, key, 7, payload.size(), In(5000)),
              StatusIs(absl::StatusCode::kNotFound));
  EXPECT_FALSE(tier->Recorded(ns, key));
  EXPECT_EQ(tier->MatchPrefix(ns, {key}, false, In(5000)), 0u);
  EXPECT_EQ(tier->Stats().recorded_bytes, 0u);
}

// A pin of a chunk only Blob holds downloads and promotes it: one hit, in
// Blob, as a Load of it counts; the pinned copy is no DRAM hit.
TEST_F(BlobTest, PinOfABlobChunkCountsOneHitInBlob) {
  ASSERT_OK_AND_ASSIGN(Namespace ns, Namespace::Create(SmallModel()));
  ASSERT_OK_AND_ASSIGN(std::vector<ChunkRef> chain, ns.Chunks(Tokens(2 * 64, 9)));
  const size_t bytes = ns.FullChunkPayloadBytes();
  {
    ASSERT_OK_AND_ASSIGN(auto writer, EmbeddedCache::Create(Options(BlobOptions())));
    for (const ChunkRef& c : chain) ASSERT_OK(writer->Save(ns, c, KvFor(c, bytes)));
    writer->blob()->Flush();
  }
  ASSERT_OK_AND_ASSIGN(auto reader, EmbeddedCache::Create(Options(BlobOptions())));
  auto tier_stats = [&](Tier tier) {
    for (const TierStats& t : reader->Stats().tiers) {
      if (t.tier == tier) return t;
    }
    return TierStats{};
  };
  ASSERT_OK_AND_ASSIGN(ChunkPin pin, reader->Pin(ns, chain[0].key));
  EXPECT_EQ(std::vector<std::byte>(pin.payload().begin(), pin.payload().end()),
            KvFor(chain[0], bytes));
  EXPECT_EQ(tier_stats(Tier::kBlob).hits, 1u);
  EXPECT_EQ(tier_stats(Tier::kDram).hits, 0u);
  EXPECT_EQ(tier_stats(Tier::kDram).bytes_read, 0u);
  std::vector<std::byte> out(bytes);
  ASSERT_OK(reader->Load(ns, chain[1].key, absl::MakeSpan(out)).status());
  EXPECT_EQ(tier_stats(Tier::kBlob).hits, 2u);
  EXPECT_EQ(tier_stats(Tier::kDram).hits, 0u);
}

// ---- two kvtierd processes sharing the container ----------------------------------

TEST_F(BlobTest, ChunkUploadedByOneKvtierdIsLoadedByAnotherWithEmptyTiers) {
  using ::kvtier::testing::Daemon;
  using ::kvtier::testing::TempDir;
  TempDir dir1, dir2;
  auto config = [&](const TempDir& dir, const std::string& policy) {
    const std::string key_file = dir.Write("blob.key", kAzuriteKey);
    return dir.Write(
        "kvtierd.yaml",
        absl::StrCat("blob:\n  endpoint: ", azurite_->endpoint(), "\n  account: ", kAzuriteAccount,
                     "\n  container: ", container_, "\n  key_file: ", key_file,
                     "\n  policy: ", policy, "\n  probe: true\n  deadline_ms: 3000\n"));
  };
  ASSERT_OK_AND_ASSIGN(Namespace ns, Namespace::Create(SmallModel()));
  ASSERT_OK_AND_ASSIGN(std::vector<ChunkRef> chain, ns.Chunks(Tokens(3 * 64, 21)));
  const std::vector<BlockKey> keys = Namespace::Keys(chain);
  const size_t bytes = ns.FullChunkPayloadBytes();
  auto connect = [](const Daemon& d) {
    ::kvtier::ClientOptions o;
    o.socket_path = d.socket();
    o.rpc_timeout_ms = 10000;
    return Client::Create(o);
  };
  {
    ASSERT_OK_AND_ASSIGN(auto writer, Daemon::Start(dir1, {"--config", config(dir1, "always")}));
    ASSERT_OK_AND_ASSIGN(auto client, connect(*writer));
    for (const ChunkRef& c : chain) ASSERT_OK(client->Save(ns, c, KvFor(c, bytes)));
    // Uploads are write-behind: wait for the metric to show all three.
    const absl::Time until = absl::Now() + absl::Seconds(20);
    std::string metrics;
    while (absl::Now() < until) {
      ASSERT_OK_AND_ASSIGN(auto got, writer->HttpGet("/metrics"));
      metrics = got.second;
      if (absl::StrContains(metrics, "kvtier_blob_uploads_total{result=\"ok\"} 3")) break;
      absl::SleepFor(absl::Milliseconds(50));
    }
    EXPECT_THAT(metrics, HasSubstr("kvtier_blob_uploads_total{result=\"ok\"} 3"));
    EXPECT_THAT(metrics, HasSubstr("kvtier_blob_degraded 0"));
    EXPECT_THAT(metrics, HasSubstr("kvtier_blob_requests_total{result=\"ok\"}"));
    client.reset();
    ASSERT_OK_AND_ASSIGN(int code, writer->Stop());
    EXPECT_EQ(code, 0);
  }
  // Another daemon with its own, empty DRAM and NVMe finds them by key.
  ASSERT_OK_AND_ASSIGN(auto reader, Daemon::Start(dir2, {"--config", config(dir2, "never")}));
  ASSERT_OK_AND_ASSIGN(auto client, connect(*reader));
  ASSERT_OK_AND_ASSIGN(LookupResult lr, client->Lookup(ns, keys));
  ASSERT_EQ(lr.matched, 3u);
  for (const ChunkLocation& l : lr.chunks) EXPECT_EQ(l.tier, Tier::kBlob);
  std::vector<std::byte> out(bytes);
  for (const ChunkRef& c : chain) {
    ASSERT_OK_AND_ASSIGN(size_t n, client->Load(ns, c.key, absl::MakeSpan(out)));
    EXPECT_EQ(n, bytes);
    EXPECT_EQ(out, KvFor(c, bytes));
  }
  ASSERT_OK_AND_ASSIGN(auto got, reader->HttpGet("/metrics"));
  EXPECT_THAT(got.second, HasSubstr("kvtier_blob_promoted_total 3"));
  EXPECT_THAT(got.second, HasSubstr("kvtier_hits_total{tier=\"blob\"} 3"));
  client.reset();
  ASSERT_OK_AND_ASSIGN(int code, reader->Stop());
  EXPECT_EQ(code, 0);
}

}  // namespace
}  // namespace kvtier
