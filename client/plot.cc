#include "client/plot.h"

#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cmath>
#include <csignal>
#include <filesystem>
#include <map>
#include <set>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/file_util.h"
#include "common/subprocess.h"
#include "spec/method_family.h"
#include "spec/method_spec.h"

namespace kvsweep {

namespace {

// ---- Data ----------------------------------------------------------------------------------

// The method's bits per code: quant and hybrid; `none` is the uncompressed cache, which the
// ledger counts at 16 bits per element. Rank codes keep 16-bit coefficients of fewer dimensions,
// so "bits" does not describe them. A method with K and V apart (or layer overrides) is placed
// by its primary spec, the keys' where they are compressed: what the attention diagnostics
// (the flip rate: keys only) measure.
std::optional<double> MethodBits(const nlohmann::json& labels) {
  absl::StatusOr<KvMethod> kv = ParseKvMethod(LabelText(labels, "method_spec"));
  if (!kv.ok()) return std::nullopt;
  const MethodSpec& m = kv->primary();
  if (!m.compresses_k() && !m.compresses_v()) return 16;
  std::optional<int> bits = MethodNumber(m, "bits");
  if (!bits) return std::nullopt;
  return *bits;
}

// x (or y) of one job: a label that is a number, the method's bits, or a number in the result.
std::optional<double> AxisValue(const TableInput& in, const std::string& name) {
  if (name == "bits") return MethodBits(in.labels);
  if (name == "budget" || name == "kv_heads" || name == "seed") {
    double v;
    if (absl::SimpleAtod(LabelText(in.labels, name), &v)) return v;
    return std::nullopt;
  }
  if (!in.result) return std::nullopt;
  return in.result->Number(name);
}

std::string ResolveMetric(const JobResult& result, const std::string& metric) {
  return metric == "auto" ? result.QualityMetric() : metric;
}

bool Known(const std::string& d) {
  const auto& dims = TableDimensions();
  return std::find(dims.begin(), dims.end(), d) != dims.end();
}

// Labels whose values differ among `ins`.
std::vector<std::string> Differing(const std::vector<const TableInput*>& ins) {
  std::vector<std::string> differ;
  for (const std::string& d : TableDimensions()) {
    std::set<std::string> values;
    for (const TableInput* in : ins) values.insert(LabelText(in->labels, d));
    if (values.size() > 1) differ.push_back(d);
  }
  return differ;
}

// The position of `v` in `seen`, appended if new (first-seen order).
size_t IndexOf(std::vector<std::string>* seen, const std::string& v) {
  auto it = std::find(seen->begin(), seen->end(), v);
  if (it != seen->end()) return it - seen->begin();
  seen->push_back(v);
  return seen->size() - 1;
}

// Panels per row, unless the models-by-tasks grid asks for fewer.
constexpr int kMaxCols = 3;

std::string Plural(size_t n, const char* one, const char* many) {
  return absl::StrCat(n, " ", n == 1 ? one : many);
}

}  // namespace

absl::StatusOr<Plot> BuildPlot(const std::vector<TableInput>& inputs, const PlotSpec& spec) {
  if (!Known(spec.series)) {
    return absl::InvalidArgumentError(
        absl::StrCat("plot: unknown --series '", spec.series,
                     "' (known: ", absl::StrJoin(TableDimensions(), ", "), ")"));
  }
  for (const auto& [k, v] : spec.where) {
    if (!Known(k)) {
      return absl::InvalidArgumentError(absl::StrCat("plot: --where: unknown label '", k, "'"));
    }
  }
  std::vector<const TableInput*> kept;
  for (const TableInput& in : inputs) {
    bool keep = true;
    for (const auto& [k, v] : spec.where) keep = keep && LabelText(in.labels, k) == v;
    if (keep) kept.push_back(&in);
  }
  if (kept.empty()) {
    return absl::InvalidArgumentError(
        inputs.empty() ? "plot: the sweep has no jobs"
                       : "plot: no jobs match (check the sweep name and --where)");
  }
  std::vector<const TableInput*> done;
  for (const TableInput* in : kept) {
    if (in->result) done.push_back(in);
  }
  if (done.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("plot: no results yet (", Plural(kept.size(), "job", "jobs"), ", none done)"));
  }
  auto varies = [&](const std::string& d) {
    std::set<std::string> values;
    for (const TableInput* in : done) values.insert(LabelText(in->labels, d));
    return values.size() > 1;
  };
  // Panels: model, and task when there are several; never the series' own label.
  std::vector<std::string> panel_dims;
  for (const char* d : {"model", "task"}) {
    if (d == spec.series) continue;
    if (std::string(d) == "model" || varies(d)) panel_dims.push_back(d);
  }
  auto panel_of = [&](const TableInput* in) {
    std::vector<std::string> p;
    for (const std::string& d : panel_dims) p.push_back(LabelText(in->labels, d));
    return absl::StrJoin(p, ", ");
  };
  // Series: the --series label, plus what would otherwise put two cache layouts on one line
  // (labels that vary inside a panel: two models' native KV-head counts do not split a line).
  auto varies_in_a_panel = [&](const std::string& d) {
    std::map<std::string, std::set<std::string>> values;
    for (const TableInput* in : done) values[panel_of(in)].insert(LabelText(in->labels, d));
    return std::any_of(values.begin(), values.end(),
                       [](const auto& v) { return v.second.size() > 1; });
  };
  std::vector<std::string> series_dims = {spec.series};
  for (const char* d : {"kv_heads", "dtype"}) {
    if (d != spec.series && d != spec.x && varies_in_a_panel(d)) series_dims.push_back(d);
  }

