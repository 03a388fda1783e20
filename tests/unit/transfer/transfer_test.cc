// The transfer layer inside one process: two UCX engines (each its own ucp
// context and workers), a holder's Peer service on a loopback gRPC port, and
// a reader that finds and pulls chunks. Runs over TCP and over shared memory,
// the latter with arenas that are memfds registered with UCX (gets emulated
// with active messages) and with arenas UCX allocated, as kvtierd's are
// (the reader maps the holder's arena and copies out of it).
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <ostream>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "grpcpp/security/server_credentials.h"
#include "grpcpp/server.h"
#include "grpcpp/server_builder.h"
#include "gtest/gtest.h"
#include "src/core/embedded_cache.h"
#include "src/server/wire.h"
#include "src/transfer/peer_calls.h"
#include "src/transfer/peer_client.h"
#include "src/transfer/peer_service.h"
#include "src/transfer/remote_reader.h"
#include "src/transfer/static_peers.h"
#include "src/transfer/transfer_metrics.h"
#include "src/transfer/ucx_engine.h"
#include "tests/testing/cache_fixtures.h"
#include "tests/testing/status_matchers.h"

namespace kvtier::transfer {
namespace {

using ::kvtier::testing::KvFor;
using ::kvtier::testing::SmallModel;
using ::kvtier::testing::StatusIs;
using ::testing::HasSubstr;
using ::testing::Not;

// One parameter of TransferTest.
struct Mode {
  const char* name;
  const char* tls;  // UCX_TLS
  bool ucx_arena;   // the arenas come from UcxEngine::AllocateArena
};
void PrintTo(const Mode& m, std::ostream* os) { *os << m.name; }
// The mode of the test running now (set by TransferTest::SetUp).
const Mode* current_mode = nullptr;

std::unique_ptr<EmbeddedCache> NewCache(UcxEngine* allocate_with = nullptr) {
  CacheOptions o;
  o.dram_capacity_bytes = 16ull << 20;
  o.slab_bytes = 2ull << 20;
  o.huge_pages = false;
  o.register_with_gpu = false;
  EmbeddedCacheSeams seams;
  if (allocate_with != nullptr) {
    seams.arena_allocator = [allocate_with](uint64_t bytes) {
      return allocate_with->AllocateArena(bytes);
    };
  }
  auto c = EmbeddedCache::Create(o, seams);
  EXPECT_TRUE(c.ok()) << c.status();
  return std::move(*c);
}

// One node: a cache, its UCX engine with the arena mapped, and (as a holder)
// a Peer service on a loopback port.
struct Node {
  std::unique_ptr<EmbeddedCache> cache;
  std::unique_ptr<UcxEngine> ucx;
  std::unique_ptr<PeerService> peer;
  std::unique_ptr<grpc::Server> server;
  std::string address;

  static std::unique_ptr<Node> Start(const std::string& node_id, uint64_t boot_id,
                                     const std::string& token = "") {
    auto n = std::make_unique<Node>();
    auto e = UcxEngine::Create(UcxOptions{});
    EXPECT_TRUE(e.ok()) << e.status();
    n->ucx = std::move(*e);
    const bool ucx_arena = current_mode != nullptr && current_mode->ucx_arena;
    n->cache = NewCache(ucx_arena ? n->ucx.get() : nullptr);
    const Arena& a = n->cache->dram().arena();
    EXPECT_EQ(a.source(), ucx_arena ? "ucx-posix" : "memfd") << a.allocator_skipped();
    EXPECT_TRUE(n->ucx->MapArena(a.base(), a.size()).ok());
    PeerServiceOptions po;
    po.node_id = node_id;
    po.boot_id = boot_id;
    po.lease_timeout = absl::Seconds(2);
    po.peer_token = token;
    auto p = PeerService::Create(n->cache.get(), n->ucx.get(), po);
    EXPECT_TRUE(p.ok()) << p.status();
    n->peer = std::move(*p);
    grpc::ServerBuilder b;
    int port = 0;
    b.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    b.RegisterService(n->peer.get());
    n->server = b.BuildAndStart();
    n->address = absl::StrCat("127.0.0.1:", port);
    return n;
  }
  ~Node() {
    if (server) server->Shutdown(std::chrono::system_clock::now());
    peer.reset();
    ucx.reset();
  }
};

class TransferTest : public ::testing::TestWithParam<Mode> {
 protected:
  void SetUp() override {
    current_mode = &GetParam();
    setenv("UCX_TLS", GetParam().tls, 1);
  }
  void TearDown() override {
    unsetenv("UCX_TLS");
    current_mode = nullptr;
  }
  // Whether readers map the holder's arena (UCX shared memory).
  bool Mapped() const { return GetParam().ucx_arena; }
  // Whether a reader's pins go as UCX calls: over TCP (UCX reports peer
  // failures) and to a mapped holder (its process is watched).
  bool PinsGoAsCalls() const { return std::string(GetParam().tls) == "tcp" || Mapped(); }

