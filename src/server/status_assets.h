// The status page's files, compiled into the binary at build time
// (cmake/EmbedAssets.cmake generates the definitions from web/status/ and
// the uPlot package in node_modules/).
//
// Thread-safety: read-only data.
#ifndef KVTIER_SRC_SERVER_STATUS_ASSETS_H_
#define KVTIER_SRC_SERVER_STATUS_ASSETS_H_

#include <cstddef>

#include "absl/strings/string_view.h"

namespace kvtier::server {

struct EmbeddedAsset {
  const char* name;          // file name, e.g. "index.html", "uPlot.iife.min.js"
  const char* content_type;  // MIME type with charset
  const unsigned char* data;
  size_t size;
};

// The asset called `name`, or nullptr.
const EmbeddedAsset* FindStatusAsset(absl::string_view name);

}  // namespace kvtier::server

#endif  // KVTIER_SRC_SERVER_STATUS_ASSETS_H_
