// kvtier-index's configuration: defaults, then a YAML file (--config), then
// flags (later wins). docs/cluster-index.md lists every key.
//
// Thread-safety: pure functions (apart from reading the config file).
#ifndef KVTIER_SRC_INDEX_INDEX_CONFIG_H_
#define KVTIER_SRC_INDEX_INDEX_CONFIG_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "src/index/index_server.h"

namespace kvtier::index {

struct IndexCommandLine {
  IndexServerOptions options;
  std::string log_level = "info";
  bool help = false;
  bool version = false;
};

// Applies a YAML document. Unknown keys are errors naming them.
absl::Status ApplyIndexYaml(const std::string& yaml_text, IndexCommandLine& out);

// Parses argv (without argv[0]): --config FILE is read first, then the other
// flags apply over it. InvalidArgument naming the flag or key.
absl::StatusOr<IndexCommandLine> ParseIndexCommandLine(const std::vector<std::string>& args);

// Parses one --zmq value: "ENDPOINT" or "NODE_ID=ENDPOINT".
absl::StatusOr<VllmEndpoint> ParseZmqFlag(const std::string& value);

std::string IndexFlagsHelp();

}  // namespace kvtier::index

#endif  // KVTIER_SRC_INDEX_INDEX_CONFIG_H_
