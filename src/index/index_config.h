// kvtier-index's configuration: defaults, then a YAML file (--config), then
// the environment (KVTIER_INDEX_*, KVTIER_STATUS_TOKEN, KVTIER_NATS_TOKEN,
// KVTIER_NATS_PASSWORD), then flags (later wins). Token and password files
// are read as they are applied. docs/cluster-index.md lists every key.
//
// Thread-safety: pure functions (apart from reading the config file).
#ifndef KVTIER_SRC_INDEX_INDEX_CONFIG_H_
#define KVTIER_SRC_INDEX_INDEX_CONFIG_H_

#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "src/index/index_server.h"

namespace kvtier::index {

struct IndexCommandLine {
  IndexServerOptions options;
  std::string log_level = "info";
  bool help = false;
  bool version = false;
  bool check_config = false;  // print the effective settings and exit
};

// Applies the variables of `env` (name, value) that name a setting:
// KVTIER_INDEX_NATS_URL, KVTIER_INDEX_GRPC, KVTIER_INDEX_HTTP,
// KVTIER_INDEX_LOG_LEVEL, KVTIER_INDEX_TOKEN (api_token), KVTIER_STATUS_TOKEN,
// KVTIER_NATS_TOKEN and KVTIER_NATS_PASSWORD. Others are ignored.
absl::Status ApplyIndexEnv(const std::vector<std::pair<std::string, std::string>>& env,
                           IndexCommandLine& out);

// The effective settings as YAML, tokens and passwords redacted.
std::string EffectiveIndexConfig(const IndexCommandLine& c);

// Applies a YAML document. Unknown keys are errors naming them.
absl::Status ApplyIndexYaml(const std::string& yaml_text, IndexCommandLine& out);

// Parses argv (without argv[0]): --config FILE is read first, then `env`
// (this process's environment when not given), then the other flags apply
// over it. InvalidArgument naming the flag, variable or key.
absl::StatusOr<IndexCommandLine> ParseIndexCommandLine(
    const std::vector<std::string>& args,
    const std::optional<std::vector<std::pair<std::string, std::string>>>& env = std::nullopt);

// Parses one --zmq value: "ENDPOINT" or "NODE_ID=ENDPOINT".
absl::StatusOr<VllmEndpoint> ParseZmqFlag(const std::string& value);

std::string IndexFlagsHelp();

}  // namespace kvtier::index

#endif  // KVTIER_SRC_INDEX_INDEX_CONFIG_H_
