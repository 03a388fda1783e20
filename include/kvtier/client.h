// kvtier::Client: the kvtier::Cache interface served by kvtierd, the node
// daemon, and OpenCache, which lets an engine pick the embedded cache or the
// daemon with one configuration value.
//
//   kvtier::CacheConfig config;
//   config.mode = "daemon";                       // or "embedded"
//   config.daemon.socket_path = "/run/kvtier/kvtierd.sock";
//   config.daemon.token = token_from_secret_store;
//   auto cache = kvtier::OpenCache(config);       // StatusOr<unique_ptr<Cache>>
//
// Transport: gRPC over the daemon's Unix socket (or TCP, optionally TLS/mTLS)
// for control; on the Unix socket, chunk bytes move through the daemon's DRAM
// arena, which the client maps (shared memory, see docs/daemon.md): Save
// reserves slots, copies the payload into them and commits; Load pins
// chunks, copies them out and releases; Pin hands out a view of the arena
// itself. Bulk bytes then never cross gRPC. When the arena cannot be mapped
// (TCP, a tenant without shared_memory, or options.shared_memory = false)
// bytes stream over gRPC in messages of at most max_message_bytes.
//
// Errors are the codes of cache.h plus Unavailable while the daemon is down
// or restarting (the client reconnects by itself; retry), PermissionDenied
// for a token or namespace the daemon refuses, and Unauthenticated when the
// daemon needs a token and none was given.
//
// Thread-safety: every method may be called from any number of threads. For
// parallel bulk transfers use one Client per thread: each has its own
// connection.
#ifndef KVTIER_INCLUDE_KVTIER_CLIENT_H_
#define KVTIER_INCLUDE_KVTIER_CLIENT_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "kvtier/cache.h"

namespace kvtier {

struct ClientOptions {
  // kvtierd's Unix socket. Used unless `address` is set.
  std::string socket_path;
  // "host:port" of kvtierd's TCP listener, instead of the Unix socket.
  std::string address;
  // Bearer token; empty for a daemon without tokens (open mode).
  std::string token;
  // Or a file holding it (a mounted Secret): its first token (first
  // non-blank line) is sent, and it
  // is read again every `token_reload_ms`, so a token replaced while the
  // engine runs takes effect without a restart. A read that fails keeps the
  // last token. Create fails when the file cannot be read at first.
  std::string token_file;
  uint32_t token_reload_ms = 10000;
  // Map the daemon's arena and move bytes through it (Unix socket only).
  bool shared_memory = true;
  // Populate the arena mapping's page tables up front (MAP_POPULATE), so
  // the first copy into each page does not fault. Costs the arena's size in
  // page-table set-up at connect time.
  bool prefault_arena = false;
  // TLS (TCP only): PEM roots that verify the daemon; setting it enables TLS.
  std::string tls_ca_file;
  // mTLS: the client's PEM certificate chain and private key.
  std::string tls_cert_file;
  std::string tls_key_file;
  // Name expected in the daemon's certificate when it differs from the host.
  std::string tls_server_name;
  // Deadline of each RPC, milliseconds.
  uint32_t rpc_timeout_ms = 10000;
  // Payload bytes per streamed gRPC message (the daemon's
  // limits.max_message_bytes must allow it).
  uint64_t max_message_bytes = 1ull << 20;

  absl::Status Validate() const;
};

// How to open a cache: in this process, or through kvtierd.
struct CacheConfig {
  std::string mode = "embedded";  // "embedded" or "daemon"
  CacheOptions embedded;          // mode "embedded"
  ClientOptions daemon;           // mode "daemon"