  Plot plot;
  plot.x_label = spec.x;
  plot.log_y = spec.log_y;
  size_t no_x = 0, no_y = 0;
  std::set<std::string> no_x_families;
  std::set<std::string> y_metrics;
  bool any_stderr = false, any_seeds = false;
  // panel -> series -> x -> jobs, all in first-seen order.
  struct Cell {
    std::vector<const TableInput*> jobs;
    std::string metric;  // the resolved y metric
  };
  std::vector<std::string> panel_names, models, tasks;
  std::map<std::string, std::pair<size_t, size_t>> panel_cell;   // (model, task) first-seen order
  std::map<std::string, std::vector<std::string>> panel_series;  // in first-seen order
  std::vector<std::string> primaries, secondaries;               // colours, dashes
  std::map<std::tuple<std::string, std::string, double>, Cell> cells;
  std::map<std::string, std::string> panel_metric;
  for (const TableInput* in : done) {
    const std::optional<double> x = AxisValue(*in, spec.x);
    const std::string metric = ResolveMetric(*in->result, spec.y);
    const std::optional<double> y = in->result->Number(metric);
    if (!x) {
      ++no_x;
      no_x_families.insert(LabelText(in->labels, "family"));
    }
    if (!y) ++no_y;
    if (!x || !y) continue;
    std::vector<std::string> rest;
    const std::string panel = panel_of(in);
    const std::string primary = LabelText(in->labels, spec.series);
    for (size_t i = 1; i < series_dims.size(); ++i) {
      rest.push_back(absl::StrCat(series_dims[i], "=", LabelText(in->labels, series_dims[i])));
    }
    const std::string secondary = absl::StrJoin(rest, ", ");
    const std::string series = secondary.empty() ? primary : absl::StrCat(primary, ", ", secondary);
    if (!panel_series.count(panel)) {
      panel_names.push_back(panel);
      panel_cell[panel] = {IndexOf(&models, LabelText(in->labels, "model")),
                           IndexOf(&tasks, LabelText(in->labels, "task"))};
    }
    auto& names = panel_series[panel];
    if (std::find(names.begin(), names.end(), series) == names.end()) names.push_back(series);
    const size_t color = IndexOf(&primaries, primary), dash = IndexOf(&secondaries, secondary);
    if (std::none_of(plot.legend.begin(), plot.legend.end(),
                     [&](const SeriesStyle& st) { return st.name == series; })) {
      plot.legend.push_back({series, color, dash});
    }
    Cell& c = cells[{panel, series, *x}];
    c.jobs.push_back(in);
    c.metric = metric;
    panel_metric.emplace(panel, metric);
    y_metrics.insert(metric);
  }
  if (panel_names.empty()) {
    const bool x_missing = no_x == done.size();
    if (x_missing) {
      return absl::InvalidArgumentError(absl::StrCat(
          "plot: no result has an x value '", spec.x,
          "' (e.g. fraction_total, fraction_payload, fraction_of_native, bits, budget, kv_heads)"));
    }
    return absl::InvalidArgumentError(
        absl::StrCat("plot: no result has a metric '", spec.y,
                     "' (e.g. acc, ppl, token_ppl, word_ppl, bits_per_byte, flip_rate, kl_mean)"));
  }
  // Panels by model and task: one row per model, one column per task, when every model has
  // every task and the tasks fit in a row.
  if (panel_dims.size() == 2 && models.size() * tasks.size() == panel_names.size() &&
      tasks.size() <= static_cast<size_t>(kMaxCols)) {
    std::sort(
        panel_names.begin(), panel_names.end(),
        [&](const std::string& a, const std::string& b) { return panel_cell[a] < panel_cell[b]; });
    plot.columns = static_cast<int>(tasks.size());
  }
  for (const std::string& panel : panel_names) {
    PlotPanel pp;
    pp.title = panel;
    pp.y_label = panel_metric[panel];
    for (const std::string& series : panel_series[panel]) {
      PlotSeries ps;
      ps.name = series;
      for (const SeriesStyle& st : plot.legend) {
        if (st.name == series) {
          ps.color = st.color;
          ps.dash = st.dash;
        }
      }
      for (auto it = cells.lower_bound({panel, series, -HUGE_VAL});
           it != cells.end() && std::get<0>(it->first) == panel && std::get<1>(it->first) == series;
           ++it) {
        const Cell& c = it->second;
        const std::vector<std::string> differ = Differing(c.jobs);
        if (c.jobs.size() > 1 && differ != std::vector<std::string>{"seed"}) {
          // Name what distinguishes them, so the user knows which --where or --series to add.
          return absl::InvalidArgumentError(absl::StrCat(
              "plot: the series '", series, "' in panel '", panel, "' has ", c.jobs.size(),
              " jobs at ", spec.x, "=", TickLabel(std::get<2>(it->first)),
              SharedCellReason(c.jobs, differ.empty() ? "" : "--series " + differ[0])));
        }
        PlotPoint pt;
        pt.x = std::get<2>(it->first);
        pt.seeds = static_cast<int>(c.jobs.size());
        double sum = 0, se_sum = 0;
        int se_n = 0;
        for (const TableInput* in : c.jobs) {
          sum += *in->result->Number(c.metric);
          if (auto se = in->result->Number(c.metric + "_stderr")) {
            se_sum += *se;
            ++se_n;
          }
        }
        pt.y = sum / c.jobs.size();
        // Seeds evaluate the same documents, so their errors do not average out: the bar is
        // the seeds' typical standard error, not that of their mean.
        if (se_n == static_cast<int>(c.jobs.size())) pt.stderr_y = se_sum / se_n;
        any_stderr = any_stderr || pt.stderr_y.has_value();
        any_seeds = any_seeds || pt.seeds > 1;
        if (spec.log_y && pt.y <= 0) {
          return absl::InvalidArgumentError(
              absl::StrCat("plot: --log-y needs positive values, but ", c.metric, " is ",
                           TickLabel(pt.y), " for '", series, "' in panel '", panel, "'"));
        }
        ps.points.push_back(pt);
      }
      pp.series.push_back(std::move(ps));
    }
    plot.panels.push_back(std::move(pp));
  }
  const std::string y_name = absl::StrJoin(y_metrics, " / ");
  plot.title = spec.title.empty() ? absl::StrCat(y_name, " vs ", spec.x) : spec.title;
  if (any_stderr) {
    std::vector<std::string> se;
    for (const std::string& m : y_metrics) se.push_back(m + "_stderr");
    plot.notes.push_back(
        absl::StrCat("error bars: ± one standard error as stored with each result (",
                     absl::StrJoin(se, ", "), ")"));
  } else {
    plot.notes.push_back(
        absl::StrCat("no error bars: the results store no standard error for ", y_name));
  }
  if (any_seeds)
    plot.notes.push_back("points over several seeds: their mean (and mean standard error)");
  if (no_x > 0) {
    plot.notes.push_back(absl::StrCat(
        "left out: ", Plural(no_x, "result", "results"), " without ", spec.x,
        spec.x == "bits"
            ? absl::StrCat(" (", absl::StrJoin(no_x_families, ", "), ": no bits per code)")
            : ""));
  }
  if (no_y > 0) {
    plot.notes.push_back(
        absl::StrCat("left out: ", Plural(no_y, "result", "results"), " without ", y_name));
  }
  if (kept.size() > done.size()) {
    plot.notes.push_back(
        absl::StrCat(Plural(kept.size() - done.size(), "job", "jobs"), " without a result yet"));
  }
  const int placeholders = static_cast<int>(std::count_if(
      done.begin(), done.end(), [](const TableInput* in) { return in->result->IsPlaceholder(); }));
  if (placeholders > 0) {
    plot.notes.insert(plot.notes.begin(),
                      PlaceholderNote(placeholders, static_cast<int>(done.size())));
  }
  return plot;
}

