// kvtierd's configuration: defaults, a YAML file, KVTIER_* environment
// variables and command-line flags, applied in that order (later wins), then
// validated as a whole. docs/daemon.md lists every key.
//
// Every error names the key it is about, as a YAML path ("dram.capacity",
// "auth.tenants[1].token") or as the flag / variable that set it.
//
// Thread-safety: DaemonConfig is a value; the functions are pure apart from
// reading the files they are given (config file, token files).
#ifndef KVTIER_SRC_SERVER_CONFIG_H_
#define KVTIER_SRC_SERVER_CONFIG_H_

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kvtier/cache.h"
#include "src/index/nats_bus.h"
#include "src/server/grpc_tls.h"

namespace kvtier::server {

// One tenant: a bearer token and the namespaces it may use. A namespace is
// allowed when its cache_salt is listed in cache_salts (or cache_salts is
// empty) and its model_id is listed in model_ids (or model_ids is empty).
struct TenantConfig {
  std::string name;                      // shown in logs; unique
  std::string token;                     // the bearer token (from `token` or `token_file`)
  std::vector<std::string> cache_salts;  // allowed cache salts ("" = the shared space)
  std::vector<std::string> model_ids;    // allowed model ids
  bool shared_memory = false;            // may map the DRAM arena (trusted local engine)
};

// The `cluster:` section: events to the cluster index over NATS, and the
// index replicas to ask for remote holders. No nats_url = single node.
struct ClusterConfig {
  std::string nats_url;                   // nats://host:port (comma-separated); empty = off
  uint32_t publish_batch = 1024;          // chunk events per published batch
  uint32_t publish_interval_ms = 20;      // longest wait before queued events are published
  uint32_t heartbeat_interval_ms = 1000;  // node heartbeat period
  uint64_t max_queued_events = 1u << 20;  // events waiting to be published; more are dropped
  std::string index_address;   // kvtier-index replicas (host:port, comma-separated); empty = none
  std::string advertise_grpc;  // host:port peers reach this node's gRPC at; empty = listen.tcp
  std::string advertise_ucx;   // the node's UCX listener as peers reach it; empty = none
  uint32_t stream_max_age_seconds = 3600;  // replay window of the stream when kvtierd creates it
  uint64_t stream_max_bytes = 1ull << 30;  // bytes the stream keeps when kvtierd creates it
  // NATS authentication and TLS (the server's `authorization` / `tls`).
  std::string nats_token;      // bearer token; "" = none
  std::string nats_user;       // user name, with nats_password; "" = none
  std::string nats_password;   // that user's password
  std::string nats_ca_file;    // PEM CA of the NATS server's certificate; set = TLS
  std::string nats_cert_file;  // PEM client certificate (with nats_key_file) for NATS mTLS
  std::string nats_key_file;   // its private key
  std::string nats_tls_name;   // name in the server's certificate; "" = the URL's host
  // kvtier-index's gRPC API (its `api_token` and `tls`).
  std::string index_token;     // bearer token the replicas require; "" = none
  std::string index_ca_file;   // PEM CA of the replicas' certificates; set = TLS (with
                               // tls.cert_file / tls.key_file as client certificate)
  std::string index_tls_name;  // name in the replicas' certificates; "" = the address

