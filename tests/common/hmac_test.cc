// Tests for HMAC-SHA256, hex helpers and key files (common/hmac.h).
#include "common/hmac.h"

#include <gtest/gtest.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <stdlib.h>
#include <sys/stat.h>

#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

namespace atomdisk {
namespace {

using Bytes = std::vector<std::uint8_t>;
namespace fs = std::filesystem;

Bytes FromHex(std::string_view hex) {
  auto r = ParseHex(hex);
  EXPECT_TRUE(r.ok()) << r.status().ToString();
  return r.ok() ? r.value() : Bytes{};
}

Bytes FromString(std::string_view s) { return Bytes(s.begin(), s.end()); }

struct Rfc4231Case {
  int number;
  Bytes key;
  Bytes data;
  std::string sha256;
};

// RFC 4231 section 4, HMAC-SHA-256 outputs. Case 5 (output truncated to 128 bits) is left out.
std::vector<Rfc4231Case> Rfc4231Cases() {
  Bytes key_25;
  for (int i = 1; i <= 25; ++i) key_25.push_back(static_cast<std::uint8_t>(i));
  return {
      {1, Bytes(20, 0x0b), FromString("Hi There"),
       "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"},
      {2, FromString("Jefe"), FromString("what do ya want for nothing?"),
       "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"},
      {3, Bytes(20, 0xaa), Bytes(50, 0xdd),
       "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe"},
      {4, key_25, Bytes(50, 0xcd),
       "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b"},
      {6, Bytes(131, 0xaa), FromString("Test Using Larger Than Block-Size Key - Hash Key First"),
       "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"},
      {7, Bytes(131, 0xaa),
       FromString("This is a test using a larger than block-size key and a larger than "
                  "block-size data. The key needs to be hashed before being used by the HMAC "
                  "algorithm."),
       "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2"},
  };
}

// Frames inside TLS carry 32 zero bytes for a tag (docs/TLS.md, "No HMAC inside TLS").
TEST(Hmac, TheZeroTagTakesOnlyZeros) {
  Hmac& zero = Hmac::ZeroTag();
  EXPECT_TRUE(zero.zero_tag());
  const Bytes data = FromString("what a node sends");
  const MacTag tag = zero.Compute(data);
  EXPECT_TRUE(std::all_of(tag.begin(), tag.end(), [](std::uint8_t b) { return b == 0; }));
  EXPECT_TRUE(zero.Verify(data, tag));
  MacTag one = tag;
  one[31] = 1;
  EXPECT_FALSE(zero.Verify(data, one));
  EXPECT_FALSE(zero.Verify(data, std::span<const std::uint8_t>(tag).first(31)));
  Hmac keyed(FromString("key"));
  EXPECT_FALSE(keyed.zero_tag());
  EXPECT_FALSE(keyed.Verify(data, tag)) << "a keyed MAC took a zero tag";
}

TEST(Hmac, Rfc4231) {
  for (const auto& tc : Rfc4231Cases()) {
    SCOPED_TRACE("RFC 4231 test case " + std::to_string(tc.number));
    Hmac mac(tc.key);
    EXPECT_EQ(mac.key(), tc.key);
    // The context is re-initialised (null key) before every message: the second, and one
    // after an unrelated message, must equal the first.
    EXPECT_EQ(ToHex(mac.Compute(tc.data)), tc.sha256);
    EXPECT_EQ(ToHex(mac.Compute(tc.data)), tc.sha256);
    (void)mac.Compute(FromString("something else entirely"));
    (void)mac.Compute({});
    EXPECT_EQ(ToHex(mac.Compute(tc.data)), tc.sha256);

    auto clone = mac.Clone();
    ASSERT_NE(clone, nullptr);
    EXPECT_EQ(clone->key(), tc.key);
    EXPECT_EQ(ToHex(clone->Compute(tc.data)), tc.sha256);
    EXPECT_EQ(ToHex(clone->Compute(tc.data)), tc.sha256);
    // The original is unaffected by its clone's use.
    EXPECT_EQ(ToHex(mac.Compute(tc.data)), tc.sha256);

    Bytes tag = FromHex(tc.sha256);
    EXPECT_TRUE(mac.Verify(tc.data, tag));
    EXPECT_TRUE(clone->Verify(tc.data, tag));
  }
}

TEST(Hmac, RfcCasesShareNothingAcrossInstances) {
  // All instances alive at once, used interleaved.
  auto cases = Rfc4231Cases();
  std::vector<std::unique_ptr<Hmac>> macs;
  for (const auto& tc : cases) macs.push_back(std::make_unique<Hmac>(tc.key));
  for (int round = 0; round < 3; ++round) {
    for (std::size_t i = 0; i < cases.size(); ++i) {
      EXPECT_EQ(ToHex(macs[i]->Compute(cases[i].data)), cases[i].sha256) << cases[i].number;
    }
  }
}

TEST(Hmac, MatchesOneShotOpenSslForRandomKeysAndMessages) {
  std::mt19937_64 rng(4231);
  for (int k = 0; k < 40; ++k) {
    Bytes key(rng() % 200);  // includes the empty key and keys longer than a block
    if (k == 0) key.clear();
    for (auto& b : key) b = static_cast<std::uint8_t>(rng());
    Hmac mac(key);
    auto clone = mac.Clone();
    for (int m = 0; m < 10; ++m) {
      Bytes data(rng() % 5000);
      for (auto& b : data) b = static_cast<std::uint8_t>(rng());
      static const std::uint8_t kNothing = 0;
      unsigned char expected[EVP_MAX_MD_SIZE];
      unsigned int expected_len = 0;
      ASSERT_NE(
          HMAC(EVP_sha256(), key.empty() ? &kNothing : key.data(), static_cast<int>(key.size()),
               data.empty() ? &kNothing : data.data(), data.size(), expected, &expected_len),
          nullptr);
      ASSERT_EQ(expected_len, 32u);
      MacTag got = mac.Compute(data);
      EXPECT_TRUE(std::equal(got.begin(), got.end(), expected)) << "key " << k << " msg " << m;
      MacTag cloned = clone->Compute(data);
      EXPECT_EQ(got, cloned);
      EXPECT_TRUE(mac.Verify(data, got));
    }
  }
}

TEST(Hmac, VerifyRejectsWrongTags) {
  Hmac mac(Bytes(32, 0x11));
  Bytes data = FromString("payload");
  MacTag tag = mac.Compute(data);
  Bytes good(tag.begin(), tag.end());
  EXPECT_TRUE(mac.Verify(data, good));

  // Wrong sizes: empty, one short (a prefix of the right tag), one long, a SHA-512 size.
  EXPECT_FALSE(mac.Verify(data, Bytes{}));
  EXPECT_FALSE(mac.Verify(data, Bytes(good.begin(), good.end() - 1)));
  Bytes longer = good;
  longer.push_back(0);
  EXPECT_FALSE(mac.Verify(data, longer));
  EXPECT_FALSE(mac.Verify(data, Bytes(64, 0)));

  // Right size, wrong content: every single-bit flip.
  for (std::size_t i = 0; i < good.size(); ++i) {
    for (int bit = 0; bit < 8; ++bit) {
      Bytes bad = good;
      bad[i] ^= static_cast<std::uint8_t>(1u << bit);
      EXPECT_FALSE(mac.Verify(data, bad)) << i << "/" << bit;
    }
  }
  // Other data, same tag.
  EXPECT_FALSE(mac.Verify(FromString("payloaD"), good));
  EXPECT_TRUE(mac.Verify(data, good));
}

TEST(Hex, ToHex) {
  EXPECT_EQ(ToHex(Bytes{}), "");
  EXPECT_EQ(ToHex(Bytes{0x00, 0x0f, 0xf0, 0xff, 0xa5}), "000ff0ffa5");
  Bytes all(256);
  for (int i = 0; i < 256; ++i) all[static_cast<std::size_t>(i)] = static_cast<std::uint8_t>(i);
  std::string hex = ToHex(all);
  ASSERT_EQ(hex.size(), 512u);
  EXPECT_EQ(hex.substr(0, 8), "00010203");
  EXPECT_EQ(hex.substr(504), "fcfdfeff");
  auto back = ParseHex(hex);
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(back.value(), all);
}

TEST(Hex, ParseHex) {
  auto empty = ParseHex("");
  ASSERT_TRUE(empty.ok());
  EXPECT_TRUE(empty->empty());
  auto mixed = ParseHex("00fFaB9c");
  ASSERT_TRUE(mixed.ok());
  EXPECT_EQ(mixed.value(), (Bytes{0x00, 0xff, 0xab, 0x9c}));

  for (std::string_view bad :
       {"0", "abc", "0g", "g0", "zz", " 0", "0 ", "0x00", "-1", "+1", "ab:c", "\xff\xff"}) {
    SCOPED_TRACE(std::string(bad));
    auto r = ParseHex(bad);
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
    EXPECT_FALSE(r.status().message().empty());
  }
  auto odd = ParseHex("abc");
  EXPECT_NE(odd.status().message().find("odd"), std::string::npos) << odd.status().message();
  auto nonhex = ParseHex("00zz");
  EXPECT_NE(nonhex.status().message().find("position 2"), std::string::npos)
      << nonhex.status().message();
  // Embedded NUL is not a hex digit.
  EXPECT_FALSE(ParseHex(std::string_view("0\0", 2)).ok());
}

TEST(RandomBytes, SizeAndVariety) {
  EXPECT_TRUE(RandomBytes(0).empty());
  Bytes a = RandomBytes(32), b = RandomBytes(32);
  EXPECT_EQ(a.size(), 32u);
  EXPECT_NE(a, b);
  EXPECT_EQ(RandomBytes(4096).size(), 4096u);
}

class KeyFileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/atomdisk-hmac-test-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  std::string Write(const std::string& name, const std::string& contents) {
    std::string path = (dir_ / name).string();
    std::ofstream(path, std::ios::binary) << contents;
    return path;
  }
  // Asserts an error of `code` whose message names `path`.
  static void ExpectError(const Result<Bytes>& r, StatusCode code, const std::string& path) {
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.status().code(), code) << r.status().ToString();
    EXPECT_NE(r.status().message().find(path), std::string::npos) << r.status().message();
    EXPECT_EQ(r.status().message().find('\n'), std::string::npos) << r.status().message();
  }

