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
inline constexpr uint32_t kMaxTokenBytes = 4096;
inline constexpr uint32_t kMaxMessageBytes = 4096;

struct ArenaGrant {
  int fd = -1;  // owned by the receiver; -1 on a refusal
  uint64_t arena_id = 0;
  uint64_t arena_bytes = 0;
};

// Client side: connects to `socket_path`, sends `token`, waits up to
// `timeout` for the answer. Unavailable when the daemon does not answer,
// the daemon's code (PermissionDenied, FailedPrecondition...) on a refusal.
absl::StatusOr<ArenaGrant> RequestArena(const std::string& socket_path, absl::string_view token,
                                        absl::Duration timeout);

// Daemon side: reads one request from `conn` (a blocking socket with a
// receive timeout set) and returns the token. InvalidArgument for a
// malformed request.
absl::StatusOr<std::string> ReadRequest(int conn);
// Sends a grant with `fd` attached.
absl::Status SendGrant(int conn, const ArenaGrant& grant);
// Sends a refusal carrying `status` (not OK).
absl::Status SendRefusal(int conn, const absl::Status& status);

}  // namespace kvtier::shm

#endif  // KVTIER_SRC_SERVER_SHM_PROTOCOL_H_
