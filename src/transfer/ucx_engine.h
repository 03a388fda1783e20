// The UCX side of node-to-node transfer: one ucp context, a few workers each
// driven by its own progress thread, the DRAM arena allocated by UCX
// (AllocateArena) or registered (MapArena) so that other nodes can read it
// with one-sided gets, and endpoints to other nodes' workers with their
// arenas' remote keys.
//
// Shared memory: an arena UCX allocated from its posix memory domain is a
// shared file that a reader on the same host maps when it unpacks the remote
// key. Such a peer is "mapped" (UcxPeer::mapped): with
// UcxOptions::direct_reads a read is a copy from that mapping on the calling
// thread (GetMany's `copy`, which can check the bytes while they are in
// cache) instead of a get. A registered arena (memfd) is not reachable that
// way: over posix/sysv UCX then emulates gets with active messages.
//
// UCX picks the transport (UCX_TLS and the other UCX_* variables are
// honoured): shared memory or TCP on one machine, RDMA verbs on a cluster,
// GPUDirect RDMA when UCX was built with CUDA and the destination is device
// memory. UcxPeer::transports() names the lanes UCX chose.
//
// Progress: each worker's progress thread is the only thread that drives it,
// and the only one that posts on it in the hot path. A caller of Get /
// GetMany or Call queues its gets or its message for that thread (a short
// mutex, no UCX lock), wakes it if it sleeps, and blocks until the gets
// complete or the reply comes; it never spins. The progress thread posts
// what is queued (ucp_get_nbx, ucp_am_send_nbx) between progress calls, so
// callers never contend with it for the worker's lock: with many callers in
// UCX's multi-thread mode, threads spinning on that lock took over half of
// the reader's CPU. While gets or calls are outstanding the progress thread
// drives the worker without pause (so the gets of every caller progress
// together, as one poster's would); idle, it sleeps in the worker's event fd
// (ucp_worker_arm + poll).
//
// Failure: endpoints are created with peer error handling, so a peer that dies
// fails its outstanding and later gets with an error instead of hanging; gets
// that pass their deadline close the endpoint (which completes them with an
// error) before GetMany returns, so a failed get never writes its destination
// afterwards.
//
// Calls: small request/reply exchanges carried as UCX active messages on a
// peer's endpoint (Call on the reader, a CallHandler on the holder). The
// holder's progress thread answers them itself, so a call costs one message
// each way on the connection the gets use: no other connection, no thread
// hand-off. Requests and replies are sent eagerly (never rendezvous).
//
// Thread-safety: UcxEngine and UcxPeer are thread-safe; Get may be called
// from any number of threads at once. Workers stay in UCX's multi-thread
// mode for what callers still do themselves (Connect, closing an endpoint).
// UCX callbacks run on the progress thread.
#ifndef KVTIER_SRC_TRANSFER_UCX_ENGINE_H_
#define KVTIER_SRC_TRANSFER_UCX_ENGINE_H_

#include <ucp/api/ucp.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/functional/any_invocable.h"
#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "src/tiers/dram/arena.h"

namespace kvtier::transfer {

struct UcxOptions {
  uint32_t progress_threads = 1;  // UCX workers, each with its own progress thread (1..64)
  // How long an idle progress thread sleeps in the worker's event fd before
  // polling again (a cap: it wakes at once on an event).
  absl::Duration idle_wait = absl::Milliseconds(5);
  // With gets of this node in flight and nothing arriving, how long the
  // progress thread keeps polling before it sleeps in the event fd until the
  // next event (InfiniteDuration: it never sleeps while gets are in flight,
  // as ucx_perftest does). A short poll leaves the CPU to the threads that
  // check and commit chunks and to the holder on small hosts.
  absl::Duration busy_poll = absl::Microseconds(50);
  // Read a mapped peer's arena by copying from the mapping instead of posting
  // gets (false: always ucp_get_nbx).
  bool direct_reads = true;
  // Threads that help copy a run of chunks out of a mapped peer's arena
  // (the caller copies too), so a long chain is read on several cores;
  // -1: min(3, hardware threads - 1); 0: the caller alone (0..64).
  int32_t copy_threads = -1;

