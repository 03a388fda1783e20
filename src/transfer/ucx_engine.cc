#include "src/transfer/ucx_engine.h"

#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <optional>
#include <set>
#include <sstream>
#include <tuple>
#include <utility>

#include "absl/container/inlined_vector.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/notification.h"

namespace kvtier::transfer {
namespace {

absl::Status UcxError(absl::string_view what, ucs_status_t s) {
  return absl::UnavailableError(absl::StrCat(what, ": ", ucs_status_string(s)));
}

// Why nothing is sent to a peer whose endpoint was closed here (`closed`)
// or failed.
absl::Status PeerGone(bool closed) {
  return absl::UnavailableError(closed ? "ucx: the peer's endpoint is closed"
                                       : "ucx: the peer's endpoint has failed");
}

// OutOfRange when `op` reaches past a remote arena of `remote_bytes`.
absl::Status CheckRange(const UcxEngine::GetOp& op, uint64_t remote_bytes) {
  if (op.remote_offset > remote_bytes || op.dst.size() > remote_bytes - op.remote_offset) {
    return absl::OutOfRangeError(absl::StrCat("remote range [", op.remote_offset, ", +",
                                              op.dst.size(), ") is outside the peer's arena of ",
                                              remote_bytes, " bytes"));
  }
  return absl::OkStatus();
}

// Active message ids of calls (UcxEngine::Call) and their replies.
constexpr unsigned kCallRequestAm = 11;
constexpr unsigned kCallReplyAm = 12;
// The largest call request answered (a PinForRead of 4,096 keys is ~200 KiB).
constexpr size_t kMaxCallBytes = 1 << 20;
// The reply's flag: the callee had no handler.
constexpr uint32_t kNoHandler = 1;

// The user header of a call's request and reply.
struct CallHeader {
  uint64_t call_id = 0;
  uint32_t flags = 0;
  uint32_t reserved = 0;
};

// One active message being sent: its header and data stay here until UCX is
// done with them.
struct AmSend {
  CallHeader header;
  std::string data;
};

void OnAmSent(void* request, ucs_status_t status, void* user_data) {
  (void)status;
  delete static_cast<AmSend*>(user_data);
  ucp_request_free(request);
}

// Posts `msg` as active message `id` on `ep` (eagerly). UCS_OK or
// UCS_INPROGRESS (then UCX owns `msg` until its callback), else the error.
ucs_status_t PostAm(ucp_ep_h ep, unsigned id, std::unique_ptr<AmSend> msg, uint32_t flags) {
  ucp_request_param_t param;
  std::memset(&param, 0, sizeof(param));
  param.op_attr_mask =
      UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA | UCP_OP_ATTR_FIELD_FLAGS;
  param.cb.send = &OnAmSent;
  param.user_data = msg.get();
  param.flags = flags | UCP_AM_SEND_FLAG_EAGER;
  void* req = ucp_am_send_nbx(ep, id, &msg->header, sizeof(CallHeader), msg->data.data(),
                              msg->data.size(), &param);
  if (req == nullptr) return UCS_OK;  // sent at once; `msg` is freed here
  if (UCS_PTR_IS_ERR(req)) return UCS_PTR_STATUS(req);
  (void)msg.release();  // freed by OnAmSent
  return UCS_INPROGRESS;
}

// "rma_bw=rc_mlx5/mlx5_0:1 am=rc_mlx5/mlx5_0:1" or "rma=am-emulated am=tcp/lo"
// from ucp_ep_print_info's lane lines, which look like
// "#   lane[0]:  1:tcp/lo.0 md[0] -> md[0]/tcp/sysdev[255] am am_bw#0 keepalive wireup".
std::string LaneTransports(ucp_ep_h ep, bool mapped) {
  char* buf = nullptr;
  size_t len = 0;
  FILE* f = open_memstream(&buf, &len);
  if (f == nullptr) return "unknown";
  ucp_ep_print_info(ep, f);
  fclose(f);
  std::string text(buf, len);
  free(buf);
  std::set<std::string> rma, am;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    const size_t lane = line.find("lane[");
    if (lane == std::string::npos) continue;
    const size_t colon = line.find(':', line.find(']', lane) + 2);
    if (colon == std::string::npos) continue;
    const size_t start = colon + 1;
    const size_t end = line.find(' ', start);
    std::string tl = line.substr(start, end == std::string::npos ? std::string::npos : end - start);
    // "tcp/lo.0" -> "tcp/lo"; keep "posix/memory".
    if (size_t dot = tl.rfind('.'); dot != std::string::npos && dot > tl.find('/')) {
      tl.resize(dot);
    }
    if (line.find("rma_bw") != std::string::npos) rma.insert(tl);
    if (line.find(" am") != std::string::npos) am.insert(tl);
  }
  // Without an rma_bw lane (TCP, shared memory without a registering
  // memory domain) UCX emulates gets with active messages on the am lane,
  // served by the holder's progress thread -- unless the peer's arena is
  // UCX shared memory mapped here: then UCX's get, like a direct read, is a
  // copy out of the mapping (ucp_ep_print_info lists no rma lane for it).
  std::string out = mapped        ? "rma=mapped-shm"
                    : rma.empty() ? "rma=am-emulated"
                                  : absl::StrCat("rma_bw=", absl::StrJoin(rma, ","));
  if (!am.empty()) absl::StrAppend(&out, " am=", absl::StrJoin(am, ","));
  return out;
}

// True when UCX_TLS names only shared-memory (and loopback) transports, none
// of which detects a peer's failure in UCX: endpoints are then created without
// peer error handling (UCX would refuse them otherwise).
bool SharedMemoryOnly() {
  const char* tls = std::getenv("UCX_TLS");
  if (tls == nullptr || *tls == '\0' || *tls == '^') return false;
  static const std::set<std::string> kShm = {"sm",        "shm",      "posix",     "sysv",
                                             "cma",       "knem",     "xpmem",     "self",
                                             "cuda_copy", "cuda_ipc", "rocm_copy", "rocm_ipc"};
  for (absl::string_view t : absl::StrSplit(tls, ',', absl::SkipEmpty())) {
    if (!kShm.contains(std::string(absl::StripAsciiWhitespace(t)))) return false;
  }
  return true;
}

// The order of UCX's allocation methods for AllocateArena when the user did
// not set UCX_ALLOC_PRIO: posix shared memory first (a file whose descriptor
// UCX keeps open, which local clients can map), sysv (no descriptor) later.
constexpr char kAllocPrio[] = "md:posix,huge,thp,md:*,mmap,heap";

// One line of /proc/self/maps.
struct Mapping {
  uintptr_t lo = 0, hi = 0;  // [lo, hi)
  bool shared = false;
  uint64_t offset = 0;
  unsigned int dev_major = 0, dev_minor = 0;
  uint64_t inode = 0;
  std::string what;  // the path, or "anonymous memory"
};

// The mapping of this process that holds `addr`, if any.
std::optional<Mapping> FindMapping(const void* addr) {
  std::ifstream maps("/proc/self/maps");
  std::string line;
  const uintptr_t a = reinterpret_cast<uintptr_t>(addr);
  unsigned long lo = 0, hi = 0, off = 0, ino = 0;
  unsigned int dev_major = 0, dev_minor = 0;
  char perms[8] = {0};
  while (std::getline(maps, line)) {
    if (sscanf(line.c_str(), "%lx-%lx %7s %lx %x:%x %lu", &lo, &hi, perms, &off, &dev_major,
               &dev_minor, &ino) == 7 &&
        a >= lo && a < hi) {
      Mapping m;
      m.lo = lo;
      m.hi = hi;
      m.shared = perms[3] == 's';
      m.offset = off;
      m.dev_major = dev_major;
      m.dev_minor = dev_minor;
      m.inode = ino;
      const size_t path = line.find('/');
      m.what = path == std::string::npos ? std::string("anonymous memory") : line.substr(path);
      return m;
    }
  }
  return std::nullopt;
}

// True when [p, p + n) lies inside one shared mapping of this process.
bool InOneSharedMapping(const void* p, uint64_t n) {
  const std::optional<Mapping> m = FindMapping(p);
  return m.has_value() && m->shared && reinterpret_cast<uintptr_t>(p) + n <= m->hi;
}

// The descriptor of this process that maps the file behind the shared
// mapping at `addr` (found by device and inode, as /proc/self/maps names
// them), or -1. `what` says what the mapping is.
int FindMappedFile(const void* addr, std::string* what) {
  const std::optional<Mapping> m = FindMapping(addr);
  if (!m.has_value()) {
    *what = "no mapping in /proc/self/maps";
    return -1;
  }
  *what = m->what;
  if (!m->shared) {
    absl::StrAppend(what, " (private)");
    return -1;
  }
  if (m->inode == 0 || m->offset != 0) return -1;
  DIR* dir = opendir("/proc/self/fd");
  if (dir == nullptr) return -1;
  int out = -1;
  const int dir_fd = dirfd(dir);
  while (dirent* e = readdir(dir)) {
    if (e->d_name[0] == '.') continue;
    const int fd = std::atoi(e->d_name);
    struct stat st;
    if (fd == dir_fd || fstat(fd, &st) != 0) continue;
    if (st.st_ino == m->inode && major(st.st_dev) == m->dev_major &&
        minor(st.st_dev) == m->dev_minor) {
      out = fd;
      break;
    }
  }
  closedir(dir);
  return out;
}

}  // namespace

