// A token setting whose value may change while the process runs.
//
// kvtierd re-reads its token files (a Kubernetes Secret updates the mounted
// file in place), so the services that check or send a token hold a Secret
// rather than a string. Copies share one value: the Secret copied into an
// options struct sees every later Set on the daemon's copy. A Secret made
// from a string (implicitly, so options still take plain values) starts its
// own value.
//
// The value is a token list (src/common/token_list.h): Accepts matches any
// of its tokens, Sent is the first.
//
// Thread-safety: all methods are thread-safe.
#ifndef KVTIER_SRC_COMMON_SECRET_H_
#define KVTIER_SRC_COMMON_SECRET_H_

#include <memory>
#include <string>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "src/common/token_list.h"

namespace kvtier {

class Secret {
 public:
  Secret() : Secret(std::string()) {}
  Secret(std::string value)  // NOLINT(google-explicit-constructor): options take strings
      : state_(std::make_shared<State>(std::move(value))) {}
  Secret(const char* value) : Secret(std::string(value)) {}  // NOLINT(google-explicit-constructor)

  // No token at all (the check this setting guards is off).
  bool empty() const {
    absl::ReaderMutexLock lock(&state_->mu);
    return SplitTokens(state_->value).empty();
  }
  // Whether `presented` is one of the tokens (constant time, as AcceptsToken).
  bool Accepts(absl::string_view presented) const {
    absl::ReaderMutexLock lock(&state_->mu);
    return AcceptsToken(state_->value, presented);
  }
  // The token to send: the first.
  std::string Sent() const {
    absl::ReaderMutexLock lock(&state_->mu);
    return SentToken(state_->value);
  }
  // The whole list (for validation).
  std::string Get() const {
    absl::ReaderMutexLock lock(&state_->mu);
    return state_->value;
  }
  // Replaces the value for every copy.
  void Set(std::string value) const {
    absl::MutexLock lock(&state_->mu);
    state_->value = std::move(value);
  }

 private:
  struct State {
    explicit State(std::string v) : value(std::move(v)) {}
    mutable absl::Mutex mu;
    std::string value ABSL_GUARDED_BY(mu);
  };
  std::shared_ptr<State> state_;
};

}  // namespace kvtier

#endif  // KVTIER_SRC_COMMON_SECRET_H_
