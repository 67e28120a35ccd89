// atomdisk: the command-line client and admin tool (docs/CLI.md).
//
//   atomdisk [--config FILE] [--node RANK|HOST:PORT]... [--timeout MS] COMMAND [ARGS]
//
// Exit codes: 0 ok, 1 an operation failed, 2 usage or config error, 3 data mismatch or
// integrity failure.
#include <CLI/CLI.hpp>
#include <csignal>
#include <string>
#include <utility>
#include <vector>

#include "client/cli/commands.h"
#include "client/cli/util.h"

#ifndef ATOMDISK_VERSION
#define ATOMDISK_VERSION "unknown"
#endif

int main(int argc, char** argv) {
  using namespace atomdisk::client::cli;
  CLI::App app{"atomdisk: command-line client and admin tool for an atomdisk cluster."};
  app.set_version_flag("--version", ATOMDISK_VERSION);
  app.require_subcommand(1);
  app.fallthrough();  // global flags work after the command name too
  app.footer(
      "Exit codes: 0 ok, 1 an operation failed, 2 usage or config error, 3 data mismatch or\n"
      "integrity failure. Run `atomdisk COMMAND --help` for a command's flags; see docs/CLI.md.");

  GlobalOptions g;
  app.add_option("--config", g.config,
                 "cluster config file (default: $ATOMDISK_CONFIG, else ./cluster.toml)")
      ->type_name("FILE");
  app.add_option("--node", g.nodes,
                 "use this node (a rank from the config, or HOST:PORT); repeat for several, tried "
                 "in order (default: every node of the config)")
      ->type_name("RANK|HOST:PORT");
  app.add_option("--timeout", g.timeout_ms,
                 "budget of each sector operation across retries, in milliseconds")
      ->type_name("MS")
      ->capture_default_str();

  std::vector<std::pair<std::string, CommandFn>> commands;
  auto add = [&](CommandFn (*make)(CLI::App&, GlobalOptions&)) {
    std::size_t before = app.get_subcommands({}).size();
    CommandFn fn = make(app, g);
    auto subs = app.get_subcommands({});
    commands.emplace_back(subs.at(before)->get_name(), std::move(fn));
  };
  add(AddInitCommand);
  add(AddStatusCommand);
  add(AddReadCommand);
  add(AddWriteCommand);
  add(AddUploadCommand);
  add(AddDownloadCommand);
  add(AddBenchCommand);
  add(AddScrubCommand);
  add(AddInspectCommand);
  for (CLI::App* sub : app.get_subcommands({})) {
    std::string footer = sub->get_footer();
    sub->footer((footer.empty() ? "" : footer + "\n\n") +
                "Global flags (--config, --node, --timeout) may also follow the command name.\n"
                "Exit codes: 0 ok, 1 an operation failed, 2 usage or config error, 3 data "
                "mismatch.");
  }

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int code = app.exit(e);
    return code == 0 ? kExitOk : kExitUsage;
  }
  // A reader of our output that goes away (`| head`) ends us quietly, as for any Unix tool.
  std::signal(SIGPIPE, SIG_DFL);
  for (auto& [name, fn] : commands) {
    if (app.got_subcommand(name)) return fn();
  }
  return Fail(kExitUsage, "no command given (see --help)");
}
