#include "src/cli/bench.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

namespace kvtier::cli {

const std::vector<BenchSuite>& BenchSuites() {
  static const std::vector<BenchSuite> suites = {
      {"dram", "DRAM tier Save/Load beside memcpy; Lookup latency",
       "kvtier bench dram [--json] [--sizes 256KiB,1MiB,4MiB] [--threads 1,2]\n"
       "                  [--capacity 1GiB] [--seconds 0.5] [--reps 5] [--chain 128]\n\n"
       "Saves and loads chunks of each size through the DRAM tier with 1 and 2\n"
       "threads, beside plain memcpy of the same sizes on the same threads, and\n"
       "prints the median throughput of --reps repetitions and the median of\n"
       "the per-repetition ratios to memcpy (each repetition runs memcpy and\n"
       "kvtier back to back).\n"
       "Then times Lookup of a --chain-chunk chain (median, p99).\n"
       "Targets: Save and Load >= 0.8x memcpy; Lookup <= 10 us.",
       RunDramBench},
      {"daemon", "kvtierd Save/Load (shared memory, gRPC) beside memcpy and redis; Lookup",
       "kvtier bench daemon [--json] [--chunk 1MiB] [--clients 2] [--batch 8]\n"
       "                    [--seconds 1] [--reps 3] [--dram 1GiB] [--chain 64]\n"
       "                    [--lookup-seconds 1] [--paths shm,grpc,tcp]\n"
       "                    [--message-bytes 1MiB]\n"
       "                    [--kvtierd PATH] [--redis-server PATH]\n\n"
       "Starts kvtierd and redis-server (free loopback port and a Unix socket, no\n"
       "persistence; kvtierd's arena prefaulted, as in a long-running daemon), then\n"
       "saves and loads --chunk chunks, --batch per request, from --clients client\n"
       "threads (one connection each): through the shared arena beside memcpy, and\n"
       "over gRPC streaming (Unix socket and loopback TCP) beside redis SET/GET of\n"
       "the same values with the same batching (pipelined) over the same kind of\n"
       "socket. Prints the median of\n"
       "--reps repetitions and of the per-repetition ratios, the CPU time of the\n"
       "client, kvtierd and redis-server per GB moved, then Lookup latency\n"
       "(p50, p99) and QPS over the Unix socket. --message-bytes sets the payload\n"
       "bytes per gRPC stream message (client and limits.max_message_bytes).\n"
       "Targets: shared memory >= 0.7x memcpy; gRPC >= 1.0x redis.",
       RunDaemonBench},
      {"gpu", "gather/scatter of engine KV blocks beside the PCIe ceiling (memcpy without a GPU)",
       "kvtier bench gpu [--json] [--device auto|cpu|cuda] [--chunks N] [--reps N]\n"
       "                 [--models llama3-8b,llama3-70b,llama3-70b-tp8]\n\n"
       "Gathers a batch of --chunks 256-token chunks (bf16, 16-token vLLM NHD blocks,\n"
       "random block ids) from a device KV pool into pinned memory and scatters it\n"
       "back, beside one cudaMemcpyAsync of a contiguous buffer of the same bytes\n"
       "(the PCIe ceiling) and one cudaMemcpyAsync per (layer, K/V, block), for\n"
       "Llama-3-8B (32 layers, 8 KV heads, head 128), Llama-3-70B (80 layers, 8 KV\n"
       "heads) and a TP-8 shard of it (1 KV head). Prints medians of --reps\n"
       "repetitions (GPU defaults: 8 chunks, 10 reps) and the median per-repetition\n"
       "ratio to the ceiling. Without a GPU (or with --device cpu) it runs the CPU\n"
       "path beside memcpy (1 chunk, 15 reps) and says so.\n"
       "Target: gather and scatter >= 0.9x the ceiling on a GPU.",
       RunGpuBench},
      {"nvme",
       "NVMe tier Save/Load beside fio (plain and O_DSYNC); reopen with and without the snapshot",
       "kvtier bench nvme [--json] [--dir /var/tmp] [--sizes 256KiB,1MiB,4MiB] [--volume 512MiB]\n"
       "                  [--layout regions|classes] [--region 64MiB] [--reps 4] [--qd 16]\n"
       "                  [--inflight BYTES] [--io-mode direct|buffered] [--fio fio] [--no-dsync]\n"
       "                  [--no-settle] [--direct-reads]\n"
       "                  [--reopen-chunks 100000] [--reopen-payload 4032]\n\n"
       "In a temporary folder under --dir: per chunk size, fills a tier of --volume (on-demand\n"
       "regions of --region, or one explicit slot class), then sequential and random Load and\n"
       "Save (saves evict, the steady state of a cache), each beside fio on the same pattern\n"
       "(io_uring, O_DIRECT, bs = chunk, iodepth --qd, same folder, file of the same size),\n"
       "fio first in even repetitions and second in odd ones (an even --reps gives both sides\n"
       "the first place equally often); before each timed run the device's write cache is\n"
       "flushed (fdatasync, untimed; --no-settle skips it) so neither side starts while the\n"
       "disk still drains the other's writes. Saves run twice: with\n"
       "durability \"process\" (acknowledged when written) beside plain fio writes, and with\n"
       "durability \"power\" (flushed group commit) beside fio with O_DSYNC (--no-dsync\n"
       "skips them). Loads read through the tier's staging memory and copy out (the default);\n"
       "--direct-reads reads straight into the benchmark's buffers instead.\n"
       "Prints the median of --reps per-repetition ratios.\n"
       "Then the time to reopen a tier of --reopen-chunks small chunks from its snapshot and\n"
       "by scanning. Columns \"submit busy\" (share of the tier's time spent inside PutAsync or\n"
       "GetAsync: staging copy and checksum) and \"in flight\" (mean operations in flight)\n"
       "tell a CPU-bound submitter from a disk-bound one.\n"
       "Targets: Load and Save (process) >= 0.85x fio.",
       RunNvmeBench},
      {"replay", "a request trace through the real cache beside the simulators' hit rates",
       "kvtier bench replay --trace FILE [--json] [--dram-tokens 3M] [--policy all|lru,2q,...]\n"
       "                    [--bytes-per-token 7] [--speed 0] [--curve 1M,3M,10M,50M]\n"
       "                    [--nvme-tokens 50M] [--nvme-path DIR] [--nvme-io-mode direct]\n"
       "                    [--blob-tokens 20M]\n"
       "       kvtier bench replay --trace FILE --socket PATH|--address HOST:PORT\n"
       "                    [--token-file F] [--policy lru] [--slab 64MiB] [--salt S]\n"
       "                    [--dram-tokens N] [--json]\n\n"
       "Replays a Mooncake-format trace (JSON Lines with hash_ids of 512-token blocks)\n"
       "through the embedded cache: per request Lookup, Load of the hit chunks (bytes\n"
       "verified), Save of the rest. The DRAM tier holds exactly floor(tokens / 512)\n"
       "chunks (2 MiB slabs; surplus slots of the last slab hold pinned filler chunks).\n"
       "--policy all runs lru, 2q, 2q-chain and cost. --speed N replays at N x the trace's\n"
       "timestamps (0: as fast as possible). Reports block and token hit rates,\n"
       "prefill tokens saved, DRAM bytes written and read, requests/s, and beside them\n"
       "the simulators' figures on the same trace: the policy's tail-first simulation\n"
       "(the replay must match it), unbounded, and reference LRU, with the ratios.\n"
       "--curve adds every policy at each capacity (input of bench/plot_replay.py).\n"
       "--nvme-tokens N (e.g. 50M) adds a table of every policy through DRAM plus an NVMe\n"
       "tier of exactly floor(N / 512) chunks, in a fresh folder under --nvme-path (default\n"
       "$TMPDIR or /tmp, removed afterwards), --nvme-io-mode direct|buffered, --nvme-admission\n"
       "all|second-chance; the replay waits for demotions after each request unless\n"
       "--no-wait-demotions. Reports per-tier hits and bytes, and the ratio to unbounded.\n"
       "--blob-tokens N adds a Blob tier (an Azurite started here, on loopback) bounded to\n"
       "floor(N / 512) objects, least recently used deleted past them, uploads as DRAM\n"
       "evicts; with --nvme-tokens both lower tiers are there.\n"
       "--socket / --address (not $KVTIER_SOCKET alone) replays through a running kvtierd\n"
       "instead (its tiers, capacities and policy; the client flags of `kvtier stats`\n"
       "apply), in a namespace of a fresh salt (--salt S names one, e.g. a tenant's;\n"
       "chunks of earlier runs under it then count). Its policy and slab size come from\n"
       "its configuration when the token may read it (admin, or no auth); else --policy\n"
       "(default lru) and --slab (default 64MiB) say them. The reference columns assume\n"
       "its DRAM capacity in whole slabs of the trace's chunks, or --dram-tokens.",
       RunReplayBench},
      {"index", "cluster index Lookup beside redis-server holding the same key -> holders map",
       "kvtier bench index [--json] [--nodes 1000] [--chunks-per-node 100000] [--chain 128]\n"
       "                   [--pool 20000] [--zipf 0.6] [--shared 32] [--groups 64] [--clients 2]\n"
       "                   [--seconds 2] [--reps 3] [--redis-server PATH]\n\n"
       "Builds the map of --nodes simulated nodes, each holding --chunks-per-node chunks\n"
       "as whole --chain-chunk chains drawn (rank^-zipf: popular ones more often) from a pool of\n"
       "--pool chains whose first --shared chunks are one of --groups shared prefixes;\n"
       "loads it straight into the index (ClusterIndex::Store) and into redis-server\n"
       "(started here; one set per key, members node*8+tier, pipelined SADD). Then\n"
       "looks up chains some node holds from --clients threads: Index/Lookup over\n"
       "loopback gRPC beside one pipeline of --chain SMEMBERS with the prefix walk on\n"
       "the client, alternating which goes first; also the index in process. Prints\n"
       "medians of --reps runs: QPS, p50, p99, their ratios, memory per (key, node)\n"
       "entry of both, and the EventBatch ingest rate (decode + apply, in process).\n"
       "Targets: QPS >= 2x redis with a lower p99.",
       RunIndexBench},
      {"blob", "Blob Put/Get of whole chunks beside the curl tool, against Azurite",
       "kvtier bench blob [--json] [--sizes 1MiB,4MiB] [--inflight 1,4,16,32] [--reps 3]\n"
       "                  [--bytes 64MiB] [--curl curl]\n\n"
       "Starts azurite-blob on a free loopback port (scripts/install-deps.sh installs it),\n"
       "then per chunk size and number of transfers in flight puts and gets about --bytes\n"
       "of chunks (one object per transfer) through kvtier's Blob client (libcurl multi,\n"
       "Shared Key; Put Blob and Get Blob) and through the curl tool (--parallel\n"
       "--parallel-max N, SAS token) in the same repetition, alternating which goes first.\n"
       "Prints medians of --reps repetitions and the median per-repetition ratio.\n"
       "Target: >= 0.9x curl.",
       RunBlobBench},
      {"ucx", "remote Load between two nodes over UCX beside ucx_perftest; remote read latency",
       "kvtier bench ucx [--json] [--sizes 256KiB,1MiB,4MiB] [--inflight 1,4,16] [--tls tcp]\n"
       "                 [--reps 3] [--seconds 0.5] [--chunks 32] [--latency-reads 200]\n"
       "                 [--kvtierd PATH] [--ucx-perftest PATH] [--modes chain,threads]\n"
       "                 [--reader-busy-poll-us N] [--reader-direct true|false]\n"
       "                 [--reader-copy-threads N] [--pins ucx|grpc] [--merge-ucx-pins]\n\n"
       "Starts a holder kvtierd (node-to-node transfer on, loopback) and saves --chunks\n"
       "chunks of each size into it; this process is the reader (an embedded cache with\n"
       "kvtierd's remote reader). A remote Load is PinForRead, one UCX get into a DRAM\n"
       "slot, header and checksum checks and the commit; the chunk is then dropped\n"
       "locally so every Load goes remote. Measures remote Load throughput with\n"
       "--inflight concurrent reads beside ucx_perftest -t ucp_get (server and client\n"
       "processes, same size, -O in flight) under the same UCX_TLS (--tls: one or more\n"
       "values separated by ';', e.g. 'tcp;posix,cma'), and prints the medians of --reps\n"
       "repetitions and of the per-repetition ratios; then the p50/p99 latency of one\n"
       "remote chunk read.\n"
       "In flight N, --modes chain: one Load of N remote chunks at a time (one PinForRead,\n"
       "N gets in flight together); threads: N threads each loading one chunk at a time.\n"
       "--reader-busy-poll-us: the reader's progress thread polls this long with gets in\n"
       "flight before it sleeps until the next event (-1: never sleeps; default 50).\n"
       "--reader-direct false: read a holder's arena mapped here (UCX shared memory)\n"
       "with UCX gets and a separate check instead of one copy-and-check pass.\n"
       "--reader-copy-threads: threads that help copy a run of chunks out of a mapped\n"
       "arena (-1: min(3, hardware threads - 1), the default; 0: the reading thread alone).\n"
       "--pins: how the reader sends PinForRead and Release: ucx (UCX calls on the\n"
       "endpoint the gets use; default) or grpc (the holder's Peer service).\n"
       "--merge-ucx-pins: concurrent fetches merge their pins also over UCX calls\n"
       "(always merged over gRPC).\n"
       "Target: remote Load >= 0.85x ucx_perftest.",
       RunUcxBench},
  };
  return suites;
}

namespace {

void PrintBenchHelp() {
  std::printf("usage: kvtier bench SUITE [--json] [suite flags]\n\nsuites:\n");
  for (const BenchSuite& s : BenchSuites()) std::printf("  %-8s %s\n", s.name, s.summary);
  std::printf("\n`kvtier bench SUITE --help` describes a suite's flags.\n");
}

}  // namespace

int RunBench(const std::vector<std::string>& args) {
  if (args.empty() || args[0] == "--help" || args[0] == "-h") {
    PrintBenchHelp();
    return args.empty() ? 2 : 0;
  }
  for (const BenchSuite& s : BenchSuites()) {
    if (args[0] != s.name) continue;
    Flags flags(std::vector<std::string>(args.begin() + 1, args.end()));
    if (flags.Help()) {
      std::printf("%s\n", s.help);
      return 0;
    }
    return s.run(flags);
  }
  std::fprintf(stderr, "kvtier bench: unknown suite '%s'\n\n", args[0].c_str());
  PrintBenchHelp();
  return 2;
}

double Median(std::vector<double> samples) { return Percentile(std::move(samples), 50); }

double Percentile(std::vector<double> samples, double p) {
  if (samples.empty()) return 0;
  std::sort(samples.begin(), samples.end());
  double rank = std::ceil(p / 100.0 * static_cast<double>(samples.size()));
  size_t idx = rank < 1 ? 0 : static_cast<size_t>(rank) - 1;
  return samples[std::min(idx, samples.size() - 1)];
}

}  // namespace kvtier::cli
