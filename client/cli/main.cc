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
#include "common/build_info.h"
#include "common/malloc_tuning.h"

namespace {

using atomdisk::client::cli::Fail;
using atomdisk::client::cli::kExitUsage;

bool StartsWith(const std::string& s, const std::string& prefix) { return s.rfind(prefix, 0) == 0; }

// Why parsing failed, in one line of our own: CLI11's texts ("A subcommand is required",
// "Could not convert: sector = x") name neither the command nor the way out.
std::string UsageError(const CLI::App& app, const CLI::ParseError& e,
                       const std::vector<std::string>& args, const std::string& commands) {
  std::vector<CLI::App*> parsed = app.get_subcommands();
  if (parsed.empty()) {
    // No command recognised: say what was given instead. Global flags with a value are
    // skipped together with it.
    for (std::size_t i = 0; i < args.size(); ++i) {
      const std::string& a = args[i];
      if (a == "--config" || a == "--node" || a == "--timeout") {
        ++i;
        continue;
      }
      if (StartsWith(a, "--config=") || StartsWith(a, "--node=") || StartsWith(a, "--timeout=")) {
        continue;
      }
      if (StartsWith(a, "-")) {
        return "unknown option " + a + " (the global flags are --config, --node, --timeout; " +
               "see atomdisk --help)";
      }
      return "unknown command \"" + a + "\" (the commands are " + commands + ")";
    }
    if (dynamic_cast<const CLI::ValidationError*>(&e) == nullptr) {
      return "no command given (the commands are " + commands + "; see atomdisk --help)";
    }
  }
  const std::string where = parsed.empty() ? "" : parsed.back()->get_name() + ": ";
  const std::string help =
      " (see atomdisk " + (parsed.empty() ? "" : parsed.back()->get_name() + " ") + "--help)";
  std::string what = e.what();
  if (dynamic_cast<const CLI::ValidationError*>(&e) != nullptr) {
    // Our validators (util.h) say "NAME: must be ...".
    if (auto colon = what.find(": must be "); colon != std::string::npos) {
      what = what.substr(0, colon) + what.substr(colon + 1);
    }
    return where + what + help;
  }
  if (dynamic_cast<const CLI::ExtrasError*>(&e) != nullptr) {
    auto colon = what.find(": ");
    const std::string extra = colon == std::string::npos ? what : what.substr(colon + 2);
    return where + (StartsWith(extra, "-") ? "unknown option " : "unexpected argument ") + extra +
           help;
  }
  if (dynamic_cast<const CLI::ArgumentMismatch*>(&e) != nullptr) {
    // "--count: 1 required UINT missing"
    if (auto colon = what.find(':');
        colon != std::string::npos && what.find("missing") != std::string::npos) {
      return where + what.substr(0, colon) + " needs a value" + help;
    }
    return where + what + help;
  }
  if (dynamic_cast<const CLI::ExcludesError*>(&e) != nullptr) {
    // "--in excludes --fill"
    if (auto x = what.find(" excludes "); x != std::string::npos) {
      return where + what.substr(0, x) + " and " + what.substr(x + 10) +
             " cannot be given together" + help;
    }
  }
  if (dynamic_cast<const CLI::ConversionError*>(&e) != nullptr) {
    return where + "cannot read a value: " + what + help;
  }
  return where + what + help;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace atomdisk::client::cli;
  // upload, download and bench move 1 MiB extents (common/malloc_tuning.h); a CLI run that
  // cannot tune the allocator only runs slower, so the outcome is not reported.
  (void)atomdisk::TuneMallocForLargeBuffers();
  CLI::App app{"atomdisk: command-line client and admin tool for an atomdisk cluster."};
  app.set_version_flag("--version", atomdisk::VersionLine("atomdisk"));
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
                 "budget of each sector operation across retries: milliseconds, or with a unit "
                 "(500ms, 5s, 1m)")
      ->type_name("MS")
      ->capture_default_str()
      ->transform(DurationMs(1, 1, 24 * 3'600'000.0));

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
  add(AddTlsCommand);
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
    if (e.get_exit_code() == 0) return app.exit(e);  // --help, --version
    std::string names;
    for (const auto& [name, fn] : commands) names += (names.empty() ? "" : ", ") + name;
    return Fail(kExitUsage,
                UsageError(app, e, std::vector<std::string>(argv + 1, argv + argc), names));
  }
  // A reader of our output that goes away (`| head`) ends us quietly, as for any Unix tool.
  std::signal(SIGPIPE, SIG_DFL);
  for (auto& [name, fn] : commands) {
    if (app.got_subcommand(name)) return fn();
  }
  return Fail(kExitUsage, "no command given (see atomdisk --help)");
}
