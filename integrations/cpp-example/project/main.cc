// A tiny inference server built on an installed kvtier (find_package(kvtier)).
//
// It serves two requests that share a long system prompt. The "model"
// computes each token's KV (every layer, K and V) from the token's whole
// prefix. After request 1's prefill the server saves its KV, chunk by chunk,
// into the embedded cache; for request 2 it looks the prompt up, loads the
// cached chunks instead of computing them, and computes only the rest. It
// checks that the reused KV equals what the model would have computed and
// prints how much of the prompt was reused. Exits non-zero on any mismatch.
#include <kvtier/cache.h>
#include <kvtier/namespace.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <vector>

namespace {

constexpr uint32_t kLayers = 4;
constexpr uint32_t kHeads = 2;
constexpr uint32_t kHeadSize = 16;
constexpr uint32_t kBlock = 16;
constexpr uint32_t kChunk = 64;
constexpr size_t kTokenFloats = kHeads * kHeadSize;  // one K or V row

// The engine's KV of one request: [layer][kv][token][head][dim] floats.
struct RequestKv {
  explicit RequestKv(size_t tokens) : tokens(tokens), data(kLayers * 2 * tokens * kTokenFloats) {}
  float* Row(uint32_t layer, uint32_t kv, size_t token) {
    return &data[((layer * 2 + kv) * tokens + token) * kTokenFloats];
  }
  size_t tokens;
  std::vector<float> data;
};

// The model: KV of `token` depends on every token before it.
void ComputeKv(const std::vector<kvtier::TokenId>& prompt, size_t begin, size_t end,
               RequestKv* kv) {
  uint64_t h = 1469598103934665603ull;
  for (size_t t = 0; t < end; ++t) {
    h = (h ^ prompt[t]) * 1099511628211ull;
    if (t < begin) continue;
    for (uint32_t l = 0; l < kLayers; ++l) {
      for (uint32_t k = 0; k < 2; ++k) {
        float* row = kv->Row(l, k, t);
        for (size_t i = 0; i < kTokenFloats; ++i) {
          row[i] = static_cast<float>(std::sin(static_cast<double>(h % 100003) + i + 7 * l + k));
        }
      }
    }
  }
}

// Chunk payload in kvtier's layout: for each layer, for K then V,
// [tokens][heads][head_size].
void ToPayload(RequestKv& kv, const kvtier::ChunkRef& c, std::vector<std::byte>* out) {
  const size_t row_bytes = kTokenFloats * sizeof(float);
  std::byte* p = out->data();
  for (uint32_t l = 0; l < kLayers; ++l) {
    for (uint32_t k = 0; k < 2; ++k) {
      std::memcpy(p, kv.Row(l, k, c.first_token), c.num_tokens * row_bytes);
      p += c.num_tokens * row_bytes;
    }
  }
}

void FromPayload(const std::vector<std::byte>& in, const kvtier::ChunkRef& c, RequestKv* kv) {
  const size_t row_bytes = kTokenFloats * sizeof(float);
  const std::byte* p = in.data();
  for (uint32_t l = 0; l < kLayers; ++l) {
    for (uint32_t k = 0; k < 2; ++k) {
      std::memcpy(kv->Row(l, k, c.first_token), p, c.num_tokens * row_bytes);
      p += c.num_tokens * row_bytes;
    }
  }
}

}  // namespace

int main() {
  kvtier::NamespaceOptions nso;
  nso.model_id = "example/tiny-llm";
  nso.layout = kvtier::KvLayout{kLayers, kHeads, kHeadSize, 2, kBlock, kvtier::DType::kFloat32};
  nso.tokens_per_chunk = kChunk;
  auto ns = kvtier::Namespace::Create(nso);
  kvtier::CacheOptions co;
  co.dram_capacity_bytes = 64ull << 20;
  co.huge_pages = false;
  auto cache = kvtier::Cache::Create(co);
  if (!ns.ok() || !cache.ok()) {
    std::fprintf(stderr, "setup failed: %s %s\n", ns.status().ToString().c_str(),
                 cache.status().ToString().c_str());
    return 1;
  }
  std::vector<kvtier::TokenId> system_prompt(300);
  for (size_t i = 0; i < system_prompt.size(); ++i) system_prompt[i] = 1000 + i * 7 % 311;
  std::vector<kvtier::TokenId> req1 = system_prompt, req2 = system_prompt;
  for (kvtier::TokenId t : {5, 6, 7, 8}) req1.push_back(t);
  for (kvtier::TokenId t : {9, 10, 11}) req2.push_back(t);
  std::vector<std::byte> payload(ns->FullChunkPayloadBytes());

  // Request 1: full prefill, then save every whole chunk of the prompt.
  RequestKv kv1(req1.size());
  ComputeKv(req1, 0, req1.size(), &kv1);
  auto chunks1 = ns->Chunks(req1);
  for (const kvtier::ChunkRef& c : *chunks1) {
    ToPayload(kv1, c, &payload);
    if (absl::Status s = (*cache)->Save(*ns, c, payload); !s.ok()) {
      std::fprintf(stderr, "save: %s\n", s.ToString().c_str());
      return 1;
    }
  }
  std::printf("request 1: computed %zu tokens, saved %zu chunks\n", req1.size(), chunks1->size());

  // Request 2: look up whole chunks of all but the last prompt token, load
  // them, compute the rest.
  std::vector<kvtier::TokenId> lookup(req2.begin(), req2.end() - 1);
  auto chunks2 = ns->Chunks(lookup);
  auto hit = (*cache)->Lookup(*ns, kvtier::Namespace::Keys(*chunks2));
  if (!hit.ok()) {
    std::fprintf(stderr, "lookup: %s\n", hit.status().ToString().c_str());
    return 1;
  }
  RequestKv kv2(req2.size());
  size_t reused = 0;
  for (size_t i = 0; i < hit->matched; ++i) {
    const kvtier::ChunkRef& c = (*chunks2)[i];
    auto n = (*cache)->Load(*ns, c.key, absl::MakeSpan(payload));
    if (!n.ok()) break;  // gone since the lookup: compute from here
    FromPayload(payload, c, &kv2);
    reused = c.first_token + c.num_tokens;
  }
  ComputeKv(req2, reused, req2.size(), &kv2);

  RequestKv expect(req2.size());
  ComputeKv(req2, 0, req2.size(), &expect);
  if (reused == 0 || expect.data != kv2.data) {
    std::fprintf(stderr, "request 2: reused KV differs from a full prefill\n");
    return 1;
  }
  std::printf("request 2: reused %zu of %zu prompt tokens from kvtier, computed %zu\n", reused,
              req2.size(), req2.size() - reused);
  return 0;
}
