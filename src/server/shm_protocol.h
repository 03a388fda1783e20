// The shared-memory side channel: how a local client obtains the daemon's
// DRAM arena (a memfd) to read and write chunk slots in place.
//
// kvtierd listens on a second Unix socket, `<unix_socket>.shm`
// (SOCK_STREAM, same file mode as the gRPC socket). One exchange per
// connection, all integers little-endian:
//
//   client -> daemon   "KVTSHM01" | token length u32 (<= 4096) | token bytes
//   daemon -> client   "KVTSHM01" | code u32 | arena_id u64 | arena_bytes u64 |
//                      message length u32 (<= 4096) | message bytes
//
// code is a google.rpc.Code (0 = granted). On a grant the reply carries the
// arena memfd as SCM_RIGHTS ancillary data; the client maps it
// MAP_SHARED, PROT_READ | PROT_WRITE, arena_bytes long, and closes the fd.
// The token is the same bearer token the client sends over gRPC (empty in
// open mode); only principals allowed shared memory get the fd. arena_id
// identifies the arena: Reserve and Pin answers carry it, and a client whose
// mapping has another id (the daemon restarted) asks again.
//
// Control sessions. A request that starts with "KVTCTL01" instead of
// "KVTSHM01" (same layout) asks for the arena and a control session: the
// answer is the same, and on a grant the connection stays open and carries
// the shared-memory control calls (Lookup, Reserve, Commit, Pin, Release) as
// frames, one request and (unless it asks for none) one reply at a time:
//
//   client -> daemon   body length u32 | method u8 | flags u8 | body
//                      (the serialized kvtier.v1 request message)
//   daemon -> client   body length u32 | code u32 | body
//                      (the serialized response when code is 0, else the
//                      error message)
//
// A session belongs to the principal whose token opened it; either side may
// close it at any time (the client then opens another). This costs one
// system call each way per call instead of a gRPC round trip through the
// HTTP/2 transport's threads.
//
// Thread-safety: pure functions over the given file descriptors.
#ifndef KVTIER_SRC_SERVER_SHM_PROTOCOL_H_
#define KVTIER_SRC_SERVER_SHM_PROTOCOL_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace kvtier::shm {

inline constexpr char kMagic[8] = {'K', 'V', 'T', 'S', 'H', 'M', '0', '1'};
inline constexpr char kSessionMagic[8] = {'K', 'V', 'T', 'C', 'T', 'L', '0', '1'};
inline constexpr uint32_t kMaxTokenBytes = 4096;
inline constexpr uint32_t kMaxMessageBytes = 4096;

// Largest body of a control frame.
inline constexpr uint32_t kMaxControlBytes = 64u << 20;

// The calls a control session carries (the kvtier.v1.Cache RPCs of the same
// names, with the same messages).
enum class ControlMethod : uint8_t {
  kLookup = 1,
  kReserve = 2,
  kCommit = 3,
  kPin = 4,
  kRelease = 5,
};
// Control request flag: the daemon sends no reply (used for Release).
inline constexpr uint8_t kNoReply = 1;

struct ArenaGrant {
  int fd = -1;  // owned by the receiver; -1 on a refusal
  uint64_t arena_id = 0;
  uint64_t arena_bytes = 0;
  int session_fd = -1;  // the open control session, when one was asked for (owned)
};

// Client side: connects to `socket_path`, sends `token`, waits up to
// `timeout` for the answer. With `session`, asks for a control session too
// and returns its connection in session_fd. Unavailable when the daemon
// cannot be reached or closes the connection, DeadlineExceeded when it does
// not answer in time, the daemon's code (PermissionDenied,
// ResourceExhausted...) on a refusal.
absl::StatusOr<ArenaGrant> RequestArena(const std::string& socket_path, absl::string_view token,
                                        absl::Duration timeout, bool session = false);

struct ArenaRequest {
  std::string token;
  bool session = false;  // a control session was asked for
};

// Daemon side: reads one request from `conn` (a blocking socket with a
// receive timeout set). InvalidArgument for a malformed request.
absl::StatusOr<ArenaRequest> ReadRequest(int conn);
// Sends a grant with `fd` attached.
absl::Status SendGrant(int conn, const ArenaGrant& grant);
// Sends a refusal carrying `status` (not OK).
absl::Status SendRefusal(int conn, const absl::Status& status);

// ---- control session frames

struct ControlRequest {
  ControlMethod method = ControlMethod::kLookup;
  uint8_t flags = 0;
  std::string body;
};
struct ControlReply {
  absl::Status status;  // the daemon's answer to the call
  std::string body;     // the response message when status is OK
};

// Client side: sends one request (one send for header and body).
// Unavailable when the connection fails.
absl::Status WriteControlRequest(int fd, ControlMethod method, uint8_t flags,
                                 absl::string_view body);
// Client side: reads one reply. DeadlineExceeded when the socket's receive
// timeout passes first (the daemon may still carry the request out);
// Unavailable when the connection fails or closes; DataLoss for a malformed
// frame.
absl::StatusOr<ControlReply> ReadControlReply(int fd);
// Daemon side: reads one request. Waits as long as it takes for a frame to
// start; once it has, the rest must arrive within `frame_timeout`, and the
// body buffer grows only as its bytes arrive. OutOfRange when the client
// closed the session between frames; InvalidArgument for a body over
// `max_bytes`; DeadlineExceeded for a frame not complete in time;
// Unavailable for other connection failures.
absl::StatusOr<ControlRequest> ReadControlRequest(int fd, uint32_t max_bytes,
                                                  absl::Duration frame_timeout = absl::Seconds(10));
// Daemon side: sends one reply carrying `status` and, when it is OK, `body`.
absl::Status WriteControlReply(int fd, const absl::Status& status, absl::string_view body);

}  // namespace kvtier::shm

#endif  // KVTIER_SRC_SERVER_SHM_PROTOCOL_H_
