// The pure parts of the Blob REST client: Shared Key string to sign and
// signature, URL encoding, base64, List Blobs parsing, backoff bounds, SAS
// tokens and option validation. The requests themselves run against Azurite
// in tests/integration/blob_test.cc.
#include "src/tiers/blob/blob_client.h"

#include <map>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kvtier/cache.h"
#include "tests/testing/status_matchers.h"

namespace kvtier {
namespace {

using ::kvtier::testing::StatusIs;
using ::testing::HasSubstr;
using namespace blob_internal;  // NOLINT(build/namespaces)

TEST(BlobClientProtocol, StringToSignFollowsTheSharedKeyLayout) {
  std::map<std::string, std::string> headers = {
      {"content-length", "0"},         {"content-type", "application/octet-stream"},
      {"x-ms-version", "2021-08-06"},  {"x-ms-date", "Thu, 26 Nov 2026 03:00:00 GMT"},
      {"x-ms-blob-type", "BlockBlob"}, {"authorization", "ignored"}};
  const std::string s =
      StringToSign("PUT", headers, "acct", "/acct/c/n", {{"comp", "block"}, {"blockid", "QQ=="}});
  EXPECT_EQ(s,
            "PUT\n\n\n\n\napplication/octet-stream\n\n\n\n\n\n\n"  // length 0 -> empty
            "x-ms-blob-type:BlockBlob\n"
            "x-ms-date:Thu, 26 Nov 2026 03:00:00 GMT\n"
            "x-ms-version:2021-08-06\n"
            "/acct/acct/c/n\nblockid:QQ==\ncomp:block");
  headers["content-length"] = "42";
  EXPECT_THAT(StringToSign("PUT", headers, "acct", "/c/n", {}), HasSubstr("PUT\n\n\n42\n"));
}

TEST(BlobClientProtocol, HmacMatchesAKnownVector) {
  // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
  EXPECT_EQ(HmacSha256Base64("Jefe", "what do ya want for nothing?"),
            Base64Encode(std::string(
                "\x5b\xdc\xc1\x46\xbf\x60\x75\x4e\x6a\x04\x24\x26\x08\x95\x75\xc7\x5a\x00\x3f\x08"
                "\x9d\x27\x39\x83\x9d\xec\x58\xb9\x64\xec\x38\x43",
                32)));
}

TEST(BlobClientProtocol, Base64AndUrlEncoding) {
  for (const std::string& s :
       {std::string("a"), std::string("ab"), std::string("abc"), std::string("\0\xff\x10", 3)}) {
    ASSERT_OK_AND_ASSIGN(std::string back, Base64Decode(Base64Encode(s)));
    EXPECT_EQ(back, s);
  }
  EXPECT_THAT(Base64Decode("abc"), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_EQ(UrlEncode("a b/c+=", false), "a%20b%2Fc%2B%3D");
  EXPECT_EQ(UrlEncode("a b/c", true), "a%20b/c");
}

TEST(BlobClientProtocol, ParsesListBlobsWithMarkers) {
  const std::string xml =
      "<?xml version=\"1.0\" encoding=\"utf-8\"?><EnumerationResults ServiceEndpoint=\"x\" "
      "ContainerName=\"c\"><Prefix>p/</Prefix><MaxResults>2</MaxResults><Blobs>"
      "<Blob><Name>p/a&amp;b</Name><Properties><Content-Length>10</Content-Length></Properties>"
      "</Blob><Blob><Name>p/c</Name><Properties><Content-Length>7</Content-Length></Properties>"
      "</Blob></Blobs><NextMarker>p/d</NextMarker></EnumerationResults>";
  ASSERT_OK_AND_ASSIGN(BlobListPage page, ParseListBlobs(xml));
  ASSERT_EQ(page.blobs.size(), 2u);
  EXPECT_EQ(page.blobs[0].name, "p/a&b");
  EXPECT_EQ(page.blobs[0].size, 10u);
  EXPECT_EQ(page.blobs[1].name, "p/c");
  EXPECT_EQ(page.next_marker, "p/d");
  ASSERT_OK_AND_ASSIGN(page, ParseListBlobs("<EnumerationResults><Blobs /><NextMarker />"
                                            "</EnumerationResults>"));
  EXPECT_TRUE(page.blobs.empty());
  EXPECT_TRUE(page.next_marker.empty());
  EXPECT_THAT(ParseListBlobs("<Error/>"), StatusIs(absl::StatusCode::kDataLoss));
  // Cut short anywhere, the listing is refused rather than read as fewer
  // blobs without a next page.
  for (size_t cut = 1; cut < xml.size(); ++cut) {
    EXPECT_THAT(ParseListBlobs(xml.substr(0, cut)), StatusIs(absl::StatusCode::kDataLoss))
        << "cut at " << cut;
  }
  EXPECT_THAT(ParseListBlobs("<EnumerationResults><Blobs><Blob><Name>a</Name></Blob><Blob>"
                             "<Name>b</Name></Blobs></EnumerationResults>"),
              StatusIs(absl::StatusCode::kDataLoss, ::testing::HasSubstr("without </Blob>")));
}

TEST(BlobClientProtocol, BackoffIsExponentialWithFullJitterAndCapped) {
  EXPECT_EQ(Backoff(1, 20, 1000, 0), absl::ZeroDuration());
  EXPECT_EQ(Backoff(1, 20, 1000, 20), absl::Milliseconds(20));
  EXPECT_EQ(Backoff(1, 20, 1000, 21), absl::ZeroDuration());  // 21 % 21
  EXPECT_EQ(Backoff(3, 20, 1000, 80), absl::Milliseconds(80));
  EXPECT_EQ(Backoff(3, 20, 1000, 81), absl::ZeroDuration());
  EXPECT_EQ(Backoff(20, 20, 1000, 1000), absl::Milliseconds(1000));
  EXPECT_LE(Backoff(20, 20, 1000, ~0ull), absl::Milliseconds(1000));
}

TEST(BlobClientProtocol, AccountSasCarriesItsFields) {
  ASSERT_OK_AND_ASSIGN(std::string sas, AccountSas("acct", Base64Encode("key"), "rw",
                                                   absl::FromUnixSeconds(1800000000)));
  EXPECT_THAT(sas, HasSubstr("sv=2019-12-12&ss=b&srt=sco&sp=rw&se=2027-01-15T08%3A00%3A00Z"));
  EXPECT_THAT(sas, HasSubstr("&spr=https%2Chttp&sig="));
}

TEST(BlobClientOptions, ValidateNamesTheField) {
  BlobClientOptions o;
  o.endpoint = "http://127.0.0.1:1/acct";
  o.account = "acct";
  o.container = "kvtier";
  o.shared_key = Base64Encode("k");
  ASSERT_OK(o.Validate());
  BlobClientOptions bad = o;
  bad.endpoint = "ftp://x";
  EXPECT_THAT(bad.Validate(), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("endpoint")));
  bad = o;
  bad.container = "Bad_Name";
  EXPECT_THAT(bad.Validate(), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("container")));
  bad = o;
  bad.sas = "sv=x";
  EXPECT_THAT(bad.Validate(),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("exactly one")));
  bad = o;
  bad.shared_key = "not base64!";
  EXPECT_THAT(bad.Validate(), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("blob.key")));
  BlobCacheOptions c;
  c.endpoint = o.endpoint;
  c.account = o.account;
  c.container = o.container;
  c.shared_key = o.shared_key;
  ASSERT_OK(c.Validate());
  c.policy = "sometimes";
  EXPECT_THAT(c.Validate(), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("blob.policy")));
}

}  // namespace
}  // namespace kvtier
