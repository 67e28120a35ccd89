// atomdisk-sim: the deterministic simulator's command line (docs/SIMULATION.md).
//
//   atomdisk-sim [--seeds N [--first-seed F] | --seed S] [--nodes 3|5] [--steps K]
//                [--bug NAME [--expect-failure [--expect-check CHECK]]] [--trace]
//                [--history-out FILE] [--check-determinism] [--verbose] [--timing]
//
// Exit status: 0 when every run passes (with --expect-failure: when some seed fails the
// expected way), 1 on a failure (the seed, the check and the replay command are printed),
// 2 on bad usage. Standard output depends only on the arguments: the same command prints the
// same bytes (timings go to standard error, and only with --timing).
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>

#include "tests/sim/simulator.h"

namespace {

using atomdisk::SimOptions;
using atomdisk::SimResult;

// What the SIGABRT handler prints when an ATOMDISK_CHECK inside the register or the store
// aborts a run: the seed and the replay command, prepared before each run.
char g_abort_message[1024];
bool g_abort_counts_as_caught = false;

extern "C" void OnAbort(int) {
  // Not async-signal-safe, deliberately: the abort comes from an ATOMDISK_CHECK on this very
  // thread, never from inside the stream, and the trace printed so far must not be lost.
  std::cout.flush();
  ssize_t ignored = write(STDOUT_FILENO, g_abort_message, std::strlen(g_abort_message));
  (void)ignored;
  _exit(g_abort_counts_as_caught ? 0 : 1);
}

void PrepareAbortMessage(const SimOptions& o, bool expect_failure) {
  std::string cmd = atomdisk::ReplayCommand(o);
  if (expect_failure) {
    std::snprintf(g_abort_message, sizeof(g_abort_message),
                  "caught: bug %s at seed %llu by check abort (an ATOMDISK_CHECK failed)\n"
                  "replay: %s --trace\n",
                  atomdisk::SimBugName(o.bug), static_cast<unsigned long long>(o.seed),
                  cmd.c_str());
  } else {
    std::snprintf(g_abort_message, sizeof(g_abort_message),
                  "FAIL seed %llu nodes %d: check abort (an ATOMDISK_CHECK failed; see the "
                  "message above)\nreplay: %s --trace\n",
                  static_cast<unsigned long long>(o.seed), o.nodes, cmd.c_str());
  }
}

void PrintFailure(const SimOptions& o, const SimResult& r) {
  std::cout << "FAIL seed " << o.seed << " nodes " << o.nodes << ": check " << r.check << "\n";
  std::cout << "  " << r.detail << "\n";
  if (r.check == "linearizability") {
    std::cout << "  (history times are virtual ns: call 1130632000 is trace time 1130.632; "
                 "the trace shows each call as \"call read #N client C sector S\")\n";
  }
  std::cout << "  last events:\n";
  for (const std::string& line : r.last_events) std::cout << "    " << line << "\n";
  std::cout << "replay: " << atomdisk::ReplayCommand(o) << " --trace\n";
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "atomdisk deterministic simulator: real registers, syncers and stores under a "
      "simulated network, disk and clients, one seed per run. Faults: message drops, "
      "duplicates, delays and reordering, partitions, crashes (losing unsynced writes), "
      "disk errors, slow disks, and disk replacement (a node restarts with an empty store "
      "and no IDENTITY and must rejoin through a join pass before it votes)."};
  std::uint64_t seeds = 1;
  std::uint64_t first_seed = 1;
  std::uint64_t seed = 0;
  SimOptions options;
  std::string bug_name = "none";
  bool expect_failure = false;
  std::string expect_check;
  bool history_only = false;
  bool trace = false;
  std::string history_out;
  bool check_determinism = false;
  bool verbose = false;
  bool timing = false;
  bool keep_going = false;

