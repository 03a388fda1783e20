// Saves one request's KV through the installed kvtier and reuses it for a
// second request with the same prefix; then opens the daemon client through
// kvtier::OpenCache against a socket no daemon serves and expects a clear
// Unavailable naming kvtierd. Exits non-zero on any mismatch.
#include <kvtier/cache.h>
#include <kvtier/client.h>
#include <kvtier/namespace.h>
#include <unistd.h>

#include <cstdio>
#include <string>
#include <vector>

// OpenCache with mode "daemon" and no daemon behind the socket.
static int CheckDaemonClient() {
  kvtier::CacheConfig config;
  config.mode = "daemon";
  config.daemon.socket_path =
      "/tmp/kvtier-consumer-" + std::to_string(getpid()) + "-absent/kvtierd.sock";
  config.daemon.rpc_timeout_ms = 3000;
  auto cache = kvtier::OpenCache(config);
  if (cache.ok() || !absl::IsUnavailable(cache.status()) ||
      cache.status().message().find("kvtierd") == absl::string_view::npos) {
    std::fprintf(stderr, "consumer: OpenCache(daemon) without a daemon gave: %s\n",
                 cache.status().ToString().c_str());
    return 1;
  }
  config.mode = "sideways";
  if (!absl::IsInvalidArgument(kvtier::OpenCache(config).status())) return 1;
  std::printf("consumer: OpenCache(daemon) without a daemon: %s\n",
              cache.status().ToString().c_str());
  return 0;
}

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
  return CheckDaemonClient();
}
