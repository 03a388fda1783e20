// `kvtier stats`: the daemon's statistics as a table (or JSON).
#include <cstdio>

#include "absl/strings/str_cat.h"
#include "kvtier/client.h"
#include "src/cli/commands.h"
#include "src/cli/daemon_flags.h"
#include "src/cli/report.h"

namespace kvtier::cli {

int RunStats(const std::vector<std::string>& args) {
  Flags flags(args);
  if (flags.Help()) {
    std::printf(
        "usage: kvtier stats [--json] [daemon flags]\n\n"
        "Prints kvtierd's health and per-tier statistics.\n\n%s",
        kDaemonFlagsHelp);
    return 0;
  }
  const bool json = flags.Bool("json");
  ClientOptions co = TakeClientOptions(flags);
  if (absl::Status s = flags.Finish(); !s.ok()) return Fail("stats", s);
  absl::StatusOr<std::unique_ptr<Client>> client = Client::Create(co);
  if (!client.ok()) return Fail("stats", client.status());
  absl::StatusOr<DaemonHealth> health = (*client)->Health();
  if (!health.ok()) return Fail("stats", health.status());
  absl::StatusOr<CacheStats> st = (*client)->FetchStats();
  if (!st.ok()) return Fail("stats", st.status());
  if (json) {
    Json tiers = Json::Array();
    for (const TierStats& t : st->tiers) {
      tiers.Push(Json::Object()
                     .Set("tier", std::string(TierName(t.tier)))
                     .Set("capacity_bytes", t.capacity_bytes)
                     .Set("used_bytes", t.used_bytes)
                     .Set("chunks", t.chunks)
                     .Set("pinned_chunks", t.pinned_chunks)
                     .Set("hits", t.hits)
                     .Set("misses", t.misses)
                     .Set("saves", t.saves)
                     .Set("save_rejections", t.save_rejections)
                     .Set("evictions", t.evictions)
                     .Set("bytes_written", t.bytes_written)
                     .Set("bytes_read", t.bytes_read)
                     .Set("corrupt_chunks", t.corrupt_chunks));
    }
    Json j = Json::Object();
    j.Set("serving", health->serving)
        .Set("version", health->version)
        .Set("shared_memory", !health->shm_socket.empty())
        .Set("lookups", st->lookups)
        .Set("lookup_chunks", st->lookup_chunks)
        .Set("lookup_hits", st->lookup_hits)
        .Set("huge_pages", st->huge_pages)
        .Set("tiers", std::move(tiers));
    std::printf("%s\n", j.Dump().c_str());
    return 0;
  }
  std::printf("kvtierd %s: %s, shared memory %s, arena %s%s\n\n", health->version.c_str(),
              health->serving ? "serving" : "draining", health->shm_socket.empty() ? "off" : "on",
              HumanBytes(health->arena_bytes).c_str(), st->huge_pages ? " (huge pages)" : "");
  Table t({"tier", "capacity", "used", "chunks", "pinned", "hits", "misses", "saves", "refused",
           "evicted", "written", "read", "corrupt"});
  for (const TierStats& s : st->tiers) {
    t.AddRow({std::string(TierName(s.tier)), HumanBytes(s.capacity_bytes), HumanBytes(s.used_bytes),
              absl::StrCat(s.chunks), absl::StrCat(s.pinned_chunks), absl::StrCat(s.hits),
              absl::StrCat(s.misses), absl::StrCat(s.saves), absl::StrCat(s.save_rejections),
              absl::StrCat(s.evictions), HumanBytes(s.bytes_written), HumanBytes(s.bytes_read),
              absl::StrCat(s.corrupt_chunks)});
  }
  t.Print();
  std::printf("\nlookups %llu, chunks asked %llu, chunks hit %llu\n",
              static_cast<unsigned long long>(st->lookups),
              static_cast<unsigned long long>(st->lookup_chunks),
              static_cast<unsigned long long>(st->lookup_hits));
  return 0;
}

}  // namespace kvtier::cli
