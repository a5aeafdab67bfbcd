// `kvsweep plot`: a sweep's results as a figure, hand-written SVG (and PNG through headless
// Chromium). The study's main figure is quality against storage:
//
//   kvsweep plot SWEEP --x fraction_total --y ppl --log-y
//
//   panels = one per model, and per task when the sweep has several (then a row per model and a
//            column per task);
//   series = one line per method family (--series: any label), split further by kv_heads and
//            dtype where those vary within a panel, so that a line never joins two cache layouts;
//   points = one per job, in x order; jobs that differ only in `seed` are one point (their mean);
//   error bars = ± one standard error as stored with each result (`<metric>_stderr`, what
//            `kvsweep table` reads through JobResult::Number); none where the result stores none.
//
// x and y are read like `kvsweep table` reads a metric (JobResult::Number: task metrics, ledger,
// timing, attention diagnostics), or from the labels: `budget`, `kv_heads`, `seed`, and `bits`
// (the method's bits per code: quant and hybrid; `none` at 16; K and V apart: the keys' where
// they are compressed; rank has none and is left out).
// y "auto" is ppl for LAMBADA and token_ppl for the perplexity tasks, like the table's.
#ifndef KVSWEEP_CLIENT_PLOT_H_
#define KVSWEEP_CLIENT_PLOT_H_

#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "client/table.h"

namespace kvsweep {

struct PlotSpec {
  std::string x = "fraction_total";
  std::string y = "auto";
  std::string series = "family";  // a label dimension (TableDimensions())
  std::string title;              // "" = "SWEEP: y vs x"
  bool log_y = false;
  std::vector<std::pair<std::string, std::string>> where;  // label filters (key=value)
};

struct PlotPoint {
  double x = 0, y = 0;
  std::optional<double> stderr_y;  // the stored standard error (mean over seeds)
  int seeds = 1;                   // jobs averaged into this point
};

// A line's look: the colour says the --series value (the family), the dash and marker shape
// the rest of the series' key (kv_heads, dtype), so one family is one colour throughout.
struct SeriesStyle {
  std::string name;
  size_t color = 0, dash = 0;
};

struct PlotSeries {
  std::string name;
  size_t color = 0, dash = 0;
  std::vector<PlotPoint> points;  // ascending x
};

struct PlotPanel {
  std::string title;
  std::string y_label;  // the metric shown (auto resolved)
  std::vector<PlotSeries> series;
};

struct Plot {
  std::string title, x_label;
  bool log_y = false;
  int columns = 0;                  // panels per row; 0: as many as fit, up to three
  std::vector<SeriesStyle> legend;  // every series, first-seen order
  std::vector<PlotPanel> panels;
  std::vector<std::string> notes;  // what the error bars are; jobs left out and why
};

// kInvalidArgument with one line: unknown --series / --where label, no jobs match, no results
// yet, no result has the metric or the x value, --log-y with values <= 0, two jobs that fall on
// the same point of a series without differing only in seed (the message names the labels that
// differ).
absl::StatusOr<Plot> BuildPlot(const std::vector<TableInput>& inputs, const PlotSpec& spec);

struct SvgSize {
  int width = 0, height = 0;
};
SvgSize PlotSize(const Plot& plot);
// A standalone SVG document of PlotSize(plot). Every element a test may look for has a class:
// panel, panel-title, frame, x-tick, y-tick, axis-label, series (data-series = its name), line,
// marker (a circle, square, diamond or triangle), errorbar, legend-entry, note.
std::string RenderSvg(const Plot& plot);

// Text and attribute values of SVG and HTML (plots, `table --format html`, the dashboard): &, <,
// >, " and ' as entities; control characters XML 1.0 does not allow become '?'.
std::string XmlEscape(absl::string_view s);

// Axis ticks: about `target` round values (1, 2, 5 × 10^k steps) spanning [lo, hi]; the first is
// <= lo and the last >= hi. Log ticks: powers of ten spanning [lo, hi] (lo > 0), with 2 and 5
// between them when the range is under three decades.
std::vector<double> NiceTicks(double lo, double hi, int target = 5);
std::vector<double> LogTicks(double lo, double hi);
std::string TickLabel(double v);

// WriteFileAtomic for the files the user names (`plot`, `report` and `export` output), with an
// error that names `path` rather than the temporary beside it that the write went to
// ("cannot write 'PATH': No such file or directory"); the same codes.
absl::Status WriteUserFile(const std::string& path, absl::string_view data);

// Headless Chromium: $KVSWEEP_CHROMIUM, else chromium, chromium-browser, google-chrome,
// google-chrome-stable on PATH. "" if none.
std::string FindChromium();
// Renders `svg_path` to a PNG of width x height at `png_path` (written atomically) with
// `chromium --headless --screenshot`. kFailedPrecondition when `chromium` is empty, kInternal
// naming the cause (and the end of Chromium's log) when it fails or writes no PNG,
// kDeadlineExceeded after two minutes.
absl::Status RenderPng(const std::string& chromium, const std::string& svg_path,
                       const std::string& png_path, SvgSize size);

struct PlotOptions {
  PlotSpec spec;
  std::string out;  // "" = SWEEP.svg
  std::string png;  // "" = no PNG
};
// `kvsweep plot`: builds the plot, writes the SVG (and the PNG), returns what it wrote as one
// line; notes go to `notes` (one line each). Errors as BuildPlot and RenderPng, and write errors.
absl::StatusOr<std::string> WritePlot(const std::string& sweep,
                                      const std::vector<TableInput>& inputs,
                                      const PlotOptions& options, std::vector<std::string>* notes);

}  // namespace kvsweep

#endif  // KVSWEEP_CLIENT_PLOT_H_
