#include "src/index/event_ingest.h"

#define MSGPACK_NO_BOOST 1
#include <msgpack.hpp>

#include <cstring>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "kvtier/v1/events.pb.h"
#include "src/core/hash.h"
#include "src/index/event_publisher.h"
#include "src/server/wire.h"

namespace kvtier::index {
namespace {

constexpr absl::string_view kEventsPrefix = "kvtier.events.";
constexpr absl::string_view kNodesPrefix = "kvtier.nodes.";

absl::Status Invalid(absl::string_view field, absl::string_view why) {
  return absl::InvalidArgumentError(absl::StrCat(field, ": ", why));
}

// A proto tier an index accepts from kvtierd.
bool ValidTier(int t) {
  return t >= static_cast<int>(Tier::kGpu) && t <= static_cast<int>(Tier::kRemote);
}

absl::StatusOr<std::vector<BlockKey>> Keys(
    const google::protobuf::RepeatedPtrField<std::string>& in, absl::string_view field) {
  std::vector<BlockKey> out;
  out.reserve(in.size());
  for (int i = 0; i < in.size(); ++i) {
    absl::StatusOr<BlockKey> k = wire::KeyFromBytes(in[i], absl::StrCat(field, "[", i, "]"));
    if (!k.ok()) return k.status();
    out.push_back(*k);
  }
  return out;
}

// ---- vLLM msgpack ----------------------------------------------------------------

using msgpack::type::object_type;

absl::StatusOr<std::string> HashBytes(const msgpack::object& o, absl::string_view field) {
  switch (o.type) {
    case object_type::POSITIVE_INTEGER:
      return VllmIntHashBytes(static_cast<int64_t>(o.via.u64));
    case object_type::NEGATIVE_INTEGER:
      return VllmIntHashBytes(o.via.i64);
    case object_type::BIN:
      if (o.via.bin.size == 0) return Invalid(field, "empty hash");
      return std::string(o.via.bin.ptr, o.via.bin.size);
    case object_type::STR:
      if (o.via.str.size == 0) return Invalid(field, "empty hash");
      return std::string(o.via.str.ptr, o.via.str.size);
    default:
      return Invalid(field, "a block hash must be an int or bytes");
  }
}

absl::StatusOr<Tier> Medium(const msgpack::object* o) {
  if (o == nullptr || o->type == object_type::NIL) return Tier::kGpu;
  if (o->type != object_type::STR) return Invalid("medium", "must be a string or nil");
  const absl::string_view m(o->via.str.ptr, o->via.str.size);
  if (absl::EqualsIgnoreCase(m, "CPU")) return Tier::kDram;
  if (absl::EqualsIgnoreCase(m, "DISK")) return Tier::kNvme;
  return Tier::kGpu;
}

absl::StatusOr<std::vector<BlockKey>> VllmKeys(const msgpack::object& list, uint64_t ns,
                                               absl::string_view field) {
  if (list.type != object_type::ARRAY) return Invalid(field, "must be a list");
  std::vector<BlockKey> out;
  out.reserve(list.via.array.size);
  for (uint32_t i = 0; i < list.via.array.size; ++i) {
    absl::StatusOr<std::string> h =
        HashBytes(list.via.array.ptr[i], absl::StrCat(field, "[", i, "]"));
    if (!h.ok()) return h.status();
    out.push_back(VllmKey(ns, *h));
  }
  return out;
}

struct VllmEvent {
  enum Kind { kStored, kRemoved, kCleared } kind = kStored;
  std::vector<BlockKey> keys;
  Tier tier = Tier::kGpu;
};

absl::StatusOr<std::vector<VllmEvent>> DecodeVllm(absl::string_view payload, uint64_t ns) {
  msgpack::object_handle oh;
  try {
    // msgpack reserves an array's or map's elements when it reads the count,
    // before their bytes: unbounded, five damaged bytes ask for gigabytes.
    // Every element takes at least one byte of the payload, and a batch
    // nests four deep.
    const size_t n = payload.size();
    oh = msgpack::unpack(payload.data(), n, nullptr, nullptr,
                         msgpack::unpack_limit(n, n, n, n, n, /*depth=*/16));
  } catch (const std::exception& e) {
    return Invalid("payload", absl::StrCat("not msgpack: ", e.what()));
  }
  const msgpack::object& batch = oh.get();
  // KVEventBatch, array_like: [ts, events, (data_parallel_rank)].
  if (batch.type != object_type::ARRAY || batch.via.array.size < 2) {
    return Invalid("payload", "a KVEventBatch is an array [ts, events, ...]");
  }
  const msgpack::object& events = batch.via.array.ptr[1];
  if (events.type != object_type::ARRAY) return Invalid("events", "must be a list");
  std::vector<VllmEvent> out;
  for (uint32_t i = 0; i < events.via.array.size; ++i) {
    const std::string field = absl::StrCat("events[", i, "]");
    const msgpack::object& ev = events.via.array.ptr[i];
    // Tagged array_like struct: [tag, fields...]; omit_defaults drops
    // trailing fields left at their defaults.
    if (ev.type != object_type::ARRAY || ev.via.array.size < 1 ||
        ev.via.array.ptr[0].type != object_type::STR) {
      return Invalid(field, "an event is an array [tag, fields...]");
    }
    const msgpack::object* f = ev.via.array.ptr;
    const uint32_t n = ev.via.array.size;
    const absl::string_view tag(f[0].via.str.ptr, f[0].via.str.size);
    VllmEvent e;
    if (tag == "BlockStored") {
      // [tag, block_hashes, parent_block_hash, token_ids, block_size, lora_id, medium]
      if (n < 5) return Invalid(field, "BlockStored needs block_hashes .. block_size");
      e.kind = VllmEvent::kStored;
      absl::StatusOr<std::vector<BlockKey>> keys =
          VllmKeys(f[1], ns, absl::StrCat(field, ".block_hashes"));
      if (!keys.ok()) return keys.status();
      e.keys = std::move(*keys);
      absl::StatusOr<Tier> t = Medium(n > 6 ? &f[6] : nullptr);
      if (!t.ok()) return Invalid(field, t.status().message());
      e.tier = *t;
    } else if (tag == "BlockRemoved") {
      // [tag, block_hashes, medium]
      if (n < 2) return Invalid(field, "BlockRemoved needs block_hashes");
      e.kind = VllmEvent::kRemoved;
      absl::StatusOr<std::vector<BlockKey>> keys =
          VllmKeys(f[1], ns, absl::StrCat(field, ".block_hashes"));
      if (!keys.ok()) return keys.status();
      e.keys = std::move(*keys);
      absl::StatusOr<Tier> t = Medium(n > 2 ? &f[2] : nullptr);
      if (!t.ok()) return Invalid(field, t.status().message());
      e.tier = *t;
    } else if (tag == "AllBlocksCleared") {
      e.kind = VllmEvent::kCleared;
    } else {
      return Invalid(field, absl::StrCat("unknown event tag '", tag, "'"));
    }
    out.push_back(std::move(e));
  }
  return out;
}

}  // namespace

uint64_t VllmNamespaceId() {
  static const uint64_t id = [] {
    const char kName[] = "kvtier.vllm";
    const BlockKey k =
        Xxh3_128(absl::MakeConstSpan(reinterpret_cast<const std::byte*>(kName), sizeof(kName) - 1));
    return k.hi;
  }();
  return id;
}

BlockKey VllmKey(uint64_t vllm_namespace_id, absl::string_view hash_bytes) {
  return KeyFromEngineHash(
      vllm_namespace_id, absl::MakeConstSpan(reinterpret_cast<const std::byte*>(hash_bytes.data()),
                                             hash_bytes.size()));
}

std::string VllmIntHashBytes(int64_t hash) {
  const uint64_t v = static_cast<uint64_t>(hash);
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>(v >> (56 - 8 * i));
  return out;
}

absl::Status EventIngest::Malformed(absl::Status s) {
  malformed_.fetch_add(1, std::memory_order_relaxed);
  return s;
}

absl::Status EventIngest::ApplyEventBatch(absl::string_view subject, absl::string_view data) {
  v1::EventBatch batch;
  if (!batch.ParseFromArray(data.data(), static_cast<int>(data.size()))) {
    return Malformed(Invalid("event batch", "not a kvtier.v1.EventBatch"));
  }
  if (absl::Status s = ValidateNodeId(batch.node_id(), "node_id"); !s.ok()) return Malformed(s);
  if (batch.incarnation() == 0) return Malformed(Invalid("incarnation", "must not be 0"));
  if (absl::StartsWith(subject, kEventsPrefix)) {
    uint64_t ns = 0;
    if (!absl::SimpleHexAtoi(subject.substr(kEventsPrefix.size()), &ns) ||
        ns != batch.namespace_id()) {
      return Malformed(
          Invalid("namespace_id", absl::StrCat("does not match the subject '", subject, "'")));
    }
  }
  // Validate everything before applying anything.
  struct Decoded {
    bool stored;
    Tier tier;
    std::vector<BlockKey> keys;
  };
  std::vector<Decoded> decoded;
  decoded.reserve(batch.events_size());
  for (int i = 0; i < batch.events_size(); ++i) {
    const v1::CacheEvent& ev = batch.events(i);
    const std::string field = absl::StrCat("events[", i, "]");
    Decoded d;
    if (ev.has_stored()) {
      d.stored = true;
      if (!ValidTier(ev.stored().tier()))
        return Malformed(Invalid(field + ".stored.tier", "invalid"));
      d.tier = static_cast<Tier>(ev.stored().tier());
      absl::StatusOr<std::vector<BlockKey>> k = Keys(ev.stored().keys(), field + ".stored.keys");
      if (!k.ok()) return Malformed(k.status());
      d.keys = std::move(*k);
    } else if (ev.has_removed()) {
      d.stored = false;
      if (!ValidTier(ev.removed().tier())) {
        return Malformed(Invalid(field + ".removed.tier", "invalid"));
      }
      d.tier = static_cast<Tier>(ev.removed().tier());
      absl::StatusOr<std::vector<BlockKey>> k = Keys(ev.removed().keys(), field + ".removed.keys");
      if (!k.ok()) return Malformed(k.status());
      d.keys = std::move(*k);
    } else {
      return Malformed(Invalid(field, "neither stored nor removed"));
    }
    decoded.push_back(std::move(d));
  }
  absl::StatusOr<uint32_t> node = index_->NodeIndex(batch.node_id(), NodeSource::kKvtier);
  if (!node.ok()) return Malformed(node.status());
  switch (index_->BeginBatch(*node, batch.incarnation(), batch.sequence())) {
    case BatchOrder::kDuplicate:
      duplicates_.fetch_add(1, std::memory_order_relaxed);
      return absl::OkStatus();
    case BatchOrder::kGap:
      gaps_.fetch_add(1, std::memory_order_relaxed);
      break;
    case BatchOrder::kNext:
      break;
  }
  uint64_t keys = 0;
  for (const Decoded& d : decoded) {
    if (d.stored) {
      index_->Store(*node, batch.namespace_id(), d.keys, d.tier);
    } else {
      index_->Remove(*node, batch.namespace_id(), d.keys, d.tier);
    }
    keys += d.keys.size();
  }
  batches_.fetch_add(1, std::memory_order_relaxed);
  events_.fetch_add(decoded.size(), std::memory_order_relaxed);
  keys_.fetch_add(keys, std::memory_order_relaxed);
  return absl::OkStatus();
}

absl::Status EventIngest::ApplyHeartbeat(absl::string_view subject, absl::string_view data,
                                         absl::Time now) {
  v1::NodeHeartbeat hb;
  if (!hb.ParseFromArray(data.data(), static_cast<int>(data.size()))) {
    return Malformed(Invalid("heartbeat", "not a kvtier.v1.NodeHeartbeat"));
  }
  if (absl::Status s = ValidateNodeId(hb.node_id(), "heartbeat.node_id"); !s.ok()) {
    return Malformed(s);
  }
  if (absl::StartsWith(subject, kNodesPrefix) &&
      subject.substr(kNodesPrefix.size()) != hb.node_id()) {
    return Malformed(Invalid("heartbeat.node_id",
                             absl::StrCat("'", hb.node_id(), "' does not match the subject")));
  }
  if (hb.incarnation() == 0) return Malformed(Invalid("heartbeat.incarnation", "must not be 0"));
  if (hb.grpc_address().size() > kMaxAddressBytes) {
    return Malformed(Invalid("heartbeat.grpc_address",
                             absl::StrCat("longer than ", kMaxAddressBytes, " characters")));
  }
  if (hb.ucx_address().size() > kMaxAddressBytes) {
    return Malformed(Invalid("heartbeat.ucx_address",
                             absl::StrCat("longer than ", kMaxAddressBytes, " characters")));
  }
  NodeAnnouncement a;
  a.node_id = hb.node_id();
  a.incarnation = hb.incarnation();
  a.grpc_address = hb.grpc_address();
  a.ucx_address = hb.ucx_address();
  a.interval = absl::Milliseconds(hb.interval_ms());
  a.leaving = hb.leaving();
  absl::StatusOr<uint32_t> node = index_->Heartbeat(a, now);
  if (!node.ok()) return Malformed(node.status());
  heartbeats_.fetch_add(1, std::memory_order_relaxed);
  return absl::OkStatus();
}

absl::Status EventIngest::ApplyVllmBatch(uint32_t node, uint64_t vllm_namespace_id,
                                         absl::string_view payload) {
  absl::StatusOr<std::vector<VllmEvent>> events = DecodeVllm(payload, vllm_namespace_id);
  if (!events.ok()) return Malformed(events.status());
  uint64_t keys = 0;
  for (const VllmEvent& e : *events) {
    switch (e.kind) {
      case VllmEvent::kStored:
        index_->Store(node, vllm_namespace_id, e.keys, e.tier);
        break;
      case VllmEvent::kRemoved:
        index_->Remove(node, vllm_namespace_id, e.keys, e.tier);
        break;
      case VllmEvent::kCleared:
        index_->ClearNode(node);
        vllm_cleared_.fetch_add(1, std::memory_order_relaxed);
        break;
    }
    keys += e.keys.size();
  }
  vllm_batches_.fetch_add(1, std::memory_order_relaxed);
  events_.fetch_add(events->size(), std::memory_order_relaxed);
  keys_.fetch_add(keys, std::memory_order_relaxed);
  return absl::OkStatus();
}

uint64_t EventIngest::ApplyVllmRestart(uint32_t node) {
  vllm_restarts_.fetch_add(1, std::memory_order_relaxed);
  return index_->ClearNode(node);
}

VllmSequence::Step VllmSequence::Next(uint64_t sequence) {
  Step step;
  if (seen_ && sequence <= last_) {
    step.restarted = true;
  } else if (seen_ && sequence > last_ + 1) {
    step.missed = sequence - last_ - 1;
  }
  seen_ = true;
  last_ = sequence;
  return step;
}

IngestCounters EventIngest::Counters() const {
  IngestCounters c;
  c.batches = batches_.load(std::memory_order_relaxed);
  c.events = events_.load(std::memory_order_relaxed);
  c.keys = keys_.load(std::memory_order_relaxed);
  c.malformed = malformed_.load(std::memory_order_relaxed);
  c.duplicates = duplicates_.load(std::memory_order_relaxed);
  c.gaps = gaps_.load(std::memory_order_relaxed);
  c.heartbeats = heartbeats_.load(std::memory_order_relaxed);
  c.vllm_batches = vllm_batches_.load(std::memory_order_relaxed);
  c.vllm_cleared = vllm_cleared_.load(std::memory_order_relaxed);
  c.vllm_restarts = vllm_restarts_.load(std::memory_order_relaxed);
  return c;
}

}  // namespace kvtier::index
