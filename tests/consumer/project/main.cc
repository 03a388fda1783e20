// Saves one request's KV through the installed kvtier and reuses it for a
// second request with the same prefix. Exits non-zero on any mismatch.
#include <kvtier/cache.h>
#include <kvtier/namespace.h>

#include <cstdio>
#include <vector>

int main() {
  kvtier::NamespaceOptions nso;
  nso.model_id = "consumer/model";
  nso.layout = kvtier::KvLayout{2, 2, 64, 2, 16, kvtier::DType::kBFloat16};
  nso.tokens_per_chunk = 64;
  auto ns = kvtier::Namespace::Create(nso);
  kvtier::CacheOptions co;
  co.dram_capacity_bytes = 64ull << 20;
  auto cache = kvtier::Cache::Create(co);
  if (!ns.ok() || !cache.ok()) {
    std::fprintf(stderr, "setup failed\n");
    return 1;
  }
  std::vector<kvtier::TokenId> prompt(64 * 4);
  for (size_t i = 0; i < prompt.size(); ++i) prompt[i] = static_cast<kvtier::TokenId>(i);
  auto chunks = ns->Chunks(prompt);
  for (const auto& c : *chunks) {
    std::vector<std::byte> kv(ns->PayloadBytes(c.num_tokens), std::byte(c.first_token & 0xFF));
    if (!(*cache)->Save(*ns, c, kv).ok()) return 1;
  }
  auto hit = (*cache)->Lookup(*ns, kvtier::Namespace::Keys(*chunks));
  if (!hit.ok() || hit->matched != chunks->size()) return 1;
  std::vector<std::byte> out(ns->FullChunkPayloadBytes());
  for (const auto& c : *chunks) {
    auto n = (*cache)->Load(*ns, c.key, absl::MakeSpan(out));
    if (!n.ok() || out[0] != std::byte(c.first_token & 0xFF)) return 1;
  }
  std::printf("consumer: reused %zu chunks through find_package(kvtier)\n", hit->matched);
  return 0;
}
