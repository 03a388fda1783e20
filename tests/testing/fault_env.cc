#include "tests/testing/fault_env.h"

#include <errno.h>

#include <algorithm>
#include <cstring>
#include <deque>
#include <map>
#include <random>
#include <set>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"

namespace kvtier::testing {
namespace {

constexpr uint64_t kSector = 512;

struct OpenFault {
  std::string path_substr;
  int error = 0;
  bool direct_only = false;
};

// The old bytes under one write that no flush covers yet.
struct Undo {
  std::string path;
  uint64_t offset = 0;
  std::vector<std::byte> old_bytes;
  bool completed = false;
};

}  // namespace

struct FaultInjectionEnv::State {
  mutable absl::Mutex mu;
  std::vector<OpenFault> open_faults ABSL_GUARDED_BY(mu);
  int allocate_error ABSL_GUARDED_BY(mu) = 0;
  std::vector<IoFault> io_faults ABSL_GUARDED_BY(mu);
  uint64_t fired ABSL_GUARDED_BY(mu) = 0;
  bool hold[4] ABSL_GUARDED_BY(mu) = {false, false, false, false};
  bool tracking ABSL_GUARDED_BY(mu) = false;
  bool crashed ABSL_GUARDED_BY(mu) = false;
  // Unsynced writes in submission order (ids increase).
  std::map<uint64_t, Undo> unsynced ABSL_GUARDED_BY(mu);
  uint64_t next_undo ABSL_GUARDED_BY(mu) = 1;

  // Which fault, if any, hits `r`; counts it.
  const IoFault* Match(const IoRequest& r) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    for (IoFault& f : io_faults) {
      if (f.opcode != r.opcode || f.count == 0) continue;
      if (f.len != 0 && f.len != r.len) continue;
      if (!f.path_substr.empty() &&
          (r.file == nullptr || r.file->path().find(f.path_substr) == std::string::npos)) {
        continue;
      }
      if (f.skip > 0) {
        --f.skip;
        continue;
      }
      if (f.count > 0) --f.count;
      ++fired;
      return &f;
    }
    return nullptr;
  }

  // Records the bytes a write is about to replace.
  uint64_t Remember(File* base, const std::string& path, uint64_t offset, uint64_t len)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    Undo u;
    u.path = path;
    u.offset = offset;
    AlignedBuffer old(len);
    absl::StatusOr<uint64_t> size = base->Size();
    uint64_t readable = size.ok() && *size > offset ? std::min(len, *size - offset) : 0;
    uint64_t aligned = readable / 4096 * 4096;
    if (aligned > 0) base->ReadAt(offset, old.span().subspan(0, aligned)).IgnoreError();
    u.old_bytes.assign(old.data(), old.data() + len);
    uint64_t id = next_undo++;
    unsynced.emplace(id, std::move(u));
    return id;
  }

  // Every completed write of `path` is durable.
  void MarkSynced(const std::string& path, const std::set<uint64_t>* only)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    for (auto it = unsynced.begin(); it != unsynced.end();) {
      bool covered = it->second.path == path && it->second.completed &&
                     (only == nullptr || only->contains(it->first));
      it = covered ? unsynced.erase(it) : std::next(it);
    }
  }
};

namespace {

class FaultFile final : public File {
 public:
  FaultFile(std::unique_ptr<File> base, std::shared_ptr<FaultInjectionEnv::State> state)
      : base_(std::move(base)), state_(std::move(state)) {}

  File* base() const { return base_.get(); }
  const std::string& path() const override { return base_->path(); }
  bool is_block_device() const override { return base_->is_block_device(); }
  int NativeHandle() const override { return base_->NativeHandle(); }

  absl::Status ReadAt(uint64_t offset, absl::Span<std::byte> dst) override {
    if (Crashed()) return ErrnoToStatus(EIO, absl::StrCat("read ", path()));
    return base_->ReadAt(offset, dst);
  }

  absl::Status WriteAt(uint64_t offset, absl::Span<const std::byte> src) override {
    {
      absl::MutexLock lock(&state_->mu);
      if (state_->crashed) return ErrnoToStatus(EIO, absl::StrCat("write ", path()));
      if (state_->tracking) {
        uint64_t id = state_->Remember(base_.get(), path(), offset, src.size());
        state_->unsynced[id].completed = true;
      }
    }
    return base_->WriteAt(offset, src);
  }

