// `kvtier bench nvme`: the NVMe tier beside fio on the same folder.
//
// For each chunk size: sequential and random Load and Save through NvmeTier
// (asynchronous calls keeping the tier's in-flight budget full), each right
// after fio doing the same pattern (io_uring engine, O_DIRECT, the chunk size
// as block size, the same queue depth) on a file of the same size in the same
// folder. Saves run twice: with durability "process" beside plain fio writes
// (neither flushes), and with durability "power" beside fio writes with
// O_DSYNC (both durable on acknowledgement). Saves run against a full tier, so
// each one evicts a chunk and rewrites its slot: the steady state of a cache.
// Sequential means slots in disk order, random a random permutation of them.
// Then the time to reopen a tier holding many small chunks, from its snapshot
// and by scanning.
#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>
#include <mutex>
#include <numeric>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "src/cli/bench.h"
#include "src/cli/report.h"
#include "src/common/bytes.h"
#include "src/common/env.h"
#include "src/common/status_macros.h"
#include "src/common/temp_path.h"
#include "src/core/chunk_format.h"
#include "src/tiers/nvme/nvme_format.h"
#include "src/tiers/nvme/nvme_tier.h"

namespace kvtier::cli {
namespace {

using Clock = std::chrono::steady_clock;

constexpr uint64_t kNs = 0x6e766d65;  // "nvme"
constexpr uint64_t kLayout = 0xbe4c;

double Seconds(Clock::time_point since) {
  return std::chrono::duration<double>(Clock::now() - since).count();
}

BlockKey KeyOf(uint64_t i) { return BlockKey{0x6b76746965726e76ull, i + 1}; }

// Keeps up to the tier's in-flight budget of asynchronous calls going:
// `submit(i, done)` starts operation i and returns the tier's answer; on
// Unavailable the driver waits for a completion and tries again.
class AsyncDriver {
 public:
  // Runs operations 0..n-1 and returns the seconds taken, or the first
  // error.
  template <typename Submit>
  absl::StatusOr<double> Run(uint64_t n, Submit submit) {
    errors_ = 0;
    first_error_ = absl::OkStatus();
    inflight_ = 0;
    submit_seconds_ = 0;
    inflight_sum_ = 0;
    auto t0 = Clock::now();
    for (uint64_t i = 0; i < n; ++i) {
      for (;;) {
        auto s0 = Clock::now();
        absl::Status s = submit(i, [this](absl::Status st) { Done(st); });
        submit_seconds_ += Seconds(s0);
        if (s.ok()) {
          std::lock_guard<std::mutex> lock(mu_);
          ++inflight_;
          inflight_sum_ += inflight_;
          break;
        }
        // No room in flight, or every slot busy: wait for a completion.
        if (!absl::IsUnavailable(s) && !absl::IsResourceExhausted(s)) return s;
        std::unique_lock<std::mutex> lock(mu_);
        if (inflight_ == 0) return s;
        const uint64_t seen = completions_;
        cv_.wait(lock, [&] { return inflight_ == 0 || completions_ != seen; });
      }
    }
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return inflight_ == 0; });
    double elapsed = Seconds(t0);
    submitted_ = n;
    if (errors_ > 0) return first_error_;
    return elapsed;
  }
  // Of the last Run: seconds spent inside `submit` (the tier's staging copy
  // and checks), and the mean operations in flight right after a submission.
  double submit_seconds() const { return submit_seconds_; }
  double mean_inflight() const {
    return submitted_ == 0 ? 0.0 : static_cast<double>(inflight_sum_) / submitted_;
  }

 private:
  void Done(const absl::Status& s) {
    std::lock_guard<std::mutex> lock(mu_);
    if (!s.ok() && errors_++ == 0) first_error_ = s;
    --inflight_;
    ++completions_;
    cv_.notify_all();
  }

  std::mutex mu_;
  std::condition_variable cv_;
  uint64_t inflight_ = 0;
  uint64_t completions_ = 0;
  uint64_t errors_ = 0;
  absl::Status first_error_;
  double submit_seconds_ = 0;
  uint64_t inflight_sum_ = 0;
  uint64_t submitted_ = 0;
};