  // Saves a chain of `chunks` chunks on `node`; returns its refs.
  std::vector<ChunkRef> SaveChain(Node& node, const Namespace& ns, size_t chunks, uint32_t seed) {
    std::vector<ChunkRef> refs = *ns.Chunks(::kvtier::testing::Tokens(64 * chunks, seed));
    for (const ChunkRef& r : refs) {
      std::vector<std::byte> kv = KvFor(r, ns.PayloadBytes(r.num_tokens));
      EXPECT_TRUE(node.cache->Save(ns, r, kv).ok());
    }
    return refs;
  }
};

// Node B's remote reader (node id "node-b") over `source`, or null after a
// test failure naming the error.
std::unique_ptr<RemoteReader> ReaderOf(Node& b, HolderSource* source, PeerClients* clients,
                                       RemoteReaderOptions ro = {}) {
  ro.node_id = "node-b";
  absl::StatusOr<std::unique_ptr<RemoteReader>> r =
      RemoteReader::Create(b.cache.get(), b.ucx.get(), source, clients, ro);
  if (!r.ok()) {
    ADD_FAILURE() << r.status();
    return nullptr;
  }
  return *std::move(r);
}

TEST_P(TransferTest, EngineGetsBytesOutOfAnotherEnginesArena) {
  auto a = Node::Start("a", 1);
  auto b = Node::Start("b", 2);
  std::byte* src = a->cache->dram().arena().base();
  for (size_t i = 0; i < (1 << 20); ++i) src[i] = static_cast<std::byte>(i * 7 + 3);
  auto peer = b->ucx->Connect(a->ucx->worker_addresses()[0], a->ucx->packed_rkey(),
                              reinterpret_cast<uint64_t>(src), a->cache->dram().arena().size());
  ASSERT_TRUE(peer.ok()) << peer.status();
  EXPECT_TRUE(absl::StrContains((*peer)->transports(), "am="));
  EXPECT_EQ((*peer)->mapped(), Mapped());
  EXPECT_EQ(absl::StrContains((*peer)->transports(), "rma=mapped-shm"), Mapped())
      << (*peer)->transports();
  std::byte* dst = b->cache->dram().arena().base();
  ASSERT_TRUE(
      b->ucx->Get(**peer, 4096, absl::MakeSpan(dst, 1 << 19), absl::Now() + absl::Seconds(10))
          .ok());
  EXPECT_EQ(std::memcmp(dst, src + 4096, 1 << 19), 0);
  // Outside the remote arena.
  EXPECT_THAT(b->ucx->Get(**peer, a->cache->dram().arena().size() - 10, absl::MakeSpan(dst, 4096),
                          absl::Now() + absl::Seconds(10)),
              StatusIs(absl::StatusCode::kOutOfRange));
  const UcxStats st = b->ucx->Stats();
  EXPECT_EQ(st.gets, 1u);
  EXPECT_EQ(st.get_bytes, 1u << 19);
  EXPECT_EQ(st.direct_reads, Mapped() ? 1u : 0u);
  EXPECT_EQ(st.arena, Mapped() ? "allocated" : "registered");
}

TEST_P(TransferTest, ReaderFindsAndPullsChunksByteIdentical) {
  auto a = Node::Start("node-a", 11);
  auto b = Node::Start("node-b", 12);
  Namespace ns = *Namespace::Create(SmallModel());
  std::vector<ChunkRef> refs = SaveChain(*a, ns, 6, 1);

  PeerClients clients("");
  StaticPeerSource source({a->address}, "node-b", &clients);
  auto reader = ReaderOf(*b, &source, &clients);
  ASSERT_NE(reader, nullptr);

  std::vector<BlockKey> keys = Namespace::Keys(refs);
  // B holds the first two chunks itself; the rest are on A.
  for (size_t i = 0; i < 2; ++i) {
    ASSERT_TRUE(b->cache->Save(ns, refs[i], KvFor(refs[i], ns.PayloadBytes(64))).ok());
  }
  std::vector<ChunkLocation> locs = reader->Locate(ns, keys, 2);
  ASSERT_EQ(locs.size(), 4u);
  for (const ChunkLocation& l : locs) {
    EXPECT_EQ(l.tier, Tier::kRemote);
    EXPECT_EQ(l.holder, "node-a");
  }
  for (size_t i = 2; i < refs.size(); ++i) {
    ASSERT_TRUE(reader->Fetch(ns, keys[i]).ok()) << i;
    std::vector<std::byte> out(ns.PayloadBytes(64));
    ASSERT_TRUE(b->cache->Load(ns, keys[i], absl::MakeSpan(out)).ok());
    EXPECT_EQ(out, KvFor(refs[i], out.size())) << i;
  }
  // Now local: a second Fetch is a no-op, and the holder released its pins.
  EXPECT_TRUE(reader->Fetch(ns, keys[3]).ok());
  const RemoteReaderStats rs = reader->Stats();
  EXPECT_EQ(rs.fetches, 4u);
  EXPECT_EQ(rs.hellos, 1u);
  ASSERT_EQ(rs.peers.size(), 1u);
  EXPECT_EQ(rs.peers[0].node_id, "node-a");
  const absl::Time until = absl::Now() + absl::Seconds(5);
  while (a->peer->Stats().leases_held > 0 && absl::Now() < until) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  EXPECT_EQ(a->peer->Stats().leases_held, 0u);
  EXPECT_EQ(a->cache->Stats().tiers[0].pinned_chunks, 0u);
  // A mapped holder arena is read by copies, never by gets.
  EXPECT_EQ(b->ucx->Stats().direct_reads > 0, Mapped());
  // One snapshot: the last Release call may still be completing on this side.
  const UcxStats us = b->ucx->Stats();
  const std::string text = RenderTransferMetrics(us, b->peer->Stats(), &rs);
  EXPECT_THAT(text, HasSubstr("kvtier_remote_fetches_total 4"));
  EXPECT_THAT(text, HasSubstr("kvtier_remote_peer_info{node=\"node-a\""));
  // The pins went as UCX calls (one per Fetch call: the four fetches and
  // the no-op one) over TCP and to a holder whose arena is mapped here (its
  // process is watched); over gRPC to a shared-memory holder with a memfd
  // arena (no failure detection).
  const bool calls = PinsGoAsCalls();
  EXPECT_EQ(rs.ucx_pins, calls ? 5u : 0u);
  EXPECT_THAT(text, HasSubstr(absl::StrCat("kvtier_remote_ucx_pins_total ", rs.ucx_pins)));
  EXPECT_THAT(text, HasSubstr("kvtier_remote_merged_pins_total 0"));
  EXPECT_THAT(text, HasSubstr(absl::StrCat("kvtier_ucx_calls_made_total ", us.calls_made)));
}

// How many mappings of this process show the file mapped at `p` (its
// device and inode), or 0 when `p` is not in a file mapping.
int MappingsOfFileAt(const void* p) {
  std::ifstream maps("/proc/self/maps");
  std::string line;
  std::vector<std::string> lines;
  std::string file;  // "dev inode" of the mapping holding p
  const auto addr = reinterpret_cast<uintptr_t>(p);
  while (std::getline(maps, line)) {
    lines.push_back(line);
    std::istringstream in(line);
    std::string range, perms, offset, dev, inode;
    in >> range >> perms >> offset >> dev >> inode;
    const size_t dash = range.find('-');
    const uintptr_t lo = std::stoull(range.substr(0, dash), nullptr, 16);
    const uintptr_t hi = std::stoull(range.substr(dash + 1), nullptr, 16);
    if (addr >= lo && addr < hi && inode != "0") file = dev + " " + inode;
  }
  if (file.empty()) return 0;
  int n = 0;
  for (const std::string& l : lines) {
    std::istringstream in(l);
    std::string range, perms, offset, dev, inode;
    in >> range >> perms >> offset >> dev >> inode;
    if (dev + " " + inode == file) ++n;
  }
  return n;
}

TEST_P(TransferTest, IdleAndDeadHoldersLoseTheirEndpoints) {
  auto a = Node::Start("node-a", 21);
  auto b = Node::Start("node-b", 22);
  Namespace ns = *Namespace::Create(SmallModel());
  std::vector<ChunkRef> refs = SaveChain(*a, ns, 3, 7);
  std::vector<BlockKey> keys = Namespace::Keys(refs);
  PeerClients clients("");
  StaticPeerSource source({a->address}, "node-b", &clients);
  RemoteReaderOptions ro;
  ro.idle_peer_timeout = absl::Milliseconds(1500);
  auto reader = ReaderOf(*b, &source, &clients, ro);
  ASSERT_NE(reader, nullptr);
  const std::byte* holder_arena = a->cache->dram().arena().base();
  const int before = MappingsOfFileAt(holder_arena);
  ASSERT_EQ(reader->Locate(ns, keys, 0).size(), 3u);
  ASSERT_TRUE(reader->Fetch(ns, keys[0]).ok());
  ASSERT_EQ(reader->Stats().peers.size(), 1u);
  // A mapped holder arena is mapped a second time, by the reader.
  EXPECT_EQ(MappingsOfFileAt(holder_arena), Mapped() ? before + 1 : before);
  // Used within the timeout: kept.
  absl::SleepFor(absl::Milliseconds(700));
  ASSERT_TRUE(reader->Fetch(ns, keys[1]).ok());
  absl::SleepFor(absl::Milliseconds(700));
  EXPECT_EQ(reader->Stats().peers.size(), 1u);
  EXPECT_EQ(reader->Stats().idle_drops, 0u);
  // Unused past it: closed by the sweep, and the reader's mapping is gone.
  absl::Time until = absl::Now() + absl::Seconds(10);
  while (!reader->Stats().peers.empty() && absl::Now() < until) {
    absl::SleepFor(absl::Milliseconds(50));
  }
  EXPECT_TRUE(reader->Stats().peers.empty());
  EXPECT_EQ(reader->Stats().idle_drops, 1u);
  EXPECT_EQ(MappingsOfFileAt(holder_arena), before);
  // The next fetch says Hello again and reads.
  ASSERT_TRUE(reader->Fetch(ns, keys[2]).ok());
  EXPECT_EQ(reader->Stats().hellos, 2u);
  std::vector<std::byte> out(ns.PayloadBytes(64));
  ASSERT_TRUE(b->cache->Load(ns, keys[2], absl::MakeSpan(out)).ok());
  EXPECT_EQ(out, KvFor(refs[2], out.size()));
  // A holder that stops: the next Lookup to it fails, and the sweep closes
  // its endpoint as stale (counted as idle only without the failed
  // contact).
  ASSERT_EQ(reader->Stats().peers.size(), 1u);
  a->server->Shutdown(std::chrono::system_clock::now());
  a->server->Wait();
  (void)reader->Locate(ns, keys, 0);
  until = absl::Now() + absl::Seconds(10);
  while (!reader->Stats().peers.empty() && absl::Now() < until) {
    absl::SleepFor(absl::Milliseconds(50));
  }
  const RemoteReaderStats rs = reader->Stats();
  EXPECT_TRUE(rs.peers.empty());
  EXPECT_EQ(rs.idle_drops, 1u);
  EXPECT_GE(rs.stale_drops, 1u);
  EXPECT_THAT(RenderTransferMetrics(b->ucx->Stats(), b->peer->Stats(), &rs),
              HasSubstr("kvtier_remote_idle_endpoints_total 1"));
}

TEST_P(TransferTest, EngineGetManyReadsSeveralRangesTogether) {
  auto a = Node::Start("a", 3);
  auto b = Node::Start("b", 4);
  std::byte* src = a->cache->dram().arena().base();
  for (size_t i = 0; i < (1 << 20); ++i) src[i] = static_cast<std::byte>(i * 5 + 1);
  auto peer = b->ucx->Connect(a->ucx->worker_addresses()[0], a->ucx->packed_rkey(),
                              reinterpret_cast<uint64_t>(src), a->cache->dram().arena().size());
  ASSERT_TRUE(peer.ok()) << peer.status();
  std::byte* dst = b->cache->dram().arena().base();
  std::vector<UcxEngine::GetOp> ops = {
      {0, absl::MakeSpan(dst, 1 << 18), absl::OkStatus()},
      {a->cache->dram().arena().size() - 10, absl::MakeSpan(dst + (1 << 18), 4096),
       absl::OkStatus()},
      {1 << 19, absl::MakeSpan(dst + (1 << 19), 1 << 18), absl::OkStatus()}};
  EXPECT_THAT(b->ucx->GetMany(**peer, absl::MakeSpan(ops), absl::Now() + absl::Seconds(10)),
              StatusIs(absl::StatusCode::kOutOfRange));
  EXPECT_TRUE(ops[0].status.ok()) << ops[0].status;
  EXPECT_THAT(ops[1].status, StatusIs(absl::StatusCode::kOutOfRange));
  EXPECT_TRUE(ops[2].status.ok()) << ops[2].status;
  EXPECT_EQ(std::memcmp(dst, src, 1 << 18), 0);
  EXPECT_EQ(std::memcmp(dst + (1 << 19), src + (1 << 19), 1 << 18), 0);
  const UcxStats st = b->ucx->Stats();
  EXPECT_EQ(st.gets, 2u);
  EXPECT_EQ(st.get_bytes, 2u << 18);
}

TEST_P(TransferTest, ALongRunFromAMappedArenaIsCopiedIntoTheRightPlaces) {
  if (!Mapped()) GTEST_SKIP() << "only reads from a mapped arena are copies";
  auto a = Node::Start("a", 7);
  auto b = Node::Start("b", 8);
  std::byte* src = a->cache->dram().arena().base();
  constexpr size_t kOps = 16;
  constexpr size_t kPiece = 128 << 10;  // 2 MiB in all: copied by several threads
  for (size_t i = 0; i < kOps * kPiece; ++i) src[i] = static_cast<std::byte>(i * 13 + 7);
  auto peer = b->ucx->Connect(a->ucx->worker_addresses()[0], a->ucx->packed_rkey(),
                              reinterpret_cast<uint64_t>(src), a->cache->dram().arena().size());
  ASSERT_TRUE(peer.ok()) << peer.status();
  ASSERT_TRUE((*peer)->mapped());
  std::byte* dst = b->cache->dram().arena().base();
  std::memset(dst, 0, kOps * kPiece);
  // Piece k goes to slot (k * 5) % 16, and the last op is out of range.
  std::vector<UcxEngine::GetOp> ops;
  for (size_t k = 0; k < kOps; ++k) {
    ops.push_back(
        {k * kPiece, absl::MakeSpan(dst + ((k * 5) % kOps) * kPiece, kPiece), absl::OkStatus()});
  }
  ops.push_back(
      {a->cache->dram().arena().size() - 10, absl::MakeSpan(dst, 4096), absl::OkStatus()});
  absl::Mutex mu;
  std::vector<int> copied(ops.size(), 0), done(ops.size(), 0);
  int done_elsewhere = 0;
  std::set<std::thread::id> copiers;  // the threads that copied
  // With a helper (UcxOptions' default: min(3, hardware threads - 1)), the
  // first copy waits for a second thread to start one: a helper was woken
  // and took part of the run. A run takes idle helpers only, so the test
  // first waits for them to be parked.
  const bool helpers = b->ucx->Stats().copy_helpers > 0;
  const absl::Time parked_by = absl::Now() + absl::Seconds(5);
  while (b->ucx->Stats().idle_copy_helpers < b->ucx->Stats().copy_helpers &&
         absl::Now() < parked_by) {
    absl::SleepFor(absl::Milliseconds(1));
  }
  const std::thread::id caller = std::this_thread::get_id();
  const absl::Status s = b->ucx->GetMany(
      **peer, absl::MakeSpan(ops), absl::Now() + absl::Seconds(10),
      [&](size_t i) {
        absl::MutexLock lock(&mu);
        ++done[i];
        if (std::this_thread::get_id() != caller) ++done_elsewhere;
      },
      [&](size_t i, const std::byte* from) {
        {
          absl::MutexLock lock(&mu);
          copiers.insert(std::this_thread::get_id());
          if (helpers && copiers.size() == 1) {
            mu.AwaitWithTimeout(
                absl::Condition(
                    +[](std::set<std::thread::id>* c) { return c->size() > 1; }, &copiers),
                absl::Seconds(5));
          }
        }
        std::memcpy(ops[i].dst.data(), from, ops[i].dst.size());
        absl::MutexLock lock(&mu);
        ++copied[i];
        return absl::OkStatus();
      });
  if (helpers) {
    EXPECT_GE(copiers.size(), 2u);
  }
  EXPECT_THAT(s, StatusIs(absl::StatusCode::kOutOfRange));
  std::vector<int> once(kOps, 1);
  EXPECT_EQ(std::vector<int>(done.begin(), done.begin() + kOps), once);
  EXPECT_EQ(std::vector<int>(copied.begin(), copied.begin() + kOps), once);
  EXPECT_EQ(done[kOps], 1);
  EXPECT_EQ(copied[kOps], 0);
  EXPECT_EQ(done_elsewhere, 0);  // every op is handed over on the caller's thread
  for (size_t k = 0; k < kOps; ++k) {
    EXPECT_TRUE(ops[k].status.ok()) << k << " " << ops[k].status;
    EXPECT_EQ(std::memcmp(dst + ((k * 5) % kOps) * kPiece, src + k * kPiece, kPiece), 0) << k;
  }
  EXPECT_EQ(b->ucx->Stats().direct_reads, kOps);
}

TEST_P(TransferTest, GetsFromManyThreadsAtOnceEachLandTheirOwnBytes) {
  auto a = Node::Start("a", 5);
  auto b = Node::Start("b", 6);
  std::byte* src = a->cache->dram().arena().base();
  constexpr size_t kThreads = 16;
  // Each thread reads 4 pieces of its own range. From a mapped arena 4 x 256
  // KiB make a run that copy helpers join, so concurrent runs share them.
  const size_t kPiece = Mapped() ? 256 << 10 : 64 << 10;
  for (size_t i = 0; i < kThreads * 4 * kPiece; ++i) src[i] = static_cast<std::byte>(i * 11 + 5);
  auto peer = b->ucx->Connect(a->ucx->worker_addresses()[0], a->ucx->packed_rkey(),
                              reinterpret_cast<uint64_t>(src), a->cache->dram().arena().size());
  ASSERT_TRUE(peer.ok()) << peer.status();
  std::byte* dst = b->cache->dram().arena().base();
  std::vector<int> wrong(kThreads, 0);
  std::vector<std::thread> threads;
  for (size_t t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      const size_t base = t * 4 * kPiece;
      for (int round = 0; round < 20; ++round) {
        std::memset(dst + base, 0, 4 * kPiece);
        // The pieces land in reverse order, so a get that wrote another
        // op's destination would show.
        std::vector<UcxEngine::GetOp> ops;
        for (size_t k = 0; k < 4; ++k) {
          ops.push_back({base + k * kPiece, absl::MakeSpan(dst + base + (3 - k) * kPiece, kPiece),
                         absl::OkStatus()});
        }
        if (!b->ucx->GetMany(**peer, absl::MakeSpan(ops), absl::Now() + absl::Seconds(20)).ok()) {
          ++wrong[t];
          continue;
        }
        for (size_t k = 0; k < 4; ++k) {
          if (std::memcmp(dst + base + (3 - k) * kPiece, src + base + k * kPiece, kPiece) != 0) {
            ++wrong[t];
          }
        }
      }
    });
  }
  for (std::thread& th : threads) th.join();
  EXPECT_EQ(wrong, std::vector<int>(kThreads, 0));
  EXPECT_EQ(b->ucx->Stats().gets, kThreads * 20 * 4);
  EXPECT_FALSE((*peer)->failed());
  // Once a call has timed out the endpoint is closed: later gets and calls
  // are refused with Unavailable and write nothing.
  a->ucx->SetCallHandler([](absl::string_view) {
    absl::SleepFor(absl::Milliseconds(300));
    return std::string("late");
  });
  EXPECT_THAT(b->ucx->Call(**peer, "slow", absl::Now() + absl::Milliseconds(50)),
              StatusIs(absl::StatusCode::kDeadlineExceeded));
  std::memset(dst, 0, kPiece);
  EXPECT_THAT(b->ucx->Get(**peer, 0, absl::MakeSpan(dst, kPiece), absl::Now() + absl::Seconds(5)),
              StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_EQ(std::count(dst, dst + kPiece, std::byte{0}), static_cast<std::ptrdiff_t>(kPiece));
  EXPECT_THAT(b->ucx->Call(**peer, "again", absl::Now() + absl::Seconds(5)),
              StatusIs(absl::StatusCode::kUnavailable));
  absl::SleepFor(absl::Milliseconds(350));  // the late reply finds no caller
}

TEST_P(TransferTest, FetchManyPinsARunOnceAndReleasesIt) {
  auto a = Node::Start("node-a", 41);
  auto b = Node::Start("node-b", 42);
  Namespace ns = *Namespace::Create(SmallModel());
  std::vector<ChunkRef> refs = SaveChain(*a, ns, 8, 4);
  PeerClients clients("");
  StaticPeerSource source({a->address}, "node-b", &clients);
  RemoteReaderOptions ro;
  ro.max_batch_chunks = 6;
  auto reader = ReaderOf(*b, &source, &clients, ro);
  ASSERT_NE(reader, nullptr);
  std::vector<BlockKey> keys = Namespace::Keys(refs);
  ASSERT_EQ(reader->Locate(ns, keys, 0).size(), 8u);
  // The first call takes max_batch_chunks keys, the second the rest.
  std::vector<absl::Status> first = reader->FetchMany(ns, keys);
  ASSERT_EQ(first.size(), 6u);
  std::vector<absl::Status> second = reader->FetchMany(ns, absl::MakeConstSpan(keys).subspan(6));
  ASSERT_EQ(second.size(), 2u);
  for (const absl::Status& s : first) EXPECT_TRUE(s.ok()) << s;
  for (const absl::Status& s : second) EXPECT_TRUE(s.ok()) << s;
  for (size_t i = 0; i < refs.size(); ++i) {
    std::vector<std::byte> out(ns.PayloadBytes(64));
    ASSERT_TRUE(b->cache->Load(ns, keys[i], absl::MakeSpan(out)).ok()) << i;
    EXPECT_EQ(out, KvFor(refs[i], out.size())) << i;
  }
  EXPECT_EQ(a->peer->Stats().pin_requests, 2u);
  EXPECT_EQ(a->peer->Stats().pinned_chunks, 8u);
  EXPECT_EQ(b->ucx->Stats().gets, 8u);
  EXPECT_EQ(reader->Stats().fetches, 8u);
  const absl::Time until = absl::Now() + absl::Seconds(5);
  while (a->peer->Stats().leases_held > 0 && absl::Now() < until) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  EXPECT_EQ(a->peer->Stats().leases_held, 0u);
  EXPECT_EQ(a->cache->Stats().tiers[0].pinned_chunks, 0u);
  // A holder that lost a chunk of the run: the chunks after it are misses,
  // the ones before it are read.
  // (Removing a chunk removes its descendants too.)
  for (const BlockKey& k : keys) (void)b->cache->Remove(ns, k);
  for (const BlockKey& k : keys) ASSERT_FALSE(b->cache->Pin(ns, k).ok());
  ASSERT_EQ(reader->Locate(ns, keys, 0).size(), 8u);
  ASSERT_TRUE(a->cache->Remove(ns, keys[3]).ok());  // and its descendants
  std::vector<absl::Status> partial = reader->FetchMany(ns, keys);
  ASSERT_EQ(partial.size(), 6u);
  for (size_t i = 0; i < 3; ++i) EXPECT_TRUE(partial[i].ok()) << i << partial[i];
  for (size_t i = 3; i < 6; ++i) {
    EXPECT_THAT(partial[i], StatusIs(absl::StatusCode::kNotFound)) << i;
    EXPECT_FALSE(b->cache->Pin(ns, keys[i]).ok()) << i;
  }
}

TEST_P(TransferTest, OneReleaseCallDropsSeveralLeases) {
  auto a = Node::Start("node-a", 61);
  Namespace ns = *Namespace::Create(SmallModel());
  std::vector<ChunkRef> refs = SaveChain(*a, ns, 2, 6);
  PeerClients clients("");
  std::vector<uint64_t> leases;
  for (const ChunkRef& r : refs) {
    grpc::ClientContext ctx;
    clients.Prepare(ctx, absl::Now() + absl::Seconds(5));
    v1::PinForReadRequest req;
    req.set_namespace_id(ns.id());
    req.add_keys(wire::KeyToBytes(r.key));
    v1::PinForReadResponse resp;
    ASSERT_TRUE(clients.Stub(a->address)->PinForRead(&ctx, req, &resp).ok());
    ASSERT_EQ(resp.slots_size(), 1);
    leases.push_back(resp.lease_id());
  }
  EXPECT_EQ(a->peer->Stats().leases_held, 2u);
  EXPECT_EQ(a->peer->Stats().pin_requests, 2u);
  grpc::ClientContext ctx;
  clients.Prepare(ctx, absl::Now() + absl::Seconds(5));
  v1::PeerReleaseRequest req;
  req.set_lease_id(leases[0]);
  req.add_lease_ids(leases[1]);
  req.add_lease_ids(leases[1] + 1000);  // unknown: ignored
  v1::PeerReleaseResponse resp;
  ASSERT_TRUE(clients.Stub(a->address)->Release(&ctx, req, &resp).ok());
  EXPECT_TRUE(resp.released());
  EXPECT_EQ(resp.released_leases(), 2u);
  EXPECT_EQ(a->peer->Stats().leases_held, 0u);
  EXPECT_EQ(a->cache->Stats().tiers[0].pinned_chunks, 0u);
}

TEST_P(TransferTest, CorruptedHolderBytesAreAMissAndCounted) {
  auto a = Node::Start("node-a", 51);
  auto b = Node::Start("node-b", 52);
  Namespace ns = *Namespace::Create(SmallModel());
  std::vector<ChunkRef> refs = SaveChain(*a, ns, 2, 5);
  PeerClients clients("");
  StaticPeerSource source({a->address}, "node-b", &clients);
  auto reader = ReaderOf(*b, &source, &clients);
  ASSERT_NE(reader, nullptr);
  // A first read: the holder computes the checksum and remembers it.
  ASSERT_TRUE(reader->Fetch(ns, refs[0].key).ok());
  ASSERT_TRUE(b->cache->Remove(ns, refs[0].key).ok());
  // One payload byte changes in the holder's memory afterwards.
  {
    absl::StatusOr<ChunkPin> pin = a->cache->dram().PinChunk(ns.id(), refs[0].key);
    ASSERT_TRUE(pin.ok());
    std::byte* p = const_cast<std::byte*>(pin->payload().data()) + 17;
    *p = ~*p;
  }
  EXPECT_THAT(reader->Fetch(ns, refs[0].key), StatusIs(absl::StatusCode::kDataLoss));
  EXPECT_EQ(reader->Stats().verify_failures, 1u);
  EXPECT_FALSE(b->cache->Pin(ns, refs[0].key).ok());
  // With a mapped holder arena both reads were copies checked in one pass
  // (the damage was caught there), otherwise UCX gets.
  EXPECT_EQ(b->ucx->Stats().direct_reads, Mapped() ? 2u : 0u);
}

TEST_P(TransferTest, MissesAndOtherNamespacesAreNotFound) {
  auto a = Node::Start("node-a", 21);
  auto b = Node::Start("node-b", 22);
  Namespace ns = *Namespace::Create(SmallModel());
  Namespace other = *Namespace::Create(SmallModel("tenant-x"));
  std::vector<ChunkRef> refs = SaveChain(*a, ns, 2, 2);
  PeerClients clients("");
  StaticPeerSource source({a->address}, "node-b", &clients);
  auto reader = ReaderOf(*b, &source, &clients);
  ASSERT_NE(reader, nullptr);
  EXPECT_THAT(reader->Fetch(other, refs[0].key), StatusIs(absl::StatusCode::kNotFound));
  EXPECT_TRUE(reader->Locate(other, Namespace::Keys(refs), 0).empty());
  BlockKey absent{123, 456};
  EXPECT_THAT(reader->Fetch(ns, absent), StatusIs(absl::StatusCode::kNotFound));
  // A holder that lost the chunk after Lookup: the hint leads to a miss.
  ASSERT_EQ(reader->Locate(ns, Namespace::Keys(refs), 0).size(), 2u);
  ASSERT_TRUE(a->cache->Remove(ns, refs[1].key).ok());
  EXPECT_THAT(reader->Fetch(ns, refs[1].key), StatusIs(absl::StatusCode::kNotFound));
  EXPECT_FALSE(b->cache->Pin(ns, refs[1].key).ok());
}

TEST_P(TransferTest, HolderSourceSkipsDeadPeersAndSelf) {
  auto a = Node::Start("node-a", 31);
  Namespace ns = *Namespace::Create(SmallModel());
  std::vector<ChunkRef> refs = SaveChain(*a, ns, 3, 3);
  std::vector<BlockKey> keys = Namespace::Keys(refs);
  PeerClients clients("");
  // Port 1 on loopback refuses connections.
  StaticPeerSource source({"127.0.0.1:1", a->address}, "node-b", &clients);
  auto holders = source.FindHolders(ns.id(), keys, absl::Now() + absl::Seconds(2));
  ASSERT_TRUE(holders.ok()) << holders.status();
  ASSERT_EQ(holders->size(), 1u);
  EXPECT_EQ((*holders)[0].node_id, "node-a");
  EXPECT_EQ((*holders)[0].matched_chunks, 3u);
  // The node itself is never a holder.
  StaticPeerSource self({a->address}, "node-a", &clients);
  auto none = self.FindHolders(ns.id(), keys, absl::Now() + absl::Seconds(2));
  ASSERT_TRUE(none.ok());
  EXPECT_TRUE(none->empty());
  StaticPeerSource dead({"127.0.0.1:1"}, "node-b", &clients);
  EXPECT_THAT(dead.FindHolders(ns.id(), keys, absl::Now() + absl::Seconds(2)),
              StatusIs(absl::StatusCode::kUnavailable));
}

TEST_P(TransferTest, PeerTokenIsRequiredWhenSet) {
  auto a = Node::Start("node-a", 41, "s3cret-peer-token");
  Namespace ns = *Namespace::Create(SmallModel());
  std::vector<ChunkRef> refs = SaveChain(*a, ns, 1, 4);
  PeerClients wrong("not-it");
  StaticPeerSource bad({a->address}, "node-b", &wrong);
  EXPECT_THAT(bad.FindHolders(ns.id(), Namespace::Keys(refs), absl::Now() + absl::Seconds(2)),
              StatusIs(absl::StatusCode::kUnavailable));
  PeerClients right("s3cret-peer-token");
  StaticPeerSource good({a->address}, "node-b", &right);
  auto h = good.FindHolders(ns.id(), Namespace::Keys(refs), absl::Now() + absl::Seconds(2));
  ASSERT_TRUE(h.ok());
  EXPECT_EQ(h->size(), 1u);
}

// Lease ids start at a random value in each holder process: a release a
// reader queued for a holder that has since restarted cannot free another
// reader's lease there (ids counted from 1 in both would).
TEST_P(TransferTest, LeaseIdsDoNotRepeatAcrossHolderRestarts) {
  Namespace ns = *Namespace::Create(SmallModel());
  auto pin = [&](Node& n, uint64_t boot) -> uint64_t {
    std::vector<ChunkRef> refs = SaveChain(n, ns, 1, 6);
    PeerClients clients("");
    grpc::ClientContext ctx;
    clients.Prepare(ctx, absl::Now() + absl::Seconds(2));
    v1::PinForReadRequest req;
    req.set_namespace_id(ns.id());
    req.set_boot_id(boot);
    req.add_keys(wire::KeyToBytes(refs[0].key));
    v1::PinForReadResponse resp;
    grpc::Status s = clients.Stub(n.address)->PinForRead(&ctx, req, &resp);
    EXPECT_TRUE(s.ok()) << s.error_message();
    return resp.lease_id();
  };
  auto a = Node::Start("node-a", 61);
  const uint64_t first = pin(*a, 61);
  a.reset();
  auto a2 = Node::Start("node-a", 62);
  const uint64_t second = pin(*a2, 62);
  EXPECT_NE(first, 0u);
  EXPECT_NE(second, 0u);
  EXPECT_NE(first, second);
}

// Two reads of one remote chunk (Loads sharing a prefix): the second finds
// the slot the first is writing and answers OK only once it is readable, and
// not OK when the first gives up.
TEST_P(TransferTest, AFetchOfAChunkAnotherReadIsWritingWaitsForIt) {
  Namespace ns = *Namespace::Create(SmallModel());
  auto a = Node::Start("node-a", 71);
  auto b = Node::Start("node-b", 72);
  std::vector<ChunkRef> refs = SaveChain(*a, ns, 2, 7);
  PeerClients clients("");
  StaticPeerSource source({a->address}, "node-b", &clients);
  auto reader = ReaderOf(*b, &source, &clients);
  ASSERT_NE(reader, nullptr);
  ASSERT_OK_AND_ASSIGN(DramTier::SlotReservation r, b->cache->ReserveSlot(ns, refs[0]));
  ASSERT_FALSE(r.already_present);
  std::thread writer([&] {
    absl::SleepFor(absl::Milliseconds(200));
    const std::vector<std::byte> p = KvFor(refs[0], r.payload_bytes);
    std::memcpy(b->cache->dram().arena().base() + r.payload_offset, p.data(), p.size());
    EXPECT_TRUE(b->cache->CommitSlot(r.handle).ok());
  });
  const absl::Time start = absl::Now();
  EXPECT_TRUE(reader->Fetch(ns, refs[0].key).ok());
  EXPECT_GE(absl::Now() - start, absl::Milliseconds(150));
  EXPECT_TRUE(b->cache->Pin(ns, refs[0].key).ok()) << "OK means readable";
  writer.join();

  ASSERT_OK_AND_ASSIGN(DramTier::SlotReservation r1, b->cache->ReserveSlot(ns, refs[1]));
  std::thread quitter([&] {
    absl::SleepFor(absl::Milliseconds(100));
    b->cache->AbortSlot(r1.handle);
  });
  EXPECT_THAT(reader->Fetch(ns, refs[1].key), StatusIs(absl::StatusCode::kUnavailable));
  quitter.join();
}

TEST_P(TransferTest, RestartedHolderIsGreetedAgain) {
  Namespace ns = *Namespace::Create(SmallModel());
  auto b = Node::Start("node-b", 52);
  auto a = Node::Start("node-a", 51);
  std::vector<ChunkRef> refs = SaveChain(*a, ns, 2, 5);
  PeerClients clients("");
  StaticPeerSource source({a->address}, "node-b", &clients);
  auto reader = ReaderOf(*b, &source, &clients);
  ASSERT_NE(reader, nullptr);
  ASSERT_TRUE(reader->Fetch(ns, refs[0].key).ok());
  // The holder goes away and a new one (new arena, new keys, new boot id)
  // answers at another address; the reader's old endpoint is useless.
  a.reset();
  auto a2 = Node::Start("node-a", 53);
  SaveChain(*a2, ns, 2, 5);
  StaticPeerSource source2({a2->address}, "node-b", &clients);
  auto reader2 = ReaderOf(*b, &source2, &clients);
  ASSERT_NE(reader2, nullptr);
  ASSERT_TRUE(reader2->Fetch(ns, refs[1].key).ok());
  std::vector<std::byte> out(ns.PayloadBytes(64));
  ASSERT_TRUE(b->cache->Load(ns, refs[1].key, absl::MakeSpan(out)).ok());
  EXPECT_EQ(out, KvFor(refs[1], out.size()));
}

TEST_P(TransferTest, PeerUpFollowsTheLastContact) {
  Namespace ns = *Namespace::Create(SmallModel());
  auto b = Node::Start("node-b", 62);
  auto a = Node::Start("node-a", 61);
  std::vector<ChunkRef> refs = SaveChain(*a, ns, 2, 6);
  PeerClients clients("");
  StaticPeerSource source({a->address}, "node-b", &clients);
  RemoteReaderOptions ro;
  ro.transfer_timeout = absl::Seconds(2);
  auto reader = ReaderOf(*b, &source, &clients, ro);
  ASSERT_NE(reader, nullptr);
  EXPECT_TRUE(clients.Health().empty());
  const std::string series = absl::StrCat("kvtier_peer_up{peer=\"", a->address, "\"} ");
  // No peer contacted yet: the family is there, without series.
  std::string text =
      RenderTransferMetrics(b->ucx->Stats(), b->peer->Stats(), nullptr, clients.Health());
  EXPECT_THAT(text, HasSubstr("# TYPE kvtier_peer_up gauge"));
  EXPECT_THAT(text, Not(HasSubstr("kvtier_peer_up{")));

  ASSERT_TRUE(reader->Fetch(ns, refs[0].key).ok());
  std::vector<PeerHealth> h = clients.Health();
  ASSERT_EQ(h.size(), 1u);
  EXPECT_EQ(h[0].address, a->address);
  EXPECT_EQ(h[0].node_id, "node-a");
  EXPECT_TRUE(h[0].up);
  EXPECT_EQ(h[0].bytes_read, reader->Stats().fetched_bytes);
  EXPECT_GT(h[0].bytes_read, 0u);
  text = RenderTransferMetrics(b->ucx->Stats(), b->peer->Stats(), nullptr, h);
  EXPECT_THAT(text, HasSubstr(series + "1\n"));

  // The holder dies: the next contact fails and the peer is down.
  a.reset();
  EXPECT_FALSE(reader->Fetch(ns, refs[1].key).ok());
  h = clients.Health();
  ASSERT_EQ(h.size(), 1u);
  EXPECT_FALSE(h[0].up);
  EXPECT_EQ(h[0].node_id, "node-a");  // remembered from the earlier answers
  text = RenderTransferMetrics(b->ucx->Stats(), b->peer->Stats(), nullptr, h);
  EXPECT_THAT(text, HasSubstr(series + "0\n"));
}

// Sends `fd` over the Unix socket `sock` (SCM_RIGHTS), as kvtierd hands the
// arena to local clients.
bool SendFd(int sock, int fd) {
  char byte = 'f';
  iovec iov{&byte, 1};
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))] = {};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof(control);
  cmsghdr* c = CMSG_FIRSTHDR(&msg);
  c->cmsg_level = SOL_SOCKET;
  c->cmsg_type = SCM_RIGHTS;
  c->cmsg_len = CMSG_LEN(sizeof(int));
  std::memcpy(CMSG_DATA(c), &fd, sizeof(int));
  return sendmsg(sock, &msg, 0) == 1;
}

