#include "src/server/config.h"

#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <optional>
#include <set>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "src/common/status_macros.h"
#include "src/common/token_list.h"
#include "src/index/event_publisher.h"
#include "src/tiers/nvme/nvme_tier.h"
#include "yaml-cpp/yaml.h"

extern char** environ;

namespace kvtier::server {
namespace {

constexpr uint64_t kDefaultSlab = 64ull << 20;
constexpr uint64_t kMaxDefaultDram = 16ull << 30;
constexpr size_t kMaxSocketPath = 107;  // sizeof(sockaddr_un::sun_path) - 1
constexpr size_t kMinTokenLength = 16;

absl::Status Invalid(const std::string& field, const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat(field, ": ", what));
}

std::string Join(const std::string& prefix, const std::string& key) {
  return prefix.empty() ? key : absl::StrCat(prefix, ".", key);
}

absl::StatusOr<std::string> ReadSmallFile(const std::string& path, const std::string& field) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return Invalid(field, absl::StrCat("cannot read '", path, "'"));
  std::stringstream ss;
  ss << in.rdbuf();
  std::string text = ss.str();
  if (text.size() > (1 << 20)) return Invalid(field, absl::StrCat("'", path, "' is over 1 MiB"));
  return text;
}

}  // namespace

absl::StatusOr<std::string> ReadTokenFile(const std::string& path, const std::string& field) {
  KVTIER_ASSIGN_OR_RETURN(std::string text, ReadSmallFile(path, field));
  std::string token(absl::StripAsciiWhitespace(text));
  // An empty file would quietly turn the secret off.
  if (token.empty()) return Invalid(field, absl::StrCat("'", path, "' is empty"));
  return token;
}

namespace {

absl::StatusOr<bool> ParseBool(const std::string& text, const std::string& field) {
  std::string t = absl::AsciiStrToLower(text);
  if (t == "true" || t == "1" || t == "yes" || t == "on") return true;
  if (t == "false" || t == "0" || t == "no" || t == "off") return false;
  return Invalid(field, absl::StrCat("'", text, "' is not a boolean (true or false)"));
}

absl::StatusOr<uint32_t> ParseU32(const std::string& text, const std::string& field, uint32_t lo,
                                  uint32_t hi) {
  uint64_t v = 0;
  if (!absl::SimpleAtoi(text, &v)) {
    return Invalid(field, absl::StrCat("'", text, "' is not a non-negative integer"));
  }
  if (v < lo || v > hi) return Invalid(field, absl::StrCat(v, " is outside [", lo, ", ", hi, "]"));
  return static_cast<uint32_t>(v);
}

absl::StatusOr<uint32_t> ParseMode(const std::string& text, const std::string& field) {
  if (text.empty() || text.size() > 4 ||
      !std::all_of(text.begin(), text.end(), [](char c) { return c >= '0' && c <= '7'; })) {
    return Invalid(field, absl::StrCat("'", text, "' is not an octal mode such as \"0660\""));
  }
  return static_cast<uint32_t>(std::strtoul(text.c_str(), nullptr, 8));
}

// "host:port" with a numeric port in [0, 65535] (0: any free port);
// "[v6]:port" for IPv6.
absl::Status CheckHostPort(const std::string& text, const std::string& field) {
  const size_t colon = text.rfind(':');
  if (colon == std::string::npos || colon == 0) {
    return Invalid(field, absl::StrCat("'", text, "' is not host:port"));
  }
  uint32_t port = 0;
  if (!absl::SimpleAtoi(text.substr(colon + 1), &port) || port > 65535) {
    return Invalid(field, absl::StrCat("'", text, "': the port must be in [0, 65535]"));
  }
  return absl::OkStatus();
}

// ---- YAML -------------------------------------------------------------------

class Yaml {
 public:
  // Errors for keys of `node` outside `allowed`.
  static absl::Status CheckKeys(const YAML::Node& node, const std::string& path,
                                const std::set<std::string>& allowed) {
    if (!node.IsMap()) return Invalid(path.empty() ? "(top level)" : path, "must be a mapping");
    for (const auto& kv : node) {
      std::string key = kv.first.Scalar();
      if (!allowed.contains(key)) {
        return Invalid(Join(path, key),
                       absl::StrCat("unknown key (known: ", absl::StrJoin(allowed, ", "), ")"));
      }
    }
    return absl::OkStatus();
  }

  static absl::StatusOr<std::string> Scalar(const YAML::Node& n, const std::string& path) {
    if (!n.IsScalar()) return Invalid(path, "must be a single value");
    return n.Scalar();
  }

