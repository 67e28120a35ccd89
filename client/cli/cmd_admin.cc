// Admin commands: init (a new cluster's config and keys), status (per-node health and the
// quorum state) and inspect (a stopped node's store, offline).
#include <sys/stat.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "client/cli/commands.h"
#include "common/types.h"

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
    bool json = false;
  };
  auto a = std::make_shared<Args>();
  CLI::App* cmd = app.add_subcommand("init", "Create a new cluster's config and keys");
  cmd->footer(
      "Writes cluster.toml and fresh random client.key and system.key (mode 0600) in --dir,\n"
      "ready for atomdiskd, and prints the next steps. Refuses to overwrite existing files.\n"
      "Example: atomdisk init --nodes 10.0.0.1:7001,10.0.0.2:7001,10.0.0.3:7001 --dir "
      "/etc/atomdisk");
  cmd->add_option("--nodes", a->nodes, "node addresses in rank order, comma-separated")
      ->type_name("HOST:PORT,...")
      ->delimiter(',')
      ->required();
  cmd->add_option("--sectors", a->sectors, "device size in 4096-byte sectors")
      ->capture_default_str();
  cmd->add_option("--dir", a->dir, "folder to write the files in (created if missing)")
      ->capture_default_str();
  cmd->add_flag("--json", a->json, "print what was created as JSON");
  return [a] {
    Status s = WriteNewCluster(a->dir, a->nodes, a->sectors);
    if (!s.ok()) {
      return Fail(s.code() == StatusCode::kIOError ? kExitFailed : kExitUsage,
                  "init: " + s.message());
    }
    fs::path dir = fs::absolute(a->dir).lexically_normal();
    std::string config = (dir / "cluster.toml").string();
    if (a->json) {
      json j = {{"config", config},
                {"client_key", (dir / "client.key").string()},
                {"system_key", (dir / "system.key").string()},
                {"sectors", a->sectors},
                {"nodes", a->nodes}};
      std::printf("%s\n", j.dump(2).c_str());
      return kExitOk;
    }
    std::printf("Created a %zu-node cluster of %s (%s sectors of 4 KiB) in %s:\n", a->nodes.size(),
                HumanBytes(static_cast<double>(a->sectors) * kSectorSize).c_str(),
                HumanCount(a->sectors).c_str(), dir.c_str());
    std::printf("  cluster.toml   the cluster's nodes and size\n");
    std::printf("  client.key     mode 0600; clients and nodes need it\n");
    std::printf("  system.key     mode 0600; only nodes need it\n\n");
    std::printf("Next steps:\n");
    std::printf(
        "  1. Copy the three files, together, to every node host; cluster.toml and client.key\n"
        "     to every client host (system.key lets a host act as a node: keep it off clients).\n");
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

CommandFn AddStatusCommand(CLI::App& app, GlobalOptions& g) {
  struct Args {
    std::int64_t wait_ms = 2000;
    bool json = false;
  };
  auto a = std::make_shared<Args>();
  CLI::App* cmd = app.add_subcommand("status", "Show node health and the quorum state");
  cmd->footer(
      "Probes every selected node on a fresh connection: reachable or not (and why), round-trip\n"
      "time, version, uptime, peer links; then one line with the quorum state. Exit code 0 when\n"
      "a majority is up, 1 when it is not.");
  cmd->add_option("--wait", a->wait_ms, "how long to wait for each node's answer, in ms")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd->add_flag("--json", a->json, "print the result as JSON");
  return [a, &g] {
    ClusterConfig config;
    std::unique_ptr<Client> client;
    if (auto err = MakeClient(g, &config, &client, 16)) return Fail(err->exit_code, err->message);
    std::vector<NodeInfo> nodes = client->Probe(std::chrono::milliseconds(a->wait_ms));
    client->Close();

    std::size_t up = 0;
    for (const auto& n : nodes) up += n.reachable ? 1 : 0;
    const std::size_t total = config.nodes.size();
    const bool all_probed = nodes.size() == total && g.nodes.empty();
    const bool quorum = up >= config.Majority();
    std::string quorum_line;
    if (!all_probed) {
      quorum_line = "quorum: UNKNOWN, " + std::to_string(up) + " of " +
                    std::to_string(nodes.size()) + " selected nodes up (the cluster has " +
                    std::to_string(total) + "; a majority is " + std::to_string(config.Majority()) +
                    ")";
    } else if (quorum) {
      quorum_line =
          "quorum: OK, " + std::to_string(up) + " of " + std::to_string(total) + " nodes up";
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
                     {"up", up},
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
      }
      std::printf("%s\n", quorum_line.c_str());
    }
    if (!all_probed) return up == nodes.size() ? kExitOk : kExitFailed;
    return quorum ? kExitOk : kExitFailed;
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
      ->type_name("N");
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

}  // namespace atomdisk::client::cli
