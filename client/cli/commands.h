// The `atomdisk` commands (docs/CLI.md). Each Add*Command registers a subcommand, its flags
// and its help on the CLI11 app; the returned function runs it after parsing and returns
// the process exit code (util.h). Commands print results on stdout and errors on stderr.
#pragma once

#include <CLI/CLI.hpp>
#include <functional>

#include "client/cli/util.h"

namespace atomdisk::client::cli {

using CommandFn = std::function<int()>;

CommandFn AddInitCommand(CLI::App& app, GlobalOptions& g);
CommandFn AddStatusCommand(CLI::App& app, GlobalOptions& g);
CommandFn AddInspectCommand(CLI::App& app, GlobalOptions& g);
CommandFn AddScrubCommand(CLI::App& app, GlobalOptions& g);
CommandFn AddReadCommand(CLI::App& app, GlobalOptions& g);
CommandFn AddWriteCommand(CLI::App& app, GlobalOptions& g);
CommandFn AddUploadCommand(CLI::App& app, GlobalOptions& g);
CommandFn AddDownloadCommand(CLI::App& app, GlobalOptions& g);
CommandFn AddBenchCommand(CLI::App& app, GlobalOptions& g);
CommandFn AddTlsCommand(CLI::App& app, GlobalOptions& g);

}  // namespace atomdisk::client::cli
