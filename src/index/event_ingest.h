// Decodes the messages the index consumes and applies them to a
// ClusterIndex: kvtierd's EventBatch and NodeHeartbeat (protobuf, from NATS)
// and vLLM's KVEventBatch (msgpack, from ZMQ). A message that fails to decode
// or validate changes nothing and is counted as malformed.
//
// vLLM key space: vLLM block hashes (an int, or bytes in newer vLLM) are
// mapped to index keys with KeyFromEngineHash(vllm namespace id, hash bytes),
// where an int hash is its 8-byte big-endian two's-complement pattern. The
// vLLM namespace id of an endpoint is configured (VllmNamespaceId() when
// not), so vLLM hashes never meet kvtier chunk keys. A vLLM medium of "GPU"
// (or none) is Tier::kGpu, "CPU" is kDram, "DISK" is kNvme, anything else
// kGpu.
//
// Node ids that arrive over NATS must pass ValidateNodeId (1..128 of
// [A-Za-z0-9_.-]) and heartbeat addresses must fit kMaxAddressBytes, so a
// bad or hostile publisher cannot fill the node table with junk ids.
//
// Thread-safety: EventIngest's methods are thread-safe; a VllmSequence is
// not (one per endpoint reader).
#ifndef KVTIER_SRC_INDEX_EVENT_INGEST_H_
#define KVTIER_SRC_INDEX_EVENT_INGEST_H_

#include <atomic>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "src/index/cluster_index.h"

namespace kvtier::index {

// The default namespace id of vLLM block hashes: the first 8 bytes of
// XXH3-128("kvtier.vllm") as a big-endian number.
uint64_t VllmNamespaceId();
// The index key of one vLLM block hash (bytes as published; an int hash as
// 8 bytes, big-endian).
BlockKey VllmKey(uint64_t vllm_namespace_id, absl::string_view hash_bytes);
// 8 bytes, big-endian: the bytes of an int vLLM hash.
std::string VllmIntHashBytes(int64_t hash);

struct IngestCounters {
  uint64_t batches = 0;     // kvtier batches applied
  uint64_t events = 0;      // kvtier and vLLM events applied
  uint64_t keys = 0;        // keys stored or removed
  uint64_t malformed = 0;   // messages dropped (decode or validation failure)
  uint64_t duplicates = 0;  // kvtier batches already applied
  uint64_t gaps = 0;        // kvtier batches that skipped sequence numbers
  uint64_t heartbeats = 0;
  uint64_t vllm_batches = 0;
  uint64_t vllm_cleared = 0;   // AllBlocksCleared events
  uint64_t vllm_restarts = 0;  // vLLM endpoints seen restarting (sequence went back)
};

// Follows the message sequence numbers of one vLLM endpoint. vLLM numbers
// its ZMQ messages from 0 at every start and sends no AllBlocksCleared when
// it starts, so a number that is not above the last one seen means a new
// vLLM process: what the index knew of the endpoint is stale.
class VllmSequence {
 public:
  struct Step {
    uint64_t missed = 0;     // numbers skipped since the last message
    bool restarted = false;  // not above the last one seen
  };
  // Records the sequence number of the next message.
  Step Next(uint64_t sequence);

 private:
  bool seen_ = false;
  uint64_t last_ = 0;
};

class EventIngest {
 public:
  // `index` must outlive this.
  explicit EventIngest(ClusterIndex* index) : index_(index) {}

  // A kvtier.v1.EventBatch published on `subject` (kvtier.events.<ns hex>;
  // the namespace in the subject must match the batch's). InvalidArgument
  // naming the field when malformed (counted).
  absl::Status ApplyEventBatch(absl::string_view subject, absl::string_view data);
  // A kvtier.v1.NodeHeartbeat published on `subject` (kvtier.nodes.<node
  // id>; the id in the subject must match the heartbeat's, so one node
  // cannot speak for another). InvalidArgument naming the field when
  // malformed (counted): a node id that fails ValidateNodeId, an address
  // longer than kMaxAddressBytes, a subject of another node.
  absl::Status ApplyHeartbeat(absl::string_view subject, absl::string_view data, absl::Time now);
  // The same, for a heartbeat whose subject is not known (no subject check).
  absl::Status ApplyHeartbeat(absl::string_view data, absl::Time now) {
    return ApplyHeartbeat("", data, now);
  }
  // One ZMQ message of a vLLM endpoint: its payload frame (msgpack
  // KVEventBatch), for the node `node` (a NodeSource::kVllm index).
  absl::Status ApplyVllmBatch(uint32_t node, uint64_t vllm_namespace_id, absl::string_view payload);
  // The vLLM endpoint of `node` restarted (VllmSequence): drops the node's
  // entries and counts the restart. Returns the entries dropped.
  uint64_t ApplyVllmRestart(uint32_t node);
  // Counts a malformed message found by the transport (bad frames).
  void CountMalformed() { malformed_.fetch_add(1, std::memory_order_relaxed); }

  IngestCounters Counters() const;

 private:
  absl::Status Malformed(absl::Status s);

  ClusterIndex* const index_;
  std::atomic<uint64_t> batches_{0};
  std::atomic<uint64_t> events_{0};
  std::atomic<uint64_t> keys_{0};
  std::atomic<uint64_t> malformed_{0};
  std::atomic<uint64_t> duplicates_{0};
  std::atomic<uint64_t> gaps_{0};
  std::atomic<uint64_t> heartbeats_{0};
  std::atomic<uint64_t> vllm_batches_{0};
  std::atomic<uint64_t> vllm_cleared_{0};
  std::atomic<uint64_t> vllm_restarts_{0};
};

}  // namespace kvtier::index

#endif  // KVTIER_SRC_INDEX_EVENT_INGEST_H_
