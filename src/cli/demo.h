// `kvtier demo`: a multi-turn chat workload over the embedded cache.
#ifndef KVTIER_SRC_CLI_DEMO_H_
#define KVTIER_SRC_CLI_DEMO_H_

#include <string>
#include <vector>

namespace kvtier::cli {

int RunDemo(const std::vector<std::string>& args);

}  // namespace kvtier::cli

#endif  // KVTIER_SRC_CLI_DEMO_H_
