// The speed-error frontier of `spaattn eval --plot`: a small self-contained SVG, written by hand
// so that the tool needs no plotting library.
#pragma once
#include <string>
#include <utility>
#include <vector>

namespace spaattn::tools {

struct PlotSeries {
  std::string name;
  std::vector<std::pair<double, double>> points;  // (achieved density, relative L2 error)
};

// Ticks 0, step, 2 step, ... covering [0, max] with step 1, 2 or 5 times a power of ten and
// about `target` intervals; the last tick is >= max. max <= 0 gives {0, 1}.
std::vector<double> axis_ticks(double max, int target = 5);

// An SVG document: x = density in [0, 1], y = relative L2 error from 0 to the largest value,
// one polyline with a marker per point for each series (points sorted by density), axes with
// ticks and labels, and a legend.
std::string frontier_svg(const std::vector<PlotSeries>& series);

}  // namespace spaattn::tools