  absl::Status Validate() const;
};

// Opens the cache `config` names. InvalidArgument for a bad config;
// Unavailable when the daemon does not answer.
absl::StatusOr<std::unique_ptr<Cache>> OpenCache(const CacheConfig& config);

struct DaemonHealth {
  bool serving = false;  // false while the daemon drains
  std::string version;
  std::string shm_socket;  // empty when the daemon has shared memory off
  uint64_t arena_id = 0;
  uint64_t arena_bytes = 0;
};

struct TokenLookup {
  LookupResult result;
  std::vector<ChunkRef> chunks;  // every chunk of the tokens, cached or not
};

// The daemon's answer to a Prefetch RPC (Client::DaemonPrefetch).
struct DaemonPrefetchResult {
  size_t matched = 0;           // leading chunks cached in any tier
  size_t resident_in_dram = 0;  // of those, already in DRAM
  size_t scheduled = 0;         // promotions started
};

class Client final : public Cache {
 public:
  // Connects (lazily: an absent daemon is not an error here) and, with
  // shared memory, maps the arena on first use.
  static absl::StatusOr<std::unique_ptr<Client>> Create(const ClientOptions& options);
  ~Client() override;

  // Cache.
  absl::StatusOr<LookupResult> Lookup(const Namespace& ns,
                                      absl::Span<const BlockKey> chain) override;
  absl::Status Save(const Namespace& ns, const ChunkRef& chunk,
                    absl::Span<const std::byte> payload) override;
  absl::StatusOr<size_t> Load(const Namespace& ns, const BlockKey& key,
                              absl::Span<std::byte> out) override;
  // With shared memory the pin is a view of the daemon's arena (zero copy);
  // otherwise the chunk is copied into memory the pin owns.
  absl::StatusOr<ChunkPin> Pin(const Namespace& ns, const BlockKey& key) override;
  // Evicts `key` and its descendants; needs the admin token. NotFound when
  // nothing was removed.
  absl::StatusOr<size_t> Remove(const Namespace& ns, const BlockKey& key) override;
  // The daemon's statistics; empty when it cannot be reached.
  CacheStats Stats() const override;

  // Batches: one round trip (or one stream) for many chunks of a namespace.
  // The outer status is the request's; the inner ones are per chunk.
  // REQUIRES: chunks.size() == payloads.size(), keys.size() == outs.size().
  absl::StatusOr<std::vector<absl::Status>> SaveBatch(
      const Namespace& ns, absl::Span<const ChunkRef> chunks,
      absl::Span<const absl::Span<const std::byte>> payloads);
  absl::StatusOr<std::vector<absl::StatusOr<size_t>>> LoadBatch(
      const Namespace& ns, absl::Span<const BlockKey> keys,
      absl::Span<const absl::Span<std::byte>> outs);

  // Lookup by token ids: the daemon hashes them into chunk keys.
  absl::StatusOr<TokenLookup> LookupTokens(const Namespace& ns, absl::Span<const TokenId> tokens,
                                           bool include_partial = false);
  // The daemon's Prefetch RPC: what of `chain` is cached, and in DRAM.
  absl::StatusOr<DaemonPrefetchResult> DaemonPrefetch(const Namespace& ns,
                                                      absl::Span<const BlockKey> chain);
  // Admin: removes `keys` and their descendants, or every chunk of the
  // namespace when `keys` is empty. Returns the number removed.
  absl::StatusOr<uint64_t> Evict(const Namespace& ns, absl::Span<const BlockKey> keys = {});
  absl::StatusOr<uint64_t> EvictNamespaceId(uint64_t namespace_id);
  // Full statistics, or the reason they could not be had.
  absl::StatusOr<CacheStats> FetchStats() const;
  absl::StatusOr<DaemonHealth> Health() const;
  // Admin: the daemon's effective configuration (YAML, secrets redacted).
  absl::StatusOr<std::string> DaemonConfigYaml() const;

  // Whether bytes move through the mapped arena (after the first transfer).
  bool using_shared_memory() const;

  class Impl;

 private:
  explicit Client(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace kvtier

#endif  // KVTIER_INCLUDE_KVTIER_CLIENT_H_
