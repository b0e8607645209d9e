#!/usr/bin/env python3
"""The WAN table: median time to result per scenario and server configuration, as the median
of the runs with their range (min-max), from the JSON files wan.sh's runs wrote.
  wan_table.py OUT_DIR RATE [RATE ...]"""
import json
import pathlib
import statistics
import sys

CONFIGS = [
    ("duckwire-on", "duckwire, compression on"),
    ("duckwire-off", "duckwire, compression off"),
    ("sqlrooms-server", "sqlrooms-server (its deflate)"),
    ("mosaic", "Mosaic Rust server (gzip on REST)"),
]


def fmt(values):
    if not values:
        return "–"
    mid = statistics.median(values)
    unit, scale = ("ms", 1e3) if mid < 1 else ("s", 1)
    if len(values) == 1:
        return f"{mid * scale:.3g} {unit}"
    return f"{mid * scale:.3g} {unit} ({min(values) * scale:.3g}–{max(values) * scale:.3g})"


def main():
    out = pathlib.Path(sys.argv[1])
    for rate in sys.argv[2:]:
        medians = {}  # (scenario, config) -> [median_s per run]
        order = []
        for run in sorted((out / rate).iterdir()):
            for key, _ in CONFIGS:
                path = run / f"{key}.json"
                if not path.exists():
                    continue
                for scenario in json.loads(path.read_text()):
                    name = scenario["name"]
                    if name not in order:
                        order.append(name)
                    medians.setdefault((name, key), []).append(scenario["median_s"])
        print(f"\n#### {rate}\n")
        print("| door | scenario | " + " | ".join(label for _, label in CONFIGS) + " |")
        print("|---" * (len(CONFIGS) + 2) + "|")
        suites = sorted({name.split(" | ", 1)[1] for name in order}, key=lambda s: min(
            order.index(n) for n in order if n.endswith(s)))
        for protocol in ["ws sqlrooms", "ws mosaic", "rest"]:
            for suite in suites:
                name = f"{protocol} | {suite}"
                cells = [fmt(medians.get((name, key), [])) for key, _ in CONFIGS]
                if any(cell != "–" for cell in cells):
                    print(f"| {protocol} | {suite} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