struct UcxEngine::GetBatch {
  absl::Mutex mu;
  std::vector<size_t> completed ABSL_GUARDED_BY(mu);  // ops done, not yet handed to the caller
  // Set by PostGets before it posts anything; until then a caller past its
  // deadline sets `abandoned` instead of closing the endpoint, and the gets
  // are refused unposted.
  bool started ABSL_GUARDED_BY(mu) = false;
  bool abandoned ABSL_GUARDED_BY(mu) = false;
};

struct UcxEngine::GetSlot {
  GetBatch* batch = nullptr;
  std::atomic<int64_t>* outstanding = nullptr;  // the worker's count of gets in flight
  size_t index = 0;
  ucs_status_t status = UCS_OK;  // set before `index` joins batch->completed
  bool peer_gone = false;        // not posted: the endpoint was closed or had failed
  bool not_started = false;      // not posted: the caller's deadline passed first
};

void UcxEngine::OnGetDone(void* request, ucs_status_t status, void* user_data) {
  auto* slot = static_cast<GetSlot*>(user_data);
  // Runs on the progress thread, which posted the get (or, for gets a
  // forced close purges, on the closing thread, which holds no batch lock):
  // the request is freed here, never by the caller.
  ucp_request_free(request);
  // The progress thread stops driving the worker without pause as soon as
  // its last get is done, not when the caller gets to run.
  slot->outstanding->fetch_sub(1);
  absl::MutexLock lock(&slot->batch->mu);
  slot->status = status;
  slot->batch->completed.push_back(slot->index);
}

absl::Status UcxOptions::Validate() const {
  if (progress_threads < 1 || progress_threads > 64) {
    return absl::InvalidArgumentError(
        absl::StrCat("ucx.progress_threads: ", progress_threads, " is outside 1..64"));
  }
  if (idle_wait < absl::ZeroDuration() || idle_wait > absl::Seconds(1)) {
    return absl::InvalidArgumentError("ucx.idle_wait: must be within 0..1s");
  }
  if (busy_poll < absl::ZeroDuration()) {
    return absl::InvalidArgumentError("ucx.busy_poll_us: must not be negative");
  }
  if (copy_threads < -1 || copy_threads > 64) {
    return absl::InvalidArgumentError(
        absl::StrCat("ucx.copy_threads: ", copy_threads, " is outside -1..64"));
  }
  return absl::OkStatus();
}

std::string UcxEngine::Version() { return ucp_get_version_string(); }

absl::StatusOr<std::unique_ptr<UcxEngine>> UcxEngine::Create(const UcxOptions& options) {
  if (absl::Status s = options.Validate(); !s.ok()) return s;
  std::unique_ptr<UcxEngine> e(new UcxEngine(options));
  if (absl::Status s = e->Init(); !s.ok()) return s;
  return e;
}