  static absl::StatusOr<std::vector<std::string>> StringList(const YAML::Node& n,
                                                             const std::string& path) {
    if (n.IsNull()) return std::vector<std::string>{};
    if (!n.IsSequence()) return Invalid(path, "must be a list");
    std::vector<std::string> out;
    for (size_t i = 0; i < n.size(); ++i) {
      KVTIER_ASSIGN_OR_RETURN(std::string v, Scalar(n[i], absl::StrCat(path, "[", i, "]")));
      out.push_back(std::move(v));
    }
    return out;
  }
};

// The `blob:` section (ApplySetting's share).
absl::Status ApplyBlobSetting(const std::string& name, const std::string& value,
                              const std::string& field, DaemonConfig& c) {
  BlobCacheOptions& b = c.dram.blob;
  const std::string key = name.substr(5);  // after "blob."
  auto u32 = [&](uint32_t* out, uint32_t lo, uint32_t hi) -> absl::Status {
    KVTIER_ASSIGN_OR_RETURN(*out, ParseU32(value, field, lo, hi));
    return absl::OkStatus();
  };
  auto bytes = [&](uint64_t* out) -> absl::Status {
    KVTIER_ASSIGN_OR_RETURN(*out, ParseByteSize(value, field));
    return absl::OkStatus();
  };
  auto secret = [&](std::string* out) -> absl::Status {
    KVTIER_ASSIGN_OR_RETURN(std::string text, ReadSmallFile(value, field));
    *out = std::string(absl::StripAsciiWhitespace(text));
    return absl::OkStatus();
  };
  if (key == "endpoint") {
    b.endpoint = value == "off" ? std::string() : value;
  } else if (key == "account") {
    b.account = value;
  } else if (key == "container") {
    b.container = value;
  } else if (key == "prefix") {
    b.prefix = value;
  } else if (key == "key") {
    b.shared_key = value;
  } else if (key == "key_file") {
    return secret(&b.shared_key);
  } else if (key == "sas") {
    b.sas = value;
  } else if (key == "sas_file") {
    return secret(&b.sas);
  } else if (key == "policy") {
    b.policy = value;
  } else if (key == "probe") {
    KVTIER_ASSIGN_OR_RETURN(b.probe, ParseBool(value, field));
  } else if (key == "queue_chunks") {
    return u32(&b.queue_chunks, 1, 1u << 24);
  } else if (key == "queue_bytes") {
    return bytes(&b.queue_bytes);
  } else if (key == "upload_workers") {
    return u32(&b.upload_workers, 1, 256);
  } else if (key == "capacity") {
    return bytes(&b.capacity_bytes);
  } else if (key == "max_connections") {
    return u32(&b.max_connections, 1, 1024);
  } else if (key == "single_put_max") {
    return bytes(&b.single_put_max_bytes);
  } else if (key == "block_size") {
    return bytes(&b.block_bytes);
  } else if (key == "get_range_size") {
    return bytes(&b.get_range_bytes);
  } else if (key == "connect_timeout_ms") {
    return u32(&b.connect_timeout_ms, 1, 600000);
  } else if (key == "request_timeout_ms") {
    return u32(&b.request_timeout_ms, 1, 600000);
  } else if (key == "deadline_ms") {
    return u32(&b.deadline_ms, 1, 600000);
  } else if (key == "write_deadline_ms") {
    return u32(&b.write_deadline_ms, 1, 3600000);
  } else if (key == "max_attempts") {
    return u32(&b.max_attempts, 1, 100);
  } else if (key == "backoff_initial_ms") {
    return u32(&b.backoff_initial_ms, 0, 600000);
  } else if (key == "backoff_max_ms") {
    return u32(&b.backoff_max_ms, 0, 600000);
  } else if (key == "recheck_ms") {
    return u32(&b.recheck_ms, 1, 3600000);
  } else {
    return Invalid(field, "unknown setting");
  }
  return absl::OkStatus();
}

// Applies one scalar setting by its canonical name (the YAML path); shared by
// the file, the environment and the flags so they parse values the same way.
absl::Status ApplySetting(const std::string& name, const std::string& value,
                          const std::string& field, DaemonConfig& c) {
  if (absl::StartsWith(name, "blob.")) return ApplyBlobSetting(name, value, field, c);
  if (name == "data_dir") {
    c.data_dir = value;
  } else if (name == "listen.unix_socket") {
    c.unix_socket = value;
  } else if (name == "listen.unix_socket_mode") {
    KVTIER_ASSIGN_OR_RETURN(c.unix_socket_mode, ParseMode(value, field));
  } else if (name == "listen.shared_memory") {
    KVTIER_ASSIGN_OR_RETURN(c.shared_memory, ParseBool(value, field));
  } else if (name == "listen.tcp") {
    c.tcp = value;
  } else if (name == "listen.allow_insecure_tcp") {
    KVTIER_ASSIGN_OR_RETURN(c.allow_insecure_tcp, ParseBool(value, field));
  } else if (name == "listen.http") {
    c.http = value;
  } else if (name == "tls.cert_file") {
    c.tls.cert_file = value;
  } else if (name == "tls.key_file") {
    c.tls.key_file = value;
  } else if (name == "tls.client_ca_file") {
    c.tls.client_ca_file = value;
  } else if (name == "tls.require_client_cert") {
    KVTIER_ASSIGN_OR_RETURN(c.tls.require_client_cert, ParseBool(value, field));
  } else if (name == "tls.reload_seconds") {
    KVTIER_ASSIGN_OR_RETURN(c.tls.reload_seconds, ParseU32(value, field, 1, 86400));
  } else if (name == "dram.capacity") {
    KVTIER_ASSIGN_OR_RETURN(c.dram.dram_capacity_bytes, ParseByteSize(value, field));
  } else if (name == "dram.slab") {
    KVTIER_ASSIGN_OR_RETURN(c.dram.slab_bytes, ParseByteSize(value, field));
  } else if (name == "dram.index_shards") {
    KVTIER_ASSIGN_OR_RETURN(c.dram.index_shards, ParseU32(value, field, 1, 4096));
  } else if (name == "dram.huge_pages") {
    KVTIER_ASSIGN_OR_RETURN(c.dram.huge_pages, ParseBool(value, field));
  } else if (name == "dram.prefault") {
    KVTIER_ASSIGN_OR_RETURN(c.dram.prefault, ParseBool(value, field));
  } else if (name == "dram.eviction_policy") {
    c.dram.eviction_policy = value;
  } else if (name == "nvme.enabled") {
    KVTIER_ASSIGN_OR_RETURN(c.nvme_enabled, ParseBool(value, field));
  } else if (name == "nvme.path") {
    if (value == "off" || value == "none") {
      c.nvme_enabled = false;
    } else if (!value.empty()) {
      c.nvme_enabled = true;
      c.dram.nvme.path = value;
    }
  } else if (name == "nvme.capacity") {
    // 0: the default size.
    KVTIER_ASSIGN_OR_RETURN(c.dram.nvme.capacity_bytes, ParseByteSize(value, field));
  } else if (name == "nvme.slot_payload_sizes") {
    c.dram.nvme.slot_payload_bytes.clear();
    for (absl::string_view part : absl::StrSplit(value, ',', absl::SkipWhitespace())) {
      KVTIER_ASSIGN_OR_RETURN(uint64_t v, ParseByteSize(std::string(part), field));
      c.dram.nvme.slot_payload_bytes.push_back(v);
    }
  } else if (name == "nvme.io_mode") {
    c.dram.nvme.io_mode = value;
  } else if (name == "nvme.queue_depth") {
    KVTIER_ASSIGN_OR_RETURN(c.dram.nvme.queue_depth, ParseU32(value, field, 1, 4096));
  } else if (name == "nvme.max_inflight") {
    KVTIER_ASSIGN_OR_RETURN(c.dram.nvme.max_inflight_bytes, ParseByteSize(value, field));
  } else if (name == "nvme.admission") {
    c.dram.nvme.admission = value;
  } else if (name == "nvme.durability") {
    c.dram.nvme.durability = value;
  } else if (name == "nvme.write_snapshot") {
    KVTIER_ASSIGN_OR_RETURN(c.dram.nvme.write_snapshot, ParseBool(value, field));
  } else if (name == "nvme.eviction_policy") {
    c.dram.nvme.eviction_policy = value;
  } else if (name == "nvme.persist_on_close_seconds") {
    double v = 0;
    if (!absl::SimpleAtod(value, &v) || v < 0) {
      return Invalid(field, absl::StrCat("'", value, "' is not a number of seconds >= 0"));
    }
    c.dram.nvme.persist_on_close_seconds = v;
  } else if (name == "auth.admin_token") {
    c.admin_token = value;
    c.token_files.erase(name);
  } else if (name == "auth.admin_token_file") {
    KVTIER_ASSIGN_OR_RETURN(c.admin_token, ReadTokenFile(value, field));
    c.token_files["auth.admin_token"] = value;
  } else if (name == "limits.max_keys_per_request") {
    KVTIER_ASSIGN_OR_RETURN(c.max_keys_per_request, ParseU32(value, field, 1, 1u << 20));
  } else if (name == "limits.max_tokens_per_request") {
    KVTIER_ASSIGN_OR_RETURN(c.max_tokens_per_request, ParseU32(value, field, 1, 1u << 26));
  } else if (name == "limits.max_message_bytes") {
    KVTIER_ASSIGN_OR_RETURN(c.max_message_bytes, ParseByteSize(value, field));
  } else if (name == "limits.max_grpc_message_bytes") {
    KVTIER_ASSIGN_OR_RETURN(c.max_grpc_message_bytes, ParseByteSize(value, field));
  } else if (name == "limits.lease_seconds") {
    KVTIER_ASSIGN_OR_RETURN(c.lease_seconds, ParseU32(value, field, 1, 86400));
  } else if (name == "limits.max_leases") {
    KVTIER_ASSIGN_OR_RETURN(c.max_leases, ParseU32(value, field, 1, 1u << 24));
  } else if (name == "limits.max_leases_per_principal") {
    KVTIER_ASSIGN_OR_RETURN(c.max_leases_per_principal, ParseU32(value, field, 1, 1u << 24));
  } else if (name == "shutdown.drain_seconds") {
    KVTIER_ASSIGN_OR_RETURN(c.drain_seconds, ParseU32(value, field, 0, 3600));
  } else if (name == "log.level") {
    c.log_level = value;
  } else if (name == "listen.status_token") {
    c.status_token = value;
    c.token_files.erase(name);
  } else if (name == "listen.status_token_file") {
    KVTIER_ASSIGN_OR_RETURN(c.status_token, ReadTokenFile(value, field));
    c.token_files["listen.status_token"] = value;
  } else if (name == "status.tokens_per_gpu_second") {
    double v = 0;
    if (!absl::SimpleAtod(value, &v) || !(v > 0) || !std::isfinite(v)) {
      return Invalid(field, absl::StrCat("'", value, "' is not a number of tokens > 0"));
    }
    c.tokens_per_gpu_second = v;
  } else if (name == "node_id") {
    c.node_id = value;
  } else if (name == "cluster.nats_url") {
    c.cluster.nats_url = value;
  } else if (name == "cluster.publish_batch") {
    KVTIER_ASSIGN_OR_RETURN(c.cluster.publish_batch, ParseU32(value, field, 1, 1u << 20));
  } else if (name == "cluster.publish_interval_ms") {
    KVTIER_ASSIGN_OR_RETURN(c.cluster.publish_interval_ms, ParseU32(value, field, 1, 60000));
  } else if (name == "cluster.heartbeat_interval_ms") {
    KVTIER_ASSIGN_OR_RETURN(c.cluster.heartbeat_interval_ms, ParseU32(value, field, 10, 600000));
  } else if (name == "cluster.max_queued_events") {
    KVTIER_ASSIGN_OR_RETURN(uint32_t v, ParseU32(value, field, 1, 1u << 30));
    c.cluster.max_queued_events = v;
  } else if (name == "cluster.index_address") {
    c.cluster.index_address = value;
  } else if (name == "cluster.advertise_grpc") {
    c.cluster.advertise_grpc = value;
  } else if (name == "cluster.advertise_ucx") {
    c.cluster.advertise_ucx = value;
  } else if (name == "cluster.stream_max_age_seconds") {
    KVTIER_ASSIGN_OR_RETURN(c.cluster.stream_max_age_seconds,
                            ParseU32(value, field, 1, 365u * 86400u));
  } else if (name == "cluster.nats_token") {
    c.cluster.nats_token = value;
  } else if (name == "cluster.nats_token_file") {
    KVTIER_ASSIGN_OR_RETURN(c.cluster.nats_token, ReadTokenFile(value, field));
  } else if (name == "cluster.nats_user") {
    c.cluster.nats_user = value;
  } else if (name == "cluster.nats_password") {
    c.cluster.nats_password = value;
  } else if (name == "cluster.nats_password_file") {
    KVTIER_ASSIGN_OR_RETURN(c.cluster.nats_password, ReadTokenFile(value, field));
  } else if (name == "cluster.nats_ca_file") {
    c.cluster.nats_ca_file = value;
  } else if (name == "cluster.nats_cert_file") {
    c.cluster.nats_cert_file = value;
  } else if (name == "cluster.nats_key_file") {
    c.cluster.nats_key_file = value;
  } else if (name == "cluster.nats_tls_name") {
    c.cluster.nats_tls_name = value;
  } else if (name == "cluster.index_token") {
    c.cluster.index_token = value;
    c.token_files.erase(name);
  } else if (name == "cluster.index_token_file") {
    KVTIER_ASSIGN_OR_RETURN(c.cluster.index_token, ReadTokenFile(value, field));
    c.token_files["cluster.index_token"] = value;
  } else if (name == "cluster.index_ca_file") {
    c.cluster.index_ca_file = value;
  } else if (name == "cluster.index_tls_name") {
    c.cluster.index_tls_name = value;
  } else if (name == "cluster.stream_max_bytes") {
    KVTIER_ASSIGN_OR_RETURN(c.cluster.stream_max_bytes, ParseByteSize(value, field));
  } else if (name == "peers") {
    c.peers.clear();
    for (absl::string_view p : absl::StrSplit(value, ',', absl::SkipWhitespace())) {
      c.peers.emplace_back(absl::StripAsciiWhitespace(p));
    }
  } else if (name == "ucx.enabled") {
    KVTIER_ASSIGN_OR_RETURN(c.ucx.enabled, ParseBool(value, field));
  } else if (name == "ucx.progress_threads") {
    KVTIER_ASSIGN_OR_RETURN(c.ucx.progress_threads, ParseU32(value, field, 1, 64));
  } else if (name == "ucx.lease_seconds") {
    KVTIER_ASSIGN_OR_RETURN(c.ucx.lease_seconds, ParseU32(value, field, 1, 3600));
  } else if (name == "ucx.lookup_timeout_ms") {
    KVTIER_ASSIGN_OR_RETURN(c.ucx.lookup_timeout_ms, ParseU32(value, field, 1, 60000));
  } else if (name == "ucx.transfer_timeout_ms") {
    KVTIER_ASSIGN_OR_RETURN(c.ucx.transfer_timeout_ms, ParseU32(value, field, 1, 600000));
  } else if (name == "ucx.peer_token") {
    c.ucx.peer_token = value;
    c.token_files.erase(name);
  } else if (name == "ucx.peer_ca_file") {
    c.ucx.peer_ca_file = value;
  } else if (name == "ucx.peer_tls_name") {
    c.ucx.peer_tls_name = value;
  } else if (name == "ucx.peer_token_file") {
    KVTIER_ASSIGN_OR_RETURN(c.ucx.peer_token, ReadTokenFile(value, field));
    c.token_files["ucx.peer_token"] = value;
  } else if (name == "ucx.max_batch_chunks") {
    KVTIER_ASSIGN_OR_RETURN(c.ucx.max_batch_chunks, ParseU32(value, field, 1, 4096));
  } else if (name == "ucx.copy_threads") {
    if (value == "-1") {
      c.ucx.copy_threads = -1;
    } else {
      uint32_t n = 0;
      KVTIER_ASSIGN_OR_RETURN(n, ParseU32(value, field, 0, 64));
      c.ucx.copy_threads = static_cast<int32_t>(n);
    }
  } else if (name == "ucx.idle_peer_seconds") {
    KVTIER_ASSIGN_OR_RETURN(c.ucx.idle_peer_seconds, ParseU32(value, field, 1, 86400));
  } else if (name == "ucx.busy_poll_us") {
    if (value == "-1") {
      c.ucx.busy_poll_us = -1;
    } else {
      KVTIER_ASSIGN_OR_RETURN(c.ucx.busy_poll_us, ParseU32(value, field, 0, 1000000));
    }
  } else {
    return Invalid(field, "unknown setting");
  }
  return absl::OkStatus();
}

// Scalar keys of each YAML section.
const std::map<std::string, std::set<std::string>>& SectionKeys() {
  static const auto* keys = new std::map<std::string, std::set<std::string>>{
      {"listen",
       {"unix_socket", "unix_socket_mode", "shared_memory", "tcp", "allow_insecure_tcp", "http",
        "status_token", "status_token_file"}},
      {"tls", {"cert_file", "key_file", "client_ca_file", "require_client_cert", "reload_seconds"}},
      {"dram", {"capacity", "slab", "index_shards", "huge_pages", "prefault", "eviction_policy"}},
      {"nvme",
       {"enabled", "path", "capacity", "slot_payload_sizes", "io_mode", "queue_depth",
        "max_inflight", "admission", "durability", "write_snapshot", "eviction_policy",
        "persist_on_close_seconds"}},
      {"auth", {"admin_token", "admin_token_file", "tenants"}},
      {"limits",
       {"max_keys_per_request", "max_tokens_per_request", "max_message_bytes",
        "max_grpc_message_bytes", "lease_seconds", "max_leases", "max_leases_per_principal"}},
      {"shutdown", {"drain_seconds"}},
      {"log", {"level"}},
      {"status", {"tokens_per_gpu_second"}},
      {"cluster",
       {"nats_url",
        "publish_batch",
        "publish_interval_ms",
        "heartbeat_interval_ms",
        "max_queued_events",
        "index_address",
        "advertise_grpc",
        "advertise_ucx",
        "stream_max_age_seconds",
        "stream_max_bytes",
        "nats_token",
        "nats_token_file",
        "nats_user",
        "nats_password",
        "nats_password_file",
        "nats_ca_file",
        "nats_cert_file",
        "nats_key_file",
        "nats_tls_name",
        "index_token",
        "index_token_file",
        "index_ca_file",
        "index_tls_name"}},
      {"blob",
       {"endpoint",
        "account",
        "container",
        "prefix",
        "key",
        "key_file",
        "sas",
        "sas_file",
        "policy",
        "probe",
        "queue_chunks",
        "queue_bytes",
        "upload_workers",
        "capacity",
        "max_connections",
        "single_put_max",
        "block_size",
        "get_range_size",
        "connect_timeout_ms",
        "request_timeout_ms",
        "deadline_ms",
        "write_deadline_ms",
        "max_attempts",
        "backoff_initial_ms",
        "backoff_max_ms",
        "recheck_ms"}},
      {"ucx",
       {"enabled", "progress_threads", "lease_seconds", "lookup_timeout_ms", "transfer_timeout_ms",
        "peer_token", "peer_token_file", "peer_ca_file", "peer_tls_name", "max_batch_chunks",
        "busy_poll_us", "idle_peer_seconds", "copy_threads"}},
  };
  return *keys;
}

absl::Status ApplyTenants(const YAML::Node& list, DaemonConfig& c) {
  const std::string path = "auth.tenants";
  if (list.IsNull()) return absl::OkStatus();
  if (!list.IsSequence()) return Invalid(path, "must be a list");
  c.tenants.clear();
  std::erase_if(c.token_files,
                [](const auto& f) { return absl::StartsWith(f.first, "auth.tenants["); });
  for (size_t i = 0; i < list.size(); ++i) {
    const std::string p = absl::StrCat(path, "[", i, "]");
    const YAML::Node& n = list[i];
    KVTIER_RETURN_IF_ERROR(Yaml::CheckKeys(
        n, p, {"name", "token", "token_file", "cache_salts", "model_ids", "shared_memory"}));
    TenantConfig t;
    if (n["name"]) {
      KVTIER_ASSIGN_OR_RETURN(t.name, Yaml::Scalar(n["name"], Join(p, "name")));
    }
    if (n["token"] && n["token_file"]) {
      return Invalid(Join(p, "token_file"), "set either token or token_file, not both");
    }
    if (n["token"]) {
      KVTIER_ASSIGN_OR_RETURN(t.token, Yaml::Scalar(n["token"], Join(p, "token")));
    }
    if (n["token_file"]) {
      KVTIER_ASSIGN_OR_RETURN(std::string file,
                              Yaml::Scalar(n["token_file"], Join(p, "token_file")));
      KVTIER_ASSIGN_OR_RETURN(t.token, ReadTokenFile(file, Join(p, "token_file")));
      c.token_files[Join(p, "token")] = file;
    }
    if (n["cache_salts"]) {
      KVTIER_ASSIGN_OR_RETURN(t.cache_salts,
                              Yaml::StringList(n["cache_salts"], Join(p, "cache_salts")));
    }
    if (n["model_ids"]) {
      KVTIER_ASSIGN_OR_RETURN(t.model_ids, Yaml::StringList(n["model_ids"], Join(p, "model_ids")));
    }
    if (n["shared_memory"]) {
      KVTIER_ASSIGN_OR_RETURN(std::string v,
                              Yaml::Scalar(n["shared_memory"], Join(p, "shared_memory")));
      KVTIER_ASSIGN_OR_RETURN(t.shared_memory, ParseBool(v, Join(p, "shared_memory")));
    }
    c.tenants.push_back(std::move(t));
  }
  return absl::OkStatus();
}

absl::Status ApplyYamlNode(const YAML::Node& root, DaemonConfig& c) {
  if (root.IsNull()) return absl::OkStatus();  // an empty file
  std::set<std::string> top{"data_dir", "node_id", "peers"};
  for (const auto& [section, keys] : SectionKeys()) top.insert(section);
  KVTIER_RETURN_IF_ERROR(Yaml::CheckKeys(root, "", top));
  if (root["data_dir"]) {
    KVTIER_ASSIGN_OR_RETURN(std::string v, Yaml::Scalar(root["data_dir"], "data_dir"));
    KVTIER_RETURN_IF_ERROR(ApplySetting("data_dir", v, "data_dir", c));
  }
  if (root["node_id"]) {
    KVTIER_ASSIGN_OR_RETURN(std::string v, Yaml::Scalar(root["node_id"], "node_id"));
    KVTIER_RETURN_IF_ERROR(ApplySetting("node_id", v, "node_id", c));
  }
  if (root["peers"]) {
    KVTIER_ASSIGN_OR_RETURN(std::vector<std::string> v, Yaml::StringList(root["peers"], "peers"));
    KVTIER_RETURN_IF_ERROR(ApplySetting("peers", absl::StrJoin(v, ","), "peers", c));
  }
  for (const auto& [section, keys] : SectionKeys()) {
    const YAML::Node node = root[section];
    if (!node || node.IsNull()) continue;
    KVTIER_RETURN_IF_ERROR(Yaml::CheckKeys(node, section, keys));
    for (const std::string& key : keys) {
      const YAML::Node v = node[key];
      if (!v) continue;
      const std::string path = Join(section, key);
      if (path == "auth.tenants") {
        KVTIER_RETURN_IF_ERROR(ApplyTenants(v, c));
        continue;
      }
      if (path == "nvme.slot_payload_sizes" && !v.IsScalar()) {
        KVTIER_ASSIGN_OR_RETURN(std::vector<std::string> sizes, Yaml::StringList(v, path));
        KVTIER_RETURN_IF_ERROR(ApplySetting(path, absl::StrJoin(sizes, ","), path, c));
        continue;
      }
      KVTIER_ASSIGN_OR_RETURN(std::string text, Yaml::Scalar(v, path));
      KVTIER_RETURN_IF_ERROR(ApplySetting(path, text, path, c));
    }
  }
  if (root["listen"] && root["listen"]["status_token"] && root["listen"]["status_token_file"]) {
    return Invalid("listen.status_token_file", "set either status_token or status_token_file");
  }
  if (root["auth"] && root["auth"]["admin_token"] && root["auth"]["admin_token_file"]) {
    return Invalid("auth.admin_token_file", "set either admin_token or admin_token_file");
  }
  return absl::OkStatus();
}

// ---- flags ------------------------------------------------------------------

struct FlagSpec {
  const char* flag;
  const char* setting;  // canonical name for ApplySetting; nullptr for special flags
  bool takes_value;
  const char* help;
};

const std::vector<FlagSpec>& FlagSpecs() {
  static const auto* specs = new std::vector<FlagSpec>{
      {"config", nullptr, true, "YAML configuration file (also $KVTIER_CONFIG)"},
      {"check-config", nullptr, false, "validate the configuration, print it (redacted), exit"},
      {"data-dir", "data_dir", true, "state directory; the default socket lives in it"},
      {"socket", "listen.unix_socket", true, "gRPC Unix socket path"},
      {"socket-mode", "listen.unix_socket_mode", true, "socket permission bits (octal, 0660)"},
      {"shared-memory", "listen.shared_memory", true, "serve the arena fd to local clients"},
      {"tcp", "listen.tcp", true, "host:port for gRPC over TCP (off by default)"},
      {"http", "listen.http", true, "host:port for /metrics /healthz /readyz; '' = off"},
      {"tls-cert", "tls.cert_file", true, "PEM server certificate (enables TLS on TCP)"},
      {"tls-key", "tls.key_file", true, "PEM server private key"},
      {"tls-client-ca", "tls.client_ca_file", true, "PEM CA for client certificates"},
      {"require-client-cert", "tls.require_client_cert", true, "mTLS: true or false"},
      {"dram", "dram.capacity", true, "DRAM tier size (e.g. 8GiB; default RAM/4, <= 16GiB)"},
      {"slab", "dram.slab", true, "DRAM slab size (default 64MiB)"},
      {"huge-pages", "dram.huge_pages", true, "back the arena with huge pages: true/false"},
      {"prefault", "dram.prefault", true, "touch every arena page at start: true/false"},
      {"eviction-policy", "dram.eviction_policy", true,
       "DRAM eviction: lru | 2q | 2q-chain | cost"},
      {"nvme", "nvme.path", true, "NVMe tier folder or device; 'off' = DRAM only"},
      {"nvme-capacity", "nvme.capacity", true, "NVMe volume size (default free/4, <= 16GiB)"},
      {"nvme-io-mode", "nvme.io_mode", true, "direct | buffered (tmpfs and the like)"},
      {"nvme-admission", "nvme.admission", true, "all | second-chance"},
      {"nvme-slot-sizes", "nvme.slot_payload_sizes", true, "chunk payload sizes, e.g. 1MiB,4MiB"},
      {"admin-token-file", "auth.admin_token_file", true, "file holding the admin token"},
      {"lease-seconds", "limits.lease_seconds", true, "life of unreleased reservations/pins"},
      {"drain-seconds", "shutdown.drain_seconds", true, "SIGTERM grace for in-flight RPCs"},
      {"log-level", "log.level", true, "debug | info | warn | error"},
      {"status-token-file", "listen.status_token_file", true,
       "file holding the bearer token of / and /api/v1/status"},
      {"tokens-per-gpu-second", "status.tokens_per_gpu_second", true,
       "prefill tokens per GPU-second, for the status page's saved panel"},
      {"node-id", "node_id", true, "this node's id in the cluster (default: host name)"},
      {"nats", "cluster.nats_url", true, "NATS URL for cluster events (off by default)"},
      {"index-address", "cluster.index_address", true, "kvtier-index replicas, host:port,..."},
      {"index-token-file", "cluster.index_token_file", true,
       "file holding the bearer token of kvtier-index's API"},
      {"index-ca", "cluster.index_ca_file", true, "PEM CA of kvtier-index (TLS to the index)"},
      {"nats-token-file", "cluster.nats_token_file", true, "file holding the NATS token"},
      {"nats-ca", "cluster.nats_ca_file", true, "PEM CA of the NATS server (TLS to NATS)"},
      {"blob-endpoint", "blob.endpoint", true,
       "Blob tier endpoint (https://ACCOUNT.blob.core.windows.net); 'off' = none"},
      {"blob-account", "blob.account", true, "Blob storage account"},
      {"blob-container", "blob.container", true, "Blob container (created when missing)"},
      {"blob-key-file", "blob.key_file", true, "file holding the base64 account key"},
      {"blob-sas-file", "blob.sas_file", true, "file holding a SAS token (instead of a key)"},
      {"blob-policy", "blob.policy", true, "Blob uploads: on_demotion | always | never"},
      {"blob-probe", "blob.probe", true, "Lookup asks Blob about other nodes' chunks: true/false"},
      {"blob-capacity", "blob.capacity", true,
       "bytes this node keeps in Blob (e.g. 500GiB); 0 = no bound"},
      {"peers", "peers", true, "other kvtierds' TCP listeners, host:port,host:port"},
      {"ucx", "ucx.enabled", true, "node-to-node transfer over UCX: true or false"},
      {"ucx-progress-threads", "ucx.progress_threads", true, "UCX workers (1..64)"},
      {"ucx-lease-seconds", "ucx.lease_seconds", true, "life of chunks pinned for peers"},
      {"ucx-lookup-timeout-ms", "ucx.lookup_timeout_ms", true, "wait for peers' Lookup"},
      {"ucx-transfer-timeout-ms", "ucx.transfer_timeout_ms", true, "one remote read"},
      {"peer-token-file", "ucx.peer_token_file", true, "file holding the Peer service's token"},
      {"help", nullptr, false, "print this help"},
      {"version", nullptr, false, "print the version"},
  };
  return *specs;
}

const FlagSpec* FindFlag(const std::string& name) {
  for (const FlagSpec& f : FlagSpecs()) {
    if (name == f.flag) return &f;
  }
  return nullptr;
}

struct EnvSpec {
  const char* name;
  const char* setting;
};

constexpr EnvSpec kEnvSpecs[] = {
    {"KVTIER_DATA_DIR", "data_dir"},
    {"KVTIER_SOCKET", "listen.unix_socket"},
    {"KVTIER_TCP", "listen.tcp"},
    {"KVTIER_HTTP", "listen.http"},
    {"KVTIER_DRAM", "dram.capacity"},
    {"KVTIER_LOG_LEVEL", "log.level"},
    {"KVTIER_ADMIN_TOKEN", "auth.admin_token"},
    {"KVTIER_SHARED_MEMORY", "listen.shared_memory"},
    {"KVTIER_NVME", "nvme.path"},
    {"KVTIER_NVME_CAPACITY", "nvme.capacity"},
    {"KVTIER_STATUS_TOKEN", "listen.status_token"},
    {"KVTIER_PEER_TOKEN", "ucx.peer_token"},
    {"KVTIER_NODE_ID", "node_id"},
    {"KVTIER_NATS_URL", "cluster.nats_url"},
    {"KVTIER_NATS_TOKEN", "cluster.nats_token"},
    {"KVTIER_NATS_PASSWORD", "cluster.nats_password"},
    {"KVTIER_INDEX_TOKEN", "cluster.index_token"},
    {"KVTIER_ADVERTISE_GRPC", "cluster.advertise_grpc"},
    {"KVTIER_BLOB_ENDPOINT", "blob.endpoint"},
    {"KVTIER_BLOB_ACCOUNT", "blob.account"},
    {"KVTIER_BLOB_CONTAINER", "blob.container"},
    {"KVTIER_BLOB_KEY", "blob.key"},
    {"KVTIER_BLOB_SAS", "blob.sas"},
    {"KVTIER_BLOB_POLICY", "blob.policy"},
    {"KVTIER_BLOB_CAPACITY", "blob.capacity"},
    {"KVTIER_PEERS", "peers"},
    {"KVTIER_UCX", "ucx.enabled"},
};

}  // namespace