  bool enabled() const { return !nats_url.empty(); }
  // The NATS connection these settings describe.
  index::NatsBusOptions NatsOptions() const;
};

// Node-to-node transfer over UCX (docs/transfer.md).
struct UcxConfig {
  bool enabled = false;                 // serve Peer and read other nodes' chunks
  uint32_t progress_threads = 1;        // UCX workers, each with a progress thread (1..64)
  uint32_t lease_seconds = 10;          // life of a chunk pinned for another node's read
  uint32_t lookup_timeout_ms = 200;     // how long Lookup waits for the peers' answers
  uint32_t transfer_timeout_ms = 5000;  // deadline of one remote chunk read
  std::string peer_token;               // shared secret of the Peer service; empty = none
  uint32_t max_batch_chunks = 64;       // chunks one pin request covers and read together (1..4096)
  int64_t busy_poll_us = 50;            // progress poll with gets in flight, us (-1 = never sleep)
  uint32_t idle_peer_seconds = 60;      // a holder's endpoint unused this long is closed (1..86400)
  int32_t copy_threads = -1;  // helpers copying runs out of mapped arenas (-1 = auto, 0..64)
  // With TLS on (tls.cert_file), calls to peers use TLS too, presenting
  // tls.cert_file / tls.key_file as the client certificate and verifying
  // peers against this CA (default: tls.client_ca_file; neither: the
  // system's roots).
  std::string peer_ca_file;
  std::string peer_tls_name;  // name to check in peers' certificates; "" = the address
};

struct DaemonConfig {
  // Directory for the daemon's state; the default Unix socket lives in it
  // when set. Created at start when missing.
  std::string data_dir;
  // This node's id in the cluster (events, heartbeats, UCX peers). Default:
  // the host name.
  std::string node_id;
  ClusterConfig cluster;
  // Listeners.
  std::string unix_socket;           // gRPC Unix socket path (default: see DefaultSocketPath)
  uint32_t unix_socket_mode = 0660;  // permission bits of the socket files
  bool shared_memory = true;         // serve the arena fd on `<unix_socket>.shm`
  std::string tcp;  // "host:port" for gRPC over TCP (":port" = loopback); empty = off
  bool allow_insecure_tcp = false;      // allow TCP without TLS on a non-loopback address
  std::string http = "127.0.0.1:9464";  // "host:port" of /metrics, /healthz, /readyz; empty = off
  TlsConfig tls;
  // The cache: the DRAM tier (T1) and, in dram.nvme, the NVMe tier (T2).
  // dram.dram_capacity_bytes 0 means the default: a quarter of RAM, at most
  // 16 GiB. dram.nvme.path empty (after LoadConfig) means no NVMe tier.
  CacheOptions dram;
  // The `nvme:` section. nvme_enabled false turns the tier off; with it on,
  // an empty dram.nvme.path means DefaultNvmePath() and a zero
  // dram.nvme.capacity_bytes means DefaultNvmeBytes() (both filled by
  // LoadConfig).
  bool nvme_enabled = true;
  // Set by LoadConfig when it chose the NVMe folder: kvtierd creates it at
  // start. A folder named in the configuration must exist.
  bool nvme_create_folder = false;
  // Why LoadConfig turned the default NVMe tier off (logged at start).
  std::string nvme_note;
  // Security. No tokens at all = open mode: Unix socket only.
  std::string admin_token;  // allows Evict and Config, and every namespace
  std::vector<TenantConfig> tenants;
  // Request limits.
  uint32_t max_keys_per_request = 4096;           // keys (or chunks) in one request
  uint32_t max_tokens_per_request = 1u << 20;     // token ids in one Lookup
  uint64_t max_message_bytes = 1ull << 20;        // payload bytes in one streamed message
  uint64_t max_grpc_message_bytes = 16ull << 20;  // the transport's cap on one message
  uint32_t lease_seconds = 30;  // life of an uncommitted reservation or unreleased pin
  uint32_t max_leases = 65536;  // reservations and pins held at once
  uint32_t max_leases_per_principal = 32768;  // of those, held by one token's callers
                                              // (applies when tenants are configured)
  // Shutdown: seconds SIGTERM waits for in-flight RPCs before cancelling them.
  uint32_t drain_seconds = 10;
  std::string log_level = "info";  // debug | info | warn | error
  // Status page (/ and /api/v1/status on the HTTP listener).
  std::string status_token;  // bearer token for them; required when listen.http is not loopback
  double tokens_per_gpu_second = 10000;  // prefill tokens one GPU computes per second ("saved")
  // "host:port" of other kvtierds' gRPC TCP listeners, asked for remote chunks.
  std::vector<std::string> peers;
  UcxConfig ucx;

  // The default Unix socket: <data_dir>/kvtierd.sock when data_dir is set,
  // else $XDG_RUNTIME_DIR/kvtier/kvtierd.sock, else /tmp/kvtier-<uid>/kvtierd.sock.
  std::string DefaultSocketPath(const std::map<std::string, std::string>& env) const;
  // The side channel that hands out the arena fd.
  std::string ShmSocketPath() const { return unix_socket + ".shm"; }
  bool open_mode() const { return admin_token.empty() && tenants.empty(); }

  // The token settings read from files, setting -> path ("auth.admin_token",
  // "auth.tenants[0].token", "listen.status_token", "cluster.index_token",
  // "ucx.peer_token"): kvtierd reads them again every tls.reload_seconds.
  std::map<std::string, std::string> token_files;

