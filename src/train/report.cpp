#include "train/report.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <sstream>

#include "io/hf_folder.h"

namespace moeforge {
namespace {

std::string escape_html(const std::string& s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '&': out += "&amp;"; break;
      case '"': out += "&quot;"; break;
      default: out += c;
    }
  }
  return out;
}

struct Series {
  std::string name, color;
  std::vector<std::pair<double, double>> points;
};

std::string axis_number(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.4g", v);
  return buf;
}

// A line chart as inline SVG with min/max labels on both axes.
std::string line_chart(const std::string& id, const std::string& title, const std::vector<Series>& series) {
  const double W = 560, Hh = 220, L = 60, R = 10, T = 28, B = 30;
  double x0 = 1e300, x1 = -1e300, y0 = 1e300, y1 = -1e300;
  for (const auto& s : series)
    for (auto [x, y] : s.points) {
      if (!std::isfinite(y)) continue;
      x0 = std::min(x0, x); x1 = std::max(x1, x); y0 = std::min(y0, y); y1 = std::max(y1, y);
    }
  std::ostringstream os;
  os << "<svg id=\"" << id << "\" class=\"chart\" width=\"" << W << "\" height=\"" << Hh
     << "\" viewBox=\"0 0 " << W << " " << Hh << "\" xmlns=\"http://www.w3.org/2000/svg\">"
     << "<text x=\"" << L << "\" y=\"18\" class=\"title\">" << escape_html(title) << "</text>"
     << "<rect x=\"" << L << "\" y=\"" << T << "\" width=\"" << W - L - R << "\" height=\"" << Hh - T - B
     << "\" class=\"frame\"/>";
  if (x0 > x1) {
    os << "<text x=\"" << W / 2 << "\" y=\"" << Hh / 2 << "\" class=\"empty\">no data yet</text></svg>";
    return os.str();
  }
  if (x1 == x0) x1 = x0 + 1;
  if (y1 == y0) { y1 += 0.5; y0 -= 0.5; }
  auto px = [&](double x) { return L + (x - x0) / (x1 - x0) * (W - L - R); };
  auto py = [&](double y) { return T + (y1 - y) / (y1 - y0) * (Hh - T - B); };
  os << "<text x=\"" << L - 4 << "\" y=\"" << T + 10 << "\" class=\"ax\" text-anchor=\"end\">" << axis_number(y1) << "</text>"
     << "<text x=\"" << L - 4 << "\" y=\"" << Hh - B << "\" class=\"ax\" text-anchor=\"end\">" << axis_number(y0) << "</text>"
     << "<text x=\"" << L << "\" y=\"" << Hh - 10 << "\" class=\"ax\">step " << x0 << "</text>"
     << "<text x=\"" << W - R << "\" y=\"" << Hh - 10 << "\" class=\"ax\" text-anchor=\"end\">" << x1 << "</text>";
  int legend = 0;
  for (const auto& s : series) {
    if (s.points.empty()) continue;
    os << "<polyline fill=\"none\" stroke=\"" << s.color << "\" stroke-width=\"1.6\" points=\"";
    for (auto [x, y] : s.points)
      if (std::isfinite(y)) os << px(x) << "," << py(y) << " ";
    os << "\"/>";
    if (s.points.size() == 1 || s.name.find("eval") != std::string::npos)
      for (auto [x, y] : s.points)
        os << "<circle cx=\"" << px(x) << "\" cy=\"" << py(y) << "\" r=\"2.5\" fill=\"" << s.color << "\"/>";
    os << "<text x=\"" << W - R - 4 << "\" y=\"" << T + 14 + 14 * legend++ << "\" fill=\"" << s.color
       << "\" class=\"ax\" text-anchor=\"end\">" << escape_html(s.name) << "</text>";
  }
  os << "</svg>";
  return os.str();
}

