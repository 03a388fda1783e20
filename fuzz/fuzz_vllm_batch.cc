// The decoder of vLLM's KV event batches (src/index/event_ingest.h: msgpack,
// what a vLLM endpoint publishes over ZMQ). Each input is applied after a
// batch that stores a known chain; a batch it refuses must be refused as
// InvalidArgument, counted as malformed, and leave what the index says of
// that chain exactly as it was (a batch is applied whole or not at all).
//
// Input: one batch's payload.
#define MSGPACK_NO_BOOST 1

#include <msgpack.hpp>
#include <string>
#include <vector>

#include "fuzz/fuzz_target.h"
#include "src/index/cluster_index.h"
#include "src/index/event_ingest.h"

namespace kvtier::fuzz {
namespace {

using Packer = msgpack::packer<msgpack::sbuffer>;

// [timestamp, [events...]], as vLLM's msgspec encodes a KVEventBatch.
template <typename Fn>
std::string Batch(uint32_t events, Fn fn) {
  msgpack::sbuffer buf;
  Packer pk(buf);
  pk.pack_array(2);
  pk.pack_double(1700000000.5);
  pk.pack_array(events);
  fn(pk);
  return std::string(buf.data(), buf.size());
}

const std::vector<int64_t> kChain = {101, 102, 103, 104};

struct State {
  std::unique_ptr<index::ClusterIndex> index;
  std::unique_ptr<index::EventIngest> ingest;
  uint32_t node = 0;
  uint64_t ns = index::VllmNamespaceId();
  std::vector<BlockKey> chain;
  std::string store;  // stores kChain on the CPU tier
};

State& Shared() {
  static State* s = [] {
    auto* st = new State();
    index::ClusterIndexOptions o;
    o.shards = 4;
    st->index = *index::ClusterIndex::Create(o);
    st->ingest = std::make_unique<index::EventIngest>(st->index.get());
    st->node = *st->index->NodeIndex("vllm-a", index::NodeSource::kVllm);
    for (int64_t h : kChain)
      st->chain.push_back(index::VllmKey(st->ns, index::VllmIntHashBytes(h)));
    st->store = Batch(1, [](Packer& pk) {
      pk.pack_array(7);
      pk.pack(std::string("BlockStored"));
      pk.pack(kChain);
      pk.pack_nil();
      pk.pack(std::vector<int>{1, 2, 3});
      pk.pack(16);
      pk.pack_nil();
      pk.pack(std::string("CPU"));
    });
    return st;
  }();
  return *s;
}

}  // namespace

std::vector<std::string> Seeds() {
  return {
      Batch(1,
            [](Packer& pk) {
              pk.pack_array(3);
              pk.pack(std::string("BlockRemoved"));
              pk.pack(kChain);
              pk.pack(std::string("CPU"));
            }),
      // Removes part of the chain, stores a branch off it (five fields, as
      // older vLLM sends), then clears everything.
      Batch(3,
            [](Packer& pk) {
              pk.pack_array(2);
              pk.pack(std::string("BlockRemoved"));
              pk.pack(std::vector<int64_t>{103, 104});
              pk.pack_array(5);
              pk.pack(std::string("BlockStored"));
              pk.pack(std::vector<int64_t>{-5, 6, 7});
              pk.pack(int64_t{102});
              pk.pack(std::vector<int>{9});
              pk.pack(512);
              pk.pack_array(1);
              pk.pack(std::string("AllBlocksCleared"));
            }),
      Batch(1,
            [](Packer& pk) {
              pk.pack_array(7);
              pk.pack(std::string("BlockStored"));
              pk.pack(std::vector<std::string>{std::string(32, 'h'), std::string(32, 'i')});
              pk.pack(std::string(32, 'p'));
              pk.pack(std::vector<int>{1, 2});
              pk.pack(16);
              pk.pack(7);
              pk.pack(std::string("GPU"));
            }),
  };
}

}  // namespace kvtier::fuzz

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  kvtier::fuzz::State& s = kvtier::fuzz::Shared();
  KVTIER_FUZZ_CHECK(s.ingest->ApplyVllmBatch(s.node, s.ns, s.store).ok());
  // Earlier inputs may have stored the chain on other tiers too: what the
  // index says now is the reference.
  const std::vector<kvtier::index::NodeMatchResult> before =
      s.index->Lookup(s.ns, s.chain, {}, absl::Now());
  KVTIER_FUZZ_CHECK(before.size() == 1 && before[0].matched == s.chain.size());
  const uint64_t malformed = s.ingest->Counters().malformed;
  const absl::Status st = s.ingest->ApplyVllmBatch(
      s.node, s.ns, absl::string_view(reinterpret_cast<const char*>(data), size));
  if (st.ok()) return 0;
  KVTIER_FUZZ_CHECK(absl::IsInvalidArgument(st));
  KVTIER_FUZZ_CHECK(s.ingest->Counters().malformed == malformed + 1);
  const std::vector<kvtier::index::NodeMatchResult> after =
      s.index->Lookup(s.ns, s.chain, {}, absl::Now());
  KVTIER_FUZZ_CHECK(after.size() == 1 && after[0].matched == before[0].matched);
  KVTIER_FUZZ_CHECK(after[0].tier_counts == before[0].tier_counts);
  return 0;
}