// ---- Axes ----------------------------------------------------------------------------------

namespace {

double NiceStep(double raw) {
  const double p = std::pow(10.0, std::floor(std::log10(raw)));
  const double f = raw / p;
  return (f <= 1 ? 1 : f <= 2 ? 2 : f <= 2.5 ? 2.5 : f <= 5 ? 5 : 10) * p;
}

}  // namespace

std::vector<double> NiceTicks(double lo, double hi, int target) {
  if (!(hi > lo)) {  // one value (or none): a unit-wide range around it
    const double pad = lo == 0 ? 1 : std::abs(lo) * 0.1;
    lo -= pad;
    hi += pad;
  }
  const double step = NiceStep((hi - lo) / std::max(1, target - 1));
  const double first = std::floor(lo / step + 1e-9) * step;
  const double last = std::ceil(hi / step - 1e-9) * step;
  std::vector<double> ticks;
  for (int i = 0;; ++i) {
    double t = first + i * step;
    if (std::abs(t) < step * 1e-9) t = 0;  // no -0 or 1e-17
    ticks.push_back(t);
    if (t >= last - step * 1e-9 || i > 100) break;
  }
  return ticks;
}

std::vector<double> LogTicks(double lo, double hi) {
  int d0 = static_cast<int>(std::floor(std::log10(lo) + 1e-9));
  int d1 = static_cast<int>(std::ceil(std::log10(hi) - 1e-9));
  if (d1 <= d0) d1 = d0 + 1;
  const int stride = (d1 - d0 + 7) / 8;  // at most about eight labelled decades
  std::vector<double> ticks;
  for (int d = d0; d <= d1; d += stride) {
    ticks.push_back(std::pow(10.0, d));
    if (d1 - d0 < 3 && d < d1) {
      ticks.push_back(2 * std::pow(10.0, d));
      ticks.push_back(5 * std::pow(10.0, d));
    }
  }
  if (d1 - d0 < 3) {
    // Trim the 2s and 5s outside the data: the axis then starts and ends at the nearest ones.
    while (ticks.size() > 2 && ticks[1] <= lo * (1 + 1e-9)) ticks.erase(ticks.begin());
    while (ticks.size() > 2 && ticks[ticks.size() - 2] >= hi * (1 - 1e-9)) ticks.pop_back();
  }
  return ticks;
}