int RecvFd(int sock) {
  char byte = 0;
  iovec iov{&byte, 1};
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))] = {};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof(control);
  if (recvmsg(sock, &msg, 0) != 1) return -1;
  cmsghdr* c = CMSG_FIRSTHDR(&msg);
  if (c == nullptr || c->cmsg_type != SCM_RIGHTS) return -1;
  int fd = -1;
  std::memcpy(&fd, CMSG_DATA(c), sizeof(int));
  return fd;
}

std::byte Pattern(size_t i) { return static_cast<std::byte>(i * 13 + 5); }

class UcxArenaTest : public ::testing::Test {
 protected:
  void TearDown() override { unsetenv("UCX_TLS"); }
};

TEST_F(UcxArenaTest, AllocatedArenaIsSharedWithAnotherProcessThroughItsFd) {
  setenv("UCX_TLS", "posix,cma", 1);
  auto e = UcxEngine::Create(UcxOptions{});
  ASSERT_TRUE(e.ok()) << e.status();
  std::unique_ptr<EmbeddedCache> cache = NewCache(e->get());
  ASSERT_NE(cache, nullptr);
  const Arena& a = cache->dram().arena();
  ASSERT_EQ(a.source(), "ucx-posix") << a.allocator_skipped();
  EXPECT_TRUE(a.allocator_skipped().empty());
  EXPECT_EQ((*e)->Stats().arena, "allocated");
  EXPECT_FALSE((*e)->packed_rkey().empty());
  // Already mapped: the same range is fine, another one is not.
  EXPECT_TRUE((*e)->MapArena(a.base(), a.size()).ok());
  EXPECT_THAT((*e)->MapArena(a.base() + 4096, 4096),
              StatusIs(absl::StatusCode::kFailedPrecondition));
  EXPECT_THAT((*e)->AllocateArena(1 << 20), StatusIs(absl::StatusCode::kFailedPrecondition));
  constexpr size_t kBytes = 1 << 20;
  for (size_t i = 0; i < kBytes; ++i) a.base()[i] = Pattern(i);

  // Another process maps the arena from the descriptor it receives and sees
  // the same bytes; what it writes shows here.
  int sv[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
  const uint64_t size = a.size();
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    close(sv[0]);
    const int fd = RecvFd(sv[1]);
    if (fd < 0) _exit(2);
    void* p = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) _exit(3);
    auto* bytes = static_cast<std::byte*>(p);
    for (size_t i = 0; i < kBytes; ++i) {
      if (bytes[i] != Pattern(i)) _exit(4);
    }
    bytes[size - 1] = std::byte{0x5a};
    _exit(write(sv[1], "k", 1) == 1 ? 0 : 5);
  }
  close(sv[1]);
  EXPECT_TRUE(SendFd(sv[0], a.fd()));
  char reply = 0;
  EXPECT_EQ(read(sv[0], &reply, 1), 1);
  close(sv[0]);
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0) << "2: no fd, 3: mmap failed, 4: other bytes, 5: write";
  EXPECT_EQ(a.base()[size - 1], std::byte{0x5a});

  // The engine may go first: the arena keeps UCX's memory until it goes.
  e->reset();
  a.base()[0] = std::byte{1};
  EXPECT_EQ(a.base()[1], Pattern(1));
  cache.reset();
}