  // InvalidArgument naming the field.
  absl::Status Validate() const;
};

// Counters of one engine (monotonic).
struct UcxStats {
  uint64_t gets = 0;           // gets completed
  uint64_t get_bytes = 0;      // bytes they read
  uint64_t get_failures = 0;   // gets that failed (peer error, deadline)
  uint64_t connects = 0;       // endpoints created
  uint64_t peer_failures = 0;  // endpoints that reported an error
  uint64_t direct_reads = 0;   // of `gets`: copies from a mapped peer's arena
  // How this node's arena is reachable: "allocated" (UCX's memory,
  // AllocateArena), "registered" (MapArena) or "" (neither yet).
  std::string arena;
  uint64_t calls_made = 0;         // Calls that got a reply
  uint64_t calls_served = 0;       // calls this engine's handler answered
  uint64_t copy_helpers = 0;       // UcxOptions::copy_threads as started
  uint64_t idle_copy_helpers = 0;  // of those: waiting for a run now
};

class UcxEngine;

// An endpoint to one remote worker plus the unpacked remote key of its
// arena. Destruction closes the endpoint (forcibly: nothing is waited for).
class UcxPeer {
 public:
  ~UcxPeer();
  UcxPeer(const UcxPeer&) = delete;
  UcxPeer& operator=(const UcxPeer&) = delete;

  // True once UCX reported an error on the endpoint (the peer died or the
  // connection broke) or a get timed out; every later Get fails.
  bool failed() const { return failed_.load(); }
  uint64_t remote_bytes() const { return remote_bytes_; }
  // The lanes UCX chose, e.g. "rma_bw=rc_mlx5/mlx5_0:1 am=rc_mlx5/mlx5_0:1"
  // (one-sided RDMA), "rma=mapped-shm am=posix/memory" (the peer's arena is
  // UCX shared memory mapped here: reads are copies out of it) or
  // "rma=am-emulated am=tcp/lo" (no transport with remote memory access:
  // UCX serves gets with active messages).
  // Refreshed after the first completed get (UCX finishes choosing lanes
  // once the connection is wired up).
  std::string transports() const {
    absl::ReaderMutexLock lock(&close_mu_);
    return transports_;
  }
  // Whether UCX reports the peer's failure (false over shared-memory-only
  // transports, which cannot).
  bool peer_error_handling() const { return peer_error_handling_; }
  // Whether the peer's whole arena is mapped in this process (ucp_rkey_ptr
  // succeeded: an arena UCX allocated in shared memory on this host).
  bool mapped() const { return local_ != nullptr; }
  // For a mapped peer: watches process `pid` (the holder, on this host) in
  // PID namespace `pid_namespace` (UcxEngine::PidNamespace of the holder)
  // through a pidfd, so that its exit fails the peer like a UCX peer error
  // would. `start_time` (UcxEngine::ProcessStartTime of the holder; 0: not
  // known) must match the process the pidfd names: a holder that exited
  // and whose pid was reused is not watched. False when the peer is not
  // mapped, `pid` or `pid_namespace` is 0, the namespace is not this
  // process's, the start time differs, or the kernel refuses (no pidfd: the
  // peer then has no failure detection, as before).
  bool WatchProcess(uint32_t pid, uint64_t pid_namespace, uint64_t start_time);
  // Whether a watched process is known (WatchProcess succeeded).
  bool watches_process() const { return pidfd_ >= 0; }
  // Polls the watched process (one poll(2)): when it has exited, marks the
  // peer failed. Returns failed().
  bool CheckProcess();
  // Treats the peer as failed: later gets and calls fail, and closing the
  // endpoint does not wait for the peer.
  void MarkFailed() { failed_.store(true); }

 private:
  friend class UcxEngine;
  UcxPeer(UcxEngine* engine, size_t worker) : engine_(engine), worker_(worker) {}
  static void OnError(void* arg, ucp_ep_h ep, ucs_status_t status);
  // Closes the endpoint once (force mode) and waits until UCX is done with it.
  void Close();

  UcxEngine* const engine_;
  const size_t worker_;
  ucp_ep_h ep_ = nullptr;
  ucp_rkey_h rkey_ = nullptr;
  uint64_t remote_base_ = 0;
  uint64_t remote_bytes_ = 0;
  // The peer's arena as mapped here, or nullptr; set once by Connect and
  // usable only under close_mu_ while !closed_ (Close unmaps it).
  const std::byte* local_ = nullptr;
  std::string transports_ ABSL_GUARDED_BY(close_mu_);
  bool transports_final_ ABSL_GUARDED_BY(close_mu_) = false;
  bool peer_error_handling_ = true;
  std::atomic<bool> failed_{false};
  int pidfd_ = -1;  // set once by WatchProcess, before the peer is shared
  mutable absl::Mutex close_mu_;
  bool closed_ ABSL_GUARDED_BY(close_mu_) = false;
};

class UcxEngine {
 public:
  // Reads the UCX configuration from the environment. Unavailable when UCX
  // cannot start (no usable transport); InvalidArgument for bad options.
  static absl::StatusOr<std::unique_ptr<UcxEngine>> Create(const UcxOptions& options);
  // Stops the progress threads. Every UcxPeer must be gone first.
  ~UcxEngine();