// A reusable encoded chunk: one payload, a header rewritten per key.
class ChunkSource {
 public:
  explicit ChunkSource(uint64_t payload_bytes) : encoded_(kChunkHeaderBytes + payload_bytes) {
    std::vector<std::byte> payload(payload_bytes);
    std::mt19937_64 rng(payload_bytes);
    for (auto& b : payload) b = static_cast<std::byte>(rng());
    header_.namespace_id = kNs;
    header_.layout_signature = kLayout;
    header_.num_tokens = 256;
    (void)EncodeChunk(header_, payload, absl::MakeSpan(encoded_));
    header_.payload_length = payload_bytes;
    header_.payload_checksum = PayloadChecksum(header_.checksum_type, payload);
  }
  // The chunk for `key` (valid until the next call).
  absl::Span<const std::byte> For(const BlockKey& key, ChunkMeta* meta) {
    header_.key = key;
    EncodeChunkHeader(header_, encoded_.data());
    *meta = ChunkMeta{kNs, key, BlockKey{}, kLayout, header_.num_tokens};
    return encoded_;
  }

 private:
  ChunkHeader header_;
  std::vector<std::byte> encoded_;
};

// Destination buffers for loads, handed out and returned by completions.
class BufferPool {
 public:
  BufferPool(size_t count, size_t bytes) {
    for (size_t i = 0; i < count; ++i) {
      buffers_.emplace_back(bytes);
      free_.push_back(i);
    }
  }
  size_t Take() {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return !free_.empty(); });
    size_t i = free_.back();
    free_.pop_back();
    return i;
  }
  void Give(size_t i) {
    std::lock_guard<std::mutex> lock(mu_);
    free_.push_back(i);
    cv_.notify_one();
  }
  absl::Span<std::byte> Get(size_t i) { return buffers_[i].span(); }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<AlignedBuffer> buffers_;
  std::vector<size_t> free_;
};

struct FioResult {
  double bytes_per_second = 0;
  std::string error;
};

// Runs fio and returns the bandwidth of `direction` ("read" or "write").
FioResult RunFio(const std::string& fio, const std::string& args, const std::string& direction) {
  std::string cmd = absl::StrCat(fio, " ", args, " --output-format=json 2>/dev/null");
  FILE* p = ::popen(cmd.c_str(), "r");
  if (p == nullptr) return {0, "cannot start fio"};
  std::string out;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof(buf), p)) > 0) out.append(buf, n);
  int rc = ::pclose(p);
  FioResult r;
  // The direction's statistics object: "read" : { ... } (the same word may
  // appear earlier as an option value, "rw" : "read").
  size_t jobs = out.find("\"jobs\"");
  size_t dir = jobs;
  while (dir != std::string::npos) {
    dir = out.find("\"" + direction + "\"", dir + 1);
    if (dir == std::string::npos) break;
    size_t next = out.find_first_not_of(" \t\n:", dir + direction.size() + 2);
    if (next != std::string::npos && out[next] == '{' &&
        out.find(':', dir + direction.size() + 2) < next) {
      break;
    }
  }
  size_t bw = dir == std::string::npos ? dir : out.find("\"bw_bytes\"", dir);
  size_t colon = bw == std::string::npos ? bw : out.find(':', bw);
  if (rc != 0 || colon == std::string::npos) {
    r.error = absl::StrCat("fio failed (exit ", rc, "): ", cmd);
    return r;
  }
  r.bytes_per_second = std::strtod(out.c_str() + colon + 1, nullptr);
  return r;
}

struct Row {
  uint64_t size = 0;
  std::string pattern;       // "seq" or "rand"
  std::string op;            // "load", "save" (durability "process") or "save-power"
  std::string reference;     // "fio" or "fio O_DSYNC"
  double tier = 0;           // payload bytes per second
  double fio = 0;            // the reference's bytes per second
  double ratio = 0;          // median of the per-repetition ratios
  double submit_busy = 0;    // median share of the tier's time spent submitting (copy, checks)
  double mean_inflight = 0;  // median of the tier's mean operations in flight
  std::vector<double> tier_runs, fio_runs;  // per repetition, bytes per second
};

// The tier's layout: explicit classes (one class of `slots` slots of the
// chunk's size) or on-demand regions over `volume` bytes.
struct Layout {
  std::string name;  // "classes" or "regions"
  uint64_t volume = 0;
  uint64_t region = 0;
};