std::string TickLabel(double v) {
  if (v == 0) return "0";
  const double a = std::abs(v);
  if (a >= 1e4 || a < 1e-3) {
    int e = static_cast<int>(std::floor(std::log10(a) + 1e-9));
    double m = v / std::pow(10.0, e);
    if (std::abs(m) >= 10 - 1e-9) {
      m /= 10;
      ++e;
    }
    std::string ms = absl::StrFormat("%.3g", m);
    return ms == "1" ? absl::StrCat("1e", e) : absl::StrCat(ms, "e", e);
  }
  return absl::StrFormat("%.6g", v);
}

// ---- SVG -----------------------------------------------------------------------------------

std::string XmlEscape(absl::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (char c : s) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&quot;";
        break;
      case '\'':
        out += "&#39;";  // HTML 4 has no &apos;
        break;
      default:
        if (static_cast<unsigned char>(c) < 0x20 && c != '\t' && c != '\n' && c != '\r') {
          out += '?';
        } else {
          out += c;
        }
    }
  }
  return out;
}

namespace {

// Okabe & Ito's colour-blind-safe palette (yellow left out: unreadable on white); past it the
// colours repeat with dashes.
constexpr const char* kColors[] = {"#0072B2", "#D55E00", "#009E73", "#CC79A7",
                                   "#E69F00", "#56B4E9", "#000000"};
constexpr size_t kNumColors = sizeof(kColors) / sizeof(kColors[0]);
constexpr const char* kDashes[] = {"", "6 3", "2 3", "8 3 2 3"};
constexpr size_t kNumDashes = sizeof(kDashes) / sizeof(kDashes[0]);

// The colour and dash of a style (colours past the palette repeat with the next dash).
const char* Color(size_t color) { return kColors[color % kNumColors]; }
const char* Dash(size_t color, size_t dash) {
  return kDashes[(dash + color / kNumColors) % kNumDashes];
}

// A marker of shape `dash` (circle, square, diamond, triangle) centred on (x, y).
std::string Marker(size_t dash, double x, double y, const char* color, const char* cls) {
  const std::string head = absl::StrCat("<", dash % 4 == 0 ? "circle" : "path", " class=\"", cls,
                                        "\" fill=\"", color, "\" stroke=\"white\" ");
  const double r = 3.5;
  switch (dash % 4) {
    case 0:
      return absl::StrCat(head, "cx=\"", absl::StrFormat("%.2f", x), "\" cy=\"",
                          absl::StrFormat("%.2f", y), "\" r=\"", r, "\"/>");
    case 1:
      return absl::StrCat(head, absl::StrFormat("d=\"M%.2f %.2fh%.1fv%.1fh%.1fz\"/>", x - r, y - r,
                                                2 * r, 2 * r, -2 * r));
    case 2:
      return absl::StrCat(
          head, absl::StrFormat("d=\"M%.2f %.2fl%.1f %.1fl%.1f %.1fl%.1f %.1fz\"/>", x, y - 1.3 * r,
                                1.3 * r, 1.3 * r, -1.3 * r, 1.3 * r, -1.3 * r, -1.3 * r));
    default:
      return absl::StrCat(head, absl::StrFormat("d=\"M%.2f %.2fl%.1f %.1fh%.1fz\"/>", x,
                                                y - 1.2 * r, 1.2 * r, 2.1 * r, -2.4 * r));
  }
}

// Geometry, in SVG user units (= CSS pixels when rendered).
constexpr int kPlotW = 360, kPlotH = 240;  // one panel's data area
constexpr int kPadLeft = 72, kPadRight = 18, kPadTop = 30, kPadBottom = 48;
constexpr int kCellW = kPadLeft + kPlotW + kPadRight;
constexpr int kCellH = kPadTop + kPlotH + kPadBottom;
constexpr int kTitleH = 44, kNoteH = 18;
constexpr int kFontSize = 12;
constexpr int kInset = 8;

int Cols(const Plot& p) {
  if (p.columns > 0) return p.columns;
  return std::min<int>(kMaxCols, std::max<size_t>(1, p.panels.size()));
}
int Rows(const Plot& p) {
  return (static_cast<int>(std::max<size_t>(1, p.panels.size())) + Cols(p) - 1) / Cols(p);
}
// Text width estimate: about 0.6 em per character (UTF-8 continuation bytes not counted).
int TextWidth(const std::string& s, int font = kFontSize) {
  int n = 0;
  for (unsigned char c : s) n += (c & 0xC0) != 0x80;
  return n * font * 6 / 10;
}
int LegendWidth(const Plot& p) {
  int w = 0;
  for (const SeriesStyle& s : p.legend) w = std::max(w, TextWidth(s.name));
  return 24 + 30 + 8 + w + 16;
}

std::string F(double v) { return absl::StrFormat("%.2f", v); }

// Data -> pixel along one axis.
struct Scale {
  double lo = 0, hi = 1;  // domain
  double p0 = 0, p1 = 1;  // pixels (p1 < p0 for y)
  bool log = false;
  double operator()(double v) const {
    const double t = log ? (std::log10(v) - std::log10(lo)) / (std::log10(hi) - std::log10(lo))
                         : (v - lo) / (hi - lo);
    return p0 + t * (p1 - p0);
  }
  bool contains(double v) const {
    const double eps = (hi - lo) * 1e-9;
    return v >= lo - eps && v <= hi + eps && (!log || v > 0);
  }
};

}  // namespace