absl::Status UcxEngine::Init() {
  ucp_config_t* config = nullptr;
  ucs_status_t s = ucp_config_read(nullptr, nullptr, &config);
  if (s != UCS_OK) return UcxError("ucp_config_read", s);
  if (std::getenv("UCX_ALLOC_PRIO") == nullptr) {
    // Best effort: on failure UCX's own order stays (AllocateArena checks
    // what it gets).
    (void)ucp_config_modify(config, "ALLOC_PRIO", kAllocPrio);
  }
  // Wakeup lets idle progress threads sleep in an event fd; when no
  // transport supports it, the threads poll with short sleeps instead.
  for (bool wakeup : {true, false}) {
    ucp_params_t params;
    std::memset(&params, 0, sizeof(params));
    params.field_mask = UCP_PARAM_FIELD_FEATURES | UCP_PARAM_FIELD_MT_WORKERS_SHARED;
    params.features = UCP_FEATURE_RMA | UCP_FEATURE_AM | (wakeup ? UCP_FEATURE_WAKEUP : 0);
    params.mt_workers_shared = 1;
    s = ucp_init(&params, config, &context_);
    if (s == UCS_OK) {
      wakeup_ = wakeup;
      context_owner_ = std::shared_ptr<void>(
          context_, [](void* c) { ucp_cleanup(static_cast<ucp_context_h>(c)); });
      break;
    }
  }
  ucp_config_release(config);
  if (s != UCS_OK) return UcxError("ucp_init (no usable UCX transport? check UCX_TLS)", s);

  for (uint32_t i = 0; i < options_.progress_threads; ++i) {
    auto w = std::make_unique<Worker>();
    ucp_worker_params_t wp;
    std::memset(&wp, 0, sizeof(wp));
    wp.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE;
    wp.thread_mode = UCS_THREAD_MODE_MULTI;
    s = ucp_worker_create(context_, &wp, &w->worker);
    if (s != UCS_OK) return UcxError("ucp_worker_create", s);
    ucp_worker_attr_t attr;
    std::memset(&attr, 0, sizeof(attr));
    attr.field_mask = UCP_WORKER_ATTR_FIELD_THREAD_MODE;
    if (ucp_worker_query(w->worker, &attr) == UCS_OK && attr.thread_mode != UCS_THREAD_MODE_MULTI) {
      ucp_worker_destroy(w->worker);
      return absl::FailedPreconditionError(
          "ucx: this UCX library has no multi-thread support (built without --enable-mt)");
    }
    if (wakeup_ && ucp_worker_get_efd(w->worker, &w->efd) != UCS_OK) w->efd = -1;
    ucp_address_t* addr = nullptr;
    size_t addr_len = 0;
    s = ucp_worker_get_address(w->worker, &addr, &addr_len);
    if (s != UCS_OK) {
      ucp_worker_destroy(w->worker);
      return UcxError("ucp_worker_get_address", s);
    }
    addresses_.emplace_back(reinterpret_cast<const char*>(addr), addr_len);
    ucp_worker_release_address(w->worker, addr);
    for (const auto& [id, cb, arg] :
         {std::tuple<unsigned, ucp_am_recv_callback_t, void*>{kCallRequestAm, &OnCallRequest, this},
          std::tuple<unsigned, ucp_am_recv_callback_t, void*>{kCallReplyAm, &OnCallReply, this}}) {
      ucp_am_handler_param_t hp;
      std::memset(&hp, 0, sizeof(hp));
      hp.field_mask = UCP_AM_HANDLER_PARAM_FIELD_ID | UCP_AM_HANDLER_PARAM_FIELD_FLAGS |
                      UCP_AM_HANDLER_PARAM_FIELD_CB | UCP_AM_HANDLER_PARAM_FIELD_ARG;
      hp.id = id;
      hp.flags = UCP_AM_FLAG_WHOLE_MSG;
      hp.cb = cb;
      hp.arg = arg;
      s = ucp_worker_set_am_recv_handler(w->worker, &hp);
      if (s != UCS_OK) {
        ucp_worker_destroy(w->worker);
        return UcxError("ucp_worker_set_am_recv_handler", s);
      }
    }
    workers_.push_back(std::move(w));
  }
  for (auto& w : workers_) {
    Worker* raw = w.get();
    w->thread = std::thread([this, raw] { ProgressLoop(raw); });
  }
  const int copiers =
      options_.copy_threads >= 0
          ? options_.copy_threads
          : std::min(3, std::max(0, static_cast<int>(std::thread::hardware_concurrency()) - 1));
  for (int i = 0; i < copiers; ++i) copiers_.push_back(std::make_unique<Copier>());
  for (const std::unique_ptr<Copier>& c : copiers_) {
    Copier* raw = c.get();
    c->thread = std::thread([this, raw] { CopyLoop(raw); });
  }
  return absl::OkStatus();
}

void UcxEngine::CopyLoop(Copier* self) {
  for (;;) {
    absl::AnyInvocable<void() &&> job;
    {
      absl::MutexLock lock(&copy_mu_);
      idle_copiers_.push_back(self);
      while (self->job == nullptr && !copy_stop_) self->cv.Wait(&copy_mu_);
      if (self->job == nullptr) return;  // stopping
      // The run that set the job took this helper off idle_copiers_.
      job = std::move(self->job);
      self->job = nullptr;
    }
    std::move(job)();
  }
}

UcxEngine::~UcxEngine() {
  {
    absl::MutexLock lock(&copy_mu_);
    copy_stop_ = true;
    for (const std::unique_ptr<Copier>& c : copiers_) c->cv.Signal();
  }
  for (const std::unique_ptr<Copier>& c : copiers_) {
    if (c->thread.joinable()) c->thread.join();  // not if Init failed to start it
  }
  // Let every worker finish the connection traffic in flight (wireup and
  // disconnect messages of endpoints other nodes made to it) before it goes.
  for (size_t i = 0; i < workers_.size(); ++i) {
    ucp_request_param_t param;
    std::memset(&param, 0, sizeof(param));
    void* req = ucp_worker_flush_nbx(workers_[i]->worker, &param);
    WaitRequest(i, req, absl::Now() + absl::Seconds(1));
  }
  const absl::Time quiet = absl::Now() + absl::Milliseconds(20);
  while (absl::Now() < quiet) absl::SleepFor(absl::Milliseconds(2));
  stop_.store(true);
  for (auto& w : workers_) {
    ucp_worker_signal(w->worker);
    if (w->thread.joinable()) w->thread.join();
  }
  {
    absl::MutexLock lock(&map_mu_);
    // An allocated arena is unmapped by its own release.
    if (memh_ != nullptr && !allocated_) ucp_mem_unmap(context_, memh_);
    memh_ = nullptr;
  }
  for (auto& w : workers_) ucp_worker_destroy(w->worker);
  context_owner_.reset();
}

void UcxEngine::ProgressLoop(Worker* w) {
  const int wait_ms =
      std::max<int>(1, static_cast<int>(absl::ToInt64Milliseconds(options_.idle_wait)));
  // Spins for a while after the last activity: a transfer in progress (an
  // emulated get served to another node, a send waiting for socket room)
  // needs progress that no receive event announces.
  auto last_active = std::chrono::steady_clock::now();
  const int64_t busy_poll = options_.busy_poll == absl::InfiniteDuration()
                                ? -1
                                : absl::ToInt64Microseconds(options_.busy_poll);
  while (!stop_.load(std::memory_order_relaxed)) {
    if (w->has_posts.load()) {
      RunPosts(*w);
      last_active = std::chrono::steady_clock::now();
    }
    const unsigned progressed = ucp_worker_progress(w->worker);
    if (progressed != 0) {
      last_active = std::chrono::steady_clock::now();
      continue;
    }
    const auto idle = std::chrono::steady_clock::now() - last_active;
    // Gets of this process in flight: keep driving them (for busy_poll).
    const bool busy = w->outstanding.load() > 0;
    if (busy && (busy_poll < 0 || idle < std::chrono::microseconds(busy_poll))) {
      std::this_thread::yield();
      continue;
    }
    if (!busy && idle < std::chrono::milliseconds(2)) {
      std::this_thread::yield();
      continue;
    }
    if (w->efd >= 0) {
      const ucs_status_t s = ucp_worker_arm(w->worker);
      if (s == UCS_ERR_BUSY) continue;
      if (s == UCS_OK) {
        // A poster that saw `sleeping` false has raised `outstanding` and
        // `has_posts` before these checks (all sequentially consistent), so
        // no post is missed; gets in flight complete with events of their
        // own.
        w->sleeping.store(true);
        if (!w->has_posts.load() && (busy || w->outstanding.load() == 0)) {
          pollfd p{w->efd, POLLIN, 0};
          poll(&p, 1, busy ? 1 : wait_ms);
        }
        w->sleeping.store(false);
        continue;
      }
    }
    absl::SleepFor(absl::Microseconds(20));
  }
  // What was queued last still runs (its callers are waiting for it).
  RunPosts(*w);
}

