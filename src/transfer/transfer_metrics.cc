#include "src/transfer/transfer_metrics.h"

#include <cstdint>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"

namespace kvtier::transfer {
namespace {

std::string Label(const std::string& v) {
  return absl::StrReplaceAll(v, {{"\\", "\\\\"}, {"\"", "\\\""}, {"\n", "\\n"}});
}

void Metric(std::string& out, const char* name, const char* type, const char* help,
            uint64_t value) {
  absl::StrAppend(&out, "# HELP ", name, " ", help, "\n# TYPE ", name, " ", type, "\n", name, " ",
                  value, "\n");
}

}  // namespace

std::string RenderTransferMetrics(const UcxStats& ucx, const PeerServiceStats& holder,
                                  const RemoteReaderStats* reader,
                                  const std::vector<PeerHealth>& peers) {
  std::string out;
  absl::StrAppend(&out,
                  "# HELP kvtier_peer_up Whether the last contact with a peer node succeeded "
                  "(1) or failed (0).\n# TYPE kvtier_peer_up gauge\n");
  for (const PeerHealth& p : peers) {
    absl::StrAppend(&out, "kvtier_peer_up{peer=\"", Label(p.address), "\"} ", p.up ? 1 : 0, "\n");
  }
  Metric(out, "kvtier_ucx_gets_total", "counter", "One-sided UCX gets completed.", ucx.gets);
  Metric(out, "kvtier_ucx_get_bytes_total", "counter", "Bytes read by UCX gets.", ucx.get_bytes);
  Metric(out, "kvtier_ucx_get_failures_total", "counter",
         "UCX gets that failed (peer error or deadline).", ucx.get_failures);
  Metric(out, "kvtier_ucx_endpoints_created_total", "counter", "UCX endpoints created.",
         ucx.connects);
  Metric(out, "kvtier_ucx_peer_failures_total", "counter", "UCX endpoints that reported an error.",
         ucx.peer_failures);
  Metric(out, "kvtier_ucx_direct_reads_total", "counter",
         "Of the gets: copies out of a peer's arena mapped in this process (UCX shared memory).",
         ucx.direct_reads);
  absl::StrAppend(&out,
                  "# HELP kvtier_ucx_arena_info How other nodes reach this node's DRAM arena: "
                  "memory=\"allocated\" (UCX shared memory: one-sided on this host too) or "
                  "\"registered\" (a memfd registered with UCX).\n"
                  "# TYPE kvtier_ucx_arena_info gauge\nkvtier_ucx_arena_info{memory=\"",
                  Label(ucx.arena), "\"} 1\n");
  Metric(out, "kvtier_ucx_calls_made_total", "counter",
         "Pin and release calls this node sent as UCX active messages and got answered.",
         ucx.calls_made);
  Metric(out, "kvtier_ucx_calls_served_total", "counter",
         "Pin and release calls other nodes sent as UCX active messages, answered here.",
         ucx.calls_served);
  Metric(out, "kvtier_peer_pin_requests_total", "counter",
         "PinForRead calls from other nodes that pinned at least one chunk.", holder.pin_requests);
  Metric(out, "kvtier_peer_pinned_chunks_total", "counter", "Chunks pinned for other nodes' reads.",
         holder.pinned_chunks);
  Metric(out, "kvtier_peer_pinned_bytes_total", "counter",
         "Encoded bytes of chunks pinned for other nodes.", holder.pinned_bytes);
  Metric(out, "kvtier_peer_leases_expired_total", "counter",
         "Read leases dropped because the reader did not release them in time.",
         holder.leases_expired);
  Metric(out, "kvtier_peer_leases", "gauge", "Read leases held for other nodes now.",
         holder.leases_held);
  Metric(out, "kvtier_peer_auth_failures_total", "counter",
         "Peer service calls refused for a missing or wrong ucx.peer_token.", holder.auth_failures);
  if (reader == nullptr) return out;
  Metric(out, "kvtier_remote_lookups_total", "counter", "Lookups that asked other nodes.",
         reader->lookups);
  Metric(out, "kvtier_remote_lookup_errors_total", "counter",
         "Lookups whose peers failed or missed the deadline.", reader->lookup_errors);
  Metric(out, "kvtier_remote_chunks_found_total", "counter",
         "Chunks Lookup reported on other nodes.", reader->remote_chunks);
  Metric(out, "kvtier_remote_fetches_total", "counter", "Chunks read from other nodes into DRAM.",
         reader->fetches);
  Metric(out, "kvtier_remote_fetched_bytes_total", "counter",
         "Encoded bytes read from other nodes.", reader->fetched_bytes);
  Metric(out, "kvtier_remote_fetch_misses_total", "counter", "Remote reads that found no holder.",
         reader->fetch_misses);
  Metric(out, "kvtier_remote_fetch_failures_total", "counter",
         "Remote reads that failed (peer down, deadline, no room).", reader->fetch_failures);
  Metric(out, "kvtier_remote_verify_failures_total", "counter",
         "Remote reads whose bytes failed the header or checksum check.", reader->verify_failures);
  Metric(out, "kvtier_remote_hellos_total", "counter", "Connections made to other nodes.",
         reader->hellos);
  Metric(out, "kvtier_remote_stale_endpoints_total", "counter",
         "Endpoints dropped (peer restarted, failed or stopped answering).", reader->stale_drops);
  Metric(out, "kvtier_remote_idle_endpoints_total", "counter",
         "Endpoints closed after ucx.idle_peer_seconds unused.", reader->idle_drops);
  Metric(out, "kvtier_remote_ucx_pins_total", "counter",
         "PinForReads answered by holders as UCX calls (the others went over gRPC or failed).",
         reader->ucx_pins);
  Metric(out, "kvtier_remote_merged_pins_total", "counter",
         "Fetches whose pin rode in another fetch's PinForRead.", reader->merged_pins);
  absl::StrAppend(&out,
                  "# HELP kvtier_remote_peer_info Connected peers and the UCX transports in use.\n"
                  "# TYPE kvtier_remote_peer_info gauge\n");
  for (const RemotePeerInfo& p : reader->peers) {
    absl::StrAppend(&out, "kvtier_remote_peer_info{node=\"", Label(p.node_id), "\",address=\"",
                    Label(p.address), "\",transports=\"", Label(p.transports), "\"} ",
                    p.failed ? 0 : 1, "\n");
  }
  return out;
}

}  // namespace kvtier::transfer
