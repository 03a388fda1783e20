// The List Blobs answer parser (src/tiers/blob/blob_client.h), which reads
// what a Blob endpoint sends: it never reads past its input, refuses damage
// as DataLoss, and what it accepts is stable: the page written back as a
// listing parses to the same page.
//
// Input: the answer's body.
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "fuzz/fuzz_target.h"
#include "src/tiers/blob/blob_client.h"

namespace kvtier::fuzz {
namespace {

std::string Escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      default:
        out += c;
    }
  }
  return out;
}

std::string Listing(const BlobListPage& page) {
  std::string xml = "<?xml version=\"1.0\"?><EnumerationResults><Blobs>";
  for (const BlobListItem& b : page.blobs) {
    absl::StrAppend(&xml, "<Blob><Name>", Escape(b.name), "</Name><Properties><Content-Length>",
                    b.size, "</Content-Length></Properties></Blob>");
  }
  absl::StrAppend(&xml, "</Blobs><NextMarker>", Escape(page.next_marker),
                  "</NextMarker></EnumerationResults>");
  return xml;
}

}  // namespace

std::vector<std::string> Seeds() {
  BlobListPage page;
  page.blobs = {{"ns/0123456789abcdef/00112233445566778899aabbccddeeff", 4160}, {"a&b<c>", 0}};
  page.next_marker = "2!152!MDAwMDQ2IW5zLzAx";
  return {Listing(page), Listing(BlobListPage{})};
}

}  // namespace kvtier::fuzz

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string xml(reinterpret_cast<const char*>(data), size);
  absl::StatusOr<kvtier::BlobListPage> page = kvtier::blob_internal::ParseListBlobs(xml);
  if (!page.ok()) {
    KVTIER_FUZZ_CHECK(absl::IsDataLoss(page.status()));
    return 0;
  }
  absl::StatusOr<kvtier::BlobListPage> again =
      kvtier::blob_internal::ParseListBlobs(kvtier::fuzz::Listing(*page));
  KVTIER_FUZZ_CHECK(again.ok());
  KVTIER_FUZZ_CHECK(again->blobs.size() == page->blobs.size());
  for (size_t i = 0; i < page->blobs.size(); ++i) {
    KVTIER_FUZZ_CHECK(again->blobs[i].name == page->blobs[i].name);
    KVTIER_FUZZ_CHECK(again->blobs[i].size == page->blobs[i].size);
  }
  KVTIER_FUZZ_CHECK(again->next_marker == page->next_marker);
  return 0;
}