void UcxEngine::Post(Worker& w, absl::AnyInvocable<void() &&> fn) {
  {
    absl::MutexLock lock(&w.post_mu);
    w.posts.push_back(std::move(fn));
    w.has_posts.store(true);
  }
  if (w.sleeping.load()) ucp_worker_signal(w.worker);
}

void UcxEngine::RunPosts(Worker& w) {
  std::vector<absl::AnyInvocable<void() &&>> posts;
  {
    absl::MutexLock lock(&w.post_mu);
    posts.swap(w.posts);
    w.has_posts.store(false);
  }
  for (auto& fn : posts) std::move(fn)();
}

ucs_status_t UcxEngine::OnCallRequest(void* arg, const void* header, size_t header_length,
                                      void* data, size_t length, const ucp_am_recv_param_t* param) {
  auto* e = static_cast<UcxEngine*>(arg);
  // Requests are sent eagerly with a reply endpoint; anything else is not a
  // call (dropped; a caller would see its deadline).
  if (header_length != sizeof(CallHeader) || (param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV) != 0 ||
      (param->recv_attr & UCP_AM_RECV_ATTR_FIELD_REPLY_EP) == 0 || length > kMaxCallBytes) {
    return UCS_OK;
  }
  CallHeader h;
  std::memcpy(&h, header, sizeof(h));
  e->ServeCall(param->reply_ep, h.call_id,
               absl::string_view(static_cast<const char*>(data), length));
  return UCS_OK;
}

ucs_status_t UcxEngine::OnCallReply(void* arg, const void* header, size_t header_length, void* data,
                                    size_t length, const ucp_am_recv_param_t* param) {
  auto* e = static_cast<UcxEngine*>(arg);
  if (header_length != sizeof(CallHeader) || (param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV) != 0) {
    return UCS_OK;
  }
  CallHeader h;
  std::memcpy(&h, header, sizeof(h));
  absl::MutexLock lock(&e->calls_mu_);
  auto it = e->calls_.find(h.call_id);
  if (it == e->calls_.end()) return UCS_OK;  // the caller gave up
  PendingCall* pc = it->second;
  pc->reply.assign(static_cast<const char*>(data), length);
  pc->no_handler = (h.flags & kNoHandler) != 0;
  pc->replied = true;
  return UCS_OK;
}

void UcxEngine::ServeCall(ucp_ep_h reply_ep, uint64_t call_id, absl::string_view request) {
  auto reply = std::make_unique<AmSend>();
  reply->header.call_id = call_id;
  {
    absl::ReaderMutexLock lock(&handler_mu_);
    if (handler_) {
      reply->data = handler_(request);
      calls_served_.fetch_add(1);
    } else {
      reply->header.flags = kNoHandler;
    }
  }
  // A reply that cannot be sent (the caller went away) is dropped.
  (void)PostAm(reply_ep, kCallReplyAm, std::move(reply), 0);
}

void UcxEngine::SetCallHandler(CallHandler handler) {
  absl::MutexLock lock(&handler_mu_);
  handler_ = std::move(handler);
}

absl::StatusOr<std::string> UcxEngine::Call(UcxPeer& peer, absl::string_view request,
                                            absl::Time deadline) {
  Worker& w = *workers_[peer.worker_];
  if (absl::Now() >= deadline) {
    // Nothing was posted: the endpoint stays as it is.
    return absl::DeadlineExceededError("ucx: the call's deadline passed before it was sent");
  }
  PendingCall pc;
  // Random, so that a reply cannot be forged by guessing the next id.
  uint64_t id = 0;
  if (getrandom(&id, sizeof(id), 0) != static_cast<ssize_t>(sizeof(id))) {
    return absl::InternalError("ucx call: getrandom failed");
  }
  {
    absl::MutexLock lock(&calls_mu_);
    while (!calls_.emplace(id, &pc).second) ++id;  // ids are random: a clash is next to impossible
  }
  // The reply is awaited like a get: the progress thread keeps polling.
  w.outstanding.fetch_add(1);
  Post(w, [this, &peer, id, req = std::string(request)]() mutable {
    PostCall(peer, id, std::move(req));
  });
  bool timed_out = false;
  {
    absl::MutexLock lock(&calls_mu_);
    // Wakes every millisecond to notice a failed peer (UCX reports it on
    // the progress thread, which does not know this call).
    while (!pc.replied && pc.send != PendingCall::Send::kFailed) {
      const absl::Time now = absl::Now();
      if (now >= deadline) {
        timed_out = true;
        break;
      }
      // A millisecond without an answer: has the peer (or its watched
      // process) failed?
      if (!calls_mu_.AwaitWithDeadline(absl::Condition(
                                           +[](PendingCall* c) {
                                             return c->replied ||
                                                    c->send == PendingCall::Send::kFailed;
                                           },
                                           &pc),
                                       std::min(deadline, now + absl::Milliseconds(1))) &&
          peer.CheckProcess()) {
        break;
      }
    }
    // The progress thread may still hold the request: it uses the peer until
    // it has sent it (or given up on it), so the caller waits for that. A
    // request not sent yet is not sent at all.
    pc.abandoned = true;
    calls_mu_.Await(absl::Condition(
        +[](PendingCall* c) {
          return c->send == PendingCall::Send::kSent || c->send == PendingCall::Send::kFailed;
        },
        &pc));
    calls_.erase(id);  // no reply touches `pc` after this
  }
  w.outstanding.fetch_sub(1);
  if (pc.replied) {
    if (pc.no_handler) return absl::UnimplementedError("ucx: the peer does not answer calls");
    calls_made_.fetch_add(1);
    return std::move(pc.reply);
  }
  if (pc.send == PendingCall::Send::kFailed) {
    if (!pc.send_error.ok()) return pc.send_error;
    // Given up on before it was sent: the endpoint stays as it is.
    if (timed_out)
      return absl::DeadlineExceededError("ucx: the call's deadline passed before it was sent");
  }
  if (timed_out) {
    peer.failed_.store(true);
    peer.Close();
    return absl::DeadlineExceededError("ucx: no reply to the call by its deadline");
  }
  return absl::UnavailableError("ucx: the peer failed during the call");
}

