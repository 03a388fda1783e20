// The workload integration tests share: a small namespace, overlapping token
// chains, and chunk payloads that are a pure function of the chunk key (so
// any process can check any chunk byte for byte).
#ifndef KVTIER_TESTS_INTEGRATION_WORKLOAD_H_
#define KVTIER_TESTS_INTEGRATION_WORKLOAD_H_

#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "kvtier/cache.h"
#include "kvtier/namespace.h"

namespace kvtier::testing {

// 2 layers x K,V x 2 heads x 64 fp16 = 1 KiB per token; 64-token chunks of
// 64 KiB.
inline NamespaceOptions SmallNamespace(const std::string& salt = "") {
  NamespaceOptions o;
  o.model_id = "kvtier-test/small";
  o.model_revision = "1";
  o.layout = KvLayout{2, 2, 64, 2, 16, DType::kFloat16};
  o.tokens_per_chunk = 64;
  o.cache_salt = salt;
  return o;
}

// Fills `out` with bytes derived from `key` alone.
inline void KeyedBytes(const BlockKey& key, std::byte* out, size_t n) {
  uint64_t s = key.hi ^ (key.lo * 0x9E3779B97F4A7C15ull) ^ 0x2545F4914F6CDD1Dull;
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    s ^= s << 13;
    s ^= s >> 7;
    s ^= s << 17;
    std::memcpy(out + i, &s, 8);
  }
  for (; i < n; ++i) out[i] = static_cast<std::byte>(s >> (8 * (i % 8)));
}

// Tokens of chain `chain` for client `client`: the first `shared_chunks`
// chunks are the same for every client (overlap), the rest are the client's.
inline std::vector<TokenId> ChainTokens(int client, int chain, int chunks, int shared_chunks,
                                        uint32_t tokens_per_chunk) {
  std::vector<TokenId> t;
  std::mt19937 shared(1000 + chain % 3);
  std::mt19937 own(static_cast<uint32_t>(client * 7919 + chain));
  for (int c = 0; c < chunks; ++c) {
    for (uint32_t i = 0; i < tokens_per_chunk; ++i) {
      t.push_back(c < shared_chunks ? shared() % 50000 : own() % 50000);
    }
  }
  return t;
}

// Saves every chunk of `chunks` with its KeyedBytes payload.
inline absl::Status SaveKeyed(Cache& cache, const Namespace& ns,
                              const std::vector<ChunkRef>& chunks) {
  std::vector<std::byte> payload(ns.FullChunkPayloadBytes());
  for (const ChunkRef& c : chunks) {
    KeyedBytes(c.key, payload.data(), payload.size());
    if (absl::Status s = cache.Save(ns, c, payload); !s.ok()) return s;
  }
  return absl::OkStatus();
}

// Loads every chunk of `chunks` and compares it with its KeyedBytes payload:
// the Load's error, or DataLoss naming the first chunk that differs.
inline absl::Status CheckKeyedLoads(Cache& cache, const Namespace& ns,
                                    const std::vector<ChunkRef>& chunks) {
  std::vector<std::byte> want(ns.FullChunkPayloadBytes());
  std::vector<std::byte> got(want.size());
  for (const ChunkRef& c : chunks) {
    absl::StatusOr<size_t> n = cache.Load(ns, c.key, absl::MakeSpan(got));
    if (!n.ok()) return n.status();
    KeyedBytes(c.key, want.data(), want.size());
    if (*n != want.size() || got != want) {
      return absl::DataLossError("chunk " + c.key.ToHex() + " came back with other bytes");
    }
  }
  return absl::OkStatus();
}

}  // namespace kvtier::testing

#endif  // KVTIER_TESTS_INTEGRATION_WORKLOAD_H_