NvmeTierOptions TierOptions(const std::string& dir, uint64_t payload, uint64_t slots, uint32_t qd,
                            uint64_t inflight, const std::string& io_mode, const Layout& layout,
                            const std::string& durability, bool stage_reads = true) {
  NvmeTierOptions o;
  o.path = dir;
  uint64_t max_chunk = payload + kChunkHeaderBytes;
  if (layout.name == "regions") {
    o.capacity_bytes = layout.volume;
    o.region_bytes = layout.region;
  } else {
    o.slot_classes = {{max_chunk, slots * (AlignUp(max_chunk, 4096) + 4096)}};
  }
  o.queue_depth = qd;
  o.max_inflight_bytes = inflight;
  o.io_mode = io_mode;
  o.durability = durability;
  o.stage_reads = stage_reads;
  return o;
}

// Slots of the size holding `payload`-byte chunks: in --volume with one
// class, or in every region of the volume. 0 when no slot holds it.
uint64_t SlotsFor(uint64_t payload, const Layout& layout, uint64_t* slot_data) {
  const uint64_t chunk = payload + kChunkHeaderBytes;
  if (layout.name != "regions") {
    *slot_data = AlignUp(chunk, 4096);
    return layout.volume / (*slot_data + 4096);
  }
  absl::StatusOr<nvme::VolumeGeometry> g = nvme::MakeRegionGeometry(layout.volume, layout.region);
  std::vector<uint64_t> ladder = nvme::SlotLadder(layout.region);
  auto it = std::lower_bound(ladder.begin(), ladder.end(), chunk);
  if (!g.ok() || it == ladder.end()) return 0;
  *slot_data = *it;
  return g->region_count * ((layout.region - 4096) / (*it + 4096));
}

}  // namespace