void UcxEngine::PostCall(UcxPeer& peer, uint64_t call_id, std::string request) {
  Worker& w = *workers_[peer.worker_];
  if (!peer.close_mu_.ReaderTryLock()) {
    // Close holds it while it waits for this thread to progress the
    // endpoint's close: try again on the next turn.
    Post(w, [this, &peer, call_id, request = std::move(request)]() mutable {
      PostCall(peer, call_id, std::move(request));
    });
    return;
  }
  // The caller waits (and keeps the peer) until the call's send state is
  // final; it is set only after the peer's lock is released here.
  PendingCall* pc = nullptr;
  absl::Status refused;
  bool send = false;
  {
    absl::MutexLock lock(&calls_mu_);
    auto it = calls_.find(call_id);
    if (it != calls_.end()) {
      pc = it->second;
      if (pc->abandoned) {
        // Given up on: not sent, refused without an error of its own.
      } else if (peer.closed_ || peer.failed()) {
        refused = PeerGone(peer.closed_);
      } else {
        pc->send = PendingCall::Send::kSending;
        send = true;
      }
    }
  }
  if (send) {
    auto msg = std::make_unique<AmSend>();
    msg->header.call_id = call_id;
    msg->data = std::move(request);
    const ucs_status_t s = PostAm(peer.ep_, kCallRequestAm, std::move(msg), UCP_AM_SEND_FLAG_REPLY);
    if (s != UCS_OK && s != UCS_INPROGRESS) {
      refused = UcxError("ucx call", s);
      send = false;
    }
  }
  peer.close_mu_.ReaderUnlock();
  if (pc == nullptr) return;
  absl::MutexLock lock(&calls_mu_);
  pc->send_error = std::move(refused);
  pc->send = send ? PendingCall::Send::kSent : PendingCall::Send::kFailed;
}

void UcxEngine::Wake(size_t worker) { ucp_worker_signal(workers_[worker]->worker); }

ucs_status_t UcxEngine::WaitRequest(size_t worker, void* request, absl::Time deadline) {
  if (request == nullptr) return UCS_OK;
  if (UCS_PTR_IS_ERR(request)) return UCS_PTR_STATUS(request);
  ucs_status_t s;
  while ((s = ucp_request_check_status(request)) == UCS_INPROGRESS) {
    if (absl::Now() >= deadline) {
      // Left to UCX: it completes (or purges) the request on its own.
      ucp_request_free(request);
      return UCS_ERR_TIMED_OUT;
    }
    Wake(worker);
    absl::SleepFor(absl::Microseconds(50));
  }
  ucp_request_free(request);
  return s;
}

absl::StatusOr<ArenaMemory> UcxEngine::AllocateArena(uint64_t bytes) {
  absl::MutexLock lock(&map_mu_);
  if (memh_ != nullptr) return absl::FailedPreconditionError("ucx: the arena is already mapped");
  if (bytes == 0) return absl::InvalidArgumentError("ucx arena: zero bytes");
  ucp_mem_map_params_t mp;
  std::memset(&mp, 0, sizeof(mp));
  mp.field_mask = UCP_MEM_MAP_PARAM_FIELD_ADDRESS | UCP_MEM_MAP_PARAM_FIELD_LENGTH |
                  UCP_MEM_MAP_PARAM_FIELD_FLAGS;
  mp.address = nullptr;
  mp.length = bytes;
  mp.flags = UCP_MEM_MAP_ALLOCATE;
  // UCX's posix memory is a file in /dev/shm that UCX fills with zeros
  // before it is used: with less room than the arena, UCX would write until
  // the file system is full and fail; the memfd arena is the better choice.
  if (struct statvfs vfs; statvfs("/dev/shm", &vfs) == 0 &&
                          static_cast<uint64_t>(vfs.f_bavail) * vfs.f_frsize < bytes) {
    return absl::FailedPreconditionError(
        absl::StrCat("ucx arena: /dev/shm has ", static_cast<uint64_t>(vfs.f_bavail) * vfs.f_frsize,
                     " bytes free, the arena needs ", bytes));
  }
  ucp_mem_h memh = nullptr;
  ucs_status_t s = ucp_mem_map(context_, &mp, &memh);
  if (s != UCS_OK) return UcxError("ucp_mem_map (allocate) of the DRAM arena", s);
  ucp_mem_attr_t attr;
  std::memset(&attr, 0, sizeof(attr));
  attr.field_mask = UCP_MEM_ATTR_FIELD_ADDRESS | UCP_MEM_ATTR_FIELD_LENGTH;
  s = ucp_mem_query(memh, &attr);
  if (s != UCS_OK || attr.address == nullptr || attr.length < bytes) {
    ucp_mem_unmap(context_, memh);
    return s != UCS_OK ? UcxError("ucp_mem_query", s)
                       : absl::FailedPreconditionError("ucx arena: UCX allocated less than asked");
  }
  std::string what;
  const int fd = FindMappedFile(attr.address, &what);
  int dup_fd = fd >= 0 ? fcntl(fd, F_DUPFD_CLOEXEC, 0) : -1;
  if (dup_fd >= 0) {
    // The number found may have been closed and reused between the scan and
    // the dup: the copy must still be the mapped file, writable and as large
    // as the arena (what Arena::Create checks too; a refusal there would
    // leave this engine holding memory the arena released).
    const std::optional<Mapping> mapping = FindMapping(attr.address);
    struct stat st;
    const int mode = fcntl(dup_fd, F_GETFL);
    if (!mapping.has_value() || fstat(dup_fd, &st) != 0 || st.st_ino != mapping->inode ||
        major(st.st_dev) != mapping->dev_major || minor(st.st_dev) != mapping->dev_minor ||
        mode < 0 || (mode & O_ACCMODE) != O_RDWR || static_cast<uint64_t>(st.st_size) < bytes ||
        reinterpret_cast<uintptr_t>(attr.address) % static_cast<uintptr_t>(sysconf(_SC_PAGESIZE)) !=
            0) {
      close(dup_fd);
      dup_fd = -1;
      absl::StrAppend(&what, " (its descriptor does not match the mapping)");
    }
  }
  if (dup_fd < 0) {
    ucp_mem_unmap(context_, memh);
    return absl::FailedPreconditionError(absl::StrCat(
        "ucx arena: UCX allocated ", what,
        ", which has no file descriptor to share with local clients (UCX's posix memory with "
        "UCX_POSIX_USE_PROC_LINK=y has one; is posix in UCX_TLS?)"));
  }
  memh_ = memh;
  allocated_ = true;
  allocated_base_ = attr.address;
  allocated_bytes_ = attr.length;
  if (absl::Status ps = PackArenaKey(); !ps.ok()) {
    close(dup_fd);
    ucp_mem_unmap(context_, memh_);
    memh_ = nullptr;
    allocated_ = false;
    return ps;
  }
  ArenaMemory m;
  m.base = static_cast<std::byte*>(attr.address);
  m.size = attr.length;
  m.fd = dup_fd;
  m.release = [owner = context_owner_, context = context_, memh]() {
    ucp_mem_unmap(context, memh);
  };
  m.source = absl::StrContains(what, "posix") ? "ucx-posix" : "ucx";
  return m;
}

absl::Status UcxEngine::PackArenaKey() {
  void* packed = nullptr;
  size_t packed_len = 0;
  ucs_status_t s = ucp_rkey_pack(context_, memh_, &packed, &packed_len);
  if (s != UCS_OK) return UcxError("ucp_rkey_pack", s);
  rkey_.assign(static_cast<const char*>(packed), packed_len);
  ucp_rkey_buffer_release(packed);
  return absl::OkStatus();
}