TEST_F(UcxArenaTest, WithoutSharedMemoryTheArenaIsARegisteredMemfd) {
  // Over TCP alone UCX allocates private anonymous memory: nothing to share.
  setenv("UCX_TLS", "tcp", 1);
  auto e = UcxEngine::Create(UcxOptions{});
  ASSERT_TRUE(e.ok()) << e.status();
  EXPECT_THAT((*e)->AllocateArena(4 << 20),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("no file descriptor")));
  EXPECT_EQ((*e)->Stats().arena, "");
  std::unique_ptr<EmbeddedCache> cache = NewCache(e->get());
  ASSERT_NE(cache, nullptr);
  const Arena& a = cache->dram().arena();
  EXPECT_EQ(a.source(), "memfd");
  EXPECT_THAT(a.allocator_skipped(), HasSubstr("no file descriptor"));
  ASSERT_TRUE((*e)->MapArena(a.base(), a.size()).ok());
  EXPECT_EQ((*e)->Stats().arena, "registered");
  const std::string text = RenderTransferMetrics((*e)->Stats(), PeerServiceStats{}, nullptr, {});
  EXPECT_THAT(text, HasSubstr("kvtier_ucx_arena_info{memory=\"registered\"} 1"));
}

TEST_F(UcxArenaTest, MappedArenaReadsByGetsAndByCopies) {
  setenv("UCX_TLS", "posix,cma", 1);
  auto holder = UcxEngine::Create(UcxOptions{});
  ASSERT_TRUE(holder.ok()) << holder.status();
  std::unique_ptr<EmbeddedCache> holder_cache = NewCache(holder->get());
  ASSERT_NE(holder_cache, nullptr);
  const Arena& a = holder_cache->dram().arena();
  ASSERT_EQ(a.source(), "ucx-posix") << a.allocator_skipped();
  for (size_t i = 0; i < (1 << 20); ++i) a.base()[i] = Pattern(i);
  std::vector<std::byte> dst(3 << 18);
  auto ops_for = [&]() {
    return std::vector<UcxEngine::GetOp>{
        {0, absl::MakeSpan(dst.data(), 1 << 18), absl::OkStatus()},
        {1 << 19, absl::MakeSpan(dst.data() + (1 << 18), 1 << 18), absl::OkStatus()},
        {a.size() - 100, absl::MakeSpan(dst.data() + (2 << 18), 4096), absl::OkStatus()}};
  };
  for (bool direct : {false, true}) {
    SCOPED_TRACE(direct ? "direct reads" : "gets");
    UcxOptions o;
    o.direct_reads = direct;
    auto reader = UcxEngine::Create(o);
    ASSERT_TRUE(reader.ok()) << reader.status();
    auto peer = (*reader)->Connect((*holder)->worker_addresses()[0], (*holder)->packed_rkey(),
                                   reinterpret_cast<uint64_t>(a.base()), a.size());
    ASSERT_TRUE(peer.ok()) << peer.status();
    EXPECT_TRUE((*peer)->mapped());
    std::fill(dst.begin(), dst.end(), std::byte{0});
    std::vector<UcxEngine::GetOp> ops = ops_for();
    std::vector<size_t> done;
    EXPECT_THAT((*reader)->GetMany(**peer, absl::MakeSpan(ops), absl::Now() + absl::Seconds(10),
                                   [&](size_t i) { done.push_back(i); }),
                StatusIs(absl::StatusCode::kOutOfRange));
    EXPECT_EQ(done.size(), 3u);
    EXPECT_TRUE(ops[0].status.ok()) << ops[0].status;
    EXPECT_TRUE(ops[1].status.ok()) << ops[1].status;
    EXPECT_THAT(ops[2].status, StatusIs(absl::StatusCode::kOutOfRange));
    for (size_t i = 0; i < (1 << 18); ++i) {
      ASSERT_EQ(dst[i], Pattern(i)) << i;
      ASSERT_EQ(dst[(1 << 18) + i], Pattern((1 << 19) + i)) << i;
    }
    UcxStats st = (*reader)->Stats();
    EXPECT_EQ(st.gets, 2u);
    EXPECT_EQ(st.direct_reads, direct ? 2u : 0u);
    if (!direct) continue;
    // A copy that fails fails its op alone; a passed deadline fails the ops
    // without closing the peer (nothing was in flight).
    ops = ops_for();
    ops.pop_back();
    EXPECT_THAT((*reader)->GetMany(
                    **peer, absl::MakeSpan(ops), absl::Now() + absl::Seconds(10), [](size_t) {},
                    [&](size_t i, const std::byte* src) {
                      if (i == 0) return absl::DataLossError("checked and refused");
                      std::memcpy(ops[i].dst.data(), src, ops[i].dst.size());
                      return absl::OkStatus();
                    }),
                StatusIs(absl::StatusCode::kDataLoss));
    EXPECT_THAT(ops[0].status, StatusIs(absl::StatusCode::kDataLoss));
    EXPECT_TRUE(ops[1].status.ok());
    ops = ops_for();
    ops.pop_back();
    EXPECT_THAT((*reader)->GetMany(**peer, absl::MakeSpan(ops), absl::Now() - absl::Seconds(1)),
                StatusIs(absl::StatusCode::kDeadlineExceeded));
    EXPECT_FALSE((*peer)->failed());
    st = (*reader)->Stats();
    EXPECT_EQ(st.get_failures, 3u);
    EXPECT_EQ(st.direct_reads, 3u);
  }
}