SvgSize PlotSize(const Plot& plot) {
  const int notes = static_cast<int>(plot.notes.size());
  const int legend_h = 16 + 20 * static_cast<int>(plot.legend.size());
  return {Cols(plot) * kCellW + LegendWidth(plot),
          kTitleH + std::max(Rows(plot) * kCellH, legend_h) + notes * kNoteH + 16};
}

std::string RenderSvg(const Plot& plot) {
  const SvgSize size = PlotSize(plot);
  std::string o;
  absl::StrAppend(&o, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n",
                  "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"", size.width, "\" height=\"",
                  size.height, "\" viewBox=\"0 0 ", size.width, " ", size.height,
                  "\" font-family=\"Liberation Sans, Arial, Helvetica, sans-serif\" font-size=\"",
                  kFontSize, "\">\n");
  absl::StrAppend(&o, "<title>", XmlEscape(plot.title), "</title>\n",
                  "<rect class=\"background\" width=\"100%\" height=\"100%\" fill=\"white\"/>\n",
                  "<text class=\"title\" x=\"", Cols(plot) * kCellW / 2, "\" y=\"28\" ",
                  "text-anchor=\"middle\" font-size=\"16\" font-weight=\"bold\">",
                  XmlEscape(plot.title), "</text>\n");
  const int cols = Cols(plot);
  for (size_t pi = 0; pi < plot.panels.size(); ++pi) {
    const PlotPanel& panel = plot.panels[pi];
    const int left = static_cast<int>(pi % cols) * kCellW + kPadLeft;
    const int top = kTitleH + static_cast<int>(pi / cols) * kCellH + kPadTop;
    // Domains: every point; error bars widen y, but on a log axis at most a decade below the
    // lowest point (a bar reaching 0 or below is cut at the axis, without its cap).
    double x0 = HUGE_VAL, x1 = -HUGE_VAL, y0 = HUGE_VAL, y1 = -HUGE_VAL, ymin = HUGE_VAL;
    for (const PlotSeries& s : panel.series) {
      for (const PlotPoint& p : s.points) {
        x0 = std::min(x0, p.x);
        x1 = std::max(x1, p.x);
        ymin = std::min(ymin, p.y);
        y0 = std::min(y0, p.y);
        y1 = std::max(y1, p.y);
        if (p.stderr_y) y1 = std::max(y1, p.y + *p.stderr_y);
      }
    }
    for (const PlotSeries& s : panel.series) {
      for (const PlotPoint& p : s.points) {
        if (!p.stderr_y) continue;
        const double low = p.y - *p.stderr_y;
        y0 = std::min(y0, plot.log_y ? std::max(low, ymin / 10) : low);
      }
    }
    const std::vector<double> xt = NiceTicks(x0, x1);
    const std::vector<double> yt = plot.log_y ? LogTicks(y0, y1) : NiceTicks(y0, y1);
    // The ticks' range, inset from the frame so that no point sits on it.
    Scale sx{xt.front(), xt.back(), double(left + kInset), double(left + kPlotW - kInset), false};
    Scale sy{yt.front(), yt.back(), double(top + kPlotH - kInset), double(top + kInset),
             plot.log_y};
    absl::StrAppend(&o, "<g class=\"panel\" data-panel=\"", XmlEscape(panel.title), "\">\n");
    absl::StrAppend(&o, "<text class=\"panel-title\" x=\"", left + kPlotW / 2, "\" y=\"", top - 10,
                    "\" text-anchor=\"middle\" font-size=\"13\" font-weight=\"bold\">",
                    XmlEscape(panel.title), "</text>\n");
    // Grid and ticks.
    for (double t : xt) {
      const std::string px = F(sx(t));
      absl::StrAppend(&o, "<line class=\"grid\" x1=\"", px, "\" y1=\"", top, "\" x2=\"", px,
                      "\" y2=\"", top + kPlotH, "\" stroke=\"#e5e5e5\"/>\n",
                      "<g class=\"x-tick\"><line x1=\"", px, "\" y1=\"", top + kPlotH, "\" x2=\"",
                      px, "\" y2=\"", top + kPlotH + 5, "\" stroke=\"black\"/>", "<text x=\"", px,
                      "\" y=\"", top + kPlotH + 18, "\" text-anchor=\"middle\">",
                      XmlEscape(TickLabel(t)), "</text></g>\n");
    }
    for (double t : yt) {
      const std::string py = F(sy(t));
      absl::StrAppend(&o, "<line class=\"grid\" x1=\"", left, "\" y1=\"", py, "\" x2=\"",
                      left + kPlotW, "\" y2=\"", py, "\" stroke=\"#e5e5e5\"/>\n",
                      "<g class=\"y-tick\"><line x1=\"", left - 5, "\" y1=\"", py, "\" x2=\"", left,
                      "\" y2=\"", py, "\" stroke=\"black\"/>", "<text x=\"", left - 8, "\" y=\"",
                      py, "\" text-anchor=\"end\" dominant-baseline=\"middle\">",
                      XmlEscape(TickLabel(t)), "</text></g>\n");
    }
    absl::StrAppend(&o, "<rect class=\"frame\" x=\"", left, "\" y=\"", top, "\" width=\"", kPlotW,
                    "\" height=\"", kPlotH, "\" fill=\"none\" stroke=\"black\"/>\n");
    absl::StrAppend(&o, "<text class=\"axis-label x-label\" x=\"", left + kPlotW / 2, "\" y=\"",
                    top + kPlotH + 38, "\" text-anchor=\"middle\">", XmlEscape(plot.x_label),
                    "</text>\n");
    const std::string y_label =
        plot.log_y ? absl::StrCat(panel.y_label, " (log scale)") : panel.y_label;
    const int ly = top + kPlotH / 2, lx = left - 56;
    absl::StrAppend(&o, "<text class=\"axis-label y-label\" x=\"", lx, "\" y=\"", ly,
                    "\" text-anchor=\"middle\" transform=\"rotate(-90 ", lx, " ", ly, ")\">",
                    XmlEscape(y_label), "</text>\n");
    // Series: error bars under the line, markers on top.
    for (const PlotSeries& s : panel.series) {
      const char* color = Color(s.color);
      const char* dash = Dash(s.color, s.dash);
      absl::StrAppend(&o, "<g class=\"series\" data-series=\"", XmlEscape(s.name), "\">\n");
      for (const PlotPoint& p : s.points) {
        if (!p.stderr_y || *p.stderr_y <= 0) continue;
        const double px = sx(p.x);
        const double hi = p.y + *p.stderr_y, lo = p.y - *p.stderr_y;
        const bool hi_in = sy.contains(hi), lo_in = sy.contains(lo);
        const double phi = hi_in ? sy(hi) : top, plo = lo_in ? sy(lo) : top + kPlotH;
        std::string d = absl::StrCat("M", F(px), " ", F(plo), "V", F(phi));
        if (hi_in) absl::StrAppend(&d, "M", F(px - 4), " ", F(phi), "h8");
        if (lo_in) absl::StrAppend(&d, "M", F(px - 4), " ", F(plo), "h8");
        absl::StrAppend(&o, "<path class=\"errorbar\" d=\"", d, "\" stroke=\"", color,
                        "\" stroke-width=\"1.2\" fill=\"none\"/>\n");
      }
      std::string d;
      for (const PlotPoint& p : s.points) {
        absl::StrAppend(&d, d.empty() ? "M" : "L", F(sx(p.x)), " ", F(sy(p.y)));
      }
      absl::StrAppend(&o, "<path class=\"line\" d=\"", d, "\" stroke=\"", color,
                      "\" stroke-width=\"2\" fill=\"none\"",
                      *dash ? absl::StrCat(" stroke-dasharray=\"", dash, "\"") : "", "/>\n");
      for (const PlotPoint& p : s.points) {
        absl::StrAppend(&o, Marker(s.dash, sx(p.x), sy(p.y), color, "marker"), "\n");
      }
      absl::StrAppend(&o, "</g>\n");
    }
    absl::StrAppend(&o, "</g>\n");
  }
  // Legend, right of the panels.
  const int lx = cols * kCellW + 16;
  int ly = kTitleH + kPadTop;
  absl::StrAppend(&o, "<g class=\"legend\">\n");
  for (size_t i = 0; i < plot.legend.size(); ++i, ly += 20) {
    const SeriesStyle& st = plot.legend[i];
    const char* color = Color(st.color);
    const char* dash = Dash(st.color, st.dash);
    absl::StrAppend(&o, "<g class=\"legend-entry\"><line x1=\"", lx, "\" y1=\"", ly, "\" x2=\"",
                    lx + 28, "\" y2=\"", ly, "\" stroke=\"", color, "\" stroke-width=\"2\"",
                    *dash ? absl::StrCat(" stroke-dasharray=\"", dash, "\"") : "", "/>",
                    Marker(st.dash, lx + 14, ly, color, "legend-marker"), "<text x=\"", lx + 36,
                    "\" y=\"", ly, "\" dominant-baseline=\"middle\">", XmlEscape(st.name),
                    "</text></g>\n");
  }
  absl::StrAppend(&o, "</g>\n");
  int ny =
      8 + kTitleH + std::max(Rows(plot) * kCellH, 16 + 20 * static_cast<int>(plot.legend.size()));
  for (const std::string& n : plot.notes) {
    absl::StrAppend(&o, "<text class=\"note\" x=\"", kPadLeft, "\" y=\"", ny,
                    "\" font-size=\"11\" fill=\"#444\">", XmlEscape(n), "</text>\n");
    ny += kNoteH;
  }
  absl::StrAppend(&o, "</svg>\n");
  return o;
}

