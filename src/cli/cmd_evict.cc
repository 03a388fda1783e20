// `kvtier evict`: removes chunks from kvtierd (admin token).
#include <cstdio>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "kvtier/client.h"
#include "src/cli/commands.h"
#include "src/cli/daemon_flags.h"

namespace kvtier::cli {

int RunEvict(const std::vector<std::string>& args) {
  Flags flags(args);
  if (flags.Help()) {
    std::printf(
        "usage: kvtier evict [--keys HEX,...] [namespace flags] [daemon flags]\n"
        "       kvtier evict --namespace-id HEX [daemon flags]\n\n"
        "Removes the given keys and every cached chunk extending them, or with no\n"
        "--keys every chunk of the namespace. Pinned chunks stay. Needs the admin\n"
        "token (--token or $KVTIER_TOKEN).\n\n%s\n%s",
        kNamespaceFlagsHelp, kDaemonFlagsHelp);
    return 0;
  }
  const std::string keys_text = flags.String("keys", "");
  const std::string ns_id_text = flags.String("namespace-id", "");
  NamespaceOptions nso = TakeNamespaceOptions(flags);
  ClientOptions co = TakeClientOptions(flags);
  if (absl::Status s = flags.Finish(); !s.ok()) return Fail("evict", s);
  absl::StatusOr<std::unique_ptr<Client>> client = Client::Create(co);
  if (!client.ok()) return Fail("evict", client.status());
  absl::StatusOr<uint64_t> removed;
  if (!ns_id_text.empty()) {
    uint64_t id = 0;
    if (!absl::SimpleHexAtoi(ns_id_text, &id) || id == 0) {
      return Fail("evict", absl::InvalidArgumentError(absl::StrCat("--namespace-id: '", ns_id_text,
                                                                   "' is not a 16-digit hex id")));
    }
    if (!keys_text.empty()) {
      return Fail("evict", absl::InvalidArgumentError(
                               "--keys: give the namespace flags, not --namespace-id, with keys"));
    }
    removed = (*client)->EvictNamespaceId(id);
  } else {
    absl::StatusOr<std::vector<BlockKey>> keys = ParseKeyList(keys_text);
    if (!keys.ok()) return Fail("evict", keys.status());
    absl::StatusOr<Namespace> ns = Namespace::Create(nso);
    if (!ns.ok()) return Fail("evict", ns.status());
    removed = (*client)->Evict(*ns, *keys);
  }
  if (!removed.ok()) return Fail("evict", removed.status());
  std::printf("removed %llu chunks\n", static_cast<unsigned long long>(*removed));
  return 0;
}

}  // namespace kvtier::cli