// Engine b connected to engine a's worker and arena.
std::shared_ptr<UcxPeer> ConnectTo(Node& b, Node& a) {
  auto peer = b.ucx->Connect(a.ucx->worker_addresses()[0], a.ucx->packed_rkey(),
                             reinterpret_cast<uint64_t>(a.cache->dram().arena().base()),
                             a.cache->dram().arena().size());
  EXPECT_TRUE(peer.ok()) << peer.status();
  return peer.ok() ? *peer : nullptr;
}

TEST_P(TransferTest, CallsReachTheHandlerAndEachCallerGetsItsReply) {
  auto a = Node::Start("a", 1);
  auto b = Node::Start("b", 2);
  a->ucx->SetCallHandler([](absl::string_view req) { return absl::StrCat("re:", req); });
  std::shared_ptr<UcxPeer> peer = ConnectTo(*b, *a);
  ASSERT_NE(peer, nullptr);
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  absl::StatusOr<std::string> r = b->ucx->Call(*peer, "ping", deadline);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(*r, "re:ping");
  // A request larger than one transport fragment, and an empty one.
  std::string big(100000, 'x');
  for (size_t i = 0; i < big.size(); ++i) big[i] = static_cast<char>('a' + i % 26);
  r = b->ucx->Call(*peer, big, deadline);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(*r, "re:" + big);
  r = b->ucx->Call(*peer, "", deadline);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(*r, "re:");
  // Concurrent callers: each reply goes to the call that asked.
  std::vector<std::thread> threads;
  std::vector<int> wrong(8, 0);
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 50; ++i) {
        const std::string q = absl::StrCat(t, "/", i);
        absl::StatusOr<std::string> x = b->ucx->Call(*peer, q, deadline);
        if (!x.ok() || *x != "re:" + q) ++wrong[t];
      }
    });
  }
  for (std::thread& th : threads) th.join();
  EXPECT_EQ(wrong, std::vector<int>(8, 0));
  EXPECT_EQ(b->ucx->Stats().calls_made, 403u);
  EXPECT_EQ(a->ucx->Stats().calls_served, 403u);
  // No handler: Unimplemented, the peer stays usable.
  a->ucx->SetCallHandler(nullptr);
  EXPECT_THAT(b->ucx->Call(*peer, "ping", deadline), StatusIs(absl::StatusCode::kUnimplemented));
  EXPECT_FALSE(peer->failed());
  // A reply that does not come by the deadline: DeadlineExceeded, and the
  // peer is closed (no late reply lands anywhere).
  a->ucx->SetCallHandler([](absl::string_view) {
    absl::SleepFor(absl::Milliseconds(300));
    return std::string("late");
  });
  EXPECT_THAT(b->ucx->Call(*peer, "slow", absl::Now() + absl::Milliseconds(50)),
              StatusIs(absl::StatusCode::kDeadlineExceeded));
  EXPECT_TRUE(peer->failed());
  EXPECT_THAT(b->ucx->Call(*peer, "again", deadline), StatusIs(absl::StatusCode::kUnavailable));
  absl::SleepFor(absl::Milliseconds(350));  // the late reply finds no caller
}

