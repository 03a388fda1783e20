#include "src/index/index_config.h"

#include <yaml-cpp/yaml.h>

#include <cstdlib>
#include <fstream>
#include <optional>
#include <set>
#include <sstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "src/common/status_macros.h"
#include "src/index/event_publisher.h"
#include "src/server/config.h"

namespace kvtier::index {
namespace {

absl::Status Invalid(absl::string_view field, absl::string_view why) {
  return absl::InvalidArgumentError(absl::StrCat(field, ": ", why));
}

absl::StatusOr<uint64_t> ParseU64(const std::string& v, const std::string& field, uint64_t lo,
                                  uint64_t hi) {
  uint64_t out = 0;
  if (!absl::SimpleAtoi(v, &out) || out < lo || out > hi) {
    return Invalid(field, absl::StrCat("'", v, "' is not a whole number in ", lo, "..", hi));
  }
  return out;
}

absl::StatusOr<double> ParseSeconds(const std::string& v, const std::string& field) {
  double out = 0;
  if (!absl::SimpleAtod(v, &out) || !(out > 0) || out > 86400 * 365) {
    return Invalid(field, absl::StrCat("'", v, "' is not a positive number of seconds"));
  }
  return out;
}

absl::StatusOr<bool> ParseBool(const std::string& v, const std::string& field) {
  if (v == "true" || v == "1" || v == "yes") return true;
  if (v == "false" || v == "0" || v == "no") return false;
  return Invalid(field, absl::StrCat("'", v, "' is not true or false"));
}

// One scalar setting, by its YAML path.
absl::Status Apply(const std::string& key, const std::string& v, const std::string& field,
                   IndexCommandLine& c) {
  IndexServerOptions& o = c.options;
  if (key == "nats.url") {
    o.nats.url = v;
  } else if (key == "nats.stream") {
    o.stream.name = v;
  } else if (key == "nats.max_age_seconds") {
    KVTIER_ASSIGN_OR_RETURN(double s, ParseSeconds(v, field));
    o.stream.max_age = absl::Seconds(s);
  } else if (key == "nats.max_bytes") {
    KVTIER_ASSIGN_OR_RETURN(uint64_t b, server::ParseByteSize(v, field));
    o.stream.max_bytes = static_cast<int64_t>(b);
  } else if (key == "nats.create_stream") {
    KVTIER_ASSIGN_OR_RETURN(o.create_stream, ParseBool(v, field));
  } else if (key == "nats.memory_storage") {
    KVTIER_ASSIGN_OR_RETURN(bool m, ParseBool(v, field));
    o.stream.file_storage = !m;
  } else if (key == "nats.token") {
    o.nats.token = v;
  } else if (key == "nats.token_file") {
    KVTIER_ASSIGN_OR_RETURN(o.nats.token, server::ReadTokenFile(v, field));
  } else if (key == "nats.user") {
    o.nats.user = v;
  } else if (key == "nats.password") {
    o.nats.password = v;
  } else if (key == "nats.password_file") {
    KVTIER_ASSIGN_OR_RETURN(o.nats.password, server::ReadTokenFile(v, field));
  } else if (key == "nats.ca_file") {
    o.nats.ca_file = v;
  } else if (key == "nats.cert_file") {
    o.nats.cert_file = v;
  } else if (key == "nats.key_file") {
    o.nats.key_file = v;
  } else if (key == "nats.tls_name") {
    o.nats.tls_name = v;
  } else if (key == "api_token") {
    o.api_token = v;
    o.api_token_file.clear();
  } else if (key == "api_token_file") {
    KVTIER_ASSIGN_OR_RETURN(o.api_token, server::ReadTokenFile(v, field));
    o.api_token_file = v;
  } else if (key == "allow_insecure_tcp") {
    KVTIER_ASSIGN_OR_RETURN(o.allow_insecure_tcp, ParseBool(v, field));
  } else if (key == "tls.cert_file") {
    o.tls.cert_file = v;
  } else if (key == "tls.key_file") {
    o.tls.key_file = v;
  } else if (key == "tls.client_ca_file") {
    o.tls.client_ca_file = v;
  } else if (key == "tls.require_client_cert") {
    KVTIER_ASSIGN_OR_RETURN(o.tls.require_client_cert, ParseBool(v, field));
  } else if (key == "tls.reload_seconds") {
    KVTIER_ASSIGN_OR_RETURN(uint64_t r, ParseU64(v, field, 1, 86400));
    o.tls.reload_seconds = static_cast<uint32_t>(r);
  } else if (key == "grpc") {
    o.grpc = v;
  } else if (key == "http") {
    o.http = v;
  } else if (key == "status_token") {
    o.status_token = v;
    o.status_token_file.clear();
  } else if (key == "status_token_file") {
    KVTIER_ASSIGN_OR_RETURN(o.status_token, server::ReadTokenFile(v, field));
    o.status_token_file = v;
  } else if (key == "max_entries") {
    KVTIER_ASSIGN_OR_RETURN(o.index.max_entries, ParseU64(v, field, 1, uint64_t{1} << 40));
  } else if (key == "shards") {
    KVTIER_ASSIGN_OR_RETURN(uint64_t s, ParseU64(v, field, 1, 65536));
    o.index.shards = static_cast<uint32_t>(s);
  } else if (key == "max_nodes") {
    KVTIER_ASSIGN_OR_RETURN(uint64_t s, ParseU64(v, field, 1, 1u << 24));
    o.index.max_nodes = static_cast<uint32_t>(s);
  } else if (key == "node_timeout_seconds") {
    KVTIER_ASSIGN_OR_RETURN(double s, ParseSeconds(v, field));
    o.index.node_timeout = absl::Seconds(s);
  } else if (key == "max_chain") {
    KVTIER_ASSIGN_OR_RETURN(uint64_t s, ParseU64(v, field, 1, 1u << 20));
    o.max_chain = static_cast<uint32_t>(s);
  } else if (key == "log_level") {
    if (!server::ParseLogLevel(v).ok()) {
      return Invalid(field, absl::StrCat("'", v, "' is not debug, info, warn or error"));
    }
    c.log_level = v;
  } else {
    return Invalid(field, "unknown setting");
  }
  return absl::OkStatus();
}

const std::set<std::string>& TopKeys() {
  static const auto* k = new std::set<std::string>{
      "nats",        "grpc",   "http",      "status_token",         "status_token_file",
      "max_entries", "shards", "max_nodes", "node_timeout_seconds", "max_chain",
      "log_level",   "zmq",    "api_token", "api_token_file",       "allow_insecure_tcp",
      "tls"};
  return *k;
}
const std::set<std::string>& NatsKeys() {
  static const auto* k =
      new std::set<std::string>{"url",           "stream",         "max_age_seconds", "max_bytes",
                                "create_stream", "memory_storage", "token",           "token_file",
                                "user",          "password",       "password_file",   "ca_file",
                                "cert_file",     "key_file",       "tls_name"};
  return *k;
}
const std::set<std::string>& TlsKeys() {
  static const auto* k = new std::set<std::string>{"cert_file", "key_file", "client_ca_file",
                                                   "require_client_cert", "reload_seconds"};
  return *k;
}

absl::Status CheckKeys(const YAML::Node& n, const std::string& where,
                       const std::set<std::string>& allowed) {
  if (!n.IsMap()) return Invalid(where.empty() ? "config" : where, "must be a mapping");
  for (const auto& kv : n) {
    const std::string k = kv.first.as<std::string>();
    if (!allowed.contains(k)) {
      return Invalid(where.empty() ? k : absl::StrCat(where, ".", k), "unknown key");
    }
  }
  return absl::OkStatus();
}

absl::Status ApplyZmq(const YAML::Node& list, IndexCommandLine& c) {
  if (!list.IsSequence()) return Invalid("zmq", "must be a list");
  for (size_t i = 0; i < list.size(); ++i) {
    const std::string f = absl::StrCat("zmq[", i, "]");
    const YAML::Node& n = list[i];
    if (n.IsScalar()) {
      KVTIER_ASSIGN_OR_RETURN(VllmEndpoint e, ParseZmqFlag(n.as<std::string>()));
      c.options.zmq.push_back(std::move(e));
      continue;
    }
    KVTIER_RETURN_IF_ERROR(CheckKeys(n, f, {"endpoint", "node_id", "topic", "namespace_id"}));
    VllmEndpoint e;
    if (!n["endpoint"]) return Invalid(f + ".endpoint", "required");
    e.endpoint = n["endpoint"].as<std::string>();
    if (n["node_id"]) {
      e.node_id = n["node_id"].as<std::string>();
      KVTIER_RETURN_IF_ERROR(ValidateNodeId(e.node_id, f + ".node_id"));
    }
    if (n["topic"]) e.topic = n["topic"].as<std::string>();
    if (n["namespace_id"]) {
      const std::string v = n["namespace_id"].as<std::string>();
      if (!absl::SimpleHexAtoi(v, &e.namespace_id) || e.namespace_id == 0) {
        return Invalid(f + ".namespace_id", absl::StrCat("'", v, "' is not non-zero hex"));
      }
    }
    c.options.zmq.push_back(std::move(e));
  }
  return absl::OkStatus();
}

struct Flag {
  const char* name;
  const char* key;  // YAML path; nullptr for special flags
  const char* help;
};

struct EnvVar {
  const char* name;
  const char* key;  // YAML path
};

constexpr EnvVar kEnv[] = {
    {"KVTIER_INDEX_NATS_URL", "nats.url"},   {"KVTIER_INDEX_GRPC", "grpc"},
    {"KVTIER_INDEX_HTTP", "http"},           {"KVTIER_INDEX_LOG_LEVEL", "log_level"},
    {"KVTIER_STATUS_TOKEN", "status_token"}, {"KVTIER_INDEX_TOKEN", "api_token"},
    {"KVTIER_NATS_TOKEN", "nats.token"},     {"KVTIER_NATS_PASSWORD", "nats.password"},
};

constexpr Flag kFlags[] = {
    {"config", nullptr, "YAML configuration file"},
    {"nats", "nats.url", "NATS server URL(s), comma-separated (nats://127.0.0.1:4222)"},
    {"grpc", "grpc", "host:port of the Index gRPC service (127.0.0.1:7070)"},
    {"http", "http", "host:port of /metrics /healthz /readyz (127.0.0.1:9465); '' = off"},
    {"status-token", "status_token", "bearer token of the status page (needed off loopback)"},
    {"status-token-file", "status_token_file", "file holding the status page's token"},
    {"api-token-file", "api_token_file", "file holding the token Index calls must send"},
    {"tls-cert", "tls.cert_file", "PEM server certificate (TLS on the gRPC listener)"},
    {"tls-key", "tls.key_file", "PEM private key of --tls-cert"},
    {"tls-client-ca", "tls.client_ca_file", "PEM CA of client certificates"},
    {"require-client-cert", "tls.require_client_cert", "mTLS: true or false"},
    {"allow-insecure-tcp", "allow_insecure_tcp", "allow a non-loopback --grpc without TLS"},
    {"nats-token-file", "nats.token_file", "file holding the NATS token"},
    {"nats-ca", "nats.ca_file", "PEM CA of the NATS server (TLS to NATS)"},
    {"max-entries", "max_entries", "(key, node) entries kept; oldest dropped first"},
    {"zmq", nullptr, "vLLM KV-event endpoint to read, [NODE_ID=]tcp://host:port (repeatable)"},
    {"node-timeout", "node_timeout_seconds", "seconds without a heartbeat before a node is dead"},
    {"stream", "nats.stream", "JetStream stream name (KVTIER_EVENTS)"},
    {"stream-max-age", "nats.max_age_seconds", "replay window of a created stream, seconds"},
    {"stream-max-bytes", "nats.max_bytes", "bytes kept by a created stream (e.g. 1GiB)"},
    {"log-level", "log_level", "debug | info | warn | error"},
};

}  // namespace

absl::StatusOr<VllmEndpoint> ParseZmqFlag(const std::string& value) {
  VllmEndpoint e;
  const size_t scheme = value.find("://");
  const size_t eq = value.find('=');
  if (eq != std::string::npos && (scheme == std::string::npos || eq < scheme)) {
    e.node_id = value.substr(0, eq);
    e.endpoint = value.substr(eq + 1);
    KVTIER_RETURN_IF_ERROR(ValidateNodeId(e.node_id, "--zmq node id"));
  } else {
    e.endpoint = value;
  }
  if (e.endpoint.find("://") == std::string::npos) {
    return Invalid("--zmq", absl::StrCat("'", value, "' is not [NODE_ID=]tcp://host:port"));
  }
  return e;
}

absl::Status ApplyIndexYaml(const std::string& yaml_text, IndexCommandLine& out) {
  try {
    const YAML::Node root = YAML::Load(yaml_text);
    if (root.IsNull()) return absl::OkStatus();
    KVTIER_RETURN_IF_ERROR(CheckKeys(root, "", TopKeys()));
    for (const auto& kv : root) {
      const std::string k = kv.first.as<std::string>();
      if (k == "zmq") {
        KVTIER_RETURN_IF_ERROR(ApplyZmq(kv.second, out));
      } else if (k == "nats" || k == "tls") {
        KVTIER_RETURN_IF_ERROR(CheckKeys(kv.second, k, k == "nats" ? NatsKeys() : TlsKeys()));
        for (const auto& nk : kv.second) {
          const std::string path = absl::StrCat(k, ".", nk.first.as<std::string>());
          if (!nk.second.IsScalar()) return Invalid(path, "must be a single value");
          KVTIER_RETURN_IF_ERROR(Apply(path, nk.second.as<std::string>(), path, out));
        }
      } else {
        if (!kv.second.IsScalar()) return Invalid(k, "must be a single value");
        KVTIER_RETURN_IF_ERROR(Apply(k, kv.second.as<std::string>(), k, out));
      }
    }
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("config: line ", e.mark.line + 1, ": ", e.msg));
  }
  return absl::OkStatus();
}

