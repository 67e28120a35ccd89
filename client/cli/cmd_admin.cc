// Admin commands: init (a new cluster's config and keys), status (per-node health, resync
// and scrub progress, the quorum state), scrub (check and repair every node's copy),
// inspect (a stopped node's store, offline) and tls (issue a certificate from the cluster
// CA, show what a certificate file says).
#include <sys/stat.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "client/cli/commands.h"
#include "common/tls_certs.h"
#include "common/types.h"
#include "daemon/sync/syncer.h"  // kWindowBuckets: the resync window, for progress figures

#ifdef ATOMDISK_HAVE_STORE
#include "daemon/store/sector_store.h"
#endif

namespace atomdisk::client::cli {
namespace fs = std::filesystem;
using nlohmann::json;

// ---- init ----

CommandFn AddInitCommand(CLI::App& app, GlobalOptions& /*g*/) {
  struct Args {
    std::vector<std::string> nodes;
    std::uint64_t sectors = 262144;
    std::string dir = ".";
    std::string tls = "require";
    bool json = false;
  };
  auto a = std::make_shared<Args>();
  CLI::App* cmd = app.add_subcommand("init", "Create a new cluster's config and keys");
  cmd->footer(
      "Writes cluster.toml and fresh random client.key and system.key (mode 0600) in --dir,\n"
      "and in --dir/tls a cluster CA, a certificate per node and one for clients (docs/TLS.md),\n"
      "ready for atomdiskd, and prints the next steps. Refuses to overwrite existing files.\n"
      "Example: atomdisk init --nodes 10.0.0.1:7001,10.0.0.2:7001,10.0.0.3:7001 --dir "
      "/etc/atomdisk");
  cmd->add_option("--nodes", a->nodes, "node addresses in rank order, comma-separated")
      ->type_name("HOST:PORT,...")
      ->delimiter(',')
      ->required();
  cmd->add_option("--sectors", a->sectors, "device size in 4096-byte sectors")
      ->capture_default_str()
      ->check(WholeNumber(1, kMaxSectors));
  cmd->add_option("--dir", a->dir, "folder to write the files in (created if missing)")
      ->capture_default_str();
  cmd->add_option("--tls", a->tls,
                  "require: mutual TLS 1.3 between nodes and clients (certificates made); off: "
                  "frames in clear, HMAC-signed only (for clusters of older versions)")
      ->check(CLI::IsMember({"require", "off"}))
      ->capture_default_str();
  cmd->add_flag("--json", a->json, "print what was created as JSON");
  return [a] {
    const bool tls = a->tls == "require";
    Status s = WriteNewCluster(a->dir, a->nodes, a->sectors, tls);
    if (!s.ok()) {
      return Fail(s.code() == StatusCode::kIOError ? kExitFailed : kExitUsage,
                  "init: " + s.message());
    }
    fs::path dir = fs::absolute(a->dir).lexically_normal();
    std::string config = (dir / "cluster.toml").string();
    if (a->nodes.size() == 2) {
      // Legal, and useful for trying things out, but rarely what an operator wants.
      std::fprintf(stderr,
                   "atomdisk: warning: init: a 2-node cluster cannot survive the failure of any "
                   "node: a majority of 2 is 2, so reads and writes stop while either node is "
                   "down; use 3 nodes to survive one failure\n");
    }
    if (a->json) {
      json j = {{"config", config},
                {"client_key", (dir / "client.key").string()},
                {"system_key", (dir / "system.key").string()},
                {"sectors", a->sectors},
                {"tls", tls ? "require" : "off"},
                {"nodes", a->nodes}};
      if (tls) j["tls_dir"] = (dir / "tls").string();
      std::printf("%s\n", j.dump(2).c_str());
      return kExitOk;
    }
    std::printf("Created a %zu-node cluster of %s (%s sectors of 4 KiB) in %s:\n", a->nodes.size(),
                HumanBytes(static_cast<double>(a->sectors) * kSectorSize).c_str(),
                HumanCount(a->sectors).c_str(), dir.c_str());
    std::printf("  cluster.toml   the cluster's nodes and size\n");
    std::printf("  client.key     mode 0600; clients and nodes need it\n");
    std::printf("  system.key     mode 0600; only nodes need it\n");
    if (tls) {
      std::printf("  tls/ca.crt     the cluster CA's certificate; everyone needs it\n");
      std::printf(
          "  tls/ca.key     the CA's key: only `atomdisk tls issue` needs it; keep it off\n"
          "                 the hosts (docs/TLS.md)\n");
      std::printf("  tls/node-N.*   node N's certificate and key; only node N needs them\n");
      std::printf("  tls/client.*   the clients' certificate and key\n");
    }
    std::printf("\nNext steps:\n");
    if (tls) {
      std::printf(
          "  1. Copy cluster.toml, client.key, system.key, tls/ca.crt and tls/node-N.* to node "
          "N's\n"
          "     host; cluster.toml, client.key, tls/ca.crt and tls/client.* to every client host\n"
          "     (system.key and a node's TLS key let a host act as a node: keep them off "
          "clients).\n");
    } else {
      std::printf(
          "  1. Copy the three files, together, to every node host; cluster.toml and client.key\n"
          "     to every client host (system.key lets a host act as a node: keep it off "
          "clients).\n");
    }
    std::printf("  2. On each node, start the daemon with its rank:\n");
    for (std::size_t i = 0; i < a->nodes.size(); ++i) {
      std::printf("       atomdiskd --config %s --rank %zu      # %s\n", config.c_str(), i + 1,
                  a->nodes[i].c_str());
    }
    std::printf("  3. Check that a majority is up:\n       atomdisk --config %s status\n",
                config.c_str());
    return kExitOk;
  };
}

// ---- status ----

namespace {

// Sectors per resync window (docs/RESYNC.md: a pass walks the device in windows of 64 buckets).
constexpr std::uint64_t kResyncWindowSectors = kWindowBuckets * kBucketSectors;

// Human lines for a node's membership, resync and scrub state (its kInfo "state", "resync"
// and "scrub" objects); none when it votes and nothing runs. `device_sectors` is the
// config's device size.
std::vector<std::string> SyncLines(const json& info, std::uint64_t device_sectors) {
  std::vector<std::string> lines;
  if (!info.is_object()) return lines;
  if (!info.value("voting", true)) lines.push_back("NOT VOTING: " + info.value("state", "?"));
  const json& r = info.contains("resync") ? info["resync"] : json();
  if (r.is_object() && r.value("active", false)) {
    char buf[256];
    const double eta = r.value("eta_s", -1.0);
    // Windows before the current one are done; the percentage counts their sectors (the
    // last window of a device that is not a multiple of a window's size is shorter).
    const std::uint64_t covered =
        std::min<std::uint64_t>(r.value("window", 0ULL) * kResyncWindowSectors, device_sectors);
    std::snprintf(buf, sizeof buf,
                  "%s %.0f%% (window %llu of %llu): pulled %s sectors (%s), "
                  "%s to go, %s/s, ETA %s",
                  r.value("join", false) ? "join resync" : "resync",
                  100.0 * static_cast<double>(covered) /
                      static_cast<double>(std::max<std::uint64_t>(device_sectors, 1)),
                  static_cast<unsigned long long>(r.value("window", 0ULL)),
                  static_cast<unsigned long long>(r.value("windows", 0ULL)),
                  HumanCount(r.value("sectors_pulled", 0ULL)).c_str(),
                  HumanBytes(r.value("bytes_pulled", 0.0)).c_str(),
                  HumanCount(r.value("sectors_to_go", 0ULL)).c_str(),
                  HumanBytes(r.value("bytes_per_s", 0.0)).c_str(),
                  eta < 0 ? "unknown" : HumanClock(eta).c_str());
    lines.push_back(buf);
  }
  const json& sc = info.contains("scrub") ? info["scrub"] : json();
  if (sc.is_object() && sc.value("active", false)) {
    char buf[256];
    const double buckets = std::max(1.0, sc.value("buckets", 1.0));
    std::snprintf(buf, sizeof buf, "scrub %.0f%%: checked %s sectors, %llu corrupt, %llu repaired",
                  100.0 * sc.value("bucket", 0.0) / buckets,
                  HumanCount(sc.value("sectors_checked", 0ULL)).c_str(),
                  static_cast<unsigned long long>(sc.value("corrupt", 0ULL)),
                  static_cast<unsigned long long>(sc.value("repaired", 0ULL)));
    lines.push_back(buf);
  }
  return lines;
}

// One line per peer link of a node's Info: "peer 2  connected  heard 12 ms ago  rtt 0.210 ms
// reconnects 0", or "peer 3  DOWN (silent for 1003 ms) ...". Nothing for a node from before
// these fields (it reports no last_heard_ms).
std::vector<std::string> PeerLines(const json& info) {
  std::vector<std::string> lines;
  if (!info.is_object() || !info.contains("peers") || !info["peers"].is_array()) return lines;
  for (const auto& p : info["peers"]) {
    if (!p.is_object() || !p.contains("last_heard_ms") || !p.contains("rank")) continue;
    std::string line = "peer " + std::to_string(p.value("rank", 0));
    if (p.value("connected", false)) {
      line += "  connected";
    } else {
      line += "  DOWN";
      if (p.contains("down_reason") && p["down_reason"].is_string()) {
        line += " (" + p["down_reason"].get<std::string>() + ")";
      }
    }
    if (p["last_heard_ms"].is_number()) {
      line += "  heard " + std::to_string(p["last_heard_ms"].get<std::int64_t>()) + " ms ago";
    } else {
      line += "  never heard";
    }
    if (p.contains("rtt_ms") && p["rtt_ms"].is_number()) {
      char rtt[32];
      std::snprintf(rtt, sizeof(rtt), "  rtt %.3f ms", p["rtt_ms"].get<double>());
      line += rtt;
    }
    line += "  reconnects " + std::to_string(p.value("reconnects", std::uint64_t{0}));
    lines.push_back(std::move(line));
  }
  return lines;
}

}  // namespace

CommandFn AddStatusCommand(CLI::App& app, GlobalOptions& g) {
  struct Args {
    std::int64_t wait_ms = 2000;
    bool json = false;
  };
  auto a = std::make_shared<Args>();
  CLI::App* cmd = app.add_subcommand("status", "Show node health and the quorum state");
  cmd->footer(
      "Probes every selected node on a fresh connection: reachable or not (and why), round-trip\n"
      "time, version, uptime, each peer link (connected or why not, last heard, heartbeat round\n"
      "trip, reconnects); then one line with the quorum state. Exit code 0 when a majority is up\n"
      "and every node that answered reaches a majority over its peer links, 1 when not, 2 when\n"
      "not because nodes rejected the client key (a configuration error).");
  cmd->add_option("--wait", a->wait_ms,
                  "how long to wait for each node's answer: milliseconds, or with a unit (2s)")
      ->capture_default_str()
      ->type_name("MS")
      ->transform(DurationMs(1, 1, 3'600'000));
  cmd->add_flag("--json", a->json, "print the result as JSON");
  return [a, &g] {
    ClusterConfig config;
    std::unique_ptr<Client> client;
    if (auto err = MakeClient(g, &config, &client, 16)) return Fail(err->exit_code, err->message);
    std::vector<NodeInfo> nodes = client->Probe(std::chrono::milliseconds(a->wait_ms));
    client->Close();

    std::size_t up = 0, voting = 0;
    for (const auto& n : nodes) {
      up += n.reachable ? 1 : 0;
      json info = n.reachable ? json::parse(n.info_json, nullptr, false) : json();
      // Nodes from before membership existed say nothing and always vote.
      if (n.reachable && (!info.is_object() || info.value("voting", true))) ++voting;
    }
    // Nodes that answer us but whose own peer links reach no majority (cut off by a
    // partition the client is not part of): they can coordinate nothing.
    std::vector<int> cut_off;
    for (const auto& n : nodes) {
      if (!n.reachable) continue;
      json info = json::parse(n.info_json, nullptr, false);
      if (info.is_object() && info.contains("quorum_reachable") &&
          info["quorum_reachable"].is_boolean() && !info["quorum_reachable"].get<bool>()) {
        cut_off.push_back(n.endpoint.rank);
      }
    }
    const std::size_t total = config.nodes.size();
    const bool all_probed = nodes.size() == total && g.nodes.empty();
    const bool quorum = voting >= config.Majority();
    std::string quorum_line;
    if (!all_probed) {
      quorum_line = "quorum: UNKNOWN, " + std::to_string(up) + " of " +
                    std::to_string(nodes.size()) + " selected nodes up (the cluster has " +
                    std::to_string(total) + "; a majority is " + std::to_string(config.Majority()) +
                    ")";
    } else if (quorum) {
      quorum_line =
          "quorum: OK, " + std::to_string(up) + " of " + std::to_string(total) + " nodes up";
      if (voting < up) quorum_line += ", " + std::to_string(up - voting) + " still joining";
    } else if (up >= config.Majority()) {
      quorum_line = "quorum: LOST, " + std::to_string(up) + " of " + std::to_string(total) +
                    " nodes up but only " + std::to_string(voting) +
                    " voting (the others are catching up): writes and reads wait";
    } else {
      quorum_line = "quorum: LOST, " + std::to_string(up) + " of " + std::to_string(total) +
                    " nodes up: writes and reads will not complete";
    }

    if (a->json) {
      json j;
      j["config"] = config.path;
      j["sectors"] = config.sectors;
      j["nodes"] = json::array();
      for (const auto& n : nodes) {
        json e = {
            {"rank", n.endpoint.rank}, {"address", n.endpoint.Address()}, {"up", n.reachable}};
        if (n.reachable) {
          e["rtt_ms"] = n.rtt_ms;
          json info = json::parse(n.info_json, nullptr, /*allow_exceptions=*/false);
          e["info"] = info.is_discarded() ? json(n.info_json) : info;
        } else {
          e["error"] = n.error;
        }
        j["nodes"].push_back(e);
      }
      j["quorum"] = {{"ok", all_probed ? json(quorum) : json(nullptr)},
                     {"cut_off", cut_off},
                     {"up", up},
                     {"voting", voting},
                     {"total", total},
                     {"majority", config.Majority()}};
      std::printf("%s\n", j.dump(2).c_str());
    } else {
      std::printf("cluster %s: %s (%s sectors)\n", config.path.c_str(),
                  HumanBytes(static_cast<double>(config.sectors) * kSectorSize).c_str(),
                  HumanCount(config.sectors).c_str());
      for (const auto& n : nodes) {
        std::string who = n.endpoint.rank ? "node " + std::to_string(n.endpoint.rank) : "node ?";
        if (!n.reachable) {
          std::printf("  %-8s %-21s DOWN  %s\n", who.c_str(), n.endpoint.Address().c_str(),
                      n.error.c_str());
          continue;
        }
        std::string extra;
        json info = json::parse(n.info_json, nullptr, false);
        if (info.is_object()) {
          if (info.contains("version")) {
            extra += "  version " + info["version"].get<std::string>();
          }
          if (info.contains("uptime_s") && info["uptime_s"].is_number()) {
            extra += "  uptime " + HumanClock(info["uptime_s"].get<double>());
          }
          if (info.contains("peers") && info["peers"].is_array()) {
            int connected = 0;
            for (const auto& p : info["peers"]) {
              if (p.value("connected", false)) ++connected;
            }
            extra += "  peers " + std::to_string(connected) + "/" +
                     std::to_string(info["peers"].size()) + " connected";
          }
          if (info.contains("rank") && info["rank"].is_number() && n.endpoint.rank != 0 &&
              info["rank"].get<int>() != n.endpoint.rank) {
            extra += "  WARNING: it says it is rank " + std::to_string(info["rank"].get<int>());
          }
        }
        std::printf("  %-8s %-21s up    rtt %.2f ms%s\n", who.c_str(), n.endpoint.Address().c_str(),
                    n.rtt_ms, extra.c_str());
        for (const std::string& line : PeerLines(info)) {
          std::printf("  %-8s %s\n", "", line.c_str());
        }
        for (const std::string& line : SyncLines(info, config.sectors)) {
          std::printf("  %-8s %s\n", "", line.c_str());
        }
      }
      std::printf("%s\n", quorum_line.c_str());
      for (int rank : cut_off) {
        std::printf("node %d cannot reach a quorum over its peer links: it serves nothing\n", rank);
      }
    }
    const bool ok = (all_probed ? quorum : up == nodes.size()) && cut_off.empty();
    if (ok) return kExitOk;
    // Nodes that answered but refused our key: a configuration error, not an outage.
    std::size_t key_rejected = 0;
    for (const auto& n : nodes) key_rejected += n.key_rejected ? 1 : 0;
    if (key_rejected > 0) {
      std::fprintf(stderr,
                   "atomdisk: status: the client key does not match the cluster's: %zu of %zu "
                   "nodes rejected it (use the cluster's client.key; %s names it)\n",
                   key_rejected, nodes.size(), config.path.c_str());
      return kExitUsage;
    }
    return kExitFailed;
  };
}

// ---- scrub ----

CommandFn AddScrubCommand(CLI::App& app, GlobalOptions& g) {
  struct Args {
    bool no_wait = false;
    bool json = false;
    std::int64_t timeout_ms = 0;
  };
  auto a = std::make_shared<Args>();
  CLI::App* cmd = app.add_subcommand("scrub", "Check every stored sector and repair bad ones");
  cmd->footer(
      "Asks each selected node (every node, or those given with --node) to read every sector\n"
      "it stores, verify its checksums, and repair a bad one from a majority of its peers\n"
      "(docs/RESYNC.md). Foreground I/O goes on meanwhile. Shows progress until every node\n"
      "finished, then what each found. Exit code 0 when nothing is left unrepaired, 3 when a\n"
      "sector could not be repaired, 1 when a node could not be asked or did not finish.");
  cmd->add_flag("--no-wait", a->no_wait, "start the scrubs and return at once");
  cmd->add_option("--timeout", a->timeout_ms,
                  "give up waiting after this long: milliseconds like the global --timeout, or "
                  "with a unit (90s, 10m, 2h); 0 = never")
      ->capture_default_str()
      ->type_name("MS")
      ->transform(DurationMs(1, 0, 7 * 24 * 3'600'000.0));
  cmd->add_flag("--json", a->json, "print the result as JSON");
  return [a, &g] {
    ClusterConfig config;
    std::unique_ptr<Client> client;
    if (auto err = MakeClient(g, &config, &client, 16)) return Fail(err->exit_code, err->message);
    const auto wait = std::chrono::milliseconds(3000);
    // The runs each node had finished before, so that we know when ours is done.
    std::vector<NodeInfo> before = client->Probe(wait);
    std::vector<NodeInfo> started = client->Admin(wait, ClientOp::kScrub);
    int exit_code = kExitOk;
    std::vector<std::uint64_t> runs_before(before.size(), 0);
    std::vector<bool> waiting(started.size(), false);
    for (std::size_t i = 0; i < started.size(); ++i) {
      json b = before[i].reachable ? json::parse(before[i].info_json, nullptr, false) : json();
      if (b.is_object() && b.contains("scrub")) {
        runs_before[i] = b["scrub"].value("runs_done", 0ULL);
      }
      const std::string who = started[i].endpoint.ToString();
      if (!started[i].reachable) {
        std::fprintf(stderr, "atomdisk: scrub: %s: %s\n", who.c_str(), started[i].error.c_str());
        exit_code = kExitFailed;
        continue;
      }
      json r = json::parse(started[i].info_json, nullptr, false);
      if (!r.is_object()) {
        std::fprintf(stderr, "atomdisk: scrub: %s: unexpected answer\n", who.c_str());
        exit_code = kExitFailed;
        continue;
      }
      if (!r.value("started", false)) {
        // Already running (someone else started it, or the schedule): wait for that one.
        std::fprintf(stderr, "scrub: %s: %s; waiting for it\n", who.c_str(),
                     r.value("error", std::string("not started")).c_str());
      }
      waiting[i] = true;
    }
    if (a->no_wait) {
      std::fprintf(stderr, "scrub: started; follow it with `atomdisk status`\n");
      return exit_code;
    }
    const auto t0 = std::chrono::steady_clock::now();
    std::vector<json> result(started.size());
    auto last_print = t0;
    while (std::any_of(waiting.begin(), waiting.end(), [](bool w) { return w; })) {
      if (a->timeout_ms > 0 &&
          std::chrono::steady_clock::now() - t0 > std::chrono::milliseconds(a->timeout_ms)) {
        return Fail(kExitFailed,
                    "scrub: gave up waiting after " +
                        FormatDuration(std::chrono::milliseconds(a->timeout_ms)) +
                        " (--timeout); the scrubs go on, follow them with `atomdisk status`");
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(500));
      std::vector<NodeInfo> now = client->Probe(wait);
      const bool print = std::chrono::steady_clock::now() - last_print > std::chrono::seconds(2);
      for (std::size_t i = 0; i < now.size() && i < waiting.size(); ++i) {
        if (!waiting[i] || !now[i].reachable) continue;
        json info = json::parse(now[i].info_json, nullptr, false);
        if (!info.is_object() || !info.contains("scrub")) continue;
        const json& sc = info["scrub"];
        if (!sc.value("active", false) && sc.value("runs_done", 0ULL) > runs_before[i]) {
          waiting[i] = false;
          result[i] = sc;
        } else if (print) {
          for (const std::string& line : SyncLines(info, config.sectors)) {
            if (line.rfind("scrub", 0) == 0) {
              std::fprintf(stderr, "%s: %s\n", now[i].endpoint.ToString().c_str(), line.c_str());
            }
          }
        }
      }
      if (print) last_print = std::chrono::steady_clock::now();
    }
    json out = json::array();
    for (std::size_t i = 0; i < started.size(); ++i) {
      if (!result[i].is_object()) continue;
      const json& sc = result[i];
      const std::uint64_t unrepaired = sc.value("unrepaired", 0ULL);
      if (unrepaired > 0 && exit_code == kExitOk) exit_code = kExitMismatch;
      if (a->json) {
        out.push_back({{"rank", started[i].endpoint.rank}, {"scrub", sc}});
      } else {
        std::printf(
            "%s: checked %s sectors, %llu corrupt, %llu repaired, %llu stale (left for the next "
            "write), %llu unrepaired\n",
            started[i].endpoint.ToString().c_str(),
            HumanCount(sc.value("sectors_checked", 0ULL)).c_str(),
            static_cast<unsigned long long>(sc.value("corrupt", 0ULL)),
            static_cast<unsigned long long>(sc.value("repaired", 0ULL)),
            static_cast<unsigned long long>(sc.value("stale", 0ULL)),
            static_cast<unsigned long long>(unrepaired));
      }
    }
    if (a->json) std::printf("%s\n", out.dump(2).c_str());
    return exit_code;
  };
}

// ---- inspect ----

CommandFn AddInspectCommand(CLI::App& app, GlobalOptions& /*g*/) {
  struct Args {
    std::string data_dir;
    std::optional<std::uint64_t> sector;
    bool digest = false;
    bool json = false;
  };
  auto a = std::make_shared<Args>();
  CLI::App* cmd = app.add_subcommand("inspect", "Examine a stopped node's store, offline");
  cmd->footer(
      "Lists each stored sector's (ts, wr) and whether its checksums hold; or one sector in\n"
      "detail (--sector); or a summary and a SHA-256 digest of the whole store (--digest).\n"
      "Refuses while the node runs (its data_dir is locked). Exit code 3 if a sector is\n"
      "unreadable (every stored copy fails its checksum).");
  cmd->add_option("data_dir", a->data_dir, "the node's data_dir (holds sectors.dat)")
      ->required()
      ->type_name("DATA_DIR");
  cmd->add_option("--sector", a->sector, "show this sector: tag, checksum state, data")
      ->type_name("N")
      ->check(WholeNumber(0, kMaxSectors - 1));
  cmd->add_flag("--digest", a->digest,
                "print only a summary and a SHA-256 digest over (sector, ts, wr, data) of every "
                "stored sector in order (equal digests: equal stores)");
  cmd->add_flag("--json", a->json, "print the result as JSON");
#ifndef ATOMDISK_HAVE_STORE
  return
      [] { return Fail(kExitFailed, "inspect: this build has no store library (daemon/store)"); };
#else
  return [a] {
    fs::path dir(a->data_dir);
    std::error_code ec;
    if (!fs::is_directory(dir, ec)) {
      return Fail(kExitUsage, "inspect: " + a->data_dir + " is not a directory");
    }
    if (!fs::exists(dir / "sectors.dat", ec)) {
      return Fail(kExitUsage, "inspect: " + a->data_dir +
                                  " holds no sectors.dat: not a node's data_dir (or the node "
                                  "never started)");
    }
    SectorStore::Options options;
    options.sectors = kMaxSectors;  // only bounds indexes; the file says what is stored
    options.background_sync = false;
    Result<std::unique_ptr<SectorStore> > store = SectorStore::Open(a->data_dir, options);
    if (!store.ok()) {
      if (store.status().code() == StatusCode::kBusy) {
        return Fail(kExitFailed, "inspect: refusing: " + store.status().message() +
                                     "; stop the node first (inspect reads a stopped node's "
                                     "data, offline)");
      }
      return Fail(ExitCodeFor(store.status()), "inspect: cannot open the store in " + a->data_dir +
                                                   ": " + store.status().ToString());
    }
    struct Entry {
      SectorIdx sector;
      Tag tag;
      bool slots_ok;
    };
    std::vector<Entry> entries;
    Status s = (*store)->ForEachStored([&](SectorIdx sector, Tag tag, bool ok) {
      entries.push_back({sector, tag, ok});
    });
    if (!s.ok()) return Fail(kExitFailed, "inspect: " + s.ToString());

    // Exactly one sector.
    if (a->sector) {
      Result<Triple> t = (*store)->Read(*a->sector);
      auto it = std::find_if(entries.begin(), entries.end(),
                             [&](const Entry& e) { return e.sector == *a->sector; });
      bool stored = it != entries.end();
      bool slots_ok = stored ? it->slots_ok : true;
      if (a->json) {
        json j = {{"sector", *a->sector}, {"stored", stored}, {"slots_ok", slots_ok}};
        if (t.ok()) {
          Sha256 h;
          h.Update(t->data->data(), kSectorSize);
          j["ts"] = t->tag.ts;
          j["wr"] = t->tag.wr;
          j["readable"] = true;
          j["sha256"] = h.HexDigest();
        } else {
          j["readable"] = false;
          j["error"] = t.status().ToString();
        }
        std::printf("%s\n", j.dump(2).c_str());
      } else if (!t.ok()) {
        std::printf("sector %llu: UNREADABLE: %s\n", static_cast<unsigned long long>(*a->sector),
                    t.status().ToString().c_str());
      } else {
        Sha256 h;
        h.Update(t->data->data(), kSectorSize);
        std::printf("sector %llu: %s  ts=%llu wr=%d  %s  sha256 %s\n",
                    static_cast<unsigned long long>(*a->sector),
                    stored ? "stored" : "never written", static_cast<unsigned long long>(t->tag.ts),
                    static_cast<int>(t->tag.wr),
                    slots_ok ? "checksums ok"
                             : "one slot invalid (a write torn by a crash; the value shown is "
                               "intact)",
                    h.HexDigest().c_str());
        HexDump(stdout, t->data->data(), kSectorSize, *a->sector * kSectorSize);
      }
      return t.ok() ? kExitOk : kExitMismatch;
    }

    // The whole store.
    Sha256 digest;
    std::uint64_t unreadable = 0, torn = 0, max_ts = 0;
    json list = json::array();
    for (const Entry& e : entries) {
      std::string state = e.slots_ok ? "ok" : "torn-slot";
      if (!e.slots_ok) ++torn;
      max_ts = std::max(max_ts, e.tag.ts);
      Result<Triple> t = (*store)->Read(e.sector);
      if (!t.ok()) {
        ++unreadable;
        state = "UNREADABLE";
      } else if (a->digest) {
        std::uint8_t head[17];
        for (int i = 0; i < 8; ++i) {
          head[i] = static_cast<std::uint8_t>(e.sector >> (56 - 8 * i));
          head[8 + i] = static_cast<std::uint8_t>(t->tag.ts >> (56 - 8 * i));
        }
        head[16] = t->tag.wr;
        digest.Update(head, sizeof head);
        digest.Update(t->data->data(), kSectorSize);
      }
      if (a->digest) continue;
      if (a->json) {
        list.push_back(
            {{"sector", e.sector}, {"ts", e.tag.ts}, {"wr", e.tag.wr}, {"state", state}});
      } else {
        std::printf(
            "sector %-12llu ts=%-10llu wr=%-3d %s\n", static_cast<unsigned long long>(e.sector),
            static_cast<unsigned long long>(e.tag.ts), static_cast<int>(e.tag.wr),
            state == "ok"          ? "checksums ok"
            : state == "torn-slot" ? "one slot invalid (torn by a crash; the other is intact)"
                                   : ("UNREADABLE: " + t.status().message()).c_str());
      }
    }
    std::string hex = a->digest ? digest.HexDigest() : "";
    if (a->json) {
      json j = {{"data_dir", fs::absolute(dir).lexically_normal().string()},
                {"stored_sectors", entries.size()},
                {"torn_slots", torn},
                {"unreadable", unreadable},
                {"max_ts", max_ts}};
      if (a->digest) {
        j["sha256"] = hex;
      } else {
        j["sectors"] = list;
      }
      std::printf("%s\n", j.dump(2).c_str());
    } else {
      std::printf("%s: %s sectors stored, %s unreadable, %s with a torn slot, highest ts %llu\n",
                  a->data_dir.c_str(), HumanCount(entries.size()).c_str(),
                  HumanCount(unreadable).c_str(), HumanCount(torn).c_str(),
                  static_cast<unsigned long long>(max_ts));
      if (a->digest) std::printf("digest sha256 %s\n", hex.c_str());
    }
    if (unreadable > 0) {
      std::fprintf(stderr,
                   "atomdisk: inspect: %llu sectors are unreadable (every slot fails its "
                   "checksum)\n",
                   static_cast<unsigned long long>(unreadable));
      return kExitMismatch;
    }
    return kExitOk;
  };
#endif
}

// ---- tls ----

namespace {

// --client NAME: what ParseIdentityUri accepts, checked before any file is touched (the name
// becomes part of a file name, so "../x" must never get that far).
CLI::Validator ClientName() {
  return CLI::Validator(
      [](std::string& text) -> std::string {
        TlsIdentity id{.role = TlsIdentity::Role::kClient, .rank = 0, .name = text};
        if (ParseIdentityUri(IdentityUri(id))) return std::string();
        // A hostile name may be huge or hold control characters: show a safe prefix.
        std::string shown;
        for (char c : text.substr(0, 40)) shown += (c >= ' ' && c < 0x7f) ? c : '?';
        if (text.size() > 40) shown += "...";
        return "must be a client name of 1 to " + std::to_string(kMaxClientNameLength) +
               " letters, digits, '.', '_' or '-' starting with a letter or digit, not \"" + shown +
               "\"";
      },
      "", "");
}

int TlsIssue(const std::string& dir_arg, int node, const std::string& client, int days) {
  if ((node == 0) == client.empty()) {
    return Fail(kExitUsage,
                "tls issue: give either --node RANK or --client NAME (see atomdisk tls issue "
                "--help)");
  }
  const TlsIdentity id =
      node != 0 ? TlsIdentity{.role = TlsIdentity::Role::kNode,
                              .rank = static_cast<Rank>(node),
                              .name = {}}
                : TlsIdentity{.role = TlsIdentity::Role::kClient, .rank = 0, .name = client};
  const fs::path dir = fs::absolute(dir_arg).lexically_normal();
  std::error_code ec;
  // Said before anything else: without the CA's key there is nothing to sign with, and the
  // fix is to run where `atomdisk init` left it.
  if (!fs::exists(dir / "ca.key", ec)) {
    std::string hint;
    if (fs::exists(dir / "tls" / "ca.key", ec)) hint = " (it is in " + (dir / "tls").string() + ")";
    return Fail(kExitUsage,
                "tls issue: " + (dir / "ca.key").string() +
                    " does not exist: issuing needs the cluster CA's private key, which "
                    "`atomdisk init` wrote as tls/ca.key beside cluster.toml in its --dir; give "
                    "that tls folder as --dir" +
                    hint);
  }
  Result<std::string> fp = IssueFromClusterCa(dir.string(), id, days);
  if (!fp.ok()) {
    return Fail(fp.status().code() == StatusCode::kIOError ? kExitFailed : kExitUsage,
                "tls issue: " + fp.status().message());
  }
  const auto [cert_path, key_path] = IssuedFilePaths(dir.string(), id);
  std::printf("Issued a certificate for %s (%s) from the cluster CA in %s:\n",
              id.ToString().c_str(), IdentityUri(id).c_str(), dir.c_str());
  std::printf("  %s   the certificate\n", cert_path.c_str());
  std::printf("  %s   its private key (mode 0600): copy it only to %s's host\n", key_path.c_str(),
              id.ToString().c_str());
  std::printf("fingerprint %s\n", fp->c_str());
  std::printf("valid for %d days; to revoke it, list the fingerprint in tls_revoked\n", days);
  return kExitOk;
}

int TlsShow(const std::string& path) {
  Result<CertificateDetails> d = ReadCertificateDetails(path);
  if (!d.ok()) {
    return Fail(d.status().code() == StatusCode::kIOError ? kExitFailed : kExitUsage,
                "tls show: " + d.status().message());
  }
  const std::int64_t now = static_cast<std::int64_t>(std::time(nullptr));
  std::string state = "valid now";
  if (now < d->not_before) state = "NOT YET VALID";
  if (now > d->not_after) state = "EXPIRED";
  std::string identity;
  if (d->identity) {
    identity = d->identity->ToString() + " (" + IdentityUri(*d->identity) + ")";
  } else if (d->is_ca) {
    identity = "none: a CA certificate";
  } else {
    identity = "none (no single atomdisk: URI in its subjectAltName): nodes refuse it";
  }
  std::printf("%s\n", path.c_str());
  std::printf("  identity     %s\n", identity.c_str());
  std::printf("  fingerprint  %s\n", d->fingerprint.c_str());
  std::printf("  subject      %s\n", d->subject.c_str());
  std::printf("  issuer       %s\n", d->issuer.c_str());
  std::printf("  not before   %s\n", FormatUtcTime(d->not_before).c_str());
  std::printf("  not after    %s  (%s)\n", FormatUtcTime(d->not_after).c_str(), state.c_str());
  return kExitOk;
}

}  // namespace

CommandFn AddTlsCommand(CLI::App& app, GlobalOptions& /*g*/) {
  struct Args {
    std::string dir;
    int node = 0;
    std::string client;
    int days = kLeafCertDays;
    std::string file;
  };
  auto a = std::make_shared<Args>();
  CLI::App* cmd = app.add_subcommand("tls", "Issue and show the cluster's TLS certificates");
  // At most one; none is our own usage error below (CLI11's "A subcommand is required" names
  // neither the choices nor the help).
  cmd->require_subcommand(0, 1);
  cmd->footer(
      "atomdisk tls issue --dir DIR (--node R | --client NAME) [--days N]\n"
      "atomdisk tls show FILE\n"
      "`atomdisk init` makes the cluster CA and a certificate for every node and for clients\n"
      "in the tls folder beside cluster.toml; these commands add more (docs/TLS.md).");
  CLI::App* issue = cmd->add_subcommand("issue", "Issue a certificate from the cluster CA");
  issue->footer(
      "Signs a new certificate and key with the CA in --dir (ca.crt and ca.key, which\n"
      "`atomdisk init` wrote in the tls folder beside cluster.toml): node-R.crt/.key for a\n"
      "node (a new node, or a node's new key), client-NAME.crt/.key for a client. Writes new\n"
      "files only (mode 0600), never over existing ones, and prints the new certificate's\n"
      "fingerprint (what tls_revoked lists). Example: atomdisk tls issue --dir\n"
      "/etc/atomdisk/tls --client laptop-7\n"
      "Exit codes: 0 issued, 1 a write failed, 2 bad usage or no CA key.");
  issue->add_option("--dir", a->dir, "the folder holding ca.crt and ca.key; the new files go there")
      ->required()
      ->type_name("DIR");
  CLI::Option* node = issue->add_option("--node", a->node, "issue for the node of this rank")
                          ->type_name("RANK")
                          ->check(WholeNumber(1, kMaxRank));
  CLI::Option* client =
      issue->add_option("--client", a->client, "issue for a client of this name (\"laptop-7\")")
          ->type_name("NAME")
          ->check(ClientName());
  node->excludes(client);
  issue->add_option("--days", a->days, "how long the certificate is valid")
      ->type_name("N")
      ->capture_default_str()
      ->check(WholeNumber(1, kMaxCertDays));
  CLI::App* show = cmd->add_subcommand("show", "Show what a certificate file says");
  show->footer(
      "Prints the identity a certificate carries (the node or client it was issued for), its\n"
      "SHA-256 fingerprint (what tls_revoked lists), subject, issuer and validity.\n"
      "Exit codes: 0 shown, 2 not a certificate file.");
  show->add_option("file", a->file, "a PEM certificate (node-3.crt, client.crt, ca.crt)")
      ->required()
      ->type_name("FILE");
  return [a, issue, show] {
    if (issue->parsed()) return TlsIssue(a->dir, a->node, a->client, a->days);
    if (show->parsed()) return TlsShow(a->file);
    return Fail(kExitUsage, "tls: give a subcommand, issue or show (see atomdisk tls --help)");
  };
}

}  // namespace atomdisk::client::cli