TEST_P(TransferTest, WorkQueuedPastItsDeadlineIsRefusedAndTheEndpointStays) {
  if (Mapped()) GTEST_SKIP() << "reads from a mapped arena are copies on the caller's thread";
  auto a = Node::Start("a", 1);
  auto b = Node::Start("b", 2);
  std::shared_ptr<UcxPeer> to_a = ConnectTo(*b, *a);
  std::shared_ptr<UcxPeer> to_b = ConnectTo(*a, *b);
  ASSERT_NE(to_a, nullptr);
  ASSERT_NE(to_b, nullptr);
  a->ucx->SetCallHandler([](absl::string_view req) { return std::string(req); });
  // B's handler holds B's only progress thread for a while, so what B's
  // callers queue meanwhile is not posted.
  absl::Notification in_handler;
  b->ucx->SetCallHandler([&](absl::string_view) {
    in_handler.Notify();
    absl::SleepFor(absl::Milliseconds(600));
    return std::string("done");
  });
  std::thread busy([&] {
    absl::StatusOr<std::string> r = a->ucx->Call(*to_b, "hold", absl::Now() + absl::Seconds(10));
    EXPECT_TRUE(r.ok()) << r.status();
  });
  ASSERT_TRUE(in_handler.WaitForNotificationWithTimeout(absl::Seconds(10)));
  // A read and a call, each given 100 ms: both return once the thread is
  // free again, refused unsent.
  std::thread caller([&] {
    EXPECT_THAT(b->ucx->Call(*to_a, "late", absl::Now() + absl::Milliseconds(100)),
                StatusIs(absl::StatusCode::kDeadlineExceeded));
  });
  std::byte* dst = b->cache->dram().arena().base();
  std::memset(dst, 0, 4096);
  EXPECT_THAT(
      b->ucx->Get(*to_a, 0, absl::MakeSpan(dst, 4096), absl::Now() + absl::Milliseconds(100)),
      StatusIs(absl::StatusCode::kDeadlineExceeded));
  EXPECT_EQ(std::count(dst, dst + 4096, std::byte{0}), 4096);
  caller.join();
  busy.join();
  // Neither was sent, so the endpoint was not closed: it still reads and calls.
  EXPECT_FALSE(to_a->failed());
  const std::byte* src = a->cache->dram().arena().base();
  for (size_t i = 0; i < 4096; ++i)
    const_cast<std::byte*>(src)[i] = static_cast<std::byte>(i * 3 + 1);
  ASSERT_TRUE(
      b->ucx->Get(*to_a, 0, absl::MakeSpan(dst, 4096), absl::Now() + absl::Seconds(10)).ok());
  EXPECT_EQ(std::memcmp(dst, src, 4096), 0);
  absl::StatusOr<std::string> r = b->ucx->Call(*to_a, "again", absl::Now() + absl::Seconds(10));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(*r, "again");
}

