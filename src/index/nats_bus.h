// A small wrapper over the NATS C client (libnats): one connection that
// publishes, subscribes to plain subjects, and reads a JetStream stream from
// its beginning (what an index does at start to rebuild its map).
//
// Handlers run on libnats' delivery threads (one per subscription, so one
// subscription's messages arrive in order); they must not block for long.
//
// Authentication (a token, or a user and password) and TLS (server
// verification against a CA file, optionally a client certificate) are set
// in NatsBusOptions. Secrets (token, password, credentials in a URL) never
// appear in the returned errors.
//
// Thread-safety: Publish and the accessors may be called from any thread;
// subscribe before relying on delivery; destroy after the last use.
#ifndef KVTIER_SRC_INDEX_NATS_BUS_H_
#define KVTIER_SRC_INDEX_NATS_BUS_H_

#include <cstdint>
#include <functional>
#include <list>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

// libnats' own type names.
struct __natsConnection;  // NOLINT(bugprone-reserved-identifier)
struct __jsCtx;           // NOLINT(bugprone-reserved-identifier)

namespace kvtier::index {

struct NatsBusOptions {
  std::string url = "nats://127.0.0.1:4222";          // nats:// URL (several: comma-separated)
  std::string name = "kvtier";                        // connection name shown by the server
  absl::Duration connect_timeout = absl::Seconds(2);  // first connect
  bool retry_initial_connect = false;  // keep trying in the background when the server is down

  // Authentication: a token, or a user and password (not both).
  std::string token;  // bearer token (nats-server `authorization { token }`, `--auth`); "" = none
  std::string user;   // user name (with password); "" = none
  std::string password;  // password of `user`

  // TLS: on when ca_file is set or any URL is tls:// (then for every URL).
  std::string ca_file;    // PEM CA bundle that verifies the server (required with TLS)
  std::string cert_file;  // PEM client certificate for mutual TLS (with key_file; needs TLS)
  std::string key_file;   // PEM private key of cert_file
  std::string tls_name;   // name the server's certificate must carry ("" = the URLs' host)

  // Whether the connection uses TLS.
  bool UsesTls() const;
  // InvalidArgument naming the option: a URL that is not nats:// or tls://,
  // token with user/password, user without password (or the reverse), a URL
  // with credentials as well as token or user, cert_file without key_file (or
  // the reverse), cert_file or tls_name without TLS, TLS without ca_file, TLS
  // over URLs of different hosts without tls_name, or a ca_file, cert_file or
  // key_file that cannot be read (the message names the file).
  absl::Status Validate() const;
};

// The JetStream stream that keeps the event replay window.
struct EventStreamOptions {
  std::string name = "KVTIER_EVENTS";  // stream name
  std::string subjects = "kvtier.events.>";
  absl::Duration max_age = absl::Hours(1);  // events older than this are dropped (0 = no limit)
  int64_t max_bytes = 1ll << 30;            // bytes kept (-1 = no limit)
  bool file_storage = true;                 // file (survives a server restart) or memory
};

// `urls` (comma-separated) with the credentials of each (user:password@ or
// token@) replaced by "***": for logs and printed settings.
std::string RedactNatsUrls(absl::string_view urls);

// `status` (from NatsBusOptions::Validate or NatsBus::Connect) with its
// "nats <option>: " prefix renamed to the setting that holds the option
// (`option_prefix` + option, e.g. "cluster.nats_" or "nats."); other
// messages get `other_prefix` in front. The code is kept.
absl::Status NameNatsSetting(const absl::Status& status, absl::string_view option_prefix,
                             absl::string_view other_prefix);

// JetStream details of a stream message.
struct StreamPosition {
  uint64_t stream_sequence = 0;
  uint64_t pending = 0;  // messages of the stream after this one not yet delivered
};

class NatsBus {
 public:
  // `pos` is null for plain subscriptions.
  using Handler = std::function<void(absl::string_view subject, absl::string_view data,
                                     const StreamPosition* pos)>;

  // Connects. InvalidArgument for bad options (see Validate) or a CA,
  // certificate or key file that does not load (naming the file);
  // PermissionDenied when the server refuses the credentials (at once, also
  // with retry_initial_connect; a server that comes up later and refuses them
  // is retried in the background); Unauthenticated when TLS fails (the server's
  // certificate does not verify or name tls_name, the server requires TLS the
  // client was not given a CA for, or it refused the client certificate);
  // FailedPrecondition when TLS is asked for and the server offers none;
  // Unavailable when the server cannot be reached (unless
  // retry_initial_connect: then the connection is made in the background).
  static absl::StatusOr<std::unique_ptr<NatsBus>> Connect(const NatsBusOptions& options);
  ~NatsBus();
  NatsBus(const NatsBus&) = delete;
  NatsBus& operator=(const NatsBus&) = delete;

  // Publishes (buffered by the client; Flush waits for the server).
  absl::Status Publish(const std::string& subject, absl::string_view data);
  absl::Status Flush(absl::Duration timeout);

  // Creates the stream when missing (an existing one is left as it is).
  absl::Status EnsureStream(const EventStreamOptions& options);
  // The sequence of the stream's last message (0 when empty).
  absl::StatusOr<uint64_t> LastSequence(const std::string& stream);

  absl::Status Subscribe(const std::string& subject, Handler handler);
  // An ordered JetStream consumer over `subject`, from the stream's first
  // message on, then live.
  absl::Status SubscribeStream(const std::string& subject, Handler handler);

  bool connected() const;

 private:
  struct Sub;
  NatsBus() = default;

  __natsConnection* nc_ = nullptr;
  __jsCtx* js_ = nullptr;
  std::list<std::unique_ptr<Sub>> subs_;
};

}  // namespace kvtier::index

#endif  // KVTIER_SRC_INDEX_NATS_BUS_H_
