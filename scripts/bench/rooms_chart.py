"""Draws edit-to-ack latency against a room's past peers (median per window of 300 page
loads), one line per server, as a standalone SVG (no plotting library needed).

    python3 scripts/bench/rooms_chart.py out.svg duckwire.csv sqlrooms-server.csv
"""
import csv
import statistics
import sys

WINDOW = 300
WIDTH, HEIGHT, MARGIN = 720, 420, 60
COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"]


def series(path):
    with open(path) as f:
        rows = list(csv.DictReader(f))
    points = []
    for start in range(0, len(rows) - WINDOW + 1, WINDOW):
        window = rows[start : start + WINDOW]
        points.append((start + WINDOW, statistics.median(int(r["ack_us"]) for r in window) / 1000))
    return points


def main():
    out, paths = sys.argv[1], sys.argv[2:]
    lines = [(p.rsplit("/", 1)[-1].removesuffix(".csv"), series(p)) for p in paths]
    max_x = max(x for _, pts in lines for x, _ in pts)
    max_y = max(y for _, pts in lines for _, y in pts) * 1.1
    sx = lambda x: MARGIN + x / max_x * (WIDTH - 2 * MARGIN)
    sy = lambda y: HEIGHT - MARGIN - y / max_y * (HEIGHT - 2 * MARGIN)
    svg = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" font-family="sans-serif" font-size="12">',
        f'<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>',
        f'<text x="{WIDTH / 2}" y="20" text-anchor="middle" font-size="14">edit → ack latency (median of {WINDOW} page loads) against past peers in the room</text>',
        f'<line x1="{MARGIN}" y1="{HEIGHT - MARGIN}" x2="{WIDTH - MARGIN}" y2="{HEIGHT - MARGIN}" stroke="black"/>',
        f'<line x1="{MARGIN}" y1="{MARGIN}" x2="{MARGIN}" y2="{HEIGHT - MARGIN}" stroke="black"/>',
        f'<text x="{WIDTH / 2}" y="{HEIGHT - 20}" text-anchor="middle">past peers (page loads)</text>',
        f'<text x="15" y="{HEIGHT / 2}" transform="rotate(-90 15 {HEIGHT / 2})" text-anchor="middle">ms</text>',
    ]
    for i in range(5):
        y = max_y * i / 4
        svg.append(f'<text x="{MARGIN - 8}" y="{sy(y) + 4}" text-anchor="end">{y:.2f}</text>')
        x = max_x * i / 4
        svg.append(f'<text x="{sx(x)}" y="{HEIGHT - MARGIN + 16}" text-anchor="middle">{int(x)}</text>')
    for n, (label, pts) in enumerate(lines):
        colour = COLOURS[n % len(COLOURS)]
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts)
        svg.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"/>')
        svg.append(f'<text x="{WIDTH - MARGIN - 150}" y="{MARGIN + 16 * n}" fill="{colour}">{label}</text>')
    svg.append("</svg>")
    with open(out, "w") as f:
        f.write("\n".join(svg) + "\n")


main()
