// `kvtier lookup`: how much of a chain (keys or token ids) kvtierd holds.
#include <cstdio>
#include <fstream>
#include <sstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "kvtier/client.h"
#include "src/cli/commands.h"
#include "src/cli/daemon_flags.h"
#include "src/cli/report.h"

namespace kvtier::cli {
namespace {

absl::StatusOr<std::vector<TokenId>> ParseTokens(const std::string& text, const std::string& what) {
  std::vector<TokenId> out;
  size_t i = 0;
  for (absl::string_view part :
       absl::StrSplit(text, absl::ByAnyChar(", \n\t"), absl::SkipWhitespace())) {
    uint32_t v = 0;
    if (!absl::SimpleAtoi(part, &v)) {
      return absl::InvalidArgumentError(
          absl::StrCat(what, "[", i, "]: '", part, "' is not a token id"));
    }
    out.push_back(v);
    ++i;
  }
  return out;
}

}  // namespace

int RunLookup(const std::vector<std::string>& args) {
  Flags flags(args);
  if (flags.Help()) {
    std::printf(
        "usage: kvtier lookup (--keys HEX,HEX,... | --tokens 1,2,... | --tokens-file FILE)\n"
        "                     [--partial] [--json] [namespace flags] [daemon flags]\n\n"
        "Asks kvtierd how many leading chunks of a chain are cached and where. With\n"
        "token ids the daemon hashes them into chunk keys (full chunks, plus a\n"
        "shorter last one with --partial) and the table lists every chunk's key.\n\n%s\n%s",
        kNamespaceFlagsHelp, kDaemonFlagsHelp);
    return 0;
  }
  const std::string keys_text = flags.String("keys", "");
  const std::string tokens_text = flags.String("tokens", "");
  const std::string tokens_file = flags.String("tokens-file", "");
  const bool partial = flags.Bool("partial");
  const bool json = flags.Bool("json");
  NamespaceOptions nso = TakeNamespaceOptions(flags);
  ClientOptions co = TakeClientOptions(flags);
  if (absl::Status s = flags.Finish(); !s.ok()) return Fail("lookup", s);
  if (static_cast<int>(!keys_text.empty()) + static_cast<int>(!tokens_text.empty()) +
          static_cast<int>(!tokens_file.empty()) !=
      1) {
    return Fail("lookup",
                absl::InvalidArgumentError("give exactly one of --keys, --tokens, --tokens-file"));
  }
  absl::StatusOr<Namespace> ns = Namespace::Create(nso);
  if (!ns.ok()) return Fail("lookup", ns.status());
  absl::StatusOr<std::unique_ptr<Client>> client = Client::Create(co);
  if (!client.ok()) return Fail("lookup", client.status());

  std::vector<BlockKey> keys;
  LookupResult result;
  if (!keys_text.empty()) {
    absl::StatusOr<std::vector<BlockKey>> k = ParseKeyList(keys_text);
    if (!k.ok()) return Fail("lookup", k.status());
    keys = *k;
    absl::StatusOr<LookupResult> r = (*client)->Lookup(*ns, keys);
    if (!r.ok()) return Fail("lookup", r.status());
    result = *r;
  } else {
    std::string text = tokens_text;
    if (!tokens_file.empty()) {
      std::ifstream in(tokens_file);
      if (!in) {
        return Fail("lookup", absl::InvalidArgumentError(
                                  absl::StrCat("--tokens-file: cannot read '", tokens_file, "'")));
      }
      std::stringstream ss;
      ss << in.rdbuf();
      text = ss.str();
    }
    absl::StatusOr<std::vector<TokenId>> tokens =
        ParseTokens(text, tokens_file.empty() ? "--tokens" : "--tokens-file");
    if (!tokens.ok()) return Fail("lookup", tokens.status());
    absl::StatusOr<TokenLookup> r = (*client)->LookupTokens(*ns, *tokens, partial);
    if (!r.ok()) return Fail("lookup", r.status());
    result = r->result;
    keys = Namespace::Keys(r->chunks);
  }
  if (json) {
    Json chunks = Json::Array();
    for (size_t i = 0; i < keys.size(); ++i) {
      chunks.Push(Json::Object()
                      .Set("key", keys[i].ToHex())
                      .Set("tier", i < result.matched ? std::string(TierName(result.chunks[i].tier))
                                                      : std::string("none")));
    }
    std::printf("%s\n", Json::Object()
                            .Set("namespace_id", ns->IdHex())
                            .Set("chunks_asked", static_cast<uint64_t>(keys.size()))
                            .Set("matched", static_cast<uint64_t>(result.matched))
                            .Set("chunks", std::move(chunks))
                            .Dump()
                            .c_str());
    return 0;
  }
  Table t({"#", "key", "tier"});
  for (size_t i = 0; i < keys.size(); ++i) {
    t.AddRow({absl::StrCat(i), keys[i].ToHex(),
              i < result.matched ? std::string(TierName(result.chunks[i].tier)) : "-"});
  }
  t.Print();
  std::printf("\nnamespace %s: %zu of %zu leading chunks cached\n", ns->IdHex().c_str(),
              result.matched, keys.size());
  return 0;
}

}  // namespace kvtier::cli
