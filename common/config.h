// The cluster configuration file (TOML), shared by atomdiskd, atomdisk and atomdisk-fuse.
//
//   sectors = 262144                  # device size in 4096-byte sectors
//   cluster_id = "0123...cdef"        # optional: 32 hex digits (atomdisk init writes one)
//   resync_rate_mb = 200              # optional: resync pull limit (MB/s), 0 = unlimited
//   sync_serve_rate_mb = 512          # optional: serving peers' sync requests (MB/s), 0 = no limit
//   resync_interval_s = 600           # optional: anti-entropy pass period, 0 = at start only
//   scrub_interval_s = 0              # optional: scrub period, 0 = on request only
//   peer_timeout_ms = 1000            # optional: a peer link silent this long is redialled
//   max_connections = 4096            # optional: connections a node holds at once
//   max_connections_per_source = 256  # optional: of those, from one non-node address
//   max_queued_response_mb = 256      # optional: unread responses a node holds, all together
//   client_key_file = "client.key"    # 32-byte key as 64 hex characters
//   system_key_file = "system.key"    # 64-byte key as 128 hex characters
//   tls = "require"                   # optional: off (default), accept or require (docs/TLS.md)
//   plaintext_clients = true          # optional: serve atdd (plaintext, HMAC) clients too
//   tls_ca_file = "tls/ca.crt"        # optional, these four show the defaults; {rank} is
//   tls_node_cert_file = "tls/node-{rank}.crt"  #   replaced by the node's rank
//   tls_node_key_file = "tls/node-{rank}.key"
//   tls_client_cert_file = "tls/client.crt"
//   tls_client_key_file = "tls/client.key"
//   tls_revoked = ["<sha256 of a certificate>", ...]  # optional: refused certificates
//   [[nodes]]
//   rank = 1                          # 1-based, unique, below 255
//   address = "127.0.0.1:7001"        # clients and peers both connect here
//   data_dir = "data/1"
//   metrics_address = "127.0.0.1:9101"  # optional: serve GET /metrics here (off if absent)
//
// Relative paths resolve against the config file's folder. Plain value; thread-compatible.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/status.h"
#include "common/types.h"

namespace atomdisk {

inline constexpr std::int64_t kMinPeerTimeoutMs = 200;
inline constexpr std::int64_t kMaxPeerTimeoutMs = 60000;
inline constexpr std::int64_t kMinMaxConnections = 16;
inline constexpr std::int64_t kMaxMaxConnections = 1000000;
inline constexpr std::int64_t kMinMaxConnectionsPerSource = 1;
// At least one connection's own queue (Connection::Options::max_queued_bytes, 16 MiB): a
// smaller budget would close readers of full extents that are not slow at all.
inline constexpr std::int64_t kMinQueuedResponseMb = 16;
inline constexpr std::int64_t kMaxQueuedResponseMb = 65536;

struct NodeConfig {
  Rank rank = 0;
  std::string host;  // as written ("127.0.0.1", "::1", "node1.example")
  std::uint16_t port = 0;
  std::string data_dir;  // absolute after loading (empty if the file names none)
  // Where atomdiskd serves Prometheus metrics (docs/OPERATIONS.md, "Metrics"); port 0: off.
  std::string metrics_host;
  std::uint16_t metrics_port = 0;
  std::string Address() const;  // "host:port" ("[::1]:port" for IPv6)
};

// How a cluster uses TLS between atomdisk's own programs (docs/TLS.md).
//   kOff: no TLS; every frame in clear, signed with HMAC (the atdd protocol). A warning.
//   kAccept: nodes serve TLS and plaintext on their one port and dial their peers with TLS,
//     falling back to plaintext for a peer that does not speak it (an older binary); clients
//     use TLS. The step between kOff and kRequire during a rolling upgrade.
//   kRequire: nodes and clients speak TLS to each other only; system and sync frames in clear
//     are refused; plaintext client frames (atdd clients) only while plaintext_clients.
enum class TlsMode { kOff, kAccept, kRequire };
const char* TlsModeName(TlsMode mode);

struct ClusterConfig {
  std::string path;  // the file it was loaded from
  std::uint64_t sectors = 0;
  std::vector<std::uint8_t> client_key;  // 32 bytes
  std::vector<std::uint8_t> system_key;  // 64 bytes
  std::vector<NodeConfig> nodes;         // sorted by rank
  // Optional settings (docs/RESYNC.md). cluster_id: 32 hex digits written by `atomdisk
  // init`; empty in files from before it existed (ClusterId() then derives one).
  std::string cluster_id_hex;
  double resync_rate_mb = 200;  // resync pull limit, MB/s of sector data; 0 = none
  // What serving peers' Digest, Entries and Fetch requests may cost, MB/s of sectors scanned
  // or read, all peers together (daemon/sync/sync_server.h); 0 = no limit.
  double sync_serve_rate_mb = 512;
  std::int64_t resync_interval_s = 600;  // periodic anti-entropy pass; 0 = only at start
  std::int64_t scrub_interval_s = 0;     // periodic scrub; 0 = only `atomdisk scrub`
  // A peer link (either direction) on which nothing arrived for this long is closed and
  // redialled; heartbeats go every quarter of it (docs/PROTOCOL.md, "Peer liveness").
  // TSan builds run the daemon many times slower, and a Pong waits behind frames that take
  // that much longer to handle: their default is ten times longer. Other builds: 1000 ms.
#if defined(__SANITIZE_THREAD__)
  std::int64_t peer_timeout_ms = 10000;
#else
  std::int64_t peer_timeout_ms = 1000;
#endif
  // The most connections a node holds at once (clients, strangers and peers alike; its own
  // outgoing peer links do not count). At the limit a new connection evicts the oldest one
  // that has not yet sent a frame with a valid tag, or is refused if every one has
  // (docs/PROTOCOL.md, "What every node does with a frame").
  std::int64_t max_connections = 4096;
  // Of those, the most from one source address that is not a node of the cluster (a node's
  // host also runs its peers' links and often a mount). At the cap a new connection from
  // that address evicts its oldest unauthenticated one, or is refused. At most
  // max_connections.
  std::int64_t max_connections_per_source = 256;
  // The most bytes of responses a node keeps queued for connections that have not read
  // them yet, all connections together (MiB). Over it, the connection whose oldest queued
  // response has waited longest (the slowest reader) is closed.
  std::int64_t max_queued_response_mb = 256;
  TlsMode tls = TlsMode::kOff;
  // Whether nodes serve client frames in clear (atdd clients, and atomdisk clients without
  // TLS material) when tls is kRequire. Under kOff and kAccept they always do.
  bool plaintext_clients = true;
  // Absolute paths; the node ones still hold "{rank}" (NodeCertFile, NodeKeyFile expand it).
  std::string tls_ca_file;
  std::string tls_node_cert_file;
  std::string tls_node_key_file;
  std::string tls_client_cert_file;
  std::string tls_client_key_file;
  // SHA-256 fingerprints (64 lowercase hex digits) of certificates nodes and clients refuse.
  std::vector<std::string> tls_revoked;
  std::string NodeCertFile(Rank rank) const;
  std::string NodeKeyFile(Rank rank) const;

