// Settings from a config file and environment variables for the three binaries' CLI11 parsers.
//
// Precedence: the command line, then the environment, then the config file. CLI11 by itself
// reads the config file before the environment (a file would override the environment); the
// config reader installed here drops every setting of the file whose option's environment
// variable is set, which gives the order above.
//
// Config file: CLI11's TOML/INI subset, one `name = value` per line, where name is a long option
// without its dashes (`db = "/var/lib/kvsweep/sweeps.db"`, `tls = true`,
// `allow-path = ["/a", "/b"]`); `#` and `;` start comments; `[default]` is the only section.
// Errors name the file and the line, never the file's bytes (a config file may be a secret).
#ifndef KVSWEEP_COMMON_CLI_CONFIG_H_
#define KVSWEEP_COMMON_CLI_CONFIG_H_

#include <string>
#include <vector>

#include "CLI/CLI.hpp"

namespace kvsweep {

// Binds `opt` to the environment variable KVSWEEP_<NAME>, NAME being its long name upper-cased
// with '-' as '_' (--tls-client-ca: KVSWEEP_TLS_CLIENT_CA). Returns `opt`.
CLI::Option* WithEnv(CLI::Option* opt);

// Adds `--config FILE` to `app` and installs the reader described above. Call once, after
// every option of `app` has been added, before app.parse(). A missing file, a line that is not
// a setting of `app` or a section other than [default] fail the parse with a CLI::ParseError
// whose message is one line: "--config FILE: line N: ...".
void AddConfigFile(CLI::App* app);

// Every KVSWEEP_<FLAG> settings variable the three binaries read (WithEnv), docs/deploy.md's
// list. A process that starts the binaries for its own purpose (`kvsweep demo`, the tests)
// clears these, so that the deployment settings a shell exports (KVSWEEP_TLS=1, KVSWEEP_DB, ...)
// do not leak into its children.
const std::vector<std::string>& SettingsVariables();

}  // namespace kvsweep

#endif  // KVSWEEP_COMMON_CLI_CONFIG_H_