  absl::Status Sync() override {
    if (Crashed()) return ErrnoToStatus(EIO, absl::StrCat("fdatasync ", path()));
    absl::Status s = base_->Sync();
    if (s.ok()) {
      absl::MutexLock lock(&state_->mu);
      state_->MarkSynced(path(), nullptr);
    }
    return s;
  }

  absl::StatusOr<uint64_t> Size() override { return base_->Size(); }

  absl::Status Allocate(uint64_t bytes) override {
    int err;
    {
      absl::MutexLock lock(&state_->mu);
      err = state_->allocate_error;
    }
    if (err != 0) {
      return ErrnoToStatus(err, absl::StrCat("cannot reserve ", bytes, " bytes for ", path()));
    }
    return base_->Allocate(bytes);
  }

 private:
  bool Crashed() const {
    absl::MutexLock lock(&state_->mu);
    return state_->crashed;
  }

  std::unique_ptr<File> base_;
  std::shared_ptr<FaultInjectionEnv::State> state_;
};

class FaultAsyncIo final : public AsyncIo {
 public:
  FaultAsyncIo(std::unique_ptr<AsyncIo> base, std::shared_ptr<FaultInjectionEnv::State> state)
      : base_(std::move(base)), state_(std::move(state)) {}

  uint32_t depth() const override { return base_->depth(); }

  absl::Status RegisterBuffers(absl::Span<const absl::Span<std::byte>> buffers) override {
    return base_->RegisterBuffers(buffers);
  }

  absl::Status Submit(absl::Span<const IoRequest> requests) override {
    std::vector<IoRequest> out;
    {
      absl::MutexLock lock(&state_->mu);
      for (const IoRequest& r : requests) {
        if (r.opcode != IoOpcode::kNop && state_->hold[static_cast<int>(r.opcode)]) {
          held_.push_back(r);
          continue;
        }
        Transform(r, out);
      }
    }
    if (out.empty()) return absl::OkStatus();
    absl::MutexLock lock(&submit_mu_);
    return base_->Submit(out);
  }

  absl::StatusOr<size_t> Reap(absl::Span<IoCompletion> out, absl::Duration timeout) override {
    for (;;) {
      // Requests released from hold are submitted by the reaping thread.
      if (absl::Status s = SubmitReleased(); !s.ok()) return s;
      absl::StatusOr<size_t> n = base_->Reap(out, timeout);
      if (!n.ok()) return n;
      absl::MutexLock lock(&state_->mu);
      size_t kept = 0;
      for (size_t i = 0; i < *n; ++i) {
        IoCompletion c = out[i];
        if (c.tag == release_tag()) continue;
        auto forced = forced_.find(c.tag);
        if (forced != forced_.end()) {
          c.result = forced->second;
          forced_.erase(forced);
        }
        auto w = inflight_writes_.find(c.tag);
        if (w != inflight_writes_.end()) {
          auto u = state_->unsynced.find(w->second);
          if (u != state_->unsynced.end()) u->second.completed = true;
          inflight_writes_.erase(w);
        }
        auto s = inflight_syncs_.find(c.tag);
        if (s != inflight_syncs_.end()) {
          if (c.result == 0) state_->MarkSynced(s->second.first, &s->second.second);
          inflight_syncs_.erase(s);
        }
        out[kept++] = c;
      }
      // Only the wake-up no-op came back: wait again (unless that was a
      // timeout or a poll).
      if (kept > 0 || *n == 0 || timeout == absl::ZeroDuration()) return kept;
    }
  }

  // Moves the held requests to the released list and wakes the reaper.
  void Release() {
    absl::MutexLock lock(&state_->mu);
    for (const IoRequest& r : held_) released_.push_back(r);
    held_.clear();
    IoRequest wake;
    wake.tag = release_tag();
    absl::MutexLock submit_lock(&submit_mu_);
    base_->Submit({&wake, 1}).IgnoreError();
  }

  size_t held() const {
    absl::MutexLock lock(&state_->mu);
    return held_.size();
  }

 private:
  // Tags the no-op that wakes the reaper after Release: this object's
  // address, which no caller's tag (small constants, its own objects'
  // addresses) can equal.
  uint64_t release_tag() const { return reinterpret_cast<uint64_t>(this); }

  absl::Status SubmitReleased() {
    std::vector<IoRequest> out;
    {
      absl::MutexLock lock(&state_->mu);
      for (const IoRequest& r : released_) Transform(r, out);
      released_.clear();
    }
    if (out.empty()) return absl::OkStatus();
    absl::MutexLock lock(&submit_mu_);
    return base_->Submit(out);
  }