// ---- public -----------------------------------------------------------------

index::NatsBusOptions ClusterConfig::NatsOptions() const {
  index::NatsBusOptions o;
  o.url = nats_url;
  o.token = nats_token;
  o.user = nats_user;
  o.password = nats_password;
  o.ca_file = nats_ca_file;
  o.cert_file = nats_cert_file;
  o.key_file = nats_key_file;
  o.tls_name = nats_tls_name;
  return o;
}

uint64_t DefaultDramBytes() {
  const long pages = sysconf(_SC_PHYS_PAGES);
  const long page_size = sysconf(_SC_PAGESIZE);
  uint64_t ram = pages > 0 && page_size > 0 ? uint64_t(pages) * uint64_t(page_size) : 0;
  uint64_t bytes = std::min(ram / 4, kMaxDefaultDram);
  bytes = bytes / kDefaultSlab * kDefaultSlab;
  return std::max(bytes, kDefaultSlab);
}

std::string DefaultNvmePath(const std::string& data_dir) {
  if (!data_dir.empty()) return absl::StrCat(data_dir, "/nvme");
  return absl::StrCat("/var/tmp/kvtier-", getuid(), "/nvme");
}

uint64_t DefaultNvmeBytesFor(uint64_t free_bytes, uint64_t existing_volume_bytes) {
  constexpr uint64_t kUnit = 64ull << 20;
  constexpr uint64_t kMax = 16ull << 30;
  constexpr uint64_t kMin = 256ull << 20;
  const uint64_t available = free_bytes + existing_volume_bytes;
  const uint64_t bytes = std::min(available / 4, kMax) / kUnit * kUnit;
  return bytes < kMin ? 0 : bytes;
}

