// `kvtier` subcommands that talk to kvtierd (src/cli/cmd_*.cc).
#ifndef KVTIER_SRC_CLI_COMMANDS_H_
#define KVTIER_SRC_CLI_COMMANDS_H_

#include <string>
#include <vector>

namespace kvtier::cli {

int RunStats(const std::vector<std::string>& args);   // kvtier stats
int RunLookup(const std::vector<std::string>& args);  // kvtier lookup
int RunPut(const std::vector<std::string>& args);     // kvtier put FILE
int RunGet(const std::vector<std::string>& args);     // kvtier get NAME OUT
int RunEvict(const std::vector<std::string>& args);   // kvtier evict
int RunSoak(const std::vector<std::string>& args);    // kvtier soak (starts its own kvtierd)

}  // namespace kvtier::cli

#endif  // KVTIER_SRC_CLI_COMMANDS_H_
