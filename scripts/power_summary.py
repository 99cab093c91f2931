"""Board power and SM clock while each benchmark measurement ran, for scripts/gpu_check.sh --power.

Reads the samples of
  nvidia-smi --query-gpu=timestamp,power.draw,clocks.sm --format=csv,noheader,nounits -lms 100
(local time) and the marks the benchmarks append with --marks ("<unix seconds> begin|end
<label>", bench/bench_attention.cu, bench/sdpa_baseline.py), and prints, per measurement, the
number of samples within it and their median power and SM clock, as a markdown table. A
measurement shorter than the sampling period may have no sample: run it with more --iters.

Usage: python3 scripts/power_summary.py SAMPLES.csv MARKS.txt
"""

import datetime
import statistics
import sys


def read_samples(path):
    samples = []
    with open(path) as f:
        for line in f:
            parts = [p.strip() for p in line.split(",")]
            if len(parts) < 3:
                continue
            try:
                when = datetime.datetime.strptime(parts[0], "%Y/%m/%d %H:%M:%S.%f").timestamp()
                samples.append((when, float(parts[1]), float(parts[2])))
            except ValueError:
                continue  # a header, or a field the driver reports as [N/A]
    return samples


def read_intervals(path):
    opened, intervals = {}, []
    with open(path) as f:
        for number, line in enumerate(f, 1):
            parts = line.rstrip("\n").split(" ", 2)
            if len(parts) != 3 or parts[1] not in ("begin", "end"):
                raise SystemExit(f"power_summary: {path}:{number}: expected "
                                 f"'<seconds> begin|end <label>', got {line.strip()!r}")
            when, kind, label = float(parts[0]), parts[1], parts[2]
            if kind == "begin":
                opened[label] = when
            elif label in opened:
                intervals.append((label, opened.pop(label), when))
            else:
                raise SystemExit(f"power_summary: {path}:{number}: end of {label!r} without begin")
    return intervals


def main():
    if len(sys.argv) != 3:
        raise SystemExit(__doc__.strip().splitlines()[-1])
    samples = read_samples(sys.argv[1])
    intervals = read_intervals(sys.argv[2])
    print("| measurement | seconds | samples | median W | median SM MHz | min SM MHz |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for label, begin, end in intervals:
        inside = [s for s in samples if begin <= s[0] <= end]
        if inside:
            watts = statistics.median(s[1] for s in inside)
            clocks = [s[2] for s in inside]
            print(f"| {label} | {end - begin:.2f} | {len(inside)} | {watts:.0f} | "
                  f"{statistics.median(clocks):.0f} | {min(clocks):.0f} |")
        else:
            print(f"| {label} | {end - begin:.2f} | 0 | - | - | - |")


if __name__ == "__main__":
    main()