absl::Status ApplyIndexEnv(const std::vector<std::pair<std::string, std::string>>& env,
                           IndexCommandLine& out) {
  for (const auto& [name, value] : env) {
    for (const EnvVar& e : kEnv) {
      if (name == e.name) KVTIER_RETURN_IF_ERROR(Apply(e.key, value, name, out));
    }
  }
  return absl::OkStatus();
}

std::string EffectiveIndexConfig(const IndexCommandLine& c) {
  const IndexServerOptions& o = c.options;
  auto redact = [](const std::string& v) { return v.empty() ? std::string() : "<redacted>"; };
  YAML::Emitter out;
  out << YAML::BeginMap;
  out << YAML::Key << "nats" << YAML::Value << YAML::BeginMap;
  out << YAML::Key << "url" << YAML::Value << RedactNatsUrls(o.nats.url);
  out << YAML::Key << "stream" << YAML::Value << o.stream.name;
  out << YAML::Key << "max_age_seconds" << YAML::Value << absl::ToDoubleSeconds(o.stream.max_age);
  out << YAML::Key << "max_bytes" << YAML::Value << o.stream.max_bytes;
  out << YAML::Key << "create_stream" << YAML::Value << o.create_stream;
  out << YAML::Key << "memory_storage" << YAML::Value << !o.stream.file_storage;
  out << YAML::Key << "token" << YAML::Value << redact(o.nats.token);
  out << YAML::Key << "user" << YAML::Value << o.nats.user;
  out << YAML::Key << "password" << YAML::Value << redact(o.nats.password);
  out << YAML::Key << "ca_file" << YAML::Value << o.nats.ca_file;
  out << YAML::Key << "cert_file" << YAML::Value << o.nats.cert_file;
  out << YAML::Key << "key_file" << YAML::Value << o.nats.key_file;
  out << YAML::Key << "tls_name" << YAML::Value << o.nats.tls_name;
  out << YAML::EndMap;
  out << YAML::Key << "grpc" << YAML::Value << o.grpc;
  out << YAML::Key << "allow_insecure_tcp" << YAML::Value << o.allow_insecure_tcp;
  out << YAML::Key << "api_token" << YAML::Value << redact(o.api_token);
  out << YAML::Key << "tls" << YAML::Value << YAML::BeginMap;
  out << YAML::Key << "cert_file" << YAML::Value << o.tls.cert_file;
  out << YAML::Key << "key_file" << YAML::Value << o.tls.key_file;
  out << YAML::Key << "client_ca_file" << YAML::Value << o.tls.client_ca_file;
  out << YAML::Key << "require_client_cert" << YAML::Value << o.tls.require_client_cert;
  out << YAML::Key << "reload_seconds" << YAML::Value << o.tls.reload_seconds;
  out << YAML::EndMap;
  out << YAML::Key << "http" << YAML::Value << o.http;
  out << YAML::Key << "status_token" << YAML::Value << redact(o.status_token);
  out << YAML::Key << "max_entries" << YAML::Value << o.index.max_entries;
  out << YAML::Key << "shards" << YAML::Value << o.index.shards;
  out << YAML::Key << "max_nodes" << YAML::Value << o.index.max_nodes;
  out << YAML::Key << "node_timeout_seconds" << YAML::Value
      << absl::ToDoubleSeconds(o.index.node_timeout);
  out << YAML::Key << "max_chain" << YAML::Value << o.max_chain;
  out << YAML::Key << "log_level" << YAML::Value << c.log_level;
  out << YAML::Key << "zmq" << YAML::Value << YAML::BeginSeq;
  for (const VllmEndpoint& e : o.zmq) {
    out << (e.node_id.empty() ? e.endpoint : absl::StrCat(e.node_id, "=", e.endpoint));
  }
  out << YAML::EndSeq;
  out << YAML::EndMap;
  return std::string(out.c_str()) + "\n";
}