int RunNvmeBench(Flags& flags) {
  const bool json = flags.Bool("json");
  const std::string parent = flags.String("dir", "/var/tmp");
  const std::vector<uint64_t> sizes = flags.BytesList("sizes", {256 << 10, 1 << 20, 4 << 20});
  const uint64_t volume = flags.Bytes("volume", 512ull << 20);
  const std::string layout_name = flags.String("layout", "regions");
  const uint64_t region_bytes = flags.Bytes("region", 64ull << 20);
  const int64_t reps = flags.Int("reps", 4);
  const uint32_t qd = static_cast<uint32_t>(flags.Int("qd", 16));
  const uint64_t inflight_flag = flags.Bytes("inflight", 0);
  const std::string io_mode = flags.String("io-mode", "direct");
  const std::string fio = flags.String("fio", "fio");
  const bool fio_dsync = !flags.Bool("no-dsync");
  const bool settle = !flags.Bool("no-settle");
  const bool stage_reads = !flags.Bool("direct-reads");
  const uint64_t reopen_chunks = static_cast<uint64_t>(flags.Int("reopen-chunks", 100000));
  const uint64_t reopen_payload = flags.Bytes("reopen-payload", 4096 - kChunkHeaderBytes);
  if (absl::Status s = flags.Finish(); !s.ok()) {
    std::fprintf(stderr, "kvtier bench nvme: %s\n", std::string(s.message()).c_str());
    return 2;
  }
  if (qd == 0 || qd > 4096 || reps < 1) {
    std::fprintf(stderr, "kvtier bench nvme: --qd must be 1..4096 and --reps at least 1\n");
    return 2;
  }
  if (layout_name != "regions" && layout_name != "classes") {
    std::fprintf(stderr, "kvtier bench nvme: --layout must be regions or classes\n");
    return 2;
  }
  const Layout layout{layout_name, volume, region_bytes};
  absl::StatusOr<std::string> tmp_dir = MakeTempDir(parent, "kvtier-bench-nvme-");
  if (!tmp_dir.ok()) {
    std::fprintf(stderr, "kvtier bench nvme: %s\n",
                 std::string(tmp_dir.status().message()).c_str());
    return 1;
  }
  const std::string dir = *tmp_dir;
  RemoveOnExit cleanup(dir);
  const std::string tier_dir = dir + "/tier";
  const std::string fio_file = dir + "/fio.dat";
  std::filesystem::create_directory(tier_dir);

  std::vector<Row> rows;
  std::vector<std::string> notes;
  bool have_fio = true;
  auto fail = [&](const std::string& what, const absl::Status& s) {
    std::fprintf(stderr, "kvtier bench nvme: %s: %s\n", what.c_str(), s.ToString().c_str());
    return 1;
  };

  for (uint64_t size : sizes) {
    uint64_t slot_data = 0;
    const uint64_t slots = SlotsFor(size, layout, &slot_data);
    if (slots < 2) {
      std::fprintf(stderr,
                   "kvtier bench nvme: --volume (in --region regions) holds fewer than 2 chunks "
                   "of %s\n",
                   HumanBytes(size).c_str());
      return 2;
    }
    const uint64_t inflight =
        inflight_flag != 0
            ? inflight_flag
            : std::min<uint64_t>({1ull << 30, std::max<uint64_t>(slots / 4, 1) * (slot_data + 4096),
                                  std::max<uint64_t>(64ull << 20, 4ull * qd * (slot_data + 4096))});
    std::error_code ec;
    std::filesystem::remove(absl::StrCat(tier_dir, "/", kNvmeVolumeFileName), ec);
    absl::StatusOr<std::unique_ptr<NvmeTier>> tier = NvmeTier::Create(
        TierOptions(tier_dir, size, slots, qd, inflight, io_mode, layout, "process", stage_reads));
    if (!tier.ok()) return fail("create", tier.status());
    std::string durability = "process";
    // Durability is not part of the volume: switching reopens it (from its
    // snapshot), untimed.
    auto use = [&](const std::string& d) -> absl::Status {
      if (d == durability) return absl::OkStatus();
      KVTIER_RETURN_IF_ERROR((*tier)->Close());
      tier = NvmeTier::Create(
          TierOptions(tier_dir, size, slots, qd, inflight, io_mode, layout, d, stage_reads));
      KVTIER_RETURN_IF_ERROR(tier.status());
      durability = d;
      return absl::OkStatus();
    };
    ChunkSource source(size);
    const uint64_t buffers = inflight / slot_data + 1;
    BufferPool pool(buffers, slot_data);
    AsyncDriver driver;
    const uint64_t bytes = slots * size;

    auto save = [&](uint64_t first_key) {
      return driver.Run(slots, [&](uint64_t i, auto done) {
        ChunkMeta meta;
        absl::Span<const std::byte> enc = source.For(KeyOf(first_key + i), &meta);
        return (*tier)->PutAsync(meta, enc, std::move(done));
      });
    };
    auto load = [&](const std::vector<uint64_t>& keys) {
      return driver.Run(keys.size(), [&](uint64_t i, auto done) {
        size_t b = pool.Take();
        absl::Status s =
            (*tier)->GetAsync(kNs, KeyOf(keys[i]), pool.Get(b),
                              [&pool, b, done = std::move(done)](absl::StatusOr<size_t> r) mutable {
                                pool.Give(b);
                                done(r.status());
                              });
        if (!s.ok()) pool.Give(b);
        return s;
      });
    };
    auto fio_args = [&](const std::string& rw, bool dsync) {
      return absl::StrCat("--name=kvtier --filename=", fio_file, " --size=", bytes, " --bs=", size,
                          " --rw=", rw, " --direct=", io_mode == "direct" ? 1 : 0,
                          " --ioengine=io_uring --iodepth=", qd, dsync ? " --sync=dsync" : "");
    };
    // Before each timed run (fio's or the tier's): flush the device's write
    // cache (fdatasync sends the file system's cache flush) so neither side
    // starts while the disk still drains the writes of the run before it.
    auto drain = [&]() {
      if (!settle) return;
      for (const std::string& f : {absl::StrCat(tier_dir, "/", kNvmeVolumeFileName), fio_file}) {
        int fd = ::open(f.c_str(), O_RDONLY | O_CLOEXEC);
        if (fd < 0) continue;
        (void)::fdatasync(fd);
        ::close(fd);
      }
    };
    auto fio_rate = [&](const std::string& rw, const std::string& direction, bool dsync) {
      if (!have_fio) return 0.0;
      drain();
      FioResult r = RunFio(fio, fio_args(rw, dsync), direction);
      if (!r.error.empty()) {
        have_fio = false;
        notes.push_back(r.error + " (is fio installed? scripts/install-deps.sh has it)");
      }
      return r.bytes_per_second;
    };

    // Lay out the fio file and fill the tier (neither timed).
    fio_rate("write", "write", false);
    absl::StatusOr<double> fill = save(0);
    if (!fill.ok()) return fail("fill", fill.status());
    uint64_t next_key = slots;
    std::mt19937_64 rng(size);
    // Resident chunks in disk order, or shuffled.
    auto resident_keys = [&](bool random) {
      std::vector<std::pair<uint64_t, uint64_t>> resident;  // offset, key
      for (uint64_t k = next_key - std::min(next_key, 2 * slots); k < next_key; ++k) {
        absl::StatusOr<NvmeChunkInfo> info = (*tier)->Describe(kNs, KeyOf(k));
        if (info.ok()) resident.emplace_back(info->volume_offset, k);
      }
      std::sort(resident.begin(), resident.end());
      if (random) std::shuffle(resident.begin(), resident.end(), rng);
      std::vector<uint64_t> keys;
      for (const auto& [offset, k] : resident) keys.push_back(k);
      return keys;
    };
    // Phases per pattern: load, save ("process"), save ("power").
    constexpr int kPhases = 6;
    const char* kOps[3] = {"load", "save", "save-power"};
    std::vector<std::vector<double>> tier_rate(kPhases), ref_bw(kPhases), ratio(kPhases);
    std::vector<std::vector<double>> busy(kPhases), depth(kPhases);
    // Per repetition and phase: fio and the tier back to back, fio first in
    // even repetitions and second in odd ones, so neither side always runs
    // while the disk's write-back cache drains the other's writes.
    for (int64_t rep = 0; rep < reps; ++rep) {
      const bool fio_first = rep % 2 == 0;
      for (int phase = 0; phase < kPhases; ++phase) {
        const bool random = phase >= 3;
        const int op = phase % 3;
        if (op == 2 && !fio_dsync) continue;
        const bool is_save = op != 0;
        const std::string rw =
            is_save ? (random ? "randwrite" : "write") : (random ? "randread" : "read");
        if (absl::Status s = use(op == 2 ? "power" : "process"); !s.ok()) {
          return fail("reopen with another durability", s);
        }
        std::vector<uint64_t> keys;
        if (op == 2) {
          // The reopen reset the eviction order to disk order: read the
          // chunks (untimed) in this pattern's order so the saves rewrite
          // slots in it.
          keys = resident_keys(random);
          if (absl::StatusOr<double> t = load(keys); !t.ok()) return fail("reorder", t.status());
        }
        double f = fio_first ? fio_rate(rw, is_save ? "write" : "read", op == 2) : 0;
        absl::StatusOr<double> t;
        uint64_t moved;
        drain();
        if (!is_save) {
          // Every resident chunk (the tier keeps a few slots free), in disk
          // order or shuffled. The loads also set the eviction order, so the
          // saves that follow rewrite the slots in the same order.
          keys = resident_keys(random);
          t = load(keys);
          moved = keys.size() * size;
        } else {
          t = save(next_key);
          next_key += slots;
          moved = bytes;
        }
        if (!t.ok()) {
          return fail(absl::StrCat(random ? "random " : "sequential ", kOps[op]), t.status());
        }
        if (!fio_first) f = fio_rate(rw, is_save ? "write" : "read", op == 2);
        busy[phase].push_back(driver.submit_seconds() / *t);
        depth[phase].push_back(driver.mean_inflight());
        tier_rate[phase].push_back(moved / *t);
        ref_bw[phase].push_back(f);
        if (f > 0) ratio[phase].push_back(moved / *t / f);
      }
    }
    for (int phase = 0; phase < kPhases; ++phase) {
      if (tier_rate[phase].empty()) continue;
      Row r{size,
            phase >= 3 ? "rand" : "seq",
            kOps[phase % 3],
            phase % 3 == 2 ? "fio O_DSYNC" : "fio",
            Median(tier_rate[phase]),
            Median(ref_bw[phase]),
            Median(ratio[phase]),
            Median(busy[phase]),
            Median(depth[phase]),
            tier_rate[phase],
            ref_bw[phase]};
      rows.push_back(r);
    }
    NvmeTierStats st = (*tier)->DetailedStats();
    if (st.tier.corrupt_chunks != 0 || st.write_errors != 0 || st.read_errors != 0) {
      std::fprintf(stderr, "kvtier bench nvme: %llu corrupt, %llu write and %llu read errors\n",
                   static_cast<unsigned long long>(st.tier.corrupt_chunks),
                   static_cast<unsigned long long>(st.write_errors),
                   static_cast<unsigned long long>(st.read_errors));
      return 1;
    }
    if (size == sizes.front()) {
      notes.push_back(absl::StrCat("io_mode ", st.io_mode, ", fixed buffers ",
                                   st.fixed_buffers ? "yes" : "no", ", queue depth ", qd,
                                   ", in flight up to ", HumanBytes(inflight)));
    }
    notes.push_back(absl::StrCat(
        HumanBytes(size), ": ", slots, " slots of ", slot_data,
        " data bytes; since the last reopen (", durability, "): ", st.tier.saves, " saves, ",
        st.flushes, " flushes (",
        Fixed(static_cast<double>(st.flushes) / std::max<uint64_t>(1, st.tier.saves), 2),
        " per save), ", st.tombstones, " tombstones"));
    (void)(*tier)->Close();
    std::filesystem::remove(fio_file, ec);
  }

  // Reopen: a tier of many small chunks, from its snapshot and by scanning.
  double reopen_snapshot = 0, reopen_scan = 0, reopen_fill = 0;
  {
    std::error_code ec;
    std::filesystem::remove(absl::StrCat(tier_dir, "/", kNvmeVolumeFileName), ec);
    const uint64_t slot_data = AlignUp(reopen_payload + kChunkHeaderBytes, 4096);
    NvmeTierOptions o = TierOptions(tier_dir, reopen_payload, reopen_chunks, 128,
                                    std::max<uint64_t>(16ull << 20, 64 * (slot_data + 4096)),
                                    io_mode, Layout{layout.name, 0, layout.region}, "process");
    if (layout.name == "regions") {
      // Room for every chunk in whole regions (slot sizes are ladder steps,
      // at most 12.5% above the chunk), and the snapshot region.
      const uint64_t per_region = (layout.region - 4096) / (slot_data * 9 / 8 + 4096);
      const uint64_t regions = (reopen_chunks + per_region - 1) / per_region + 2;
      o.capacity_bytes = regions * (layout.region + layout.region / 64) + (16ull << 20);
    }
    o.clean_slots = 0;  // keep every chunk: nothing is evicted early
    {
      absl::StatusOr<std::unique_ptr<NvmeTier>> tier = NvmeTier::Create(o);
      if (!tier.ok()) return fail("reopen create", tier.status());
      ChunkSource source(reopen_payload);
      AsyncDriver driver;
      absl::StatusOr<double> t = driver.Run(reopen_chunks, [&](uint64_t i, auto done) {
        ChunkMeta meta;
        absl::Span<const std::byte> enc = source.For(KeyOf(i), &meta);
        return (*tier)->PutAsync(meta, enc, std::move(done));
      });
      if (!t.ok()) return fail("reopen fill", t.status());
      reopen_fill = *t;
      if (absl::Status s = (*tier)->Close(); !s.ok()) return fail("close", s);
    }
    for (int pass = 0; pass < 2; ++pass) {
      // Pass 0 opens from the snapshot and writes none at close, so pass 1
      // has to scan.
      o.write_snapshot = false;
      auto t0 = Clock::now();
      absl::StatusOr<std::unique_ptr<NvmeTier>> tier = NvmeTier::Create(o);
      double secs = Seconds(t0);
      if (!tier.ok()) return fail("reopen", tier.status());
      NvmeTierStats st = (*tier)->DetailedStats();
      if (st.recovered_chunks != reopen_chunks ||
          st.open_source != (pass == 0 ? "snapshot" : "scan")) {
        std::fprintf(stderr, "kvtier bench nvme: reopen found %llu chunks via %s\n",
                     static_cast<unsigned long long>(st.recovered_chunks), st.open_source.c_str());
        return 1;
      }
      (pass == 0 ? reopen_snapshot : reopen_scan) = secs;
    }
  }

  double worst_load = 1e9, worst_save = 1e9, worst_power = 1e9;
  for (const Row& r : rows) {
    double& w = r.op == "load" ? worst_load : r.op == "save" ? worst_save : worst_power;
    w = std::min(w, r.ratio);
  }
  if (worst_power > 1e8) worst_power = 0;
  if (json) {
    Json results = Json::Array();
    for (const Row& r : rows) {
      Json o = Json::Object();
      o.Set("chunk_bytes", r.size)
          .Set("pattern", r.pattern)
          .Set("op", r.op)
          .Set("durability", r.op == "save-power" ? "power" : "process")
          .Set("reference", r.reference)
          .Set("kvtier_gbps", r.tier / 1e9)
          .Set("reference_gbps", r.fio / 1e9)
          .Set("ratio", r.ratio)
          .Set("submit_busy", r.submit_busy)
          .Set("mean_inflight", r.mean_inflight);
      Json tier_runs = Json::Array(), fio_runs = Json::Array();
      for (double v : r.tier_runs) tier_runs.Push(v / 1e9);
      for (double v : r.fio_runs) fio_runs.Push(v / 1e9);
      o.Set("kvtier_runs_gbps", std::move(tier_runs))
          .Set("reference_runs_gbps", std::move(fio_runs));
      results.Push(std::move(o));
    }
    Json notes_json = Json::Array();
    for (const std::string& n : notes) notes_json.Push(n);
    Json j = Json::Object();
    j.Set("suite", "nvme")
        .Set("reference", "fio")
        .Set("queue_depth", static_cast<uint64_t>(qd))
        .Set("volume_bytes", volume)
        .Set("layout", layout.name)
        .Set("region_bytes", layout.name == "regions" ? layout.region : 0)
        .Set("results", std::move(results))
        .Set("reopen", Json::Object()
                           .Set("chunks", reopen_chunks)
                           .Set("payload_bytes", reopen_payload)
                           .Set("fill_seconds", reopen_fill)
                           .Set("snapshot_seconds", reopen_snapshot)
                           .Set("scan_seconds", reopen_scan))
        .Set("ratios", Json::Object()
                           .Set("min_load_vs_fio", have_fio ? worst_load : 0.0)
                           .Set("min_save_vs_fio", have_fio ? worst_save : 0.0)
                           .Set("min_power_save_vs_fio_dsync", have_fio ? worst_power : 0.0))
        .Set("targets", Json::Object().Set("load_vs_fio", 0.85).Set("save_vs_fio", 0.85))
        .Set("notes", std::move(notes_json));
    std::printf("%s\n", j.Dump().c_str());
    return 0;
  }
  std::printf(
      "kvtier bench nvme: %s per size in %s (%s), beside fio (io_uring, %s, same block "
      "size, iodepth %u)\n\n",
      HumanBytes(volume).c_str(), parent.c_str(),
      layout.name == "regions"
          ? absl::StrCat("on-demand regions of ", HumanBytes(layout.region)).c_str()
          : "one explicit slot class",
      io_mode == "direct" ? "O_DIRECT" : "buffered", qd);
  Table table({"chunk", "pattern", "op", "durability", "kvtier", "reference", "ref rate", "ratio",
               "submit busy", "in flight"});
  for (const Row& r : rows) {
    table.AddRow({HumanBytes(r.size), r.pattern, r.op == "load" ? "load" : "save",
                  r.op == "load" ? "" : (r.op == "save" ? "process" : "power"), HumanRate(r.tier),
                  r.reference, HumanRate(r.fio), Fixed(r.ratio, 2), Fixed(r.submit_busy, 2),
                  Fixed(r.mean_inflight, 1)});
  }
  table.Print();
  std::printf(
      "\nDurability \"process\": a save is one write (commit record + data) acknowledged when it\n"
      "completed (no flush; survives a killed process), beside plain fio writes. \"power\": data,\n"
      "flush, commit record, flush (group commit; slots of evicted chunks are tombstoned and\n"
      "flushed first; survives a power loss), beside fio with O_DSYNC (one flush per write).\n");
  std::printf("\nReopen with %llu chunks of %s: snapshot %.3f s, scan %.3f s (fill took %.2f s)\n",
              static_cast<unsigned long long>(reopen_chunks), HumanBytes(reopen_payload).c_str(),
              reopen_snapshot, reopen_scan, reopen_fill);
  for (const std::string& n : notes) std::printf("note: %s\n", n.c_str());
  std::printf(
      "targets: Save (process) and Load >= 0.85x fio (worst here: save %.2fx, load %.2fx); "
      "save (power) vs fio O_DSYNC: worst %.2fx\n",
      have_fio ? worst_save : 0.0, have_fio ? worst_load : 0.0, have_fio ? worst_power : 0.0);
  return 0;
}

}  // namespace kvtier::cli