  // Checks the whole configuration; InvalidArgument naming the key.
  absl::Status Validate() const;
  // The part of Validate that checks the tokens: each token of the admin's,
  // a tenant's or the peer token 16 characters or more, none listed twice
  // or given to two principals, tenants named once.
  absl::Status ValidateTokens() const;
  // The effective configuration as YAML with every token replaced by "<redacted>".
  std::string ToRedactedYaml() const;
};

// The built-in default: a quarter of physical memory, at most 16 GiB, at
// least 64 MiB; rounded down to whole 64 MiB slabs.
uint64_t DefaultDramBytes();

// The default NVMe folder: <data_dir>/nvme when data_dir is set, else
// /var/tmp/kvtier-<uid>/nvme (a disk-backed folder that survives reboots).
std::string DefaultNvmePath(const std::string& data_dir);

// The default NVMe volume size for a folder: a quarter of the free space of
// the file system that holds it (or would hold it: the nearest existing
// parent), at most 16 GiB, rounded down to 64 MiB. 0 when that is under
// 256 MiB (LoadConfig then leaves the NVMe tier off). A volume an earlier
// run left in the folder counts as free space, so a restart computes the
// size it was created with and reopens it.
uint64_t DefaultNvmeBytes(const std::string& folder);
// The rule above on numbers: free bytes of the file system and the size of
// an existing volume (0 when none).
uint64_t DefaultNvmeBytesFor(uint64_t free_bytes, uint64_t existing_volume_bytes);

// Parses "4096", "64KiB", "1MiB", "16GiB", "2G", "1.5GiB". InvalidArgument
// naming `field` otherwise.
absl::StatusOr<uint64_t> ParseByteSize(const std::string& text, const std::string& field);

// A secret from a file (at most 1 MiB), surrounding whitespace removed.
// InvalidArgument naming `field` when it cannot be read or holds nothing.
absl::StatusOr<std::string> ReadTokenFile(const std::string& path, const std::string& field);

// Applies a YAML document to `config`. Unknown keys are errors (they are
// usually typos). Token files are read here.
absl::Status ApplyYaml(const std::string& yaml_text, DaemonConfig& config);
absl::Status ApplyYamlFile(const std::string& path, DaemonConfig& config);

// Applies KVTIER_* variables from `env` (name -> value): KVTIER_DATA_DIR,
// KVTIER_SOCKET, KVTIER_TCP, KVTIER_HTTP, KVTIER_DRAM, KVTIER_LOG_LEVEL,
// KVTIER_ADMIN_TOKEN, KVTIER_SHARED_MEMORY, KVTIER_NVME (the NVMe folder, or
// "off"), KVTIER_NVME_CAPACITY, KVTIER_STATUS_TOKEN, KVTIER_NODE_ID,
// KVTIER_NATS_URL. (KVTIER_CONFIG names the file and is read by LoadConfig.)
absl::Status ApplyEnv(const std::map<std::string, std::string>& env, DaemonConfig& config);

// Parsed command line of kvtierd.
struct CommandLine {
  std::string config_file;                      // --config
  bool check_config = false;                    // --check-config: validate, print, exit
  bool help = false;                            // --help
  bool version = false;                         // --version
  std::map<std::string, std::string> settings;  // the other flags, by name
};

// Parses argv (without argv[0]). InvalidArgument naming an unknown flag or a
// flag without its value.
absl::StatusOr<CommandLine> ParseCommandLine(const std::vector<std::string>& args);
// Applies the setting flags of `cl` to `config`.
absl::Status ApplyFlags(const CommandLine& cl, DaemonConfig& config);
// Help text for the flags.
std::string FlagsHelp();

// Builds the configuration: defaults, then the file (cl.config_file, else
// $KVTIER_CONFIG when set), then `env`, then flags; fills defaults that
// depend on others (socket path, DRAM size) and validates.
absl::StatusOr<DaemonConfig> LoadConfig(const CommandLine& cl,
                                        const std::map<std::string, std::string>& env);

// The process environment as a map (KVTIER_* and XDG_RUNTIME_DIR only).
std::map<std::string, std::string> ProcessEnv();

}  // namespace kvtier::server

#endif  // KVTIER_SRC_SERVER_CONFIG_H_