// ---- PNG -----------------------------------------------------------------------------------

std::string FindChromium() {
  if (const char* c = std::getenv("KVSWEEP_CHROMIUM"); c != nullptr && *c != '\0') {
    return ::access(c, X_OK) == 0 ? std::string(c) : "";
  }
  const char* path = std::getenv("PATH");
  if (path == nullptr) return "";
  for (const char* name :
       {"chromium", "chromium-browser", "google-chrome", "google-chrome-stable"}) {
    for (absl::string_view dir : absl::StrSplit(path, ':', absl::SkipEmpty())) {
      const std::string c = JoinPath(dir, name);
      if (::access(c.c_str(), X_OK) == 0) return c;
    }
  }
  return "";
}

namespace {

// A file: URL for an absolute path (bytes outside the unreserved set and '/' percent-encoded).
std::string FileUrl(const std::string& path) {
  std::string out = "file://";
  for (unsigned char c : path) {
    if (std::isalnum(c) || c == '/' || c == '-' || c == '_' || c == '.' || c == '~') {
      out += static_cast<char>(c);
    } else {
      out += absl::StrFormat("%%%02X", c);
    }
  }
  return out;
}

bool IsPng(const std::string& bytes) {
  return bytes.size() > 24 && bytes.compare(0, 8, "\x89PNG\r\n\x1a\n", 8) == 0;
}

}  // namespace