  // Allocates `bytes` of shared memory through UCX (ucp_mem_map ALLOCATE,
  // UCX's posix memory domain first unless UCX_ALLOC_PRIO says otherwise) for
  // the DRAM arena, and makes it the engine's arena (packed_rkey()). The
  // result carries a duplicate of the descriptor of the file UCX maps, so
  // local clients can map the arena as they map a memfd; its `release` unmaps
  // the memory (it keeps the UCX context alive, so it may run after the
  // engine is gone). FailedPrecondition when UCX's memory is not such a file
  // (sysv, anonymous memory over TCP, UCX_POSIX_USE_PROC_LINK=n), naming
  // what it is; the memory is then freed again. Once per engine, before
  // MapArena.
  absl::StatusOr<ArenaMemory> AllocateArena(uint64_t bytes);
  // Registers [base, base + bytes) (the DRAM arena): other nodes read it with
  // the key packed_rkey() gives, and Get writes into it without extra
  // registration. Once per engine: FailedPrecondition on a second call,
  // except for exactly the range AllocateArena returned (already mapped: OK).
  absl::Status MapArena(void* base, size_t bytes);
  // The packed remote key of the mapped arena (empty before MapArena).
  std::string packed_rkey() const;
  // The address of each worker (ucp_worker_get_address).
  const std::vector<std::string>& worker_addresses() const { return addresses_; }

  // Connects to a remote worker whose arena starts at `remote_base` (its
  // virtual address) and is `remote_bytes` long, with that arena's packed key.
  // Unavailable when UCX cannot reach it; InvalidArgument for a key or
  // address that does not unpack. Local workers are used in turn.
  absl::StatusOr<std::shared_ptr<UcxPeer>> Connect(absl::string_view worker_address,
                                                   absl::string_view packed_rkey,
                                                   uint64_t remote_base, uint64_t remote_bytes);

  // Reads dst.size() bytes at offset `remote_offset` of the peer's arena into
  // `dst` and waits for them. OutOfRange for a range outside the remote
  // arena; Unavailable when the peer failed; DeadlineExceeded when `deadline`
  // passed (the peer is then closed and marked failed). On any error `dst`
  // may hold some of the bytes, but is not written after Get returns.
  absl::Status Get(UcxPeer& peer, uint64_t remote_offset, absl::Span<std::byte> dst,
                   absl::Time deadline);

  // One get of a batch.
  struct GetOp {
    uint64_t remote_offset = 0;  // offset in the peer's arena
    absl::Span<std::byte> dst;   // where the bytes go (dst.size() bytes)
    absl::Status status;         // the outcome, set by GetMany
  };
  // Posts every get of `ops` at once (all in flight together on the peer's
  // worker), waits for all of them and sets each op's status as Get would.
  // Returns the first error (OK when every get succeeded). When `deadline`
  // passes, the peer is closed and marked failed, and every get not done
  // fails with DeadlineExceeded; no destination is written after GetMany
  // returns. Gets the progress thread had not posted by then (it was busy)
  // fail with DeadlineExceeded unposted, and the endpoint stays open; the
  // call returns once that thread has refused them.
  absl::Status GetMany(UcxPeer& peer, absl::Span<GetOp> ops, absl::Time deadline);
  // The same, calling `on_done(i)` on the calling thread once for each op as
  // soon as op i has its outcome (the other gets stay in flight meanwhile, so
  // the caller can check op i's bytes while the rest arrive). `on_done` must
  // not call into this peer.
  absl::Status GetMany(UcxPeer& peer, absl::Span<GetOp> ops, absl::Time deadline,
                       absl::FunctionRef<void(size_t)> on_done);
  // Copies op i's bytes from `src` (the peer's memory, mapped here) to
  // ops[i].dst, e.g. checking them on the way; its Status is op i's.
  using DirectCopy = absl::FunctionRef<absl::Status(size_t i, const std::byte* src)>;
  // The same; for a mapped peer with UcxOptions::direct_reads, each op is
  // instead `copy(i, src)` on the calling thread, in order, each followed by
  // on_done(i). The peer's mapping stays valid during `copy` (Close waits).
  // Ops past `deadline` fail with DeadlineExceeded (the peer is not closed:
  // nothing is in flight).
  absl::Status GetMany(UcxPeer& peer, absl::Span<GetOp> ops, absl::Time deadline,
                       absl::FunctionRef<void(size_t)> on_done, DirectCopy copy);

