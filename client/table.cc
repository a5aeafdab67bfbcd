#include "client/table.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"

namespace kvsweep {

const std::vector<std::string>& TableDimensions() {
  static const std::vector<std::string> dims = {"model",    "task", "method", "family",
                                                "budget",   "kv_heads", "seed", "dtype",
                                                "method_spec"};
  return dims;
}

std::string LabelText(const nlohmann::json& labels, const std::string& key) {
  auto it = labels.find(key);
  if (it == labels.end() || it->is_null()) return "";
  if (it->is_string()) return it->get<std::string>();
  if (it->is_number_integer()) return std::to_string(it->get<int64_t>());
  if (it->is_number()) return absl::StrFormat("%g", it->get<double>());
  return it->dump();
}

std::optional<double> MetricValue(const nlohmann::json& result, const std::string& metric) {
  auto number = [&](const nlohmann::json& obj) -> std::optional<double> {
    if (!obj.is_object()) return std::nullopt;
    auto it = obj.find(metric);
    if (it == obj.end() || !it->is_number()) return std::nullopt;
    return it->get<double>();
  };
  if (auto m = result.find("metrics"); m != result.end() && m->is_object()) {
    for (auto t = m->begin(); t != m->end(); ++t) {
      if (auto v = number(*t)) return v;
    }
  }
  for (const char* section : {"ledger", "timing"}) {
    if (auto s = result.find(section); s != result.end()) {
      if (auto v = number(*s)) return v;
    }
  }
  return std::nullopt;
}

absl::StatusOr<Table> BuildTable(const std::vector<TableInput>& inputs, const TableSpec& spec) {
  const auto& dims = TableDimensions();
  for (const std::string& d : {spec.rows, spec.cols}) {
    if (std::find(dims.begin(), dims.end(), d) == dims.end()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "table: unknown dimension '", d, "' (known: ", absl::StrJoin(dims, ", "), ")"));
    }
  }
  if (spec.rows == spec.cols) {
    return absl::InvalidArgumentError("table: --rows and --cols must differ");
  }
  for (const auto& [k, v] : spec.where) {
    if (std::find(dims.begin(), dims.end(), k) == dims.end()) {
      return absl::InvalidArgumentError(absl::StrCat("table: --where: unknown label '", k, "'"));
    }
  }
  Table t;
  t.row_dim = spec.rows;
  t.col_dim = spec.cols;
  t.metric = spec.metric;
  t.delta = spec.delta;
  std::map<std::string, size_t> row_index, col_index;
  std::map<std::pair<size_t, size_t>, std::vector<const TableInput*>> cell_inputs;
  bool metric_seen = false;
  for (const TableInput& in : inputs) {
    bool keep = true;
    for (const auto& [k, v] : spec.where) keep = keep && LabelText(in.labels, k) == v;
    if (!keep) continue;
    const std::string r = LabelText(in.labels, spec.rows);
    const std::string c = LabelText(in.labels, spec.cols);
    if (!row_index.count(r)) {
      row_index[r] = t.rows.size();
      t.rows.push_back(r);
    }
    if (!col_index.count(c)) {
      col_index[c] = t.cols.size();
      t.cols.push_back(c);
    }
    cell_inputs[{row_index[r], col_index[c]}].push_back(&in);
    if (in.result && MetricValue(*in.result, spec.metric)) metric_seen = true;
  }
  if (t.rows.empty()) {
    return absl::InvalidArgumentError("table: no jobs match (check the sweep name and --where)");
  }
  t.cells.assign(t.rows.size(), std::vector<std::optional<double>>(t.cols.size()));
  t.is_delta.assign(t.rows.size(), std::vector<bool>(t.cols.size(), false));
  for (const auto& [rc, ins] : cell_inputs) {
    if (ins.size() > 1) {
      // Name what distinguishes them, so the user knows which --where to add.
      std::vector<std::string> differ;
      for (const std::string& d : dims) {
        std::set<std::string> values;
        for (const TableInput* in : ins) values.insert(LabelText(in->labels, d));
        if (values.size() > 1) differ.push_back(d);
      }
      return absl::InvalidArgumentError(absl::StrCat(
          "table: the cell (", spec.rows, "=", t.rows[rc.first], ", ", spec.cols, "=",
          t.cols[rc.second], ") has ", ins.size(), " jobs that differ in ",
          differ.empty() ? std::string("nothing shown") : absl::StrJoin(differ, ", "),
          "; add --where ", differ.empty() ? std::string("...") : differ[0],
          "=VALUE or pivot on it"));
    }
    if (ins[0]->result) t.cells[rc.first][rc.second] = MetricValue(*ins[0]->result, spec.metric);
  }
  if (!metric_seen && std::any_of(inputs.begin(), inputs.end(),
                                  [](const TableInput& i) { return i.result.has_value(); })) {
    return absl::InvalidArgumentError(
        absl::StrCat("table: no result has a metric '", spec.metric,
                     "' (e.g. acc, ppl, token_ppl, word_ppl, bits_per_byte, fraction_payload)"));
  }
  if (!spec.delta.empty()) {
    auto it = col_index.find(spec.delta);
    if (it == col_index.end()) {
      return absl::InvalidArgumentError(absl::StrCat("table: --delta ", spec.delta, ": no ",
                                                     spec.cols, " '", spec.delta, "' (",
                                                     spec.cols, ": ", absl::StrJoin(t.cols, ", "),
                                                     ")"));
    }
    const size_t ref = it->second;
    for (size_t r = 0; r < t.rows.size(); ++r) {
      const std::optional<double> base = t.cells[r][ref];
      for (size_t c = 0; c < t.cols.size(); ++c) {
        if (c == ref) continue;
        t.is_delta[r][c] = true;
        if (!base || !t.cells[r][c]) {
          t.cells[r][c].reset();
        } else {
          t.cells[r][c] = *t.cells[r][c] - *base;
        }
      }
    }
  }
  return t;
}