absl::Status RenderPng(const std::string& chromium, const std::string& svg_path,
                       const std::string& png_path, SvgSize size) {
  if (chromium.empty()) {
    return absl::FailedPreconditionError(
        "--png needs headless Chromium and found none (KVSWEEP_CHROMIUM, or chromium, "
        "chromium-browser, google-chrome on PATH): install chromium (Debian: apt-get install "
        "chromium) or set KVSWEEP_CHROMIUM to its path");
  }
  const std::string svg = RealPath(svg_path);
  if (svg.empty()) return absl::NotFoundError(absl::StrCat("png: no file '", svg_path, "'"));
  char tmpl[] = "/tmp/kvsweep-png-XXXXXX";
  if (::mkdtemp(tmpl) == nullptr) {
    return absl::InternalError("png: cannot create a temporary directory");
  }
  const std::string dir = tmpl;
  struct Cleanup {
    std::string dir;
    ~Cleanup() {
      std::error_code ec;
      std::filesystem::remove_all(dir, ec);
    }
  } cleanup{dir};
  const std::string shot = JoinPath(dir, "shot.png"), log = JoinPath(dir, "chromium.log");
  Subprocess::Options so;
  so.stdout_path = so.stderr_path = log;
  // A profile of its own (no first-run state, no clash with a running browser); no sandbox,
  // which Chromium refuses to set up as root and which guards nothing for our own file; shared
  // memory in /tmp, since containers often have a small /dev/shm.
  absl::StatusOr<std::unique_ptr<Subprocess>> p = Subprocess::Spawn(
      {chromium, "--headless", "--disable-gpu", "--no-sandbox", "--disable-dev-shm-usage",
       "--hide-scrollbars", "--no-first-run", "--user-data-dir=" + JoinPath(dir, "profile"),
       "--screenshot=" + shot, absl::StrCat("--window-size=", size.width, ",", size.height),
       FileUrl(svg)},
      so);
  if (!p.ok()) return p.status();
  std::optional<int> st = (*p)->Wait(std::chrono::seconds(120));
  auto tail = [&] {
    std::string t = ReadFile(log).value_or("");
    if (t.size() > 300) t = t.substr(t.size() - 300);
    for (char& c : t) {
      if (c == '\n' || c == '\r') c = ' ';
    }
    return t;
  };
  if (!st) {
    (*p)->Signal(SIGKILL);
    (*p)->Wait(std::chrono::seconds(10));
    return absl::DeadlineExceededError(
        absl::StrCat("png: ", chromium, " did not finish within 120 s: ", tail()));
  }
  absl::StatusOr<std::string> bytes = ReadFile(shot);
  if (!bytes.ok() || !IsPng(*bytes)) {
    return absl::InternalError(
        absl::StrCat("png: ", chromium, " (", DescribeWaitStatus(*st), ") wrote no PNG: ", tail()));
  }
  return WriteUserFile(png_path, *bytes);
}