uint64_t DefaultNvmeBytes(const std::string& folder) {
  std::error_code ec;
  // Absolute first, so a relative folder that does not exist yet is measured
  // on the file system of the working directory it will be created in.
  std::filesystem::path p = std::filesystem::absolute(folder, ec);
  if (ec) return 0;
  while (!p.empty() && !std::filesystem::exists(p, ec) && p != p.root_path()) p = p.parent_path();
  struct statvfs fs;
  if (p.empty() || statvfs(p.c_str(), &fs) != 0) return 0;
  const uint64_t free_bytes = uint64_t(fs.f_bavail) * uint64_t(fs.f_frsize);
  const uintmax_t existing =
      std::filesystem::file_size(std::filesystem::path(folder) / kNvmeVolumeFileName, ec);
  return DefaultNvmeBytesFor(free_bytes, ec ? 0 : existing);
}

absl::StatusOr<uint64_t> ParseByteSize(const std::string& text, const std::string& field) {
  std::string t(absl::StripAsciiWhitespace(text));
  size_t i = 0;
  while (i < t.size() && (absl::ascii_isdigit(t[i]) || t[i] == '.')) ++i;
  std::string number = t.substr(0, i);
  std::string unit = absl::AsciiStrToLower(absl::StripAsciiWhitespace(t.substr(i)));
  double v = 0;
  if (number.empty() || !absl::SimpleAtod(number, &v) || v < 0) {
    return Invalid(field,
                   absl::StrCat("'", text, "' is not a byte size (e.g. 4096, 64KiB, 16GiB)"));
  }
  static const std::map<std::string, uint64_t> kUnits = {{"", 1},
                                                         {"b", 1},
                                                         {"k", 1ull << 10},
                                                         {"kb", 1ull << 10},
                                                         {"kib", 1ull << 10},
                                                         {"m", 1ull << 20},
                                                         {"mb", 1ull << 20},
                                                         {"mib", 1ull << 20},
                                                         {"g", 1ull << 30},
                                                         {"gb", 1ull << 30},
                                                         {"gib", 1ull << 30},
                                                         {"t", 1ull << 40},
                                                         {"tb", 1ull << 40},
                                                         {"tib", 1ull << 40}};
  auto it = kUnits.find(unit);
  if (it == kUnits.end()) {
    return Invalid(field, absl::StrCat("'", text, "': unknown unit '", unit,
                                       "' (use B, KiB, MiB, GiB or TiB)"));
  }
  const double bytes = v * static_cast<double>(it->second);
  if (bytes >= 18e18 || bytes != std::floor(bytes)) {
    return Invalid(field, absl::StrCat("'", text, "' is not a whole number of bytes below 2^64"));
  }
  return static_cast<uint64_t>(bytes);
}