TEST_P(TransferTest, CallToADeadPeerFailsBeforeItsDeadline) {
  if (std::string(GetParam().tls) != "tcp") GTEST_SKIP() << "shared memory reports no peer failure";
  auto a = Node::Start("a", 1);
  auto b = Node::Start("b", 2);
  std::shared_ptr<UcxPeer> peer = ConnectTo(*b, *a);
  ASSERT_NE(peer, nullptr);
  a->ucx->SetCallHandler([](absl::string_view req) { return std::string(req); });
  ASSERT_TRUE(b->ucx->Call(*peer, "up", absl::Now() + absl::Seconds(10)).ok());
  a.reset();
  const absl::Time start = absl::Now();
  absl::StatusOr<std::string> r = b->ucx->Call(*peer, "down", absl::Now() + absl::Seconds(20));
  EXPECT_FALSE(r.ok());
  EXPECT_LT(absl::Now() - start, absl::Seconds(15));
}

TEST_P(TransferTest, AHolderIsWatchedOnlyWhileItsPidNamesIt) {
  if (!Mapped()) GTEST_SKIP() << "only a holder whose arena is mapped here is watched";
  auto a = Node::Start("a", 1);
  auto b = Node::Start("b", 2);
  const uint64_t start = UcxEngine::ProcessStartTime(getpid());
  ASSERT_NE(start, 0u);
  EXPECT_EQ(UcxEngine::ProcessStartTime(-1), 0u);
  {
    // A process name with spaces and parentheses does not shift the fields.
    char name[17] = {};
    ASSERT_EQ(prctl(PR_GET_NAME, name), 0);
    ASSERT_EQ(prctl(PR_SET_NAME, "a) b (c"), 0);
    EXPECT_EQ(UcxEngine::ProcessStartTime(getpid()), start);
    ASSERT_EQ(prctl(PR_SET_NAME, name), 0);
  }
  const uint64_t pid_ns = UcxEngine::PidNamespace();
  const auto pid = static_cast<uint32_t>(getpid());
  // A start time other than the process's own: the holder exited and its
  // pid now names another process. Not watched, so pins stay on gRPC.
  std::shared_ptr<UcxPeer> reused = ConnectTo(*b, *a);
  ASSERT_NE(reused, nullptr);
  EXPECT_FALSE(reused->WatchProcess(pid, pid_ns, start + 1));
  EXPECT_FALSE(reused->watches_process());
  EXPECT_FALSE(reused->WatchProcess(pid, pid_ns + 1, start));  // another PID namespace
  EXPECT_FALSE(reused->watches_process());
  // The holder's own start time: watched, and alive.
  EXPECT_TRUE(reused->WatchProcess(pid, pid_ns, start));
  EXPECT_TRUE(reused->watches_process());
  EXPECT_FALSE(reused->CheckProcess());
  // A holder that sends no start time is trusted by its pid alone.
  std::shared_ptr<UcxPeer> untimed = ConnectTo(*b, *a);
  ASSERT_NE(untimed, nullptr);
  EXPECT_TRUE(untimed->WatchProcess(pid, pid_ns, 0));
  EXPECT_FALSE(untimed->CheckProcess());
}