  // Answers the calls other nodes make to this engine's workers: gets the
  // request bytes and returns the reply bytes. Runs on a progress thread
  // (keep it short; it must not call into this engine).
  using CallHandler = std::function<std::string(absl::string_view request)>;
  // Sets the handler (nullptr: none; calls then fail with Unimplemented at
  // the caller). Replacing or clearing it waits for a running call to finish.
  void SetCallHandler(CallHandler handler);
  // Sends `request` to the handler of the peer's engine and waits for its
  // reply. Unavailable when the peer failed (before or during the call);
  // Unimplemented when the peer has no handler; DeadlineExceeded when no
  // reply came by `deadline` (the peer is then closed and marked failed, as
  // for gets).
  absl::StatusOr<std::string> Call(UcxPeer& peer, absl::string_view request, absl::Time deadline);

  UcxStats Stats() const;
  // The inode of this process's PID namespace (/proc/self/ns/pid), 0 when
  // unknown: two processes with the same one see each other's pids.
  static uint64_t PidNamespace();
  // Process `pid`'s start time: field 22 of /proc/<pid>/stat, clock ticks
  // after boot (0 when it cannot be read). Within one boot and PID
  // namespace, pid and start time name one process.
  static uint64_t ProcessStartTime(int pid);
  // The UCX version string.
  static std::string Version();

 private:
  struct Worker {
    ucp_worker_h worker = nullptr;
    int efd = -1;  // event fd when the worker supports wakeup, else -1
    std::thread thread;
    // Gets posted on this worker and not completed yet: while > 0 the
    // progress thread drives the worker without sleeping.
    std::atomic<int64_t> outstanding{0};
    // True while the progress thread is (about to be) asleep in the event fd;
    // a poster then signals the worker.
    std::atomic<bool> sleeping{false};
    // Work for the progress thread (posting gets and messages), run between
    // progress calls in the order queued.
    absl::Mutex post_mu;
    std::vector<absl::AnyInvocable<void() &&>> posts ABSL_GUARDED_BY(post_mu);
    std::atomic<bool> has_posts{false};
  };
  // A Call waiting for its reply (on the caller's stack, listed in calls_).
  struct PendingCall {
    // The request's progress on the progress thread: queued, being sent
    // (the caller must not return: the peer is in use), sent, or not sent
    // (send_error says why).
    enum class Send { kQueued, kSending, kSent, kFailed };
    Send send = Send::kQueued;
    absl::Status send_error;
    // Set by the caller once it stops waiting: a request still queued is
    // then not sent.
    bool abandoned = false;
    bool replied = false;
    bool no_handler = false;
    std::string reply;
  };
  // The completions of one GetMany, shared with UCX's callbacks.
  struct GetBatch;
  // One get of a GetMany: its batch, index and outcome.
  struct GetSlot;
  // ucp_get_nbx's completion callback (user_data: the GetSlot).
  static void OnGetDone(void* request, ucs_status_t status, void* user_data);

