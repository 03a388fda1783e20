// The read path's remote half: finds which other nodes hold the rest of a
// chain (through a HolderSource) and pulls a chunk out of a holder's DRAM
// arena into a reserved local DRAM slot with one one-sided UCX get, so that
// later reads hit locally.
//
// A fetch of a run of chunks on one holder: one PinForRead for all of them
// (they are pinned there under one lease; the holder answers each payload
// checksum, computed on a chunk's first pin and remembered), a local slot
// reservation per chunk, one ucp_get_nbx of header and payload straight into
// each slot, all in flight together, Release of the lease (asynchronously,
// batched with other releases), then checks of each header (namespace, key,
// layout) and of each payload checksum against the holder's, and only then
// the commit that makes the chunk visible. Any failure (the holder died or
// restarted, a deadline, a mismatch) aborts the reservation: a chunk is
// never visible partly written. A miss is reported as NotFound, a damaged
// transfer as DataLoss, an unreachable holder as Unavailable.
//
// Pins: PinForRead and Release go as UCX calls on the holder's endpoint
// (peer_calls.h; one active message each way, answered by the holder's
// progress thread) when the holder's Hello offered a call secret and the
// endpoint detects peer failures; otherwise (and as fallback when the holder
// does not answer calls) over its gRPC Peer service.
//
// Merged pins (over gRPC; over UCX calls only with merge_ucx_pins): fetches
// to one holder that start while a PinForRead to it is in flight wait for it
// to return and then go out together in the next one (same namespace, at most max_batch_chunks
// keys; `every_held`, so a chunk the holder lacks is a miss only for the fetch that asked for it).
// They share its lease, released once the last of them is done with its gets.
//
// Connections: one UCX endpoint per holder, made from the holder's Hello
// (worker address, packed arena key, arena base, boot id) and cached. A
// holder whose boot id changes (it restarted, so its arena and keys are new)
// or whose endpoint failed is said Hello to again; the stale endpoint and
// remote key are dropped. Endpoints that fail, whose holder stops answering
// or that go unused for idle_peer_timeout are closed by a sweep once a
// second.
//
// Thread-safety: thread-safe; fetches run concurrently.
#ifndef KVTIER_SRC_TRANSFER_REMOTE_READER_H_
#define KVTIER_SRC_TRANSFER_REMOTE_READER_H_

#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "kvtier/cache.h"
#include "src/core/embedded_cache.h"
#include "src/transfer/holder_source.h"
#include "src/transfer/peer_client.h"
#include "src/transfer/ucx_engine.h"

namespace kvtier::transfer {

struct RemoteReaderOptions {
  std::string node_id;                                      // this node (never its own holder)
  absl::Duration lookup_timeout = absl::Milliseconds(200);  // deadline of FindHolders
  absl::Duration transfer_timeout = absl::Seconds(5);       // PinForRead + get of one chunk
  uint32_t max_hints = 1u << 16;                            // remembered (chunk -> holder) pairs
  uint32_t max_batch_chunks = 64;  // chunks pinned by one PinForRead and read together (1..4096)
  bool pins_over_ucx = true;       // PinForRead/Release as UCX calls when the holder offers them
  // Merge concurrent fetches' pins also when they go as UCX calls (always
  // merged over gRPC). A UCX call costs about a message each way, so merging
  // them mostly makes fetches wait for each other.
  bool merge_ucx_pins = false;
  // A holder's endpoint unused this long is closed (InfiniteDuration:
  // never); one whose peer failed, or whose last contact failed, is closed
  // at the next sweep (once a second). Closing it releases the holder's
  // remote key, and with it the reader's mapping of a same-host holder's
  // shared-memory arena, which would otherwise keep a dead holder's memory
  // allocated on the host.
  absl::Duration idle_peer_timeout = absl::Seconds(60);
  // Called with each error of the HolderSource (an index that refuses this
  // node's token, peers that do not answer), on the caller's thread; null:
  // counted only (lookup_errors).
  std::function<void(const absl::Status&)> on_lookup_error;