TEST_P(TransferTest, PinsGoAsUcxCallsOnlyWithTheHellosSecret) {
  const bool calls = PinsGoAsCalls();
  auto a = Node::Start("node-a", 71, "peer-token-71");
  auto b = Node::Start("node-b", 72);
  Namespace ns = *Namespace::Create(SmallModel());
  std::vector<ChunkRef> refs = SaveChain(*a, ns, 4, 7);
  std::vector<BlockKey> keys = Namespace::Keys(refs);
  PeerClients clients("peer-token-71");
  StaticPeerSource source({a->address}, "node-b", &clients);
  auto reader = ReaderOf(*b, &source, &clients);
  ASSERT_NE(reader, nullptr);
  ASSERT_EQ(reader->Locate(ns, keys, 0).size(), 4u);
  std::vector<absl::Status> got = reader->FetchMany(ns, keys);
  ASSERT_EQ(got.size(), 4u);
  for (const absl::Status& s : got) EXPECT_TRUE(s.ok()) << s;
  for (size_t i = 0; i < refs.size(); ++i) {
    std::vector<std::byte> out(ns.PayloadBytes(64));
    ASSERT_TRUE(b->cache->Load(ns, keys[i], absl::MakeSpan(out)).ok()) << i;
    EXPECT_EQ(out, KvFor(refs[i], out.size())) << i;
  }
  // Over TCP, and to a mapped (watched) holder, the pin and the release went
  // as UCX calls; shared memory without failure detection keeps gRPC.
  EXPECT_EQ(reader->Stats().ucx_pins, calls ? 1u : 0u);
  EXPECT_EQ(a->peer->Stats().pin_requests, 1u);
  const absl::Time until = absl::Now() + absl::Seconds(5);
  // The holder counts a call once its handler has returned.
  while ((a->peer->Stats().leases_held > 0 || a->ucx->Stats().calls_served < (calls ? 2u : 0u)) &&
         absl::Now() < until) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  EXPECT_EQ(a->peer->Stats().leases_held, 0u);
  EXPECT_EQ(a->ucx->Stats().calls_served, calls ? 2u : 0u);

  // A call without the secret Hello hands out pins nothing.
  v1::PinForReadRequest req;
  req.set_namespace_id(ns.id());
  req.add_keys(wire::KeyToBytes(keys[0]));
  v1::PinForReadResponse resp;
  const std::string forged(kCallSecretBytes, 'z');
  EXPECT_THAT(
      DecodePeerReply(a->peer->ServeCall(EncodePeerCall(PeerCallMethod::kPinForRead, forged, req)),
                      resp),
      StatusIs(absl::StatusCode::kPermissionDenied));
  if (calls) {
    std::shared_ptr<UcxPeer> peer = ConnectTo(*b, *a);
    ASSERT_NE(peer, nullptr);
    absl::StatusOr<std::string> reply =
        b->ucx->Call(*peer, EncodePeerCall(PeerCallMethod::kPinForRead, forged, req),
                     absl::Now() + absl::Seconds(10));
    ASSERT_TRUE(reply.ok()) << reply.status();
    EXPECT_THAT(DecodePeerReply(*reply, resp), StatusIs(absl::StatusCode::kPermissionDenied));
  }
  EXPECT_THAT(DecodePeerReply(a->peer->ServeCall("x"), resp),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_EQ(a->peer->Stats().pin_requests, 1u);
  EXPECT_EQ(a->peer->Stats().leases_held, 0u);

  // A reader without the peer token gets no Hello, hence no secret: nothing
  // is pinned.
  for (const BlockKey& k : keys) (void)b->cache->Remove(ns, k);
  PeerClients wrong("not-the-token");
  StaticPeerSource wrong_source({a->address}, "node-b", &wrong);
  auto outsider = ReaderOf(*b, &wrong_source, &wrong);
  ASSERT_NE(outsider, nullptr);
  EXPECT_THAT(outsider->Fetch(ns, keys[0]), Not(StatusIs(absl::StatusCode::kOk)));
  EXPECT_EQ(a->peer->Stats().pin_requests, 1u);

  // pins_over_ucx = false: gRPC only, same chunks.
  RemoteReaderOptions ro;
  ro.pins_over_ucx = false;
  auto grpc_reader = ReaderOf(*b, &source, &clients, ro);
  ASSERT_NE(grpc_reader, nullptr);
  ASSERT_EQ(grpc_reader->Locate(ns, keys, 0).size(), 4u);
  got = grpc_reader->FetchMany(ns, keys);
  ASSERT_EQ(got.size(), 4u);
  for (const absl::Status& s : got) EXPECT_TRUE(s.ok()) << s;
  EXPECT_EQ(grpc_reader->Stats().ucx_pins, 0u);
  EXPECT_EQ(a->peer->Stats().pin_requests, 2u);
}

TEST_P(TransferTest, ConcurrentFetchesMergeTheirPinsAndEachGetsItsOwnChunk) {
  // TCP and a mapped holder: pins go as UCX calls (merged with
  // merge_ucx_pins), and the holder's first call is held back so that the
  // other fetches queue behind it. Shared memory with a memfd arena: pins go
  // over gRPC (merged by default) as they come.
  const bool calls = PinsGoAsCalls();
  auto a = Node::Start("node-a", 81);
  auto b = Node::Start("node-b", 82);
  Namespace ns = *Namespace::Create(SmallModel());
  constexpr int kFetches = 16;
  std::vector<ChunkRef> refs;  // one single-chunk chain per fetch
  for (int i = 0; i < kFetches; ++i) refs.push_back(SaveChain(*a, ns, 1, 100 + i)[0]);
  PeerClients clients("");
  StaticPeerSource source({a->address}, "node-b", &clients);
  RemoteReaderOptions ro;
  ro.merge_ucx_pins = true;
  auto reader = ReaderOf(*b, &source, &clients, ro);
  ASSERT_NE(reader, nullptr);
  for (const ChunkRef& r : refs) {
    const BlockKey k[] = {r.key};
    ASSERT_EQ(reader->Locate(ns, k, 0).size(), 1u);
  }
  // The holder lost one of them after the reader located it.
  ASSERT_TRUE(a->cache->Remove(ns, refs[5].key).ok());
  absl::Notification first_in, release;
  std::atomic<int> served{0};
  PeerService* service = a->peer.get();
  a->ucx->SetCallHandler([&](absl::string_view call) {
    if (served.fetch_add(1) == 0) {
      first_in.Notify();
      release.WaitForNotification();
    }
    return service->ServeCall(call);
  });
  std::vector<absl::Status> got(kFetches);
  std::vector<std::thread> threads;
  threads.emplace_back([&] { got[0] = reader->Fetch(ns, refs[0].key); });
  if (calls) first_in.WaitForNotification();
  for (int i = 1; i < kFetches; ++i) {
    threads.emplace_back([&, i] { got[i] = reader->Fetch(ns, refs[i].key); });
  }
  if (calls) absl::SleepFor(absl::Milliseconds(300));  // all of them queue behind the first
  release.Notify();
  for (std::thread& t : threads) t.join();
  for (int i = 0; i < kFetches; ++i) {
    if (i == 5) {
      EXPECT_THAT(got[i], StatusIs(absl::StatusCode::kNotFound)) << i;
      EXPECT_FALSE(b->cache->Pin(ns, refs[i].key).ok());
      continue;
    }
    EXPECT_TRUE(got[i].ok()) << i << " " << got[i];
    std::vector<std::byte> out(ns.PayloadBytes(refs[i].num_tokens));
    ASSERT_TRUE(b->cache->Load(ns, refs[i].key, absl::MakeSpan(out)).ok()) << i;
    EXPECT_EQ(out, KvFor(refs[i], out.size())) << i;
  }
  if (calls) {
    // The first fetch's pin, then one for the 15 that waited.
    EXPECT_EQ(reader->Stats().merged_pins, 14u);
    EXPECT_EQ(a->peer->Stats().pin_requests, 2u);
  } else {
    EXPECT_EQ(reader->Stats().ucx_pins, 0u);
  }
  EXPECT_EQ(a->peer->Stats().pinned_chunks, 15u);
  EXPECT_EQ(reader->Stats().fetches, 15u);
  EXPECT_EQ(reader->Stats().fetch_misses, 1u);
  // The shared lease goes once every fetch is done with it.
  const absl::Time until = absl::Now() + absl::Seconds(5);
  while (a->peer->Stats().leases_held > 0 && absl::Now() < until) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  EXPECT_EQ(a->peer->Stats().leases_held, 0u);
  EXPECT_EQ(a->cache->Stats().tiers[0].pinned_chunks, 0u);
  a->ucx->SetCallHandler(nullptr);
}

TEST_P(TransferTest, AFetchQueuedBehindAStuckPinGivesUpAtItsOwnDeadline) {
  // Pins go as merged UCX calls. The reader's only progress thread is held
  // in a slow call handler, so the first fetch's pin cannot be sent; a
  // second fetch, queued behind that pin, gives up at its own deadline
  // instead of waiting for the first to come back.
  const bool calls = PinsGoAsCalls();
  if (!calls) GTEST_SKIP() << "pins go over gRPC here, which needs no progress thread";
  auto a = Node::Start("node-a", 101);
  auto b = Node::Start("node-b", 102);
  Namespace ns = *Namespace::Create(SmallModel());
  std::vector<ChunkRef> refs;
  for (int i = 0; i < 3; ++i) refs.push_back(SaveChain(*a, ns, 1, 300 + i)[0]);
  PeerClients clients("");
  StaticPeerSource source({a->address}, "node-b", &clients);
  RemoteReaderOptions ro;
  ro.merge_ucx_pins = true;
  ro.transfer_timeout = absl::Milliseconds(500);
  auto reader = ReaderOf(*b, &source, &clients, ro);
  ASSERT_NE(reader, nullptr);
  for (const ChunkRef& r : refs) {
    const BlockKey k[] = {r.key};
    ASSERT_EQ(reader->Locate(ns, k, 0).size(), 1u);
  }
  ASSERT_TRUE(reader->Fetch(ns, refs[0].key).ok());  // the endpoint is up
  // Node a calls node b, whose handler holds b's progress thread.
  absl::Notification in_handler;
  b->ucx->SetCallHandler([&](absl::string_view) {
    in_handler.Notify();
    absl::SleepFor(absl::Seconds(3));
    return std::string("done");
  });
  std::shared_ptr<UcxPeer> to_b = ConnectTo(*a, *b);
  ASSERT_NE(to_b, nullptr);
  std::thread holder_call(
      [&] { (void)a->ucx->Call(*to_b, "hold", absl::Now() + absl::Seconds(20)); });
  in_handler.WaitForNotification();
  absl::Status first, second;
  absl::Time second_done;
  std::thread leader([&] { first = reader->Fetch(ns, refs[1].key); });
  absl::SleepFor(absl::Milliseconds(150));  // the leader's pin is in flight
  const absl::Time second_start = absl::Now();
  std::thread waiter([&] {
    second = reader->Fetch(ns, refs[2].key);
    second_done = absl::Now();
  });
  waiter.join();
  leader.join();
  holder_call.join();
  EXPECT_THAT(second, StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_THAT(std::string(second.message()), HasSubstr("waited past the deadline"));
  EXPECT_LT(second_done - second_start, absl::Seconds(2));  // not when the leader came back
  EXPECT_FALSE(first.ok());
  EXPECT_EQ(reader->Stats().merged_pins, 0u);
  EXPECT_FALSE(b->cache->Pin(ns, refs[1].key).ok());
  EXPECT_FALSE(b->cache->Pin(ns, refs[2].key).ok());
  EXPECT_EQ(a->peer->Stats().pin_requests, 1u);  // the first Fetch's only
  // With the thread free again, the same chunks are read.
  b->ucx->SetCallHandler(nullptr);
  for (int i : {2, 1}) {
    const BlockKey k[] = {refs[i].key};
    ASSERT_EQ(reader->Locate(ns, k, 0).size(), 1u) << i;
    EXPECT_TRUE(reader->Fetch(ns, refs[i].key).ok()) << i;
  }
  const absl::Time until = absl::Now() + absl::Seconds(5);
  while (a->peer->Stats().leases_held > 0 && absl::Now() < until) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  EXPECT_EQ(a->peer->Stats().leases_held, 0u);
}

TEST_P(TransferTest, EveryHeldPinsPastAMissingChunk) {
  auto a = Node::Start("node-a", 91);
  Namespace ns = *Namespace::Create(SmallModel());
  std::vector<ChunkRef> refs;
  for (int i = 0; i < 3; ++i) refs.push_back(SaveChain(*a, ns, 1, 200 + i)[0]);
  ASSERT_TRUE(a->cache->Remove(ns, refs[1].key).ok());
  PeerClients clients("");
  for (bool every : {false, true}) {
    grpc::ClientContext ctx;
    clients.Prepare(ctx, absl::Now() + absl::Seconds(5));
    v1::PinForReadRequest req;
    req.set_namespace_id(ns.id());
    for (const ChunkRef& r : refs) req.add_keys(wire::KeyToBytes(r.key));
    req.set_every_held(every);
    v1::PinForReadResponse resp;
    ASSERT_TRUE(clients.Stub(a->address)->PinForRead(&ctx, req, &resp).ok());
    ASSERT_EQ(resp.slots_size(), every ? 2 : 1) << every;
    EXPECT_EQ(resp.slots(0).key(), wire::KeyToBytes(refs[0].key));
    if (every) {
      EXPECT_EQ(resp.slots(1).key(), wire::KeyToBytes(refs[2].key));
    }
  }
}

TEST(UcxOptionsTest, ValidateNamesTheField) {
  UcxOptions o;
  o.progress_threads = 0;
  EXPECT_THAT(o.Validate(),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("ucx.progress_threads")));
  o.progress_threads = 1;
  o.busy_poll = -absl::Microseconds(1);
  EXPECT_THAT(o.Validate(), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("busy_poll")));
  o.busy_poll = absl::InfiniteDuration();
  EXPECT_TRUE(o.Validate().ok());
  o.copy_threads = 65;
  EXPECT_THAT(o.Validate(),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("ucx.copy_threads")));
  o.copy_threads = 0;
  EXPECT_TRUE(o.Validate().ok());
  PeerServiceOptions p;
  EXPECT_THAT(p.Validate(), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("node_id")));
  RemoteReaderOptions r;
  r.node_id = "x";
  r.transfer_timeout = absl::ZeroDuration();
  EXPECT_THAT(r.Validate(),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("ucx.transfer_timeout_ms")));
  r.transfer_timeout = absl::Seconds(1);
  r.max_batch_chunks = 0;
  EXPECT_THAT(r.Validate(),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("max_batch_chunks")));
  r.max_batch_chunks = 64;
  r.idle_peer_timeout = absl::ZeroDuration();
  EXPECT_THAT(r.Validate(),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("ucx.idle_peer_seconds")));
}

INSTANTIATE_TEST_SUITE_P(Transports, TransferTest,
                         ::testing::Values(Mode{"tcp", "tcp", false},
                                           Mode{"shm", "posix,cma", false},
                                           Mode{"shm_ucx_arena", "posix,cma", true}),
                         [](const auto& info) { return std::string(info.param.name); });

}  // namespace
}  // namespace kvtier::transfer
