#include "common/cli_config.h"

#include <algorithm>
#include <cstdlib>
#include <memory>
#include <sstream>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"

namespace kvsweep {

namespace {

bool EnvSet(const std::string& name) {
  if (name.empty()) return false;
  const char* v = std::getenv(name.c_str());
  return v != nullptr && *v != '\0';  // CLI11 ignores an empty variable too
}

std::string Unquote(std::string s) {
  if (s.size() >= 2 && (s.front() == '"' || s.front() == '\'') && s.back() == s.front()) {
    s = s.substr(1, s.size() - 2);
  }
  return s;
}

// CLI11's TOML/INI reader, with every line checked first (a misspelt setting must not pass
// unnoticed, and the error must not quote the file) and the settings whose environment variable
// is set left out (the environment wins over the file).
class EnvFirstConfig : public CLI::ConfigBase {
 public:
  explicit EnvFirstConfig(CLI::App* app) : app_(app) {}

  std::vector<CLI::ConfigItem> from_config(std::istream& input) const override {
    std::stringstream buffer;
    buffer << input.rdbuf();
    const std::string text = buffer.str();
    Check(text);
    std::istringstream again(text);
    std::vector<CLI::ConfigItem> items = CLI::ConfigBase::from_config(again);
    items.erase(std::remove_if(items.begin(), items.end(),
                               [this](const CLI::ConfigItem& item) {
                                 const CLI::Option* opt = Find(item.name);
                                 return item.parents.empty() && opt != nullptr &&
                                        EnvSet(opt->get_envname());
                               }),
                items.end());
    return items;
  }

 private:
  const CLI::Option* Find(const std::string& key) const {
    if (key.empty() || key.front() == '-') return nullptr;
    const CLI::Option* opt = app_->get_option_no_throw("--" + key);
    return opt != nullptr && opt->get_configurable() ? opt : nullptr;
  }

  [[noreturn]] void Throw(int line, const std::string& what) const {
    std::string file;
    if (CLI::Option* c = app_->get_config_ptr(); c != nullptr && !c->results().empty()) {
      file = c->results().front();
    }
    throw CLI::ConfigError(absl::StrCat("--config ", file, ": line ", line, ": ", what));
  }

  // Walks the lines the way ConfigBase::from_config reads them.
  void Check(const std::string& text) const {
    std::istringstream lines(text);
    std::string line;
    bool in_array = false;  // inside a `name = [` ... `]` spread over several lines
    for (int n = 1; std::getline(lines, line); ++n) {
      const std::string t(absl::StripAsciiWhitespace(line));
      if (in_array) {
        if (!t.empty() && t.back() == ']') in_array = false;
        continue;
      }
      if (t.size() < 3 || t.front() == '#' || t.front() == ';') continue;  // CLI11 skips these
      if (t.front() == '[' && t.back() == ']') {
        std::string section = absl::AsciiStrToLower(t);
        if (section != "[default]" && section != "[[default]]") {
          Throw(n, "sections other than [default] are not settings of this program");
        }
        continue;
      }
      const size_t eq = t.find('=');
      std::string key = t.substr(0, eq);
      if (eq == std::string::npos) key = key.substr(0, key.find('#'));
      key = Unquote(std::string(absl::StripAsciiWhitespace(key)));
      if (eq != std::string::npos) {
        std::string value = t.substr(eq + 1);
        value = std::string(absl::StripAsciiWhitespace(value.substr(0, value.find('#'))));
        if (value.size() > 1 && value.front() == '[' && value.back() != ']') in_array = true;
      }
      if (Find(key) == nullptr) {
        Throw(n,
              "not a setting of this program (a setting is `name = value`, name a long "
              "option without its dashes)");
      }
    }
    if (in_array) Throw(static_cast<int>(std::count(text.begin(), text.end(), '\n')), "unclosed [");
  }

  CLI::App* app_;
};

}  // namespace

CLI::Option* WithEnv(CLI::Option* opt) {
  std::string name = opt->get_lnames().front();
  for (char& c : name) c = c == '-' ? '_' : absl::ascii_toupper(c);
  return opt->envname("KVSWEEP_" + name);
}

void AddConfigFile(CLI::App* app) {
  app->set_config("--config", "",
                  "read settings from this file (TOML: `name = value` per line, name a long "
                  "option without its dashes); the command line and KVSWEEP_* variables win")
      ->check(CLI::ExistingFile);
  app->config_formatter(std::make_shared<EnvFirstConfig>(app));
}

const std::vector<std::string>& SettingsVariables() {
  static const auto* names = new std::vector<std::string>{"KVSWEEP_DB",
                                                          "KVSWEEP_LISTEN",
                                                          "KVSWEEP_TLS_CERT",
                                                          "KVSWEEP_TLS_KEY",
                                                          "KVSWEEP_TLS_CLIENT_CA",
                                                          "KVSWEEP_TOKEN_FILE",
                                                          "KVSWEEP_WORKER_TOKEN_FILE",
                                                          "KVSWEEP_CLIENT_TOKEN_FILE",
                                                          "KVSWEEP_READER_TOKEN_FILE",
                                                          "KVSWEEP_METRICS_LISTEN",
                                                          "KVSWEEP_HEALTH_LISTEN",
                                                          "KVSWEEP_HTTP",
                                                          "KVSWEEP_COORDINATOR",
                                                          "KVSWEEP_TLS",
                                                          "KVSWEEP_TLS_CA",
                                                          "KVSWEEP_TLS_SERVER_NAME",
                                                          "KVSWEEP_DEVICE",
                                                          "KVSWEEP_SPOOL_DIR",
                                                          "KVSWEEP_STAGE",
                                                          "KVSWEEP_FILE_CACHE_DIR",
                                                          "KVSWEEP_CACHE_MAX_BYTES"};
  return *names;
}

}  // namespace kvsweep