  auto* seeds_opt = app.add_option("--seeds", seeds, "run seeds first-seed .. first-seed+N-1");
  app.add_option("--first-seed", first_seed, "first seed of a --seeds sweep")->needs(seeds_opt);
  auto* seed_opt = app.add_option("--seed", seed, "run this one seed")->excludes(seeds_opt);
  app.add_option("--nodes", options.nodes, "cluster size")->check(CLI::IsMember({3, 5}));
  app.add_option("--steps", options.steps, "events in the faulty phase of each run")
      ->check(CLI::PositiveNumber);
  app.add_option("--bug", bug_name, "turn on a catalogued mistake (--list-bugs names them)");
  bool list_bugs = false;
  app.add_flag("--list-bugs", list_bugs,
               "print every catalogued mistake with the layer of the code it lives in");
  app.add_flag("--expect-failure", expect_failure,
               "pass iff some seed fails (the bug is caught); stops at the first such seed");
  app.add_option("--expect-check", expect_check,
                 "with --expect-failure: only a failure of this check counts");
  app.add_flag("--history-only", history_only,
               "skip the per-step state checks (Ack after durable, tag reuse, durable tag "
               "decreasing, a non-voter answering, a rejoined node behind) to show that "
               "linearizability, liveness and convergence alone catch a bug");
  app.add_flag("--client-library", options.client_library,
               "simulated clients are the client library's own core (client/core), failing over "
               "between nodes over simulated client connections");
  app.add_flag("--tls", options.tls,
               "with --client-library: client connections are TLS, their frames carry zero tags "
               "instead of HMACs as inside TLS");
  app.add_flag("--forged-tags", options.forged_tags,
               "the nemesis also hands nodes forged WriteProcs whose tag lies above the "
               "timestamp range (a node must drop them)");
  app.add_flag("--bit-rot", options.bit_rot,
               "bits of stored slots flip while nodes are down; the nodes must repair them from "
               "their peers (read repair, scrub) and never serve a lost or older value");
  app.add_flag("--serve-budget", options.serve_budget,
               "nodes serve peers' sync requests under a budget that bites, so requests wait in "
               "the servers' queues and some are dropped (sync_serve_rate_mb)");
  app.add_flag("--link-liveness", options.link_liveness,
               "a link cut by a partition goes down at both ends after 100 virtual ms, as the "
               "daemon's peer liveness has it (the core then refuses extents without a quorum)");
  app.add_option("--extents", options.extent_permille,
                 "permille of client operations sent as extent commands (0: none)")
      ->check(CLI::Range(0, 1000));
  app.add_option("--max-lincheck-states", options.max_lincheck_states,
                 "linearizability checker's search bound per sector");
  app.add_flag("--trace", trace, "print every event of every run");
  app.add_option("--history-out", history_out,
                 "write the (last) run's history as JSON lines, for atomdisk-lincheck");
  app.add_flag("--check-determinism", check_determinism,
               "run every seed twice and require identical traces");
  app.add_flag("-v,--verbose", verbose, "one line per seed");
  app.add_flag("--timing", timing, "print seeds/s to standard error");
  app.add_flag("--keep-going", keep_going,
               "report every failing seed and go on (exit 1 at the end if any failed)");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 2;  // --help is not an error
  }
  if (options.tls && !options.client_library) {
    std::cerr << "atomdisk-sim: --tls needs --client-library (the only simulated client "
                 "connections that run the daemon's framing)\n";
    return 2;
  }

  if (list_bugs) {
    int width = 0;
    for (atomdisk::SimBug b : atomdisk::AllSimBugs()) {
      width = std::max(width, static_cast<int>(std::strlen(atomdisk::SimBugName(b))));
    }
    for (atomdisk::SimBug b : atomdisk::AllSimBugs()) {
      std::printf("%-*s %-9s %s\n", width, atomdisk::SimBugName(b), atomdisk::SimBugLayer(b),
                  atomdisk::SimBugWhat(b));
    }
    return 0;
  }
  std::optional<atomdisk::SimBug> bug = atomdisk::ParseSimBug(bug_name);
  if (!bug) {
    std::cerr << "atomdisk-sim: unknown --bug " << bug_name << "\n";
    return 2;
  }
  if (expect_failure && *bug == atomdisk::SimBug::kNone) {
    std::cerr << "atomdisk-sim: --expect-failure needs --bug\n";
    return 2;
  }
  options.bug = *bug;
  options.state_checks = !history_only;
  if (*seed_opt) {
    first_seed = seed;
    seeds = 1;
  }
  g_abort_counts_as_caught = expect_failure && (expect_check.empty() || expect_check == "abort");
  std::signal(SIGABRT, OnAbort);

  auto start = std::chrono::steady_clock::now();
  std::uint64_t passed = 0, failed = 0;
  atomdisk::SimStats total;
  for (std::uint64_t s = first_seed; s < first_seed + seeds; ++s) {
    options.seed = s;
    PrepareAbortMessage(options, expect_failure);
    SimResult r = atomdisk::RunSimulation(options, trace ? &std::cout : nullptr);
    if (check_determinism) {
      std::ostringstream again_trace;
      SimResult again = atomdisk::RunSimulation(options, nullptr);
      if (again.trace_hash != r.trace_hash || again.ok != r.ok || again.check != r.check) {
        std::cout << "FAIL seed " << s << " nodes " << options.nodes
                  << ": check determinism (trace hash " << r.trace_hash << " then "
                  << again.trace_hash << ")\nreplay: " << atomdisk::ReplayCommand(options)
                  << " --check-determinism\n";
        return 1;
      }
    }
    if (!history_out.empty()) {
      std::ofstream out(history_out);
      for (const auto& h : r.history) out << atomdisk::HistoryOpToJson(h) << "\n";
    }
    total.events += r.stats.events;
    total.ops_ok += r.stats.ops_ok;
    total.ops_unknown += r.stats.ops_unknown;
    total.crashes += r.stats.crashes;
    total.partitions += r.stats.partitions;
    total.messages_sent += r.stats.messages_sent;
    total.messages_dropped += r.stats.messages_dropped;
    total.messages_duplicated += r.stats.messages_duplicated;
    total.persists += r.stats.persists;
    total.disk_faults += r.stats.disk_faults;
    total.virtual_ms += r.stats.virtual_ms;
    total.sync_messages += r.stats.sync_messages;
    total.replaced_disks += r.stats.replaced_disks;
    total.absorbs += r.stats.absorbs;
    total.passes_done += r.stats.passes_done;
    total.sync_deferred += r.stats.sync_deferred;
    total.sync_dropped += r.stats.sync_dropped;
    total.tags_from_cache += r.stats.tags_from_cache;
    total.registers_from_cached_tag += r.stats.registers_from_cached_tag;
    total.batches_sent += r.stats.batches_sent;
    total.extents_refused += r.stats.extents_refused;
    total.client_retries += r.stats.client_retries;
    total.client_connection_drops += r.stats.client_connection_drops;
    total.client_ops_failed += r.stats.client_ops_failed;
    total.forged_tags += r.stats.forged_tags;
    total.rotted_slots += r.stats.rotted_slots;
    total.repairs += r.stats.repairs;
    if (verbose) {
      std::cout << "seed " << s << " " << (r.ok ? "ok" : "FAIL " + r.check) << " events "
                << r.stats.events << " virtual " << r.stats.virtual_ms << "ms ops "
                << r.stats.ops_ok << " ok " << r.stats.ops_unknown << " unknown, crashes "
                << r.stats.crashes << " partitions " << r.stats.partitions << " replaced disks "
                << r.stats.replaced_disks << " sync messages " << r.stats.sync_messages
                << " passes " << r.stats.passes_done << " trace " << std::hex << r.trace_hash
                << std::dec << "\n";
    }
    if (r.ok) {
      ++passed;
      continue;
    }
    ++failed;
    if (expect_failure) {
      if (!expect_check.empty() && r.check != expect_check) {
        if (verbose) std::cout << "  (check " << r.check << ", not " << expect_check << ")\n";
        continue;
      }
      std::cout << "caught: bug " << atomdisk::SimBugName(options.bug) << " at seed " << s
                << " (seed " << (s - first_seed + 1) << " of " << seeds << ") by check " << r.check
                << "\n  " << r.detail << "\nreplay: " << atomdisk::ReplayCommand(options)
                << " --trace\n";
      return 0;
    }
    PrintFailure(options, r);
    if (!keep_going) return 1;
  }
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (timing) {
    std::cerr << "atomdisk-sim: " << seeds << " seeds in " << secs
              << " s: " << static_cast<double>(seeds) / secs << " seeds/s, "
              << static_cast<double>(total.events) / secs << " events/s\n";
  }
  if (expect_failure) {
    std::cout << "NOT caught: bug " << atomdisk::SimBugName(options.bug) << " survived " << seeds
              << " seeds (" << first_seed << ".." << first_seed + seeds - 1 << ") with "
              << options.nodes << " nodes\n";
    return 1;
  }
  std::cout << "atomdisk-sim: " << passed << " of " << seeds << " seeds passed (" << options.nodes
            << " nodes, " << options.steps << " steps, bug " << atomdisk::SimBugName(options.bug)
            << "): " << total.events << " events, " << total.ops_ok << " ops ok, "
            << total.ops_unknown << " unknown, " << total.crashes << " crashes, "
            << total.partitions << " partitions, " << total.disk_faults << " disk faults, "
            << total.messages_sent << " messages (" << total.messages_dropped << " dropped, "
            << total.messages_duplicated << " duplicated), " << total.sync_messages
            << " sync messages, " << total.replaced_disks << " replaced disks, " << total.absorbs
            << " absorbs, " << total.passes_done << " resync passes (" << total.sync_deferred
            << " sync requests served late, " << total.sync_dropped << " dropped), "
            << total.tags_from_cache << " tags from cache, " << total.registers_from_cached_tag
            << " registers from a cached tag, " << total.batches_sent << " system batches, "
            << total.extents_refused << " extents refused whole, " << total.virtual_ms
            << " virtual ms";
  if (options.forged_tags) std::cout << "; " << total.forged_tags << " forged top tags";
  if (options.bit_rot) {
    std::cout << "; " << total.rotted_slots << " rotted slots, " << total.repairs << " repairs";
  }
  if (options.client_library) {
    std::cout << "; client library: " << total.client_retries << " retries, "
              << total.client_connection_drops << " connections dropped, "
              << total.client_ops_failed << " ops failed";
  }
  std::cout << "\n";
  return failed == 0 ? 0 : 1;
}
