// Flags shared by the CLI commands that talk to kvtierd: how to reach the
// daemon (--socket / --address, --token, TLS) and which namespace to use.
// Thread-safety: none (CLI helpers).
#ifndef KVTIER_SRC_CLI_DAEMON_FLAGS_H_
#define KVTIER_SRC_CLI_DAEMON_FLAGS_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "kvtier/client.h"
#include "kvtier/keys.h"
#include "kvtier/namespace.h"
#include "src/cli/flags.h"

namespace kvtier::cli {

// Help lines for the flags below.
inline constexpr const char* kDaemonFlagsHelp =
    "daemon flags:\n"
    "  --socket PATH       kvtierd's Unix socket (default: $KVTIER_SOCKET, else the\n"
    "                      daemon's default path)\n"
    "  --address HOST:PORT kvtierd's TCP listener instead of the socket\n"
    "  --token TOKEN       bearer token (default: $KVTIER_TOKEN); --token-file FILE\n"
    "  --tls-ca FILE       PEM roots that verify the daemon (TCP with TLS)\n"
    "  --tls-cert FILE --tls-key FILE   client certificate (mTLS)\n"
    "  --tls-server-name NAME           name expected in the daemon's certificate\n"
    "  --no-shm            stream bytes over gRPC instead of the shared arena\n";

inline constexpr const char* kNamespaceFlagsHelp =
    "namespace flags (defaults name the demo's namespace):\n"
    "  --model ID --revision REV --layers N --kv-heads N --head-size N\n"
    "  --kv-tensors 1|2 --block TOKENS --chunk-tokens TOKENS --dtype NAME\n"
    "  --tp-rank N --tp-size N --pp-rank N --pp-size N --salt SALT\n";

// Reads the daemon flags into client options.
ClientOptions TakeClientOptions(Flags& flags);
// Reads the namespace flags (missing ones: the demo's namespace).
NamespaceOptions TakeNamespaceOptions(Flags& flags);
// Parses "hex,hex,..." keys. InvalidArgument naming the position.
absl::StatusOr<std::vector<BlockKey>> ParseKeyList(const std::string& text);

// Prints "kvtier CMD: message" to stderr and returns 1 (2 for bad usage).
int Fail(const char* cmd, const absl::Status& status);

}  // namespace kvtier::cli

#endif  // KVTIER_SRC_CLI_DAEMON_FLAGS_H_