  // InvalidArgument naming the field.
  absl::Status Validate() const;
};

// One holder the reader knows.
struct RemotePeerInfo {
  std::string node_id;
  std::string address;  // host:port of its Peer service
  uint64_t boot_id = 0;
  std::string transports;  // the UCX lanes in use (UcxPeer::transports)
  bool failed = false;
};

// Counters (monotonic).
struct RemoteReaderStats {
  uint64_t lookups = 0;          // Locate calls that asked the holder source
  uint64_t lookup_errors = 0;    // of those, failed or timed out
  uint64_t remote_chunks = 0;    // chunks Locate reported remote
  uint64_t fetches = 0;          // chunks pulled into DRAM
  uint64_t fetched_bytes = 0;    // their encoded bytes
  uint64_t fetch_misses = 0;     // no holder had the chunk (any more)
  uint64_t fetch_failures = 0;   // transfer errors (peer down, deadline, no room)
  uint64_t verify_failures = 0;  // transferred bytes that failed a check
  uint64_t hellos = 0;           // connections made
  uint64_t stale_drops = 0;      // endpoints dropped for a changed boot id or a failure
  uint64_t idle_drops = 0;       // endpoints closed after idle_peer_timeout unused
  uint64_t ucx_pins = 0;         // PinForReads sent as UCX calls (the rest went over gRPC)
  uint64_t merged_pins = 0;      // fetches whose pin rode in another fetch's PinForRead
  std::vector<RemotePeerInfo> peers;
};

class RemoteReader {
 public:
  // `cache` (whose arena `engine` has mapped), `engine`, `source` and
  // `clients` must outlive the reader.
  static absl::StatusOr<std::unique_ptr<RemoteReader>> Create(EmbeddedCache* cache,
                                                              UcxEngine* engine,
                                                              HolderSource* source,
                                                              PeerClients* clients,
                                                              const RemoteReaderOptions& options);
  // Sends the releases still queued, then drops every endpoint.
  ~RemoteReader();

  // Where chunks chain[from..] live on other nodes: Tier::kRemote locations
  // (holder = node id) for the longest prefix of chain[from..] one holder
  // has. Empty when no holder answers in time (Locate never fails a lookup).
  std::vector<ChunkLocation> Locate(const Namespace& ns, absl::Span<const BlockKey> chain,
                                    size_t from);

  // Pulls `key` from a holder into local DRAM (see the file comment). OK when
  // it is in DRAM now (also when it was already). NotFound when no holder has
  // it; Unavailable, DeadlineExceeded, DataLoss or ResourceExhausted when the
  // transfer failed (nothing was committed).
  absl::Status Fetch(const Namespace& ns, const BlockKey& key);

  // Fetch for a run of keys: keys[0] as Fetch does, together with the keys
  // after it that Locate placed on the same holder (at most
  // max_batch_chunks): one PinForRead, their gets in flight at once, one
  // Release. Returns one status per key of that run (at least one, at most
  // keys.size()), each as Fetch would; keys past the run are not touched.
  // Empty for empty `keys`.
  std::vector<absl::Status> FetchMany(const Namespace& ns, absl::Span<const BlockKey> keys);

  RemoteReaderStats Stats() const;

 private:
  struct Conn {
    std::string node_id;
    uint64_t boot_id = 0;
    std::shared_ptr<UcxPeer> peer;
    std::string call_secret;  // from Hello; empty: pins over gRPC only
    absl::Time last_used;     // when a fetch last took it
    int down_sweeps = 0;      // sweeps in a row that found the peer's last contact failed
  };
  struct Hint {
    std::string address;
    BlockKey parent;
  };
  struct HintKey {
    uint64_t ns = 0;
    BlockKey key;
    friend bool operator==(const HintKey& a, const HintKey& b) {
      return a.ns == b.ns && a.key == b.key;
    }
    template <typename H>
    friend H AbslHashValue(H h, const HintKey& k) {
      return H::combine(std::move(h), k.ns, k.key);
    }
  };

  RemoteReader(EmbeddedCache* cache, UcxEngine* engine, HolderSource* source, PeerClients* clients,
               RemoteReaderOptions options)
      : cache_(cache),
        engine_(engine),
        source_(source),
        clients_(clients),
        options_(std::move(options)) {
    releaser_ = std::thread([this] { ReleaseLoop(); });
  }