absl::Status UcxEngine::MapArena(void* base, size_t bytes) {
  absl::MutexLock lock(&map_mu_);
  if (allocated_ && base == allocated_base_ && bytes <= allocated_bytes_) {
    return absl::OkStatus();
  }
  if (memh_ != nullptr) return absl::FailedPreconditionError("ucx: the arena is already mapped");
  ucp_mem_map_params_t mp;
  std::memset(&mp, 0, sizeof(mp));
  mp.field_mask = UCP_MEM_MAP_PARAM_FIELD_ADDRESS | UCP_MEM_MAP_PARAM_FIELD_LENGTH;
  mp.address = base;
  mp.length = bytes;
  ucs_status_t s = ucp_mem_map(context_, &mp, &memh_);
  if (s != UCS_OK) {
    memh_ = nullptr;
    return UcxError("ucp_mem_map of the DRAM arena", s);
  }
  if (absl::Status ps = PackArenaKey(); !ps.ok()) {
    ucp_mem_unmap(context_, memh_);
    memh_ = nullptr;
    return ps;
  }
  return absl::OkStatus();
}

std::string UcxEngine::packed_rkey() const {
  absl::MutexLock lock(&map_mu_);
  return rkey_;
}

absl::StatusOr<std::shared_ptr<UcxPeer>> UcxEngine::Connect(absl::string_view worker_address,
                                                            absl::string_view packed_rkey,
                                                            uint64_t remote_base,
                                                            uint64_t remote_bytes) {
  if (worker_address.empty()) return absl::InvalidArgumentError("worker_address: empty");
  if (packed_rkey.empty()) return absl::InvalidArgumentError("arena_rkey: empty");
  const size_t wi = next_worker_.fetch_add(1) % workers_.size();
  std::shared_ptr<UcxPeer> peer(new UcxPeer(this, wi));
  ucp_ep_params_t ep;
  std::memset(&ep, 0, sizeof(ep));
  ep.field_mask = UCP_EP_PARAM_FIELD_REMOTE_ADDRESS | UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE |
                  UCP_EP_PARAM_FIELD_ERR_HANDLER;
  std::string addr(worker_address);
  ep.address = reinterpret_cast<const ucp_address_t*>(addr.data());
  ep.err_mode = UCP_ERR_HANDLING_MODE_PEER;
  ep.err_handler.cb = &UcxPeer::OnError;
  ep.err_handler.arg = peer.get();
  ucs_status_t s = UCS_ERR_UNREACHABLE;
  if (!SharedMemoryOnly()) s = ucp_ep_create(workers_[wi]->worker, &ep, &peer->ep_);
  if (s == UCS_ERR_UNREACHABLE) {
    // Shared-memory-only transports (UCX_TLS=sm) have no peer failure
    // detection in UCX; a dead peer then shows as a failed get or a
    // deadline, and the Peer service's gRPC calls fail.
    ep.field_mask &= ~(UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE | UCP_EP_PARAM_FIELD_ERR_HANDLER);
    peer->peer_error_handling_ = false;
    s = ucp_ep_create(workers_[wi]->worker, &ep, &peer->ep_);
  }
  if (s != UCS_OK) {
    peer->ep_ = nullptr;
    return UcxError("ucp_ep_create (is the peer reachable over the transports in UCX_TLS?)", s);
  }
  connects_.fetch_add(1);
  std::string key(packed_rkey);
  s = ucp_ep_rkey_unpack(peer->ep_, key.data(), &peer->rkey_);
  if (s != UCS_OK) {
    peer->rkey_ = nullptr;
    return absl::InvalidArgumentError(
        absl::StrCat("arena_rkey: does not unpack: ", ucs_status_string(s)));
  }
  peer->remote_base_ = remote_base;
  peer->remote_bytes_ = remote_bytes;
  // An arena UCX allocated in shared memory on this host is mapped by the
  // unpack: both ends of it must resolve, contiguously.
  void* first = nullptr;
  void* last = nullptr;
  // ucp_rkey_ptr only adds offsets: the range the holder announced must also
  // lie in the one shared mapping here, or a copy could run past it.
  if (remote_bytes > 0 && ucp_rkey_ptr(peer->rkey_, remote_base, &first) == UCS_OK &&
      ucp_rkey_ptr(peer->rkey_, remote_base + remote_bytes - 1, &last) == UCS_OK &&
      static_cast<const std::byte*>(last) - static_cast<const std::byte*>(first) ==
          static_cast<std::ptrdiff_t>(remote_bytes - 1) &&
      InOneSharedMapping(first, remote_bytes)) {
    peer->local_ = static_cast<const std::byte*>(first);
  }
  {
    absl::MutexLock lock(&peer->close_mu_);
    peer->transports_ = LaneTransports(peer->ep_, peer->mapped());
  }
  return peer;
}

absl::Status UcxEngine::Get(UcxPeer& peer, uint64_t remote_offset, absl::Span<std::byte> dst,
                            absl::Time deadline) {
  GetOp op{remote_offset, dst, absl::OkStatus()};
  return GetMany(peer, absl::MakeSpan(&op, 1), deadline);
}

absl::Status UcxEngine::GetMany(UcxPeer& peer, absl::Span<GetOp> ops, absl::Time deadline) {
  return GetMany(peer, ops, deadline, [](size_t) {});
}

absl::Status UcxEngine::GetMany(UcxPeer& peer, absl::Span<GetOp> ops, absl::Time deadline,
                                absl::FunctionRef<void(size_t)> on_done) {
  return GetMany(peer, ops, deadline, on_done, [ops](size_t i, const std::byte* src) {
    std::memcpy(ops[i].dst.data(), src, ops[i].dst.size());
    return absl::OkStatus();
  });
}

void UcxEngine::CopyOne(UcxPeer& peer, GetOp& op, size_t i, absl::Time deadline, DirectCopy copy) {
  // Shared: copies of several callers and helpers run together; Close
  // (exclusive) waits for them before it unmaps.
  absl::ReaderMutexLock lock(&peer.close_mu_);
  op.status = CheckRange(op, peer.remote_bytes_);
  if (!op.status.ok()) return;
  if (peer.closed_ || peer.failed()) {
    get_failures_.fetch_add(1);
    op.status = PeerGone(peer.closed_);
  } else if (absl::Now() >= deadline) {
    get_failures_.fetch_add(1);
    op.status = absl::DeadlineExceededError("ucx: the read did not start by its deadline");
  } else {
    op.status = copy(i, peer.local_ + op.remote_offset);
    if (op.status.ok()) {
      gets_.fetch_add(1);
      direct_reads_.fetch_add(1);
      get_bytes_.fetch_add(op.dst.size());
    } else {
      get_failures_.fetch_add(1);
    }
  }
}