  fs::path dir_;
};

constexpr char kKey32Hex[] = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

Bytes Key32() {
  Bytes k(32);
  for (std::size_t i = 0; i < 32; ++i) k[i] = static_cast<std::uint8_t>(i);
  return k;
}

TEST_F(KeyFileTest, GoodFile) {
  auto r = ReadKeyFile(Write("k", kKey32Hex), 32);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r.value(), Key32());

  Bytes k64 = RandomBytes(64);
  auto r64 = ReadKeyFile(Write("k64", ToHex(k64)), 64);
  ASSERT_TRUE(r64.ok()) << r64.status().ToString();
  EXPECT_EQ(r64.value(), k64);
}

TEST_F(KeyFileTest, WhitespaceAndCaseTolerated) {
  std::string upper = kKey32Hex;
  for (auto& c : upper) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  for (const std::string& text :
       {std::string(kKey32Hex) + "\n", std::string(kKey32Hex) + "\r\n",
        "  \t\n" + std::string(kKey32Hex) + " \n\n\t ", "\n" + upper + "\n"}) {
    auto r = ReadKeyFile(Write("k", text), 32);
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    EXPECT_EQ(r.value(), Key32());
  }
}

TEST_F(KeyFileTest, WrongLength) {
  std::string hex = kKey32Hex;
  for (const std::string& text :
       {std::string(), std::string("\n"), hex.substr(0, 62), hex.substr(0, 63), hex + "00",
        hex + "0", hex.substr(0, 32) + " " + hex.substr(32), hex + hex}) {
    SCOPED_TRACE(text);
    std::string path = Write("k", text);
    ExpectError(ReadKeyFile(path, 32), StatusCode::kInvalidArgument, path);
  }
  // A 32-byte key where a 64-byte one is expected, and the reverse.
  std::string p32 = Write("k32", hex);
  ExpectError(ReadKeyFile(p32, 64), StatusCode::kInvalidArgument, p32);
  std::string p64 = Write("k64", hex + hex);
  ExpectError(ReadKeyFile(p64, 32), StatusCode::kInvalidArgument, p64);
  // A huge file.
  std::string big = Write("big", std::string(1 << 20, 'a'));
  ExpectError(ReadKeyFile(big, 32), StatusCode::kInvalidArgument, big);
}

TEST_F(KeyFileTest, NonHex) {
  std::string hex = kKey32Hex;
  for (std::size_t pos : {std::size_t{0}, std::size_t{17}, std::size_t{63}}) {
    std::string text = hex;
    text[pos] = 'g';
    std::string path = Write("k", text);
    auto r = ReadKeyFile(path, 32);
    ExpectError(r, StatusCode::kInvalidArgument, path);
  }
  std::string binary(32, '\0');
  std::string path = Write("bin", binary);
  ExpectError(ReadKeyFile(path, 32), StatusCode::kInvalidArgument, path);
}

TEST_F(KeyFileTest, MissingFileOrDirectory) {
  std::string missing = (dir_ / "no-such.key").string();
  ExpectError(ReadKeyFile(missing, 32), StatusCode::kNotFound, missing);
  std::string missing_dir = (dir_ / "no-such-dir" / "client.key").string();
  ExpectError(ReadKeyFile(missing_dir, 32), StatusCode::kNotFound, missing_dir);
  // A folder where the key file should be: an error, whatever kind, naming it.
  auto r = ReadKeyFile(dir_.string(), 32);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find(dir_.string()), std::string::npos) << r.status().message();
}

}  // namespace
}  // namespace atomdisk
