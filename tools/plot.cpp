#include "plot.hpp"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>

namespace spaattn::tools {
namespace {

// The plot area inside a 680 x 420 canvas; the legend sits right of it.
constexpr double kWidth = 680, kHeight = 420;
constexpr double kLeft = 70, kRight = 470, kTop = 20, kBottom = 360;

// Colours that stay distinguishable for the common colour-vision deficiencies (Okabe-Ito).
constexpr std::array<const char*, 8> kColours = {"#000000", "#e69f00", "#56b4e9", "#009e73",
                                                 "#d55e00", "#0072b2", "#cc79a7", "#f0e442"};

std::string fmt(const char* format, double a) {
  char buf[64];
  std::snprintf(buf, sizeof buf, format, a);
  return buf;
}

std::string xml_text(const std::string& s) {
  std::string out;
  for (const char c : s) {
    if (c == '<')
      out += "&lt;";
    else if (c == '>')
      out += "&gt;";
    else if (c == '&')
      out += "&amp;";
    else if (c == '"')
      out += "&quot;";
    else
      out += c;
  }
  return out;
}

}  // namespace

std::vector<double> axis_ticks(double max, int target) {
  if (!(max > 0) || !std::isfinite(max)) return {0.0, 1.0};
  const double raw = max / std::max(target, 1);
  const double mag = std::pow(10.0, std::floor(std::log10(raw)));
  double step = 10 * mag;
  for (const double m : {1.0, 2.0, 5.0})
    if (m * mag >= raw * (1 - 1e-12)) {
      step = m * mag;
      break;
    }
  const int n = static_cast<int>(std::ceil(max / step - 1e-9));
  std::vector<double> ticks;
  // Each tick is rounded to the step's decimals so that labels read 0.3, not 0.30000000000000004.
  const double scale = std::pow(10.0, std::max(0.0, -std::floor(std::log10(step))) + 1);
  for (int i = 0; i <= n; ++i) ticks.push_back(std::round(i * step * scale) / scale);
  return ticks;
}

std::string frontier_svg(const std::vector<PlotSeries>& series) {
  double ymax = 0;
  for (const auto& s : series)
    for (const auto& [x, y] : s.points)
      if (std::isfinite(y)) ymax = std::max(ymax, y);
  const std::vector<double> xticks = axis_ticks(1.0);
  const std::vector<double> yticks = axis_ticks(ymax);
  const double ytop = yticks.back();
  auto px = [&](double x) { return kLeft + std::clamp(x, 0.0, 1.0) * (kRight - kLeft); };
  auto py = [&](double y) { return kBottom - std::clamp(y / ytop, 0.0, 1.0) * (kBottom - kTop); };

  std::string svg = fmt("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\"", kWidth) +
                    fmt(" height=\"%.0f\"", kHeight) + fmt(" viewBox=\"0 0 %.0f", kWidth) +
                    fmt(" %.0f\"", kHeight) +
                    " font-family=\"sans-serif\" font-size=\"12\">\n"
                    "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n";

  svg += "<g class=\"axes\" stroke=\"black\" fill=\"none\">\n";
  svg += fmt("<line x1=\"%.1f\"", kLeft) + fmt(" y1=\"%.1f\"", kBottom) +
         fmt(" x2=\"%.1f\"", kRight) + fmt(" y2=\"%.1f\"/>\n", kBottom);
  svg += fmt("<line x1=\"%.1f\"", kLeft) + fmt(" y1=\"%.1f\"", kBottom) +
         fmt(" x2=\"%.1f\"", kLeft) + fmt(" y2=\"%.1f\"/>\n", kTop);
  for (const double t : xticks)
    svg += fmt("<line class=\"tick\" x1=\"%.1f\"", px(t)) + fmt(" y1=\"%.1f\"", kBottom) +
           fmt(" x2=\"%.1f\"", px(t)) + fmt(" y2=\"%.1f\"/>\n", kBottom + 5);
  for (const double t : yticks)
    svg += fmt("<line class=\"tick\" x1=\"%.1f\"", kLeft - 5) + fmt(" y1=\"%.1f\"", py(t)) +
           fmt(" x2=\"%.1f\"", kLeft) + fmt(" y2=\"%.1f\"/>\n", py(t));
  svg += "</g>\n<g class=\"tick-labels\" fill=\"black\">\n";
  for (const double t : xticks)
    svg += fmt("<text x=\"%.1f\"", px(t)) +
           fmt(" y=\"%.1f\" text-anchor=\"middle\">", kBottom + 18) + fmt("%g</text>\n", t);
  for (const double t : yticks)
    svg += fmt("<text x=\"%.1f\"", kLeft - 8) + fmt(" y=\"%.1f\" text-anchor=\"end\"", py(t) + 4) +
           fmt(">%g</text>\n", t);
  svg += "</g>\n";
  svg += fmt("<text class=\"x-label\" x=\"%.1f\"", (kLeft + kRight) / 2) +
         fmt(" y=\"%.1f\" text-anchor=\"middle\">", kBottom + 40) +
         "achieved density (share of query-key pairs computed)</text>\n";
  svg += fmt("<text class=\"y-label\" x=\"%.1f\"", 18) +
         fmt(" y=\"%.1f\" text-anchor=\"middle\"", (kTop + kBottom) / 2) +
         fmt(" transform=\"rotate(-90 18 %.1f)\">", (kTop + kBottom) / 2) +
         "relative L2 error against dense</text>\n";

  for (size_t i = 0; i < series.size(); ++i) {
    const char* colour = kColours[i % kColours.size()];
    std::vector<std::pair<double, double>> pts = series[i].points;
    std::erase_if(pts, [](const auto& p) { return !std::isfinite(p.first + p.second); });
    std::sort(pts.begin(), pts.end());
    svg += "<g class=\"series\" data-method=\"" + xml_text(series[i].name) + "\" stroke=\"" +
           colour + "\" fill=\"" + colour + "\">\n";
    std::string coords;
    for (const auto& [x, y] : pts)
      coords += (coords.empty() ? "" : " ") + fmt("%.1f", px(x)) + fmt(",%.1f", py(y));
    if (pts.size() > 1)
      svg += "<polyline fill=\"none\" stroke-width=\"1.5\" points=\"" + coords + "\"/>\n";
    for (const auto& [x, y] : pts)
      svg += fmt("<circle cx=\"%.1f\"", px(x)) + fmt(" cy=\"%.1f\" r=\"3.5\"/>\n", py(y));
    svg += "</g>\n";
  }

  svg += "<g class=\"legend\">\n";
  for (size_t i = 0; i < series.size(); ++i) {
    const char* colour = kColours[i % kColours.size()];
    const double y = kTop + 10 + 20 * static_cast<double>(i);
    svg += fmt("<line x1=\"%.1f\"", kRight + 20) + fmt(" y1=\"%.1f\"", y) +
           fmt(" x2=\"%.1f\"", kRight + 44) + fmt(" y2=\"%.1f\"", y) + " stroke=\"" + colour +
           "\" stroke-width=\"1.5\"/>\n";
    svg += fmt("<circle cx=\"%.1f\"", kRight + 32) + fmt(" cy=\"%.1f\" r=\"3.5\"", y) + " fill=\"" +
           colour + "\"/>\n";
    svg += fmt("<text x=\"%.1f\"", kRight + 50) + fmt(" y=\"%.1f\">", y + 4) +
           xml_text(series[i].name) + "</text>\n";
  }
  svg += "</g>\n</svg>\n";
  return svg;
}

}  // namespace spaattn::tools
