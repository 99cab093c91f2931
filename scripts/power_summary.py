"""Board power and SM clock while each benchmark measurement ran, for scripts/gpu_check.sh --power.

Reads the samples of
  nvidia-smi --query-gpu=timestamp,index,power.draw,clocks.sm --format=csv,noheader,nounits
             -lms 100
(local time; every GPU of the machine in each sample) and the marks the benchmarks append with
--marks ("<unix seconds> begin|end <label>", bench/bench_attention.cu, bench/sdpa_baseline.py),
and prints, in the order measured, per measurement the number of samples of GPU --gpu (default
0) within it and their median power and SM clock, as a markdown table. The driver's power.draw
is an average over about the last second, so a measurement should last well over a second for
its power to be its own (the clock is read at the sample); one shorter than the sampling period
may have no sample at all: run it with more --iters. A measurement that began and never ended
(a benchmark that failed) is listed as such.

Usage: python3 scripts/power_summary.py SAMPLES.csv MARKS.txt [--gpu INDEX]
"""

import datetime
import statistics
import sys


def read_samples(path, gpu):
    samples = []
    with open(path) as f:
        for line in f:
            parts = [p.strip() for p in line.split(",")]
            if len(parts) < 4:
                continue
            try:
                when = datetime.datetime.strptime(parts[0], "%Y/%m/%d %H:%M:%S.%f").timestamp()
                if int(parts[1]) == gpu:
                    samples.append((when, float(parts[2]), float(parts[3])))
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
    intervals += [(label, when, None) for label, when in opened.items()]
    return sorted(intervals, key=lambda i: i[1])


def main():
    args = sys.argv[1:]
    gpu = 0
    if len(args) == 4 and args[2] == "--gpu" and args[3].isdigit():
        gpu = int(args[3])
        args = args[:2]
    if len(args) != 2:
        raise SystemExit(__doc__.strip().splitlines()[-1])
    samples = read_samples(args[0], gpu)
    intervals = read_intervals(args[1])
    print("| measurement | seconds | samples | median W | median SM MHz | min SM MHz |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for label, begin, end in intervals:
        if end is None:
            print(f"| {label} (began, never ended) | - | - | - | - | - |")
            continue
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