absl::Status WriteUserFile(const std::string& path, absl::string_view data) {
  absl::Status w = WriteFileAtomic(path, data);
  if (w.ok()) return w;
  const absl::string_view msg = w.message();
  const size_t cause = msg.rfind("': ");
  return absl::Status(w.code(), absl::StrCat("cannot write '", path, "'",
                                             cause == absl::string_view::npos
                                                 ? absl::StrCat(": ", msg)
                                                 : std::string(msg.substr(cause + 1))));
}

absl::StatusOr<std::string> WritePlot(const std::string& sweep,
                                      const std::vector<TableInput>& inputs,
                                      const PlotOptions& options, std::vector<std::string>* notes) {
  PlotSpec spec = options.spec;
  absl::StatusOr<Plot> plot = BuildPlot(inputs, spec);
  if (!plot.ok()) return plot.status();
  if (spec.title.empty()) plot->title = absl::StrCat(sweep, ": ", plot->title);
  const std::string out = options.out.empty() ? sweep + ".svg" : options.out;
  if (absl::Status s = WriteUserFile(out, RenderSvg(*plot)); !s.ok()) return s;
  size_t series = 0, points = 0;
  for (const PlotPanel& p : plot->panels) {
    series += p.series.size();
    for (const PlotSeries& s : p.series) points += s.points.size();
  }
  std::string what =
      absl::StrCat("wrote ", out, " (", Plural(plot->panels.size(), "panel", "panels"), ", ",
                   Plural(series, "line", "lines"), ", ", Plural(points, "point", "points"), ")");
  *notes = plot->notes;
  if (!options.png.empty()) {
    absl::Status s = RenderPng(FindChromium(), out, options.png, PlotSize(*plot));
    if (!s.ok()) {
      return absl::Status(s.code(), absl::StrCat(s.message(), " (", what, ")"));
    }
    absl::StrAppend(&what, " and ", options.png);
  }
  return what;
}

}  // namespace kvsweep