  explicit UcxEngine(UcxOptions options) : options_(options) {}
  absl::Status Init();
  void ProgressLoop(Worker* w);
  // Answers one call on `reply_ep` (from inside OnCallRequest, the only
  // place UCX guarantees that endpoint).
  void ServeCall(ucp_ep_h reply_ep, uint64_t call_id, absl::string_view request);
  // UCX active message handlers: a request and a reply (arg: the engine).
  // A request is answered inside its callback: the handler runs on the
  // worker's progress thread and must be short.
  static ucs_status_t OnCallRequest(void* arg, const void* header, size_t header_length, void* data,
                                    size_t length, const ucp_am_recv_param_t* param);
  static ucs_status_t OnCallReply(void* arg, const void* header, size_t header_length, void* data,
                                  size_t length, const ucp_am_recv_param_t* param);
  // Wakes the worker's progress thread.
  void Wake(size_t worker);
  // Queues `fn` for w's progress thread and wakes it if it sleeps.
  void Post(Worker& w, absl::AnyInvocable<void() &&> fn);
  // On the progress thread: runs what is queued.
  void RunPosts(Worker& w);
  // On the progress thread: posts the gets of ops[i] for each i in `which`
  // (GetMany's, whose caller waits until every one is in slots' batch).
  void PostGets(UcxPeer& peer, absl::Span<GetOp> ops, absl::Span<GetSlot> slots,
                absl::Span<const size_t> which);
  // On the progress thread: sends call `call_id`'s request (its PendingCall,
  // if the caller still waits) on the peer's endpoint.
  void PostCall(UcxPeer& peer, uint64_t call_id, std::string request);
  // Waits until `request` (from a *_nbx call) completes or `deadline`
  // passes, and frees it.
  ucs_status_t WaitRequest(size_t worker, void* request, absl::Time deadline);
  // GetMany for a mapped peer with direct_reads.
  absl::Status CopyMany(UcxPeer& peer, absl::Span<GetOp> ops, absl::Time deadline,
                        absl::FunctionRef<void(size_t)> on_done, DirectCopy copy);
  // Copies op i out of the peer's mapping (CopyMany's per-op step; any
  // thread).
  void CopyOne(UcxPeer& peer, GetOp& op, size_t i, absl::Time deadline, DirectCopy copy);
  // A copy helper: waits on its own CondVar until a run hands it a job.
  struct Copier {
    absl::CondVar cv;
    absl::AnyInvocable<void() &&> job;  // under copy_mu_; set while it is not idle
    std::thread thread;
  };
  // The copy helpers' loop.
  void CopyLoop(Copier* self);
  // Packs memh_'s remote key into rkey_.
  absl::Status PackArenaKey() ABSL_EXCLUSIVE_LOCKS_REQUIRED(map_mu_);

  friend class UcxPeer;
  const UcxOptions options_;
  ucp_context_h context_ = nullptr;
  // Owns context_ (ucp_cleanup when the last holder goes): the engine and
  // the release of an arena AllocateArena gave.
  std::shared_ptr<void> context_owner_;
  bool wakeup_ = false;
  std::vector<std::unique_ptr<Worker>> workers_;
  std::vector<std::string> addresses_;
  std::atomic<bool> stop_{false};
  std::atomic<uint64_t> next_worker_{0};

  // Copy helpers (UcxOptions::copy_threads). A run wakes the helpers that
  // went idle last (their cores are the likeliest to be awake and their
  // caches warm); helpers that no run needs stay asleep.
  mutable absl::Mutex copy_mu_;
  std::vector<Copier*> idle_copiers_ ABSL_GUARDED_BY(copy_mu_);  // the latest last
  bool copy_stop_ ABSL_GUARDED_BY(copy_mu_) = false;
  std::vector<std::unique_ptr<Copier>> copiers_;  // fixed once Init returns

  mutable absl::Mutex map_mu_;
  ucp_mem_h memh_ ABSL_GUARDED_BY(map_mu_) = nullptr;
  // True when memh_ is UCX's allocation (unmapped by the arena's release,
  // not by the engine).
  bool allocated_ ABSL_GUARDED_BY(map_mu_) = false;
  void* allocated_base_ ABSL_GUARDED_BY(map_mu_) = nullptr;
  size_t allocated_bytes_ ABSL_GUARDED_BY(map_mu_) = 0;
  std::string rkey_ ABSL_GUARDED_BY(map_mu_);

  absl::Mutex handler_mu_;
  CallHandler handler_ ABSL_GUARDED_BY(handler_mu_);
  absl::Mutex calls_mu_;
  absl::flat_hash_map<uint64_t, PendingCall*> calls_ ABSL_GUARDED_BY(calls_mu_);

  std::atomic<uint64_t> gets_{0};
  std::atomic<uint64_t> get_bytes_{0};
  std::atomic<uint64_t> get_failures_{0};
  std::atomic<uint64_t> connects_{0};
  std::atomic<uint64_t> peer_failures_{0};
  std::atomic<uint64_t> direct_reads_{0};
  std::atomic<uint64_t> calls_made_{0};
  std::atomic<uint64_t> calls_served_{0};
};

}  // namespace kvtier::transfer

#endif  // KVTIER_SRC_TRANSFER_UCX_ENGINE_H_