absl::Status UcxEngine::CopyMany(UcxPeer& peer, absl::Span<GetOp> ops, absl::Time deadline,
                                 absl::FunctionRef<void(size_t)> on_done, DirectCopy copy) {
  uint64_t total = 0;
  for (const GetOp& op : ops) total += op.dst.size();
  // Below this a run is copied faster than helpers wake up.
  constexpr uint64_t kSpreadBytes = 1 << 20;
  if (copiers_.empty() || ops.size() < 2 || total < kSpreadBytes) {
    // The caller alone, each op checked (on_done) right after its copy,
    // while its bytes are in cache.
    absl::Status first = absl::OkStatus();
    for (size_t i = 0; i < ops.size(); ++i) {
      CopyOne(peer, ops[i], i, deadline, copy);
      if (first.ok() && !ops[i].status.ok()) first = ops[i].status;
      on_done(i);
    }
    return first;
  }
  // The caller and up to ops.size() - 1 helpers take ops in turn. A helper
  // that starts after the run is over finds it closed and touches nothing
  // of the caller's (the state it sees is shared, not on this stack).
  struct Run {
    absl::Mutex mu;
    size_t next ABSL_GUARDED_BY(mu) = 0;
    size_t running ABSL_GUARDED_BY(mu) = 0;  // ops being copied now
    bool closed ABSL_GUARDED_BY(mu) = false;
    std::function<void(size_t)> copy_one;  // valid while !closed
    size_t n = 0;
  };
  auto run = std::make_shared<Run>();
  run->n = ops.size();
  run->copy_one = [&](size_t i) { CopyOne(peer, ops[i], i, deadline, copy); };
  auto work = [](Run& r) {
    for (;;) {
      size_t i;
      {
        absl::MutexLock lock(&r.mu);
        if (r.closed || r.next >= r.n) return;
        i = r.next++;
        ++r.running;
      }
      r.copy_one(i);
      absl::MutexLock lock(&r.mu);
      --r.running;
    }
  };
  // Idle helpers only: when other runs have them all, this one goes on
  // with fewer (or alone) rather than queue work that would start late.
  // They are signalled after the lock is released: signalled under it, each
  // would wake only once the one before it had taken and released the lock.
  absl::InlinedVector<Copier*, 4> woken;
  {
    absl::MutexLock lock(&copy_mu_);
    const size_t helpers = std::min(idle_copiers_.size(), ops.size() - 1);
    for (size_t h = 0; h < helpers; ++h) {
      Copier* c = idle_copiers_.back();
      idle_copiers_.pop_back();
      c->job = [run, work] { work(*run); };
      woken.push_back(c);
    }
  }
  for (Copier* c : woken) c->cv.Signal();
  work(*run);
  {
    absl::MutexLock lock(&run->mu);
    run->closed = true;
    run->mu.Await(absl::Condition(
        +[](Run* r) ABSL_EXCLUSIVE_LOCKS_REQUIRED(r->mu) { return r->running == 0; }, run.get()));
  }
  absl::Status first = absl::OkStatus();
  for (size_t i = 0; i < ops.size(); ++i) {
    if (first.ok() && !ops[i].status.ok()) first = ops[i].status;
    on_done(i);
  }
  return first;
}

absl::Status UcxEngine::GetMany(UcxPeer& peer, absl::Span<GetOp> ops, absl::Time deadline,
                                absl::FunctionRef<void(size_t)> on_done, DirectCopy copy) {
  if (peer.mapped() && options_.direct_reads) return CopyMany(peer, ops, deadline, on_done, copy);
  Worker& w = *workers_[peer.worker_];
  GetBatch batch;
  std::vector<GetSlot> slots(ops.size());
  std::vector<size_t> settled_now;  // ops with an outcome before any wait
  std::vector<size_t> queued;       // ops handed to the progress thread
  queued.reserve(ops.size());
  for (size_t i = 0; i < ops.size(); ++i) {
    GetOp& op = ops[i];
    // remote_bytes_ is set once by Connect.
    op.status = CheckRange(op, peer.remote_bytes_);
    if (!op.status.ok()) {
      settled_now.push_back(i);
      continue;
    }
    slots[i].batch = &batch;
    slots[i].outstanding = &w.outstanding;
    slots[i].index = i;
    queued.push_back(i);
  }
  if (!queued.empty()) {
    // Counted before they are queued: the progress thread then keeps driving
    // the worker until the last is done. Every queued op joins
    // batch.completed exactly once (posted and completed, completed at once,
    // or refused), and this call waits for all of them, so what the progress
    // thread is given stays valid while it uses it.
    w.outstanding.fetch_add(static_cast<int64_t>(queued.size()));
    Post(w, [this, &peer, ops, slots = absl::MakeSpan(slots), which = absl::MakeConstSpan(queued)] {
      PostGets(peer, ops, slots, which);
    });
  }
  bool timed_out = false;
  absl::Status first = absl::OkStatus();
  // Turns a completed op's UCX status into its Status, then hands it over.
  auto settle = [&](size_t i) {
    GetOp& op = ops[i];
    GetSlot& slot = slots[i];
    if (slot.batch != nullptr) {
      if (slot.status == UCS_OK) {
        op.status = absl::OkStatus();
        gets_.fetch_add(1);
        get_bytes_.fetch_add(op.dst.size());
      } else if (slot.not_started) {
        get_failures_.fetch_add(1);
        op.status = absl::DeadlineExceededError("ucx: the get was not posted by its deadline");
      } else if (slot.peer_gone) {
        get_failures_.fetch_add(1);
        op.status = PeerGone(slot.status == UCS_ERR_CANCELED);
      } else {
        get_failures_.fetch_add(1);
        peer.failed_.store(true);
        op.status =
            timed_out ? absl::DeadlineExceededError("ucx: the get did not complete by its deadline")
                      : UcxError("ucx get", slot.status);
      }
    }
    if (first.ok() && !op.status.ok()) first = op.status;
    on_done(i);
  };
  for (size_t i : settled_now) settle(i);
  // Each get is handed over as it completes, while the others are in flight.
  auto any_done = [&batch]()
                      ABSL_EXCLUSIVE_LOCKS_REQUIRED(batch.mu) { return !batch.completed.empty(); };
  for (size_t handled = 0; handled < queued.size();) {
    std::vector<size_t> done;
    bool close = false;
    {
      absl::MutexLock lock(&batch.mu);
      if (timed_out) {
        batch.mu.Await(absl::Condition(&any_done));
      } else if (!batch.mu.AwaitWithDeadline(absl::Condition(&any_done), deadline)) {
        timed_out = true;
        // Posted: they are closed out below. Not posted yet (the progress
        // thread was busy): they are refused unposted and the endpoint
        // stays as it is.
        close = batch.started;
        batch.abandoned = !batch.started;
      }
      done.swap(batch.completed);
    }
    if (close) {
      // Closing the endpoint completes the gets still in flight (with an
      // error); only then are their destinations safe from late writes.
      peer.failed_.store(true);
      peer.Close();
    }
    for (size_t i : done) settle(i);
    handled += done.size();
  }
  bool lanes_final;
  {
    absl::ReaderMutexLock lock(&peer.close_mu_);
    lanes_final = peer.transports_final_ || peer.closed_;
  }
  if (first.ok() && !lanes_final) {
    absl::MutexLock lock(&peer.close_mu_);
    if (!peer.transports_final_ && !peer.closed_) {
      peer.transports_ = LaneTransports(peer.ep_, peer.mapped());
      peer.transports_final_ = true;
    }
  }
  return first;
}