  // What the loader let pass but the user should fix (a client key file every user can
  // read); each program prints them at start-up.
  std::vector<std::string> warnings;

  // The cluster's identity: cluster_id if set, else the first 16 bytes of
  // SHA-256("atomdisk cluster id" | system key) (so nodes loaded with kNode agree on it).
  Uuid ClusterId() const;

  const NodeConfig* FindNode(Rank rank) const;
  // The number of nodes whose answers form a majority: N/2 + 1.
  std::size_t Majority() const { return nodes.size() / 2 + 1; }
};

inline constexpr std::size_t kClientKeySize = 32;
inline constexpr std::size_t kSystemKeySize = 64;
// Devices larger than this (2^40 sectors, 4 PiB) are refused as a likely typo.
inline constexpr std::uint64_t kMaxSectors = std::uint64_t{1} << 40;

// Who loads the file: a node needs both keys; a client (the CLI, the FUSE mount) only the
// client key, so client hosts need not hold system.key (which would let them act as nodes).
enum class ConfigUse { kNode, kClient };

// Loads and validates the file, and reads the key files `use` needs (for kClient,
// system_key stays empty and system_key_file is not opened). Every error is one line that
// names the file and the problem ("cluster.toml: nodes[2]: rank 3 used twice"). Key files
// every user may write, or a system key file every user may read, are refused; a client key
// file every user may read loads with an entry in `warnings`.
Result<ClusterConfig> LoadClusterConfig(const std::string& path, ConfigUse use = ConfigUse::kNode);

// Parses "host:port" or "[v6]:port". InvalidArgument explains what is wrong.
Status ParseHostPort(const std::string& text, std::string* host, std::uint16_t* port);

// Writes a new cluster: cluster.toml plus fresh random client.key and system.key (mode 0600)
// in `dir`, nodes ranked 1.. in the order given, data_dir "data/RANK", and the folder
// `dir`/data for them (atomdiskd creates a data_dir but never its parent). With `tls` (the
// default), also a cluster CA and certificates in `dir`/tls (WriteClusterTls) and
// tls = "require" in the file; without, tls = "off". Refuses to overwrite an existing
// cluster.toml or key file.
Status WriteNewCluster(const std::string& dir, const std::vector<std::string>& addresses,
                       std::uint64_t sectors, bool tls = true);

// Checks a file that holds a secret (a key file, a TLS private key) before it is trusted: refused
// when any user but its owner may write it, when its owner is neither this process's user nor
// root, or when its folder is writable by every user without the sticky bit (anyone could swap
// the file). When every user may read it: refused if `readable_by_all` is false, else a line in
// `warnings`. Errors name the file, the problem and the fix.
Status CheckSecretFile(const std::string& path, const std::string& what, bool readable_by_all,
                       std::vector<std::string>* warnings);

}  // namespace atomdisk