  void Transform(const IoRequest& r, std::vector<IoRequest>& out)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(state_->mu) {
    auto as_failure = [&](int error) {
      IoRequest nop;
      nop.tag = r.tag;
      forced_[r.tag] = -error;
      out.push_back(nop);
    };
    if (r.opcode == IoOpcode::kNop) {
      out.push_back(r);
      return;
    }
    if (state_->crashed) {
      as_failure(EIO);
      return;
    }
    const IoFault* f = state_->Match(r);
    IoRequest real = r;
    FaultFile* ff = static_cast<FaultFile*>(r.file);
    if (f != nullptr) {
      if (r.opcode != IoOpcode::kWrite || f->torn_bytes == 0) {
        as_failure(f->error);
        return;
      }
      real.len = std::min(real.len, f->torn_bytes);
      forced_[r.tag] = -f->error;
    }
    if (state_->tracking && r.opcode == IoOpcode::kWrite) {
      inflight_writes_[r.tag] = state_->Remember(ff->base(), ff->path(), r.offset, real.len);
    }
    if (state_->tracking && r.opcode == IoOpcode::kDataSync) {
      std::set<uint64_t> covered;
      for (const auto& [id, u] : state_->unsynced) {
        if (u.completed && u.path == ff->path()) covered.insert(id);
      }
      inflight_syncs_[r.tag] = {ff->path(), std::move(covered)};
    }
    out.push_back(real);
  }

  std::unique_ptr<AsyncIo> base_;
  std::shared_ptr<FaultInjectionEnv::State> state_;
  // Serializes submissions to base_ (the tier's, the reaper's and Release's).
  absl::Mutex submit_mu_;
  // Guarded by state_->mu.
  absl::flat_hash_map<uint64_t, int32_t> forced_;
  absl::flat_hash_map<uint64_t, uint64_t> inflight_writes_;  // tag -> undo id
  absl::flat_hash_map<uint64_t, std::pair<std::string, std::set<uint64_t>>> inflight_syncs_;
  std::vector<IoRequest> held_;
  std::vector<IoRequest> released_;
};

}  // namespace

FaultInjectionEnv::FaultInjectionEnv(Env* target)
    : EnvWrapper(target), state_(std::make_shared<State>()) {}

FaultInjectionEnv::~FaultInjectionEnv() = default;

void FaultInjectionEnv::FailOpen(std::string path_substr, int error, bool direct_only) {
  absl::MutexLock lock(&state_->mu);
  state_->open_faults.push_back(OpenFault{std::move(path_substr), error, direct_only});
}

void FaultInjectionEnv::FailAllocate(int error) {
  absl::MutexLock lock(&state_->mu);
  state_->allocate_error = error;
}

void FaultInjectionEnv::AddIoFault(IoFault fault) {
  absl::MutexLock lock(&state_->mu);
  state_->io_faults.push_back(std::move(fault));
}

void FaultInjectionEnv::ClearFaults() {
  absl::MutexLock lock(&state_->mu);
  state_->open_faults.clear();
  state_->allocate_error = 0;
  state_->io_faults.clear();
}

uint64_t FaultInjectionEnv::faults_fired() const {
  absl::MutexLock lock(&state_->mu);
  return state_->fired;
}

namespace {
// Live FaultAsyncIo objects per state, so Release reaches them.
absl::Mutex registry_mu;
std::map<const FaultInjectionEnv::State*, std::vector<FaultAsyncIo*>>& Registry() {
  static auto* r = new std::map<const FaultInjectionEnv::State*, std::vector<FaultAsyncIo*>>;
  return *r;
}

class RegisteredAsyncIo final : public AsyncIo {
 public:
  RegisteredAsyncIo(std::unique_ptr<FaultAsyncIo> io, const FaultInjectionEnv::State* state)
      : io_(std::move(io)), state_(state) {
    absl::MutexLock lock(&registry_mu);
    Registry()[state_].push_back(io_.get());
  }
  ~RegisteredAsyncIo() override {
    absl::MutexLock lock(&registry_mu);
    auto& v = Registry()[state_];
    v.erase(std::remove(v.begin(), v.end(), io_.get()), v.end());
  }
  uint32_t depth() const override { return io_->depth(); }
  absl::Status RegisterBuffers(absl::Span<const absl::Span<std::byte>> b) override {
    return io_->RegisterBuffers(b);
  }
  absl::Status Submit(absl::Span<const IoRequest> r) override { return io_->Submit(r); }
  absl::StatusOr<size_t> Reap(absl::Span<IoCompletion> out, absl::Duration timeout) override {
    return io_->Reap(out, timeout);
  }