namespace {

std::string Num(const std::optional<double>& v, bool delta) {
  if (!v) return "";
  if (delta) return absl::StrFormat("%+.6g", *v);
  return absl::StrFormat("%.6g", *v);
}

std::string Corner(const Table& t) { return absl::StrCat(t.row_dim, " \\ ", t.col_dim); }

std::string LatexEscape(const std::string& s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '&': case '%': case '$': case '#': case '_': case '{': case '}':
        out += '\\';
        out += c;
        break;
      case '~': out += "\\textasciitilde{}"; break;
      case '^': out += "\\textasciicircum{}"; break;
      case '\\': out += "\\textbackslash{}"; break;
      default: out += c;
    }
  }
  return out;
}

std::string MdEscape(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '|') out += '\\';
    out += c;
  }
  return out;
}

}  // namespace

std::string CsvField(const std::string& s) {
  if (s.find_first_of(",\"\n\r") == std::string::npos) return s;
  std::string out = "\"";
  for (char c : s) {
    if (c == '"') out += '"';
    out += c;
  }
  return out + "\"";
}

absl::StatusOr<std::string> FormatTable(const Table& t, const std::string& format) {
  std::string out;
  const std::string caption =
      absl::StrCat(t.metric, t.delta.empty() ? "" : absl::StrCat(" (difference from ", t.delta, ")"));
  if (format == "md") {
    out = absl::StrCat("| ", MdEscape(Corner(t)), " |");
    for (const std::string& c : t.cols) absl::StrAppend(&out, " ", MdEscape(c), " |");
    absl::StrAppend(&out, "\n|---|");
    for (size_t c = 0; c < t.cols.size(); ++c) absl::StrAppend(&out, "---:|");
    absl::StrAppend(&out, "\n");
    for (size_t r = 0; r < t.rows.size(); ++r) {
      absl::StrAppend(&out, "| ", MdEscape(t.rows[r]), " |");
      for (size_t c = 0; c < t.cols.size(); ++c) {
        absl::StrAppend(&out, " ", Num(t.cells[r][c], t.is_delta[r][c]), " |");
      }
      absl::StrAppend(&out, "\n");
    }
    absl::StrAppend(&out, "\n", caption, "\n");
    return out;
  }
  if (format == "csv") {
    out = CsvField(Corner(t));
    for (const std::string& c : t.cols) absl::StrAppend(&out, ",", CsvField(c));
    absl::StrAppend(&out, "\n");
    for (size_t r = 0; r < t.rows.size(); ++r) {
      absl::StrAppend(&out, CsvField(t.rows[r]));
      for (size_t c = 0; c < t.cols.size(); ++c) {
        absl::StrAppend(&out, ",", Num(t.cells[r][c], t.is_delta[r][c]));
      }
      absl::StrAppend(&out, "\n");
    }
    return out;
  }
  if (format == "latex") {
    out = absl::StrCat("\\begin{tabular}{l", std::string(t.cols.size(), 'r'), "}\n\\toprule\n",
                       LatexEscape(t.row_dim));
    for (const std::string& c : t.cols) absl::StrAppend(&out, " & ", LatexEscape(c));
    absl::StrAppend(&out, " \\\\\n\\midrule\n");
    for (size_t r = 0; r < t.rows.size(); ++r) {
      absl::StrAppend(&out, LatexEscape(t.rows[r]));
      for (size_t c = 0; c < t.cols.size(); ++c) {
        const std::string v = Num(t.cells[r][c], t.is_delta[r][c]);
        absl::StrAppend(&out, " & ", v.empty() ? "--" : v);
      }
      absl::StrAppend(&out, " \\\\\n");
    }
    absl::StrAppend(&out, "\\bottomrule\n\\end{tabular}\n% ", LatexEscape(caption), "\n");
    return out;
  }
  if (format == "json") {
    nlohmann::json cells = nlohmann::json::array();
    for (const auto& row : t.cells) {
      nlohmann::json r = nlohmann::json::array();
      for (const auto& v : row) r.push_back(v ? nlohmann::json(*v) : nlohmann::json(nullptr));
      cells.push_back(r);
    }
    nlohmann::json j = {{"rows_dim", t.row_dim}, {"cols_dim", t.col_dim},
                        {"metric", t.metric},    {"delta", t.delta.empty() ? nlohmann::json(nullptr)
                                                                           : nlohmann::json(t.delta)},
                        {"rows", t.rows},        {"cols", t.cols},
                        {"cells", cells}};
    return j.dump(2) + "\n";
  }
  return absl::InvalidArgumentError(
      absl::StrCat("table: unknown format '", format, "' (md, csv, latex, json)"));
}

}  // namespace kvsweep
