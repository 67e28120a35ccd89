// atomdisk-lincheck: checks a JSON-lines operation history for linearizability.
//
//   atomdisk-lincheck HISTORY.jsonl [--max-states N]     ("-" reads standard input)
//
// Exit status: 0 linearizable, 1 not linearizable, 2 gave up (search state limit), 3 bad
// input (unreadable file, malformed line: the message names the line) or bad usage.
#include <CLI/CLI.hpp>
#include <cstdint>
#include <fstream>
#include <iostream>
#include <string>

#include "common/lincheck.h"

namespace {

constexpr int kExitLinearizable = 0;
constexpr int kExitNotLinearizable = 1;
constexpr int kExitGaveUp = 2;
constexpr int kExitBadInput = 3;

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Checks a JSON-lines read/write history for linearizability."};
  std::string path;
  atomdisk::LinCheckOptions options;
  app.add_option("history", path, "history file, one JSON operation per line (- = stdin)")
      ->required();
  app.add_option("--max-states", options.max_states_per_key,
                 "give up on a key after this many search states")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int code = app.exit(e);
    return code == 0 ? 0 : kExitBadInput;
  }

  atomdisk::Result<std::vector<atomdisk::HistoryOp>> history =
      atomdisk::Status::InvalidArgument("not read");
  if (path == "-") {
    history = atomdisk::ParseHistory(std::cin);
  } else {
    std::ifstream in(path);
    if (!in) {
      std::cerr << "atomdisk-lincheck: cannot open " << path << "\n";
      return kExitBadInput;
    }
    history = atomdisk::ParseHistory(in);
  }
  if (!history.ok()) {
    std::cerr << "atomdisk-lincheck: " << path << ": " << history.status().ToString() << "\n";
    return kExitBadInput;
  }

  const atomdisk::LinCheckResult result = atomdisk::CheckLinearizable(*history, options);
  switch (result.verdict) {
    case atomdisk::LinCheckResult::Verdict::kLinearizable:
      std::cout << "linearizable: " << result.ops_checked << " ops on " << result.keys_checked
                << " keys\n";
      return kExitLinearizable;
    case atomdisk::LinCheckResult::Verdict::kNotLinearizable:
      std::cout << "NOT linearizable: key " << result.bad_key << ": " << result.explanation << "\n";
      return kExitNotLinearizable;
    case atomdisk::LinCheckResult::Verdict::kGaveUp:
      std::cout << "gave up: key " << result.bad_key << ": " << result.explanation
                << " (other keys are linearizable; raise --max-states)\n";
      return kExitGaveUp;
  }
  return kExitBadInput;
}