std::string DaemonConfig::DefaultSocketPath(const std::map<std::string, std::string>& env) const {
  if (!data_dir.empty()) return absl::StrCat(data_dir, "/kvtierd.sock");
  auto it = env.find("XDG_RUNTIME_DIR");
  if (it != env.end() && !it->second.empty())
    return absl::StrCat(it->second, "/kvtier/kvtierd.sock");
  return absl::StrCat("/tmp/kvtier-", getuid(), "/kvtierd.sock");
}

absl::Status ApplyYaml(const std::string& yaml_text, DaemonConfig& config) {
  YAML::Node root;
  try {
    root = YAML::Load(yaml_text);
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("config: YAML syntax error at line ",
                                                   e.mark.line + 1, ", column ", e.mark.column + 1,
                                                   ": ", e.msg));
  }
  try {
    return ApplyYamlNode(root, config);
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("config: line ", e.mark.line + 1, ": ", e.msg));
  }
}

absl::Status ApplyYamlFile(const std::string& path, DaemonConfig& config) {
  KVTIER_ASSIGN_OR_RETURN(std::string text, ReadSmallFile(path, "--config"));
  absl::Status s = ApplyYaml(text, config);
  if (!s.ok()) return absl::InvalidArgumentError(absl::StrCat(path, ": ", s.message()));
  return absl::OkStatus();
}