// Rows: (layer, expert); columns: logged steps; shade: the expert's share of its layer's tokens
// relative to the uniform share (white = uniform, red = overloaded, blue = starved).
std::string expert_heatmap(const std::vector<nlohmann::json>& records) {
  std::vector<const nlohmann::json*> cols;
  for (const auto& r : records)
    if (r.contains("expert_load")) cols.push_back(&r);
  std::ostringstream os;
  if (cols.empty()) {
    os << "<svg id=\"expert-heatmap\" class=\"chart\" width=\"560\" height=\"60\" xmlns=\"http://www.w3.org/2000/svg\">"
       << "<text x=\"10\" y=\"30\" class=\"empty\">no MoE layers or no data yet</text></svg>";
    return os.str();
  }
  const auto& first = (*cols[0])["expert_load"];
  size_t rows = 0;
  for (const auto& layer : first) rows += layer.size();
  const double cell_w = std::max(2.0, std::min(16.0, 480.0 / cols.size()));
  const double cell_h = std::max(2.0, std::min(10.0, 400.0 / rows));
  const double L = 70, T = 8;
  // Wide enough for the step range below the cells however few steps were logged.
  const double W = std::max(L + cell_w * cols.size() + 10, 240.0), H = T + cell_h * rows + 24;
  // The title is page text above the drawing, which wraps, where an SVG text is cut at the SVG's edge.
  os << "<p class=\"title\">tokens per expert per MoE layer over steps (white = uniform, red = over, blue = under)</p>"
     << "<svg id=\"expert-heatmap\" class=\"chart\" width=\"" << W << "\" height=\"" << H
     << "\" xmlns=\"http://www.w3.org/2000/svg\">";
  for (size_t c = 0; c < cols.size(); ++c) {
    size_t row = 0;
    for (const auto& layer : (*cols[c])["expert_load"]) {
      double total = 0;
      for (const auto& v : layer) total += v.get<double>();
      const double uniform = total / std::max<size_t>(1, layer.size());
      for (const auto& v : layer) {
        double ratio = uniform > 0 ? v.get<double>() / uniform : 1.0;  // 1 = balanced
        double t = std::clamp(std::log2(std::max(ratio, 1e-3)) / 2.0, -1.0, 1.0);
        int r = t > 0 ? 255 : static_cast<int>(255 * (1 + t));
        int g = static_cast<int>(255 * (1 - std::fabs(t)));
        int b = t < 0 ? 255 : static_cast<int>(255 * (1 - t));
        os << "<rect x=\"" << L + c * cell_w << "\" y=\"" << T + row * cell_h << "\" width=\"" << cell_w
           << "\" height=\"" << cell_h << "\" fill=\"rgb(" << r << "," << g << "," << b << ")\"/>";
        ++row;
      }
    }
  }
  size_t row = 0, layer_index = 0;
  for (const auto& layer : first) {
    os << "<text x=\"" << L - 4 << "\" y=\"" << T + row * cell_h + 8 << "\" class=\"ax\" text-anchor=\"end\">MoE "
       << layer_index++ << "</text>";
    row += layer.size();
  }
  os << "<text x=\"" << L << "\" y=\"" << H - 6 << "\" class=\"ax\">step " << (*cols.front())["step"]
     << " ... " << (*cols.back())["step"] << "</text></svg>";
  return os.str();
}

}  // namespace

void RunReport::add(const nlohmann::json& record) { records_.push_back(record); }

std::string RunReport::html(const std::string& status) const {
  // Named as the metrics records name them.
  Series loss{"loss", "#1f77b4", {}}, eval{"eval_loss", "#d62728", {}}, aux{"aux_loss", "#9467bd", {}};
  Series lr{"learning rate", "#2ca02c", {}}, gn{"grad norm", "#ff7f0e", {}}, tps{"tokens/s", "#17becf", {}};
  for (const auto& r : records_) {
    double s = r.value("step", 0.0);
    if (r.contains("loss")) loss.points.emplace_back(s, r["loss"].get<double>());
    if (r.contains("eval_loss")) eval.points.emplace_back(s, r["eval_loss"].get<double>());
    if (r.contains("aux_loss")) aux.points.emplace_back(s, r["aux_loss"].get<double>());
    if (r.contains("lr")) lr.points.emplace_back(s, r["lr"].get<double>());
    if (r.contains("grad_norm")) gn.points.emplace_back(s, r["grad_norm"].get<double>());
    if (r.contains("tokens_per_s")) tps.points.emplace_back(s, r["tokens_per_s"].get<double>());
  }
  std::ostringstream os;
  os << "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>" << escape_html(title_)
     << "</title><style>body{font-family:sans-serif;margin:20px;color:#222}"
        ".chart{border:1px solid #ddd;margin:6px;background:#fff}.title{font-size:13px;font-weight:bold}"
        ".ax{font-size:10px;fill:#555}.frame{fill:none;stroke:#ccc}.empty{font-size:12px;fill:#999}"
        ".grid{display:flex;flex-wrap:wrap}</style></head><body><h1>"
     << escape_html(title_) << "</h1><p id=\"status\">" << escape_html(status) << "</p><div class=\"grid\">"
     << line_chart("loss-chart", "loss", {loss, eval}) << line_chart("aux-chart", "auxiliary loss", {aux})
     << line_chart("lr-chart", "learning rate", {lr}) << line_chart("gradnorm-chart", "grad norm", {gn})
     << line_chart("throughput-chart", "throughput (tokens/s)", {tps}) << "</div>"
     << expert_heatmap(records_) << "</body></html>\n";
  return os.str();
}

void RunReport::write(const std::string& path, const std::string& status) const {
  atomic_write_file(path, html(status));
}

}  // namespace moeforge