 private:
  std::unique_ptr<FaultAsyncIo> io_;
  const FaultInjectionEnv::State* state_;
};
}  // namespace

void FaultInjectionEnv::Hold(IoOpcode opcode) {
  absl::MutexLock lock(&state_->mu);
  state_->hold[static_cast<int>(opcode)] = true;
}

void FaultInjectionEnv::ReleaseHeld() {
  {
    absl::MutexLock lock(&state_->mu);
    for (bool& h : state_->hold) h = false;
  }
  absl::MutexLock lock(&registry_mu);
  for (FaultAsyncIo* io : Registry()[state_.get()]) io->Release();
}

size_t FaultInjectionEnv::held() const {
  absl::MutexLock lock(&registry_mu);
  size_t n = 0;
  for (FaultAsyncIo* io : Registry()[state_.get()]) n += io->held();
  return n;
}

void FaultInjectionEnv::TrackUnsynced(bool on) {
  absl::MutexLock lock(&state_->mu);
  state_->tracking = on;
}

void FaultInjectionEnv::Crash() {
  absl::MutexLock lock(&state_->mu);
  state_->crashed = true;
}

size_t FaultInjectionEnv::unsynced_writes() const {
  absl::MutexLock lock(&state_->mu);
  return state_->unsynced.size();
}

absl::Status FaultInjectionEnv::DropUnsyncedWrites(uint64_t seed, double keep) {
  absl::MutexLock lock(&state_->mu);
  std::mt19937_64 rng(seed);
  std::bernoulli_distribution keep_sector(keep);
  // Sectors whose newest unsynced write survived: older writes to them are
  // overwritten and must not be reverted.
  std::set<std::pair<std::string, uint64_t>> kept;
  std::map<std::string, std::unique_ptr<File>> files;
  for (auto it = state_->unsynced.rbegin(); it != state_->unsynced.rend(); ++it) {
    const Undo& u = it->second;
    if (!files.contains(u.path)) {
      FileOpenOptions fo;
      absl::StatusOr<std::unique_ptr<File>> f = target()->OpenFile(u.path, fo);
      if (!f.ok()) return f.status();
      files[u.path] = *std::move(f);
    }
    File* f = files[u.path].get();
    for (uint64_t off = 0; off < u.old_bytes.size(); off += kSector) {
      uint64_t sector = u.offset + off;
      if (kept.contains({u.path, sector})) continue;
      if (keep_sector(rng)) {
        kept.insert({u.path, sector});
        continue;
      }
      uint64_t n = std::min<uint64_t>(kSector, u.old_bytes.size() - off);
      absl::Status s = f->WriteAt(sector, {u.old_bytes.data() + off, n});
      if (!s.ok()) return s;
    }
  }
  for (auto& [path, f] : files) {
    if (absl::Status s = f->Sync(); !s.ok()) return s;
  }
  state_->unsynced.clear();
  state_->crashed = false;
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<File>> FaultInjectionEnv::OpenFile(const std::string& path,
                                                                  const FileOpenOptions& options) {
  {
    absl::MutexLock lock(&state_->mu);
    for (const OpenFault& f : state_->open_faults) {
      if (path.find(f.path_substr) == std::string::npos) continue;
      if (f.direct_only && !options.direct) continue;
      return ErrnoToStatus(f.error, absl::StrCat("open ", path));
    }
  }
  absl::StatusOr<std::unique_ptr<File>> base = target()->OpenFile(path, options);
  if (!base.ok()) return base.status();
  return std::make_unique<FaultFile>(*std::move(base), state_);
}

absl::StatusOr<std::unique_ptr<AsyncIo>> FaultInjectionEnv::NewAsyncIo(
    const AsyncIoOptions& options) {
  absl::StatusOr<std::unique_ptr<AsyncIo>> base = target()->NewAsyncIo(options);
  if (!base.ok()) return base.status();
  return std::make_unique<RegisteredAsyncIo>(
      std::make_unique<FaultAsyncIo>(*std::move(base), state_), state_.get());
}

}  // namespace kvtier::testing