absl::Status ApplyEnv(const std::map<std::string, std::string>& env, DaemonConfig& config) {
  for (const EnvSpec& e : kEnvSpecs) {
    auto it = env.find(e.name);
    if (it == env.end()) continue;
    KVTIER_RETURN_IF_ERROR(
        ApplySetting(e.setting, it->second, absl::StrCat(e.name, " (", e.setting, ")"), config));
  }
  return absl::OkStatus();
}

absl::StatusOr<CommandLine> ParseCommandLine(const std::vector<std::string>& args) {
  CommandLine cl;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a == "-h") {
      cl.help = true;
      continue;
    }
    if (!absl::StartsWith(a, "--")) {
      return absl::InvalidArgumentError(absl::StrCat("'", a, "': kvtierd takes only --flags"));
    }
    std::string name = a.substr(2);
    std::optional<std::string> value;
    if (size_t eq = name.find('='); eq != std::string::npos) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
    }
    const FlagSpec* spec = FindFlag(name);
    if (spec == nullptr)
      return absl::InvalidArgumentError(absl::StrCat("--", name, ": unknown flag"));
    if (spec->takes_value && !value.has_value()) {
      if (i + 1 >= args.size()) {
        return absl::InvalidArgumentError(absl::StrCat("--", name, ": needs a value"));
      }
      value = args[++i];
    }
    if (!spec->takes_value && value.has_value()) {
      return absl::InvalidArgumentError(absl::StrCat("--", name, ": takes no value"));
    }
    if (name == "config") {
      cl.config_file = *value;
    } else if (name == "check-config") {
      cl.check_config = true;
    } else if (name == "help") {
      cl.help = true;
    } else if (name == "version") {
      cl.version = true;
    } else {
      cl.settings[name] = *value;
    }
  }
  return cl;
}

absl::Status ApplyFlags(const CommandLine& cl, DaemonConfig& config) {
  for (const auto& [name, value] : cl.settings) {
    const FlagSpec* spec = FindFlag(name);
    if (spec == nullptr || spec->setting == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat("--", name, ": unknown flag"));
    }
    KVTIER_RETURN_IF_ERROR(ApplySetting(
        spec->setting, value, absl::StrCat("--", name, " (", spec->setting, ")"), config));
  }
  return absl::OkStatus();
}

std::string FlagsHelp() {
  std::string out;
  for (const FlagSpec& f : FlagSpecs()) {
    std::string left = absl::StrCat("  --", f.flag, f.takes_value ? " VALUE" : "");
    if (left.size() < 28) left.resize(28, ' ');
    absl::StrAppend(&out, left, " ", f.help, "\n");
  }
  return out;
}

absl::StatusOr<DaemonConfig> LoadConfig(const CommandLine& cl,
                                        const std::map<std::string, std::string>& env) {
  DaemonConfig c;
  c.dram.dram_capacity_bytes = 0;  // filled below unless set
  c.dram.nvme.capacity_bytes = 0;  // likewise
  std::string file = cl.config_file;
  if (file.empty()) {
    auto it = env.find("KVTIER_CONFIG");
    if (it != env.end()) file = it->second;
  }
  if (!file.empty()) KVTIER_RETURN_IF_ERROR(ApplyYamlFile(file, c));
  KVTIER_RETURN_IF_ERROR(ApplyEnv(env, c));
  KVTIER_RETURN_IF_ERROR(ApplyFlags(cl, c));
  if (c.unix_socket.empty()) c.unix_socket = c.DefaultSocketPath(env);
  if (c.node_id.empty()) {
    char host[256] = {};
    if (gethostname(host, sizeof(host) - 1) == 0) c.node_id = host;
  }
  // A listener given as ":PORT" or "PORT" binds loopback.
  for (std::string* addr : {&c.tcp, &c.http}) {
    if (!addr->empty() && addr->front() == ':') {
      *addr = "127.0.0.1" + *addr;
    } else if (!addr->empty() && std::all_of(addr->begin(), addr->end(), absl::ascii_isdigit)) {
      *addr = "127.0.0.1:" + *addr;
    }
  }
  if (c.dram.dram_capacity_bytes == 0) c.dram.dram_capacity_bytes = DefaultDramBytes();
  if (!c.nvme_enabled) {
    c.dram.nvme.path.clear();
  } else {
    if (c.dram.nvme.path.empty()) {
      c.dram.nvme.path = DefaultNvmePath(c.data_dir);
      c.nvme_create_folder = true;
    }
    if (c.dram.nvme.capacity_bytes == 0) {
      c.dram.nvme.capacity_bytes = DefaultNvmeBytes(c.dram.nvme.path);
      if (c.dram.nvme.capacity_bytes == 0) {
        c.nvme_note = absl::StrCat("NVMe tier off: under 1 GiB free for ", c.dram.nvme.path,
                                   " (set nvme.capacity to force a size)");
        c.dram.nvme.path.clear();
        c.nvme_enabled = false;
        c.nvme_create_folder = false;
      }
    }
  }
  KVTIER_RETURN_IF_ERROR(c.Validate());
  return c;
}

std::map<std::string, std::string> ProcessEnv() {
  std::map<std::string, std::string> env;
  for (char** e = environ; e != nullptr && *e != nullptr; ++e) {
    std::string kv(*e);
    size_t eq = kv.find('=');
    if (eq == std::string::npos) continue;
    std::string name = kv.substr(0, eq);
    if (absl::StartsWith(name, "KVTIER_") || name == "XDG_RUNTIME_DIR") {
      env[name] = kv.substr(eq + 1);
    }
  }
  return env;
}

