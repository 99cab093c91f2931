"""scripts/power_summary.py on hand-made samples and marks: medians per measurement, samples
outside every measurement ignored, a measurement without samples, and malformed marks."""

import datetime
import os
import subprocess
import sys
import tempfile
import unittest

SCRIPT = os.path.join(os.path.dirname(__file__), "..", "..", "scripts", "power_summary.py")
T0 = datetime.datetime(2026, 12, 1, 14, 0, 0)


def sample_line(seconds, watts, mhz, gpu=0):
    stamp = (T0 + datetime.timedelta(seconds=seconds)).strftime("%Y/%m/%d %H:%M:%S.%f")[:-3]
    return f"{stamp}, {gpu}, {watts}, {mhz}\n"


def mark_line(seconds, kind, label):
    return f"{T0.timestamp() + seconds:.3f} {kind} {label}\n"


class PowerSummary(unittest.TestCase):
    def run_script(self, samples, marks, *extra):
        with tempfile.TemporaryDirectory() as d:
            s, m = os.path.join(d, "power.csv"), os.path.join(d, "marks.txt")
            with open(s, "w") as f:
                f.writelines(samples)
            with open(m, "w") as f:
                f.writelines(marks)
            return subprocess.run([sys.executable, SCRIPT, s, m, *extra], capture_output=True,
                                  text=True)

    def test_medians_per_measurement(self):
        samples = ["2026/12/01 13:59:59.000, 0, [N/A], 1980\n"]  # not a number: skipped
        for i in range(30):  # GPU 1, idle, in every sample: not counted
            samples += [sample_line(0.1 * i, 600 + i, 1500 + 10 * i),
                        sample_line(0.1 * i, 80, 345, gpu=1)]
        marks = [mark_line(0.05, "begin", "dense run"), mark_line(0.55, "end", "dense run"),
                 mark_line(1.05, "begin", "sparse run"), mark_line(1.45, "end", "sparse run"),
                 mark_line(5.0, "begin", "late"), mark_line(5.01, "end", "late")]
        r = self.run_script(samples, marks)
        self.assertEqual(r.returncode, 0, r.stderr)
        rows = r.stdout.splitlines()[2:]  # after the header and its rule
        self.assertEqual(len(rows), 3)
        # samples 1..5 (0.1 .. 0.5 s): 601..605 W, 1510..1550 MHz
        self.assertEqual(rows[0], "| dense run | 0.50 | 5 | 603 | 1530 | 1510 |")
        # samples 11..14 (1.1 .. 1.4 s): medians of an even count
        self.assertEqual(rows[1], "| sparse run | 0.40 | 4 | 612 | 1625 | 1610 |")
        self.assertEqual(rows[2], "| late | 0.01 | 0 | - | - | - |")

    def test_another_gpu_and_an_unfinished_measurement(self):
        samples = [sample_line(0.1 * i, 600, 1500, gpu=0) for i in range(10)]
        samples += [sample_line(0.1 * i, 650 + i, 1700, gpu=1) for i in range(10)]
        marks = [mark_line(0.05, "begin", "run"), mark_line(0.45, "end", "run"),
                 mark_line(0.5, "begin", "crashed")]
        r = self.run_script(samples, marks, "--gpu", "1")
        self.assertEqual(r.returncode, 0, r.stderr)
        rows = r.stdout.splitlines()[2:]
        self.assertEqual(rows, ["| run | 0.40 | 4 | 652 | 1700 | 1700 |",
                                "| crashed (began, never ended) | - | - | - | - | - |"])

    def test_end_without_begin_is_an_error(self):
        r = self.run_script([sample_line(0, 600, 1500)], [mark_line(1, "end", "x")])
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("end of 'x' without begin", r.stderr)

    def test_malformed_mark_is_an_error(self):
        r = self.run_script([sample_line(0, 600, 1500)], ["12.5 start x\n"])
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("expected '<seconds> begin|end <label>'", r.stderr)


if __name__ == "__main__":
    unittest.main()
