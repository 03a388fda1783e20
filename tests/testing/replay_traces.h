// Request traces for replay tests: hand-written chains, and a seeded
// generated trace with prefix reuse.
#ifndef KVTIER_TESTS_TESTING_REPLAY_TRACES_H_
#define KVTIER_TESTS_TESTING_REPLAY_TRACES_H_

#include <cstdint>
#include <random>
#include <utility>
#include <vector>

#include "src/core/replay/trace_reader.h"

namespace kvtier::testing {

// One request per list of hash ids, each block a whole 512 tokens.
inline std::vector<replay::TraceRequest> Trace(std::vector<std::vector<uint64_t>> requests) {
  std::vector<replay::TraceRequest> out;
  for (auto& ids : requests) {
    replay::TraceRequest r;
    r.input_length = ids.size() * 512;
    r.hash_ids = std::move(ids);
    out.push_back(std::move(r));
  }
  return out;
}

// A prefix-chained trace: documents of 1..40 blocks asked about several
// times with short unique suffixes, in a seeded random order.
inline std::vector<replay::TraceRequest> GeneratedTrace(uint32_t requests, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<replay::TraceRequest> out;
  uint64_t next_id = 0;
  std::vector<std::vector<uint64_t>> docs;
  for (uint32_t i = 0; i < requests; ++i) {
    if (docs.empty() || rng() % 3 == 0) {
      std::vector<uint64_t> doc(1 + rng() % 40);
      for (uint64_t& id : doc) id = next_id++;
      docs.push_back(std::move(doc));
    }
    replay::TraceRequest r;
    r.hash_ids = docs[rng() % docs.size()];
    const uint64_t suffix = rng() % 3;
    for (uint64_t k = 0; k < suffix; ++k) r.hash_ids.push_back(next_id++);
    r.input_length = r.hash_ids.size() * 512 - rng() % 512;
    r.timestamp_ms = i;
    out.push_back(std::move(r));
  }
  return out;
}

}  // namespace kvtier::testing

#endif  // KVTIER_TESTS_TESTING_REPLAY_TRACES_H_
