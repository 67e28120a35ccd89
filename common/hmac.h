// HMAC-SHA256 through OpenSSL 3's EVP_MAC interface, and key files.
//
// An Hmac holds one key and one reusable EVP_MAC_CTX. Not thread-safe: give every thread
// (or every connection) its own instance; they are cheap to make with Clone().
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "common/status.h"

namespace atomdisk {

using MacTag = std::array<std::uint8_t, 32>;

class Hmac {
 public:
  // A MAC with this key (any length; the protocol uses 32 bytes for clients and 64 for
  // nodes). Aborts only if OpenSSL lacks HMAC/SHA256, which is a broken installation.
  explicit Hmac(std::span<const std::uint8_t> key);
  // The "MAC" of frames inside TLS (docs/TLS.md, "No HMAC inside TLS"): TLS authenticates
  // every byte of the connection, so a frame's tag is sent as 32 zero bytes and Verify
  // accepts exactly that. Only for a connection whose TLS handshake verified the peer; one
  // shared instance, safe from any thread (it keeps no state).
  static Hmac& ZeroTag();
  bool zero_tag() const { return impl_ == nullptr; }
  ~Hmac();
  Hmac(const Hmac&) = delete;
  Hmac& operator=(const Hmac&) = delete;

  std::unique_ptr<Hmac> Clone() const;
  MacTag Compute(std::span<const std::uint8_t> data);
  // Constant-time comparison of Compute(data) with `tag` (CRYPTO_memcmp).
  bool Verify(std::span<const std::uint8_t> data, std::span<const std::uint8_t> tag);
  const std::vector<std::uint8_t>& key() const { return key_; }

 private:
  struct ZeroTagKind {};
  explicit Hmac(ZeroTagKind);
  std::vector<std::uint8_t> key_;
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Hex helpers. ParseHex: InvalidArgument on odd length or non-hex characters.
std::string ToHex(std::span<const std::uint8_t> bytes);
Result<std::vector<std::uint8_t>> ParseHex(std::string_view hex);

// Reads a key file: exactly `expected_bytes` bytes as 2*expected_bytes hex characters
// (surrounding whitespace allowed). Errors name the file and the problem.
Result<std::vector<std::uint8_t>> ReadKeyFile(const std::string& path, std::size_t expected_bytes);
// Fills `n` bytes from OpenSSL's CSPRNG.
std::vector<std::uint8_t> RandomBytes(std::size_t n);
// 64 bits from OpenSSL's CSPRNG (a process's boot nonce, a client's request id seed).
std::uint64_t RandomU64();

}  // namespace atomdisk
