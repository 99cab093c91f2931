"""Reads Nsight Compute's source page as CSV (ncu --import R --page source --csv
--print-source sass) on stdin and prints the header and the N lines (default 40) with the most
warp-stall samples, each with its stall-sample columns; used by scripts/gpu_check.sh --profile."""

import csv
import sys


def number(text: str) -> float:
    try:
        return float(text.replace(",", ""))
    except ValueError:
        return 0.0


def main() -> None:
    limit = int(sys.argv[1]) if len(sys.argv) > 1 else 40
    rows = [row for row in csv.reader(sys.stdin) if row]
    header_at = next((i for i, row in enumerate(rows) if any("Source" in c for c in row)), None)
    if header_at is None:
        print("top_stalls: no source table in the input; its first lines:")
        for row in rows[:20]:
            print(",".join(row))
        return
    header = rows[header_at]
    stall = [i for i, name in enumerate(header) if "Stall Sampling" in name or "Samples" in name]
    if not stall:
        print("top_stalls: no stall-sample column; columns:", header)
        return
    key = stall[0]
    body = sorted(rows[header_at + 1:], key=lambda row: -number(row[key]) if key < len(row) else 0)
    total = sum(number(row[key]) for row in rows[header_at + 1:] if key < len(row))
    print(f"columns: {header}")
    print(f"sorted by {header[key]!r}; total {total:g}")
    keep = [i for i, name in enumerate(header) if i in stall or "Source" in name or
            "Address" in name or "Line" in name]
    for row in body[:limit]:
        print(" | ".join(row[i] for i in keep if i < len(row)))


if __name__ == "__main__":
    main()