absl::Status DaemonConfig::Validate() const {
  if (unix_socket.empty()) return Invalid("listen.unix_socket", "must not be empty");
  if (ShmSocketPath().size() > kMaxSocketPath) {
    return Invalid("listen.unix_socket", absl::StrCat("'", unix_socket,
                                                      "' is too long: a Unix socket path (with the "
                                                      ".shm suffix) must be at most ",
                                                      kMaxSocketPath, " bytes"));
  }
  if (unix_socket_mode > 0777) {
    return Invalid("listen.unix_socket_mode", "must be permission bits (at most 0777)");
  }
  if (!tcp.empty()) {
    KVTIER_RETURN_IF_ERROR(CheckHostPort(tcp, "listen.tcp"));
    if (open_mode()) {
      return Invalid("listen.tcp",
                     "TCP needs authentication: set auth.tenants and/or auth.admin_token (a "
                     "daemon without tokens serves the Unix socket only)");
    }
    if (!tls.enabled() && !IsLoopbackHost(HostOf(tcp)) && !allow_insecure_tcp) {
      return Invalid("listen.tcp",
                     absl::StrCat("'", tcp,
                                  "' is not a loopback address: set tls.cert_file and "
                                  "tls.key_file (or listen.allow_insecure_tcp: true)"));
    }
  }
  if (!http.empty()) KVTIER_RETURN_IF_ERROR(CheckHostPort(http, "listen.http"));
  if (!(tokens_per_gpu_second > 0) || !std::isfinite(tokens_per_gpu_second)) {
    return Invalid("status.tokens_per_gpu_second", "must be a number > 0");
  }
  if (cluster.enabled()) {
    KVTIER_RETURN_IF_ERROR(index::ValidateNodeId(node_id, "node_id"));
    if (!cluster.advertise_grpc.empty()) {
      KVTIER_RETURN_IF_ERROR(CheckHostPort(cluster.advertise_grpc, "cluster.advertise_grpc"));
    }
  }
  if (!cluster.index_address.empty() && !cluster.enabled()) {
    return Invalid("cluster.index_address",
                   "needs cluster.nats_url (the index learns peers from it)");
  }
  if (cluster.enabled()) {
    KVTIER_RETURN_IF_ERROR(
        index::NameNatsSetting(cluster.NatsOptions().Validate(), "cluster.nats_", "cluster: "));
  }
  for (const auto& [field, text] :
       {std::pair<const char*, const std::string*>{"cluster.index_token", &cluster.index_token},
        {"cluster.index_ca_file", &cluster.index_ca_file},
        {"cluster.index_tls_name", &cluster.index_tls_name}}) {
    if (!text->empty() && cluster.index_address.empty()) {
      return Invalid(field, "needs cluster.index_address");
    }
  }
  if (!cluster.index_ca_file.empty() && access(cluster.index_ca_file.c_str(), R_OK) != 0) {
    return Invalid("cluster.index_ca_file",
                   absl::StrCat("cannot read '", cluster.index_ca_file, "'"));
  }
  if (!cluster.index_tls_name.empty() && cluster.index_ca_file.empty()) {
    return Invalid("cluster.index_tls_name", "needs cluster.index_ca_file (TLS to the index)");
  }
  KVTIER_RETURN_IF_ERROR(ValidateTls(tls, "tls"));
  if (tls.enabled() && tcp.empty()) {
    return Invalid("tls.cert_file", "TLS applies to TCP only: set listen.tcp");
  }
  if (!ucx.peer_ca_file.empty() && access(ucx.peer_ca_file.c_str(), R_OK) != 0) {
    return Invalid("ucx.peer_ca_file", absl::StrCat("cannot read '", ucx.peer_ca_file, "'"));
  }
  CacheOptions dram_only = dram;
  dram_only.nvme.path.clear();
  dram_only.blob = BlobCacheOptions{};
  if (absl::Status s = dram_only.Validate(); !s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("dram: ", s.message()));
  }
  if (dram.nvme.enabled()) {
    // Messages name "nvme.<field>" already.
    KVTIER_RETURN_IF_ERROR(dram.Validate());
  }
  if (dram.blob.enabled()) KVTIER_RETURN_IF_ERROR(dram.blob.Validate());  // names "blob.<field>"
  KVTIER_RETURN_IF_ERROR(ValidateTokens());
  if (max_message_bytes < 4096 || max_message_bytes > (64ull << 20)) {
    return Invalid("limits.max_message_bytes", "must be in [4 KiB, 64 MiB]");
  }
  if (max_grpc_message_bytes < max_message_bytes + 65536 || max_grpc_message_bytes > (1ull << 30)) {
    return Invalid("limits.max_grpc_message_bytes",
                   "must be at least limits.max_message_bytes + 64 KiB, and at most 1 GiB");
  }
  static const std::set<std::string> kLevels = {"debug", "info", "warn", "error"};
  if (!kLevels.contains(log_level)) {
    return Invalid("log.level",
                   absl::StrCat("'", log_level, "' is not debug, info, warn or error"));
  }
  for (size_t i = 0; i < peers.size(); ++i) {
    const std::string& p = peers[i];
    const size_t colon = p.rfind(':');
    uint32_t port = 0;
    if (colon == std::string::npos || colon == 0 || !absl::SimpleAtoi(p.substr(colon + 1), &port) ||
        port == 0 || port > 65535) {
      return Invalid(absl::StrCat("peers[", i, "]"), absl::StrCat("'", p, "' is not host:port"));
    }
  }
  if (!peers.empty() && !ucx.enabled) {
    return Invalid("ucx.enabled", "peers are listed but node-to-node transfer is off (set true)");
  }
  if (ucx.enabled) {
    if (node_id.empty()) return Invalid("node_id", "required with ucx.enabled");
    if (tcp.empty()) {
      return Invalid("listen.tcp",
                     "ucx.enabled needs a TCP listener: other nodes call the Peer service there");
    }
    // The Peer service hands out the arena's remote key and pins any
    // namespace's chunks for reading: with auth on, an open one would let
    // any caller read every tenant's chunks.
    if (!open_mode() && ucx.peer_token.empty()) {
      return Invalid("ucx.peer_token",
                     "required with ucx.enabled when auth is on (admin_token or tenants): "
                     "without it any caller of the Peer service could read every tenant's "
                     "chunks");
    }
  }
  return absl::OkStatus();
}

absl::Status DaemonConfig::ValidateTokens() const {
  std::set<std::string> names;
  std::set<absl::string_view> tokens;  // every token of admin_token and the tenants'
  if (absl::Status s = CheckTokenList(admin_token, kMinTokenLength); !s.ok()) {
    return Invalid("auth.admin_token", std::string(s.message()));
  }
  for (absl::string_view token : SplitTokens(admin_token)) tokens.insert(token);
  for (size_t i = 0; i < tenants.size(); ++i) {
    const TenantConfig& t = tenants[i];
    const std::string p = absl::StrCat("auth.tenants[", i, "]");
    if (t.name.empty()) return Invalid(Join(p, "name"), "must not be empty");
    if (!names.insert(t.name).second) {
      return Invalid(Join(p, "name"), absl::StrCat("'", t.name, "' is used twice"));
    }
    if (SplitTokens(t.token).empty()) {
      return Invalid(Join(p, "token"),
                     absl::StrCat("must be at least ", kMinTokenLength, " characters"));
    }
    if (absl::Status s = CheckTokenList(t.token, kMinTokenLength); !s.ok()) {
      return Invalid(Join(p, "token"), std::string(s.message()));
    }
    for (absl::string_view token : SplitTokens(t.token)) {
      if (!tokens.insert(token).second) {
        return Invalid(Join(p, "token"), "is used twice (tokens must be unique)");
      }
    }
  }
  if (ucx.enabled) {
    if (absl::Status s = CheckTokenList(ucx.peer_token, kMinTokenLength); !s.ok()) {
      return Invalid("ucx.peer_token", std::string(s.message()));
    }
  }
  if (absl::Status s = CheckTokenList(status_token, 1); !s.ok()) {
    return Invalid("listen.status_token", std::string(s.message()));
  }
  return absl::OkStatus();
}