absl::StatusOr<IndexCommandLine> ParseIndexCommandLine(
    const std::vector<std::string>& args,
    const std::optional<std::vector<std::pair<std::string, std::string>>>& env) {
  IndexCommandLine c;
  std::vector<std::pair<std::string, std::string>> settings;
  std::string config_file;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a == "-h" || a == "--help") {
      c.help = true;
      continue;
    }
    if (a == "--version") {
      c.version = true;
      continue;
    }
    if (a == "--check-config") {
      c.check_config = true;
      continue;
    }
    if (a.rfind("--", 0) != 0) {
      return Invalid(a, "kvtier-index takes only --flags");
    }
    std::string name = a.substr(2);
    std::optional<std::string> value;
    if (size_t eq = name.find('='); eq != std::string::npos) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
    }
    const Flag* flag = nullptr;
    for (const Flag& f : kFlags) {
      if (name == f.name) flag = &f;
    }
    if (flag == nullptr) return Invalid("--" + name, "unknown flag");
    if (!value.has_value()) {
      if (i + 1 >= args.size()) return Invalid("--" + name, "needs a value");
      value = args[++i];
    }
    if (name == "config") {
      config_file = *value;
    } else {
      settings.emplace_back(name, *value);
    }
  }
  if (!config_file.empty()) {
    std::ifstream in(config_file);
    if (!in) return Invalid("--config", absl::StrCat("cannot read '", config_file, "'"));
    std::stringstream ss;
    ss << in.rdbuf();
    absl::Status s = ApplyIndexYaml(ss.str(), c);
    if (!s.ok()) return absl::InvalidArgumentError(absl::StrCat(config_file, ": ", s.message()));
  }
  if (env.has_value()) {
    KVTIER_RETURN_IF_ERROR(ApplyIndexEnv(*env, c));
  } else {
    std::vector<std::pair<std::string, std::string>> process_env;
    for (const EnvVar& e : kEnv) {
      if (const char* v = std::getenv(e.name); v != nullptr) process_env.emplace_back(e.name, v);
    }
    KVTIER_RETURN_IF_ERROR(ApplyIndexEnv(process_env, c));
  }
  bool zmq_from_flags = false;
  for (const auto& [name, value] : settings) {
    if (name == "zmq") {
      if (!zmq_from_flags) c.options.zmq.clear();  // flags replace the file's list
      zmq_from_flags = true;
      KVTIER_ASSIGN_OR_RETURN(VllmEndpoint e, ParseZmqFlag(value));
      c.options.zmq.push_back(std::move(e));
      continue;
    }
    for (const Flag& f : kFlags) {
      if (name == f.name && f.key != nullptr) {
        KVTIER_RETURN_IF_ERROR(Apply(f.key, value, "--" + name, c));
      }
    }
  }
  if (!c.help && !c.version) KVTIER_RETURN_IF_ERROR(c.options.Validate());
  return c;
}

std::string IndexFlagsHelp() {
  std::string out;
  for (const Flag& f : kFlags)
    absl::StrAppend(&out, "  --", f.name, " VALUE\n      ", f.help, "\n");
  absl::StrAppend(&out, "  --check-config\n      print the effective settings and exit\n");
  absl::StrAppend(&out, "  --help, --version\n\nenvironment (over --config, under flags):\n");
  for (const EnvVar& e : kEnv) absl::StrAppend(&out, "  ", e.name, " (", e.key, ")\n");
  return out;
}

}  // namespace kvtier::index