  // The cached connection to `address`, or a new one from its Hello.
  absl::StatusOr<Conn> Connect(const std::string& address, absl::Time deadline);
  // The pins of one fetch's keys.
  struct PinResult {
    absl::Status status;  // the PinForRead call's failure; OK when the holder answered
    uint64_t boot_id = 0;
    // The pinned prefix of the fetch's keys, in order.
    std::vector<v1::PinnedSlot> slots;
    // Holds the (possibly shared) lease: released when the last fetch
    // sharing it drops it. Null when nothing was pinned for this fetch.
    std::shared_ptr<void> lease;
  };
  // A fetch waiting for its pins.
  struct PinWaiter {
    uint64_t ns_id = 0;
    absl::Span<const BlockKey> keys;
    bool done = false;  // `result` is set (by another fetch's call)
    PinResult result;
  };
  // The fetches to one holder: whether a PinForRead is in flight, and who
  // waits for the next one.
  struct PinQueue {
    bool in_flight = false;
    std::vector<PinWaiter*> waiting;
  };
  // Pins `keys` on the holder at `address`, merged with the other fetches
  // waiting for it (see the file comment).
  PinResult PinMerged(const Conn& conn, const std::string& address, uint64_t ns_id,
                      absl::Span<const BlockKey> keys, absl::Time deadline);
  // One PinForRead for the keys of `batch` (one namespace, the first
  // fetch's keys first); sets each fetch's result, sharing the lease.
  void PinBatch(const Conn& conn, const std::string& address, absl::Span<PinWaiter* const> batch,
                absl::Time deadline);
  // Whether pins to `conn` go as UCX calls.
  bool UseCalls(const Conn& conn) const;
  // PinForRead on the holder at `address` (UCX call or gRPC). The holder's
  // answer, or why there is none.
  absl::Status PinForRead(const Conn& conn, const std::string& address,
                          const v1::PinForReadRequest& req, v1::PinForReadResponse& resp,
                          absl::Time deadline);
  // Forgets the connection to `address` when it is still `peer`.
  void Drop(const std::string& address, const UcxPeer* peer);
  // One attempt at reading `keys` (with their `parents`) from `address`; one
  // status per key.
  std::vector<absl::Status> FetchFrom(const Namespace& ns, absl::Span<const BlockKey> keys,
                                      absl::Span<const BlockKey> parents,
                                      const std::string& address, absl::Time deadline);
  // Queues a Release for the releaser thread (a lost one only lets the
  // lease lapse on the holder).
  void ReleaseLease(const std::string& address, uint64_t lease_id);
  void ReleaseLoop();
  // Closes the endpoints that failed, whose peer's last contact failed, or
  // that were unused for idle_peer_timeout (a fetch using one keeps it
  // alive until it is done).
  void SweepPeers();
  void Remember(uint64_t ns, absl::Span<const BlockKey> keys, const BlockKey& before,
                const std::string& address);

  EmbeddedCache* const cache_;
  UcxEngine* const engine_;
  HolderSource* const source_;
  PeerClients* const clients_;
  const RemoteReaderOptions options_;

  mutable absl::Mutex mu_;
  absl::flat_hash_map<std::string, Conn> conns_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<HintKey, Hint> hints_ ABSL_GUARDED_BY(mu_);

  absl::Mutex pin_mu_;
  absl::flat_hash_map<std::string, std::unique_ptr<PinQueue>> pin_queues_ ABSL_GUARDED_BY(pin_mu_);

  absl::Mutex release_mu_;
  std::deque<std::pair<std::string, uint64_t>> releases_ ABSL_GUARDED_BY(release_mu_);
  bool stopping_ ABSL_GUARDED_BY(release_mu_) = false;
  std::thread releaser_;

  std::atomic<uint64_t> lookups_{0};
  std::atomic<uint64_t> lookup_errors_{0};
  std::atomic<uint64_t> remote_chunks_{0};
  std::atomic<uint64_t> fetches_{0};
  std::atomic<uint64_t> fetched_bytes_{0};
  std::atomic<uint64_t> fetch_misses_{0};
  std::atomic<uint64_t> fetch_failures_{0};
  std::atomic<uint64_t> verify_failures_{0};
  std::atomic<uint64_t> hellos_{0};
  std::atomic<uint64_t> stale_drops_{0};
  std::atomic<uint64_t> idle_drops_{0};
  std::atomic<uint64_t> ucx_pins_{0};
  std::atomic<uint64_t> merged_pins_{0};
};

}  // namespace kvtier::transfer

#endif  // KVTIER_SRC_TRANSFER_REMOTE_READER_H_