std::string DaemonConfig::ToRedactedYaml() const {
  auto redact = [](const std::string& s) { return s.empty() ? std::string() : "<redacted>"; };
  YAML::Emitter out;
  out << YAML::BeginMap;
  out << YAML::Key << "data_dir" << YAML::Value << data_dir;
  char mode[8];
  std::snprintf(mode, sizeof(mode), "0%o", unix_socket_mode);
  out << YAML::Key << "listen" << YAML::Value << YAML::BeginMap;
  out << YAML::Key << "unix_socket" << YAML::Value << unix_socket;
  out << YAML::Key << "unix_socket_mode" << YAML::Value << YAML::DoubleQuoted << mode;
  out << YAML::Key << "shared_memory" << YAML::Value << shared_memory;
  out << YAML::Key << "tcp" << YAML::Value << tcp;
  out << YAML::Key << "allow_insecure_tcp" << YAML::Value << allow_insecure_tcp;
  out << YAML::Key << "http" << YAML::Value << http;
  out << YAML::Key << "status_token" << YAML::Value << redact(status_token);
  out << YAML::EndMap;
  out << YAML::Key << "tls" << YAML::Value << YAML::BeginMap;
  out << YAML::Key << "cert_file" << YAML::Value << tls.cert_file;
  out << YAML::Key << "key_file" << YAML::Value << tls.key_file;
  out << YAML::Key << "client_ca_file" << YAML::Value << tls.client_ca_file;
  out << YAML::Key << "require_client_cert" << YAML::Value << tls.require_client_cert;
  out << YAML::Key << "reload_seconds" << YAML::Value << tls.reload_seconds;
  out << YAML::EndMap;
  out << YAML::Key << "dram" << YAML::Value << YAML::BeginMap;
  out << YAML::Key << "capacity" << YAML::Value << dram.dram_capacity_bytes;
  out << YAML::Key << "slab" << YAML::Value << dram.slab_bytes;
  out << YAML::Key << "index_shards" << YAML::Value << dram.index_shards;
  out << YAML::Key << "huge_pages" << YAML::Value << dram.huge_pages;
  out << YAML::Key << "prefault" << YAML::Value << dram.prefault;
  out << YAML::Key << "eviction_policy" << YAML::Value << dram.eviction_policy;
  out << YAML::EndMap;
  out << YAML::Key << "nvme" << YAML::Value << YAML::BeginMap;
  out << YAML::Key << "enabled" << YAML::Value << dram.nvme.enabled();
  out << YAML::Key << "path" << YAML::Value << dram.nvme.path;
  out << YAML::Key << "capacity" << YAML::Value << dram.nvme.capacity_bytes;
  out << YAML::Key << "slot_payload_sizes" << YAML::Value << YAML::Flow
      << dram.nvme.slot_payload_bytes;
  out << YAML::Key << "io_mode" << YAML::Value << dram.nvme.io_mode;
  out << YAML::Key << "queue_depth" << YAML::Value << dram.nvme.queue_depth;
  out << YAML::Key << "max_inflight" << YAML::Value << dram.nvme.max_inflight_bytes;
  out << YAML::Key << "admission" << YAML::Value << dram.nvme.admission;
  out << YAML::Key << "durability" << YAML::Value << dram.nvme.durability;
  out << YAML::Key << "write_snapshot" << YAML::Value << dram.nvme.write_snapshot;
  out << YAML::Key << "eviction_policy" << YAML::Value << dram.nvme.eviction_policy;
  out << YAML::Key << "persist_on_close_seconds" << YAML::Value
      << dram.nvme.persist_on_close_seconds;
  out << YAML::EndMap;
  out << YAML::Key << "auth" << YAML::Value << YAML::BeginMap;
  out << YAML::Key << "admin_token" << YAML::Value << redact(admin_token);
  out << YAML::Key << "tenants" << YAML::Value << YAML::BeginSeq;
  for (const TenantConfig& t : tenants) {
    out << YAML::BeginMap;
    out << YAML::Key << "name" << YAML::Value << t.name;
    out << YAML::Key << "token" << YAML::Value << redact(t.token);
    out << YAML::Key << "cache_salts" << YAML::Value << YAML::Flow << t.cache_salts;
    out << YAML::Key << "model_ids" << YAML::Value << YAML::Flow << t.model_ids;
    out << YAML::Key << "shared_memory" << YAML::Value << t.shared_memory;
    out << YAML::EndMap;
  }
  out << YAML::EndSeq;
  out << YAML::EndMap;
  out << YAML::Key << "limits" << YAML::Value << YAML::BeginMap;
  out << YAML::Key << "max_keys_per_request" << YAML::Value << max_keys_per_request;
  out << YAML::Key << "max_tokens_per_request" << YAML::Value << max_tokens_per_request;
  out << YAML::Key << "max_message_bytes" << YAML::Value << max_message_bytes;
  out << YAML::Key << "max_grpc_message_bytes" << YAML::Value << max_grpc_message_bytes;
  out << YAML::Key << "lease_seconds" << YAML::Value << lease_seconds;
  out << YAML::Key << "max_leases" << YAML::Value << max_leases;
  out << YAML::Key << "max_leases_per_principal" << YAML::Value << max_leases_per_principal;
  out << YAML::EndMap;
  out << YAML::Key << "shutdown" << YAML::Value << YAML::BeginMap;
  out << YAML::Key << "drain_seconds" << YAML::Value << drain_seconds;
  out << YAML::EndMap;
  out << YAML::Key << "log" << YAML::Value << YAML::BeginMap;
  out << YAML::Key << "level" << YAML::Value << log_level;
  out << YAML::EndMap;
  out << YAML::Key << "status" << YAML::Value << YAML::BeginMap;
  out << YAML::Key << "tokens_per_gpu_second" << YAML::Value << tokens_per_gpu_second;
  out << YAML::EndMap;
  out << YAML::Key << "node_id" << YAML::Value << node_id;
  out << YAML::Key << "cluster" << YAML::Value << YAML::BeginMap;
  out << YAML::Key << "nats_url" << YAML::Value << index::RedactNatsUrls(cluster.nats_url);
  out << YAML::Key << "publish_batch" << YAML::Value << cluster.publish_batch;
  out << YAML::Key << "publish_interval_ms" << YAML::Value << cluster.publish_interval_ms;
  out << YAML::Key << "heartbeat_interval_ms" << YAML::Value << cluster.heartbeat_interval_ms;
  out << YAML::Key << "max_queued_events" << YAML::Value << cluster.max_queued_events;
  out << YAML::Key << "index_address" << YAML::Value << cluster.index_address;
  out << YAML::Key << "advertise_grpc" << YAML::Value << cluster.advertise_grpc;
  out << YAML::Key << "advertise_ucx" << YAML::Value << cluster.advertise_ucx;
  out << YAML::Key << "stream_max_age_seconds" << YAML::Value << cluster.stream_max_age_seconds;
  out << YAML::Key << "stream_max_bytes" << YAML::Value << cluster.stream_max_bytes;
  out << YAML::Key << "nats_token" << YAML::Value << redact(cluster.nats_token);
  out << YAML::Key << "nats_user" << YAML::Value << cluster.nats_user;
  out << YAML::Key << "nats_password" << YAML::Value << redact(cluster.nats_password);
  out << YAML::Key << "nats_ca_file" << YAML::Value << cluster.nats_ca_file;
  out << YAML::Key << "nats_cert_file" << YAML::Value << cluster.nats_cert_file;
  out << YAML::Key << "nats_key_file" << YAML::Value << cluster.nats_key_file;
  out << YAML::Key << "nats_tls_name" << YAML::Value << cluster.nats_tls_name;
  out << YAML::Key << "index_token" << YAML::Value << redact(cluster.index_token);
  out << YAML::Key << "index_ca_file" << YAML::Value << cluster.index_ca_file;
  out << YAML::Key << "index_tls_name" << YAML::Value << cluster.index_tls_name;
  out << YAML::EndMap;
  const BlobCacheOptions& b = dram.blob;
  out << YAML::Key << "blob" << YAML::Value << YAML::BeginMap;
  out << YAML::Key << "endpoint" << YAML::Value << b.endpoint;
  out << YAML::Key << "account" << YAML::Value << b.account;
  out << YAML::Key << "container" << YAML::Value << b.container;
  out << YAML::Key << "prefix" << YAML::Value << b.prefix;
  out << YAML::Key << "key" << YAML::Value << redact(b.shared_key);
  out << YAML::Key << "sas" << YAML::Value << redact(b.sas);
  out << YAML::Key << "policy" << YAML::Value << b.policy;
  out << YAML::Key << "probe" << YAML::Value << b.probe;
  out << YAML::Key << "queue_chunks" << YAML::Value << b.queue_chunks;
  out << YAML::Key << "queue_bytes" << YAML::Value << b.queue_bytes;
  out << YAML::Key << "upload_workers" << YAML::Value << b.upload_workers;
  out << YAML::Key << "capacity" << YAML::Value << b.capacity_bytes;
  out << YAML::Key << "max_connections" << YAML::Value << b.max_connections;
  out << YAML::Key << "single_put_max" << YAML::Value << b.single_put_max_bytes;
  out << YAML::Key << "block_size" << YAML::Value << b.block_bytes;
  out << YAML::Key << "get_range_size" << YAML::Value << b.get_range_bytes;
  out << YAML::Key << "connect_timeout_ms" << YAML::Value << b.connect_timeout_ms;
  out << YAML::Key << "request_timeout_ms" << YAML::Value << b.request_timeout_ms;
  out << YAML::Key << "deadline_ms" << YAML::Value << b.deadline_ms;
  out << YAML::Key << "write_deadline_ms" << YAML::Value << b.write_deadline_ms;
  out << YAML::Key << "max_attempts" << YAML::Value << b.max_attempts;
  out << YAML::Key << "backoff_initial_ms" << YAML::Value << b.backoff_initial_ms;
  out << YAML::Key << "backoff_max_ms" << YAML::Value << b.backoff_max_ms;
  out << YAML::Key << "recheck_ms" << YAML::Value << b.recheck_ms;
  out << YAML::EndMap;
  out << YAML::Key << "peers" << YAML::Value << YAML::Flow << peers;
  out << YAML::Key << "ucx" << YAML::Value << YAML::BeginMap;
  out << YAML::Key << "enabled" << YAML::Value << ucx.enabled;
  out << YAML::Key << "progress_threads" << YAML::Value << ucx.progress_threads;
  out << YAML::Key << "lease_seconds" << YAML::Value << ucx.lease_seconds;
  out << YAML::Key << "lookup_timeout_ms" << YAML::Value << ucx.lookup_timeout_ms;
  out << YAML::Key << "transfer_timeout_ms" << YAML::Value << ucx.transfer_timeout_ms;
  out << YAML::Key << "peer_token" << YAML::Value << redact(ucx.peer_token);
  out << YAML::Key << "peer_ca_file" << YAML::Value << ucx.peer_ca_file;
  out << YAML::Key << "peer_tls_name" << YAML::Value << ucx.peer_tls_name;
  out << YAML::Key << "max_batch_chunks" << YAML::Value << ucx.max_batch_chunks;
  out << YAML::Key << "busy_poll_us" << YAML::Value << ucx.busy_poll_us;
  out << YAML::Key << "idle_peer_seconds" << YAML::Value << ucx.idle_peer_seconds;
  out << YAML::Key << "copy_threads" << YAML::Value << ucx.copy_threads;
  out << YAML::EndMap;
  out << YAML::EndMap;
  return std::string(out.c_str()) + "\n";
}

}  // namespace kvtier::server
