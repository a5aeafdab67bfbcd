#include "client/table.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "client/plot.h"
#include "common/status_macros.h"

namespace kvsweep {

const std::vector<std::string>& TableDimensions() {
  static const std::vector<std::string> dims = {"model",       "task",     "method", "family",
                                                "budget",      "kv_heads", "seed",   "dtype",
                                                "method_spec", "sweep"};
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

std::string SharedCellReason(const std::vector<const TableInput*>& jobs,
                             const std::string& instead) {
  std::vector<std::string> differ;
  for (const std::string& d : TableDimensions()) {
    std::set<std::string> values;
    for (const TableInput* in : jobs) values.insert(LabelText(in->labels, d));
    if (values.size() > 1) differ.push_back(d);
  }
  if (!differ.empty()) {
    return absl::StrCat(" that differ in ", absl::StrJoin(differ, ", "), "; add --where ",
                        differ[0], "=VALUE or ", instead);
  }
  // Jobs are distinct by their spec (JobSpec::JobId), and labels do not show all of it: two
  // tasks of one name with another limit or window, two models of one name in other files.
  std::string sweep = jobs.empty() ? "" : LabelText(jobs[0]->labels, "sweep");
  if (sweep.empty()) sweep = "<sweep>";
  return absl::StrCat(
      " with the same labels: they differ in fields that are not labels (e.g. the task's limit "
      "or window, or the model's files); `kvsweep export ",
      sweep,
      " --include-spec` shows each job's spec; give them different names in the sweep file "
      "(e.g. of the task) to tell them apart here");
}

absl::StatusOr<Table> BuildTable(const std::vector<TableInput>& inputs, const TableSpec& spec) {
  const auto& dims = TableDimensions();
  std::vector<std::string> row_dims = {spec.rows};
  if (spec.rows == "auto") {
    // Every label that varies among the jobs (other than the columns' and seeds).
    row_dims.clear();
    for (const char* d : {"sweep", "model", "task", "kv_heads", "dtype"}) {
      if (d == spec.cols) continue;
      std::set<std::string> values;
      for (const TableInput& in : inputs) {
        bool keep = true;  // among the jobs --where keeps
        for (const auto& [k, v] : spec.where) keep = keep && LabelText(in.labels, k) == v;
        if (keep) values.insert(LabelText(in.labels, d));
      }
      if (values.size() > 1) row_dims.push_back(d);
    }
    if (row_dims.empty()) row_dims.push_back(spec.cols == "model" ? "task" : "model");
  }
  for (const std::string& d : {row_dims[0], spec.cols}) {
    if (std::find(dims.begin(), dims.end(), d) == dims.end()) {
      return absl::InvalidArgumentError(absl::StrCat("table: unknown dimension '", d,
                                                     "' (known: ", absl::StrJoin(dims, ", "), ")"));
    }
  }
  for (const std::string& d : row_dims) {
    if (std::find(dims.begin(), dims.end(), d) == dims.end()) {
      return absl::InvalidArgumentError(absl::StrCat("table: unknown dimension '", d, "'"));
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
  t.row_dim = absl::StrJoin(row_dims, ", ");
  auto row_label = [&](const nlohmann::json& labels) {
    std::vector<std::string> parts;
    for (const std::string& d : row_dims) parts.push_back(LabelText(labels, d));
    return absl::StrJoin(parts, ", ");
  };
  t.col_dim = spec.cols;
  t.metric = spec.metric;
  t.delta = spec.delta;
  std::map<std::string, size_t> row_index, col_index;
  std::map<std::pair<size_t, size_t>, std::vector<const TableInput*>> cell_inputs;
  bool metric_seen = false;
  int results = 0, placeholders = 0;
  for (const TableInput& in : inputs) {
    bool keep = true;
    for (const auto& [k, v] : spec.where) keep = keep && LabelText(in.labels, k) == v;
    if (!keep) continue;
    results += in.result.has_value();
    placeholders += in.result && in.result->IsPlaceholder();
    const std::string r = row_label(in.labels);
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
    if (in.result && in.result->Number(spec.metric)) metric_seen = true;
  }
  if (t.rows.empty()) {
    return absl::InvalidArgumentError("table: no jobs match (check the sweep name and --where)");
  }
  t.cells.assign(t.rows.size(), std::vector<std::optional<double>>(t.cols.size()));
  t.is_delta.assign(t.rows.size(), std::vector<bool>(t.cols.size(), false));
  t.seed_sd.assign(t.rows.size(), std::vector<std::optional<double>>(t.cols.size()));
  t.seeds.assign(t.rows.size(), std::vector<int>(t.cols.size(), 0));
  t.compared.assign(t.rows.size(), std::vector<std::optional<PairedComparison>>(t.cols.size()));
  std::map<std::pair<size_t, size_t>, const TableInput*> single;  // cells of one job
  for (const auto& [rc, ins] : cell_inputs) {
    std::vector<std::string> differ;
    for (const std::string& d : dims) {
      std::set<std::string> values;
      for (const TableInput* in : ins) values.insert(LabelText(in->labels, d));
      if (values.size() > 1) differ.push_back(d);
    }
    if (ins.size() > 1 && differ == std::vector<std::string>{"seed"}) {
      // Seeds of one configuration: mean and standard deviation of those that are done.
      std::vector<double> v;
      for (const TableInput* in : ins) {
        if (!in->result) continue;
        if (std::optional<double> x = in->result->Number(spec.metric)) v.push_back(*x);
      }
      if (!v.empty()) {
        double mean = 0;
        for (double x : v) mean += x;
        t.cells[rc.first][rc.second] = mean / v.size();
        t.seed_sd[rc.first][rc.second] = SampleStddev(v);
        t.seeds[rc.first][rc.second] = static_cast<int>(v.size());
      }
      continue;
    }
    if (ins.size() > 1) {
      // Name what distinguishes them, so the user knows which --where to add.
      return absl::InvalidArgumentError(absl::StrCat(
          "table: the cell (", t.row_dim, "=", t.rows[rc.first], ", ", spec.cols, "=",
          t.cols[rc.second], ") has ", ins.size(), " jobs", SharedCellReason(ins, "pivot on it")));
    }
    if (ins[0]->result) t.cells[rc.first][rc.second] = ins[0]->result->Number(spec.metric);
    single[rc] = ins[0];
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
                                                     spec.cols, " '", spec.delta, "' (", spec.cols,
                                                     ": ", absl::StrJoin(t.cols, ", "), ")"));
    }
    const size_t ref = it->second;
    std::set<std::string> notes;
    for (size_t r = 0; r < t.rows.size(); ++r) {
      const std::optional<double> base = t.cells[r][ref];
      // The baseline's units, decoded once for the whole row.
      auto b = single.find({r, ref});
      const std::optional<EvalUnits> ub =
          b != single.end() && b->second->result ? b->second->result->Units() : std::nullopt;
      for (size_t c = 0; c < t.cols.size(); ++c) {
        if (c == ref) continue;
        t.is_delta[r][c] = true;
        if (!base || !t.cells[r][c]) {
          t.cells[r][c].reset();
          continue;
        }
        t.cells[r][c] = *t.cells[r][c] - *base;
        // Paired bootstrap where both cells are one job with per-unit results.
        auto a = single.find({r, c});
        if (a == single.end() || b == single.end() || !a->second->result || !b->second->result) {
          continue;
        }
        std::optional<EvalUnits> ua = a->second->result->Units();
        if (!ua || !ub) {
          notes.insert("no interval where a result has no per-unit values (older results)");
          continue;
        }
        std::string metric = spec.metric;
        // auto: ppl for LAMBADA documents, token_ppl for text (wikitext documents, windows).
        if (metric == "auto")
          metric = ua->kind == "document" && ua->words.empty() ? "ppl" : "token_ppl";
        if (!IsUnitMetric(metric)) {
          notes.insert(absl::StrCat("no interval for ", metric,
                                    " (intervals: acc, ppl, loglik_sum, token_ppl, word_ppl, "
                                    "byte_ppl, bits_per_byte)"));
          continue;
        }
        absl::StatusOr<PairedComparison> cmp =
            PairedBootstrap(*ua, *ub, metric, spec.resamples, spec.seed, spec.level);
        if (!cmp.ok()) {
          notes.insert(
              absl::StrCat("no interval in row ", t.rows[r], ": ", cmp.status().message()));
          continue;
        }
        t.compared[r][c] = *cmp;
      }
    }
    t.notes.assign(notes.begin(), notes.end());
  }
  t.placeholders = placeholders;
  if (placeholders > 0) t.notes.insert(t.notes.begin(), PlaceholderNote(placeholders, results));
  return t;
}

std::string PlaceholderNote(int placeholders, int results) {
  return absl::StrCat("PLACEHOLDERS: ", placeholders, " of the ", results,
                      " results come from the fake evaluator (--evaluator fake); their metrics "
                      "are not measurements");
}

namespace {

std::string Num(const std::optional<double>& v, bool delta) {
  if (!v) return "";
  if (delta) return absl::StrFormat("%+.6g", *v);
  return absl::StrFormat("%.6g", *v);
}

// A cell as text: the value; ± the sd across seeds; for a compared delta cell the ratio and
// both intervals, and `*` when the difference's interval excludes zero.
std::string CellText(const Table& t, size_t r, size_t c) {
  std::string s = Num(t.cells[r][c], t.is_delta[r][c]);
  if (s.empty()) return s;
  if (t.seed_sd[r][c]) {
    absl::StrAppend(&s, " ± ", absl::StrFormat("%.3g", *t.seed_sd[r][c]), " (", t.seeds[r][c],
                    " seeds)");
  }
  if (const auto& cmp = t.compared[r][c]) {
    absl::StrAppend(
        &s,
        absl::StrFormat(" [%+.4g, %+.4g] ×%.4g [%.4g, %.4g]", cmp->diff_ci.lo, cmp->diff_ci.hi,
                        cmp->ratio, cmp->ratio_ci.lo, cmp->ratio_ci.hi),
        cmp->significant ? " *" : "");
  }
  return s;
}

std::string Caption(const Table& t) {
  std::string metric = t.metric == "auto" ? "ppl (LAMBADA) / token_ppl (text tasks)" : t.metric;
  std::string c =
      absl::StrCat(metric, t.delta.empty() ? "" : absl::StrCat(" (difference from ", t.delta, ")"));
  bool any = false;
  int resamples = 0;
  double level = 0;
  for (const auto& row : t.compared) {
    for (const auto& cmp : row) {
      if (cmp) {
        any = true;
        resamples = cmp->resamples;
        level = cmp->level;
      }
    }
  }
  if (any) {
    absl::StrAppend(&c, "; [", absl::StrFormat("%g", 100 * level),
                    "% paired-bootstrap interval of the difference] ×ratio [its interval], ",
                    resamples,
                    " resamples over the same documents/windows; * = the "
                    "difference's interval excludes 0");
  }
  for (const std::string& n : t.notes) absl::StrAppend(&c, "\n", n);
  return c;
}

std::string Corner(const Table& t) { return absl::StrCat(t.row_dim, " \\ ", t.col_dim); }

std::string LatexEscape(const std::string& s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '&':
      case '%':
      case '$':
      case '#':
      case '_':
      case '{':
      case '}':
        out += '\\';
        out += c;
        break;
      case '~':
        out += "\\textasciitilde{}";
        break;
      case '^':
        out += "\\textasciicircum{}";
        break;
      case '\\':
        out += "\\textbackslash{}";
        break;
      default:
        out += c;
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

absl::Status CheckTableFormat(const std::string& format) {
  for (const char* f : {"md", "csv", "latex", "json", "html"}) {
    if (format == f) return absl::OkStatus();
  }
  return absl::InvalidArgumentError(
      absl::StrCat("table: unknown format '", format, "' (md, csv, latex, json, html)"));
}

absl::StatusOr<std::string> FormatTable(const Table& t, const std::string& format) {
  KV_RETURN_IF_ERROR(CheckTableFormat(format));
  std::string out;
  const std::string caption = Caption(t);
  if (format == "md") {
    // Columns padded to their widest cell, so the table also reads aligned in a terminal.
    std::vector<std::vector<std::string>> grid;
    grid.push_back({MdEscape(Corner(t))});
    for (const std::string& c : t.cols) grid[0].push_back(MdEscape(c));
    for (size_t r = 0; r < t.rows.size(); ++r) {
      grid.push_back({MdEscape(t.rows[r])});
      for (size_t c = 0; c < t.cols.size(); ++c) grid.back().push_back(CellText(t, r, c));
    }
    auto width = [](const std::string& s) {  // display columns: count UTF-8 lead bytes
      size_t w = 0;
      for (unsigned char ch : s) w += (ch & 0xC0) != 0x80;
      return w;
    };
    std::vector<size_t> w(t.cols.size() + 1, 3);
    for (const auto& row : grid) {
      for (size_t c = 0; c < row.size(); ++c) w[c] = std::max(w[c], width(row[c]));
    }
    for (size_t r = 0; r < grid.size(); ++r) {
      out += "|";
      for (size_t c = 0; c < grid[r].size(); ++c) {
        const std::string pad(w[c] - width(grid[r][c]), ' ');
        out += c == 0 ? absl::StrCat(" ", grid[r][c], pad, " |")
                      : absl::StrCat(" ", pad, grid[r][c], " |");
      }
      out += "\n";
      if (r == 0) {
        out += "|";
        for (size_t c = 0; c < w.size(); ++c) {
          out +=
              absl::StrCat(" ", std::string(w[c] - (c == 0 ? 0 : 1), '-'), c == 0 ? "" : ":", " |");
        }
        out += "\n";
      }
    }
    absl::StrAppend(&out, "\n", caption, "\n");
    return out;
  }
  if (format == "html") {
    // The md table's cells as an HTML fragment: a header row, a row header per row, the caption
    // (one line per note) under the table.
    absl::StrAppend(&out, "<table class=\"comparison\">\n<thead><tr><th scope=\"col\">",
                    XmlEscape(Corner(t)), "</th>");
    for (const std::string& c : t.cols) {
      absl::StrAppend(&out, "<th scope=\"col\">", XmlEscape(c), "</th>");
    }
    absl::StrAppend(&out, "</tr></thead>\n<tbody>\n");
    for (size_t r = 0; r < t.rows.size(); ++r) {
      absl::StrAppend(&out, "<tr><th scope=\"row\">", XmlEscape(t.rows[r]), "</th>");
      for (size_t c = 0; c < t.cols.size(); ++c) {
        const auto& cmp = t.compared[r][c];
        const char* cls =
            t.is_delta[r][c] ? (cmp && cmp->significant ? "delta significant" : "delta") : "value";
        absl::StrAppend(&out, "<td class=\"", cls, "\">", XmlEscape(CellText(t, r, c)), "</td>");
      }
      absl::StrAppend(&out, "</tr>\n");
    }
    absl::StrAppend(&out, "</tbody>\n</table>\n<p class=\"caption\">",
                    absl::StrJoin(absl::StrSplit(caption, '\n'), "<br>",
                                  [](std::string* o, absl::string_view line) {
                                    o->append(XmlEscape(std::string(line)));
                                  }),
                    "</p>\n");
    return out;
  }
  if (format == "csv") {
    out = CsvField(Corner(t));
    for (const std::string& c : t.cols) absl::StrAppend(&out, ",", CsvField(c));
    absl::StrAppend(&out, "\n");
    for (size_t r = 0; r < t.rows.size(); ++r) {
      absl::StrAppend(&out, CsvField(t.rows[r]));
      for (size_t c = 0; c < t.cols.size(); ++c) {
        absl::StrAppend(&out, ",", CsvField(CellText(t, r, c)));
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
        const std::string v = CellText(t, r, c);
        absl::StrAppend(&out, " & ", v.empty() ? "--" : LatexEscape(v));
      }
      absl::StrAppend(&out, " \\\\\n");
    }
    absl::StrAppend(&out, "\\bottomrule\n\\end{tabular}\n% ", LatexEscape(caption), "\n");
    return out;
  }
  if (format == "json") {
    nlohmann::json cells = nlohmann::json::array();
    nlohmann::json details = nlohmann::json::array();
    for (size_t r = 0; r < t.rows.size(); ++r) {
      nlohmann::json row = nlohmann::json::array();
      nlohmann::json drow = nlohmann::json::array();
      for (size_t c = 0; c < t.cols.size(); ++c) {
        const auto& v = t.cells[r][c];
        row.push_back(v ? nlohmann::json(*v) : nlohmann::json(nullptr));
        nlohmann::json d = nlohmann::json::object();
        if (t.seed_sd[r][c]) {
          d["seed_sd"] = *t.seed_sd[r][c];
          d["seeds"] = t.seeds[r][c];
        }
        if (const auto& cmp = t.compared[r][c]) {
          d["value"] = cmp->a;
          d["baseline"] = cmp->base;
          d["diff"] = cmp->diff;
          d["diff_ci"] = {cmp->diff_ci.lo, cmp->diff_ci.hi};
          d["ratio"] = cmp->ratio;
          d["ratio_ci"] = {cmp->ratio_ci.lo, cmp->ratio_ci.hi};
          d["significant"] = cmp->significant;
          d["level"] = cmp->level;
          d["resamples"] = cmp->resamples;
          d["seed"] = cmp->seed;
        }
        drow.push_back(d);
      }
      cells.push_back(row);
      details.push_back(drow);
    }
    nlohmann::json j = {
        {"rows_dim", t.row_dim},
        {"cols_dim", t.col_dim},
        {"metric", t.metric},
        {"delta", t.delta.empty() ? nlohmann::json(nullptr) : nlohmann::json(t.delta)},
        {"rows", t.rows},
        {"cols", t.cols},
        {"cells", cells},
        {"details", details},
        {"notes", t.notes}};
    return j.dump(2) + "\n";
  }
  return absl::InternalError(absl::StrCat("table: format '", format, "' has no writer"));
}

}  // namespace kvsweep