void UcxEngine::PostGets(UcxPeer& peer, absl::Span<GetOp> ops, absl::Span<GetSlot> slots,
                         absl::Span<const size_t> which) {
  Worker& w = *workers_[peer.worker_];
  if (!peer.close_mu_.ReaderTryLock()) {
    // Close holds it while it waits for this thread to progress the
    // endpoint's close: try again on the next turn.
    Post(w, [this, &peer, ops, slots, which] { PostGets(peer, ops, slots, which); });
    return;
  }
  // Ops with an outcome now; they join the batch at the end, so that the
  // caller (which returns once every op has) cannot return while `which`
  // is still being read here.
  GetBatch* const batch = slots[which.front()].batch;
  bool abandoned;
  {
    absl::MutexLock lock(&batch->mu);
    abandoned = batch->abandoned;
    if (!abandoned) batch->started = true;
  }
  std::vector<size_t> now;
  for (size_t i : which) {
    GetSlot& slot = slots[i];
    if (abandoned) {
      slot.not_started = true;
      slot.status = UCS_ERR_TIMED_OUT;
      now.push_back(i);
      continue;
    }
    if (peer.closed_ || peer.failed()) {
      slot.peer_gone = true;
      slot.status = peer.closed_ ? UCS_ERR_CANCELED : UCS_ERR_ENDPOINT_TIMEOUT;
      now.push_back(i);
      continue;
    }
    const GetOp& op = ops[i];
    ucp_request_param_t param;
    std::memset(&param, 0, sizeof(param));
    param.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
    param.cb.send = &OnGetDone;
    param.user_data = &slot;
    void* req = ucp_get_nbx(peer.ep_, op.dst.data(), op.dst.size(),
                            peer.remote_base_ + op.remote_offset, peer.rkey_, &param);
    if (req == nullptr || UCS_PTR_IS_ERR(req)) {
      // Completed (or failed) at once: no callback comes.
      slot.status = req == nullptr ? UCS_OK : UCS_PTR_STATUS(req);
      now.push_back(i);
    }
  }
  peer.close_mu_.ReaderUnlock();
  if (now.empty()) return;
  w.outstanding.fetch_sub(static_cast<int64_t>(now.size()));
  absl::MutexLock lock(&batch->mu);
  for (size_t i : now) batch->completed.push_back(i);
}

UcxStats UcxEngine::Stats() const {
  UcxStats s;
  s.gets = gets_.load();
  s.get_bytes = get_bytes_.load();
  s.get_failures = get_failures_.load();
  s.connects = connects_.load();
  s.peer_failures = peer_failures_.load();
  s.direct_reads = direct_reads_.load();
  absl::MutexLock lock(&map_mu_);
  s.arena = memh_ == nullptr ? "" : allocated_ ? "allocated" : "registered";
  s.calls_made = calls_made_.load();
  s.calls_served = calls_served_.load();
  s.copy_helpers = copiers_.size();
  absl::MutexLock copy_lock(&copy_mu_);
  s.idle_copy_helpers = idle_copiers_.size();
  return s;
}

void UcxPeer::OnError(void* arg, ucp_ep_h ep, ucs_status_t status) {
  (void)ep;
  (void)status;
  auto* p = static_cast<UcxPeer*>(arg);
  if (!p->failed_.exchange(true)) p->engine_->peer_failures_.fetch_add(1);
}

uint64_t UcxEngine::PidNamespace() {
  struct stat st;
  if (stat("/proc/self/ns/pid", &st) != 0) return 0;
  return static_cast<uint64_t>(st.st_ino);
}

uint64_t UcxEngine::ProcessStartTime(int pid) {
  std::ifstream in(absl::StrCat("/proc/", pid, "/stat"));
  std::string stat((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  // "pid (comm) state ppid ...": comm may hold spaces and parentheses, so
  // the fields are counted after its last ')'. Field 3 (state) comes first.
  const size_t paren = stat.rfind(')');
  if (paren == std::string::npos) return 0;
  std::vector<absl::string_view> fields =
      absl::StrSplit(absl::string_view(stat).substr(paren + 1), ' ', absl::SkipEmpty());
  constexpr size_t kStartTime = 22 - 3;
  uint64_t start = 0;
  if (fields.size() <= kStartTime || !absl::SimpleAtoi(fields[kStartTime], &start)) return 0;
  return start;
}

bool UcxPeer::WatchProcess(uint32_t pid, uint64_t pid_namespace, uint64_t start_time) {
#ifdef SYS_pidfd_open
  if (!mapped() || pid == 0 || pidfd_ >= 0) return false;
  if (pid_namespace == 0 || pid_namespace != UcxEngine::PidNamespace()) return false;
  const long fd = syscall(SYS_pidfd_open, static_cast<pid_t>(pid), 0);
  if (fd < 0) return false;
  // The pidfd names whichever process has the pid now. Read after it was
  // opened, a matching start time shows that this is still the holder; if
  // the holder has exited since, the time read is another's (or none).
  if (start_time != 0 && UcxEngine::ProcessStartTime(static_cast<int>(pid)) != start_time) {
    close(static_cast<int>(fd));
    return false;
  }
  pidfd_ = static_cast<int>(fd);
  return true;
#else
  (void)pid;
  (void)pid_namespace;
  (void)start_time;
  return false;  // no pidfd_open in these headers: the peer keeps gRPC pins
#endif
}

bool UcxPeer::CheckProcess() {
  if (pidfd_ >= 0 && !failed_.load()) {
    // A pidfd is readable once its process has exited.
    pollfd p{pidfd_, POLLIN, 0};
    if (poll(&p, 1, 0) > 0 && (p.revents & (POLLIN | POLLHUP | POLLERR)) != 0 &&
        !failed_.exchange(true)) {
      engine_->peer_failures_.fetch_add(1);
    }
  }
  return failed_.load();
}

void UcxPeer::Close() {
  absl::MutexLock lock(&close_mu_);
  if (closed_ || ep_ == nullptr) {
    closed_ = true;
    return;
  }
  closed_ = true;
  // A healthy peer gets an orderly disconnect (outstanding operations are
  // flushed, the peer drops its side); a failed one is torn down at once.
  ucp_request_param_t param;
  std::memset(&param, 0, sizeof(param));
  param.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS;
  param.flags = failed_.load() ? UCP_EP_CLOSE_FLAG_FORCE : 0;
  void* req = ucp_ep_close_nbx(ep_, &param);
  engine_->WaitRequest(worker_, req, absl::Now() + absl::Seconds(2));
  ep_ = nullptr;
  if (rkey_ != nullptr) ucp_rkey_destroy(rkey_);
  rkey_ = nullptr;
}

UcxPeer::~UcxPeer() {
  Close();
  if (pidfd_ >= 0) close(pidfd_);
}

}  // namespace kvtier::transfer
