#!/usr/bin/python3
"""Plots prefix hit rate against cache capacity, one line per policy.

Reads the JSON object the trace replay benchmark prints:

    {"suite": "replay",
     "curve": [{"policy": "lru", "capacity_tokens": 3000000,
                "hit_rate_blocks": 0.309}, ...],
     "unbounded_hit_rate_blocks": 0.640, ...}

("unbounded_hit_rate_blocks" is optional: when present it is drawn as a
dashed ceiling; policies whose name contains "(simulator" are references and
are drawn dotted; "tier_results", from --nvme-tokens and --blob-tokens, are
drawn as stars at DRAM + NVMe + Blob tokens, one per policy) and writes a PNG.

Usage: /usr/bin/python3 bench/plot_replay.py [INPUT.json|-] [OUTPUT.png]
Defaults: bench/replay.json and bench/replay_hit_rate.png beside this
script. Needs Debian's python3-matplotlib (scripts/install-deps.sh).
"""

import collections
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def load(path):
    if path == "-":
        return json.load(sys.stdin)
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def curves(report):
    """Returns {policy: [(capacity_tokens, hit_rate), ...]} sorted by capacity."""
    if report.get("suite") != "replay":
        raise ValueError('suite: expected "replay", got %r' % report.get("suite"))
    points = report.get("curve")
    if not isinstance(points, list) or not points:
        raise ValueError("curve: expected a non-empty list of points")
    out = collections.OrderedDict()
    for i, p in enumerate(points):
        for field in ("policy", "capacity_tokens", "hit_rate_blocks"):
            if field not in p:
                raise ValueError("curve[%d]: missing field %r" % (i, field))
        rate = float(p["hit_rate_blocks"])
        if not 0.0 <= rate <= 1.0:
            raise ValueError("curve[%d].hit_rate_blocks: %r is not in [0, 1]" % (i, rate))
        out.setdefault(str(p["policy"]), []).append((int(p["capacity_tokens"]), rate))
    for series in out.values():
        series.sort()
    return out


def tier_points(report):
    """Returns [(label, dram + nvme + blob tokens, hit_rate)] of the runs with
    lower tiers ("tier_results"; reports written before Blob say "nvme_results")."""
    out = []
    key = "tier_results" if "tier_results" in report else "nvme_results"
    for i, r in enumerate(report.get(key) or []):
        for field in ("policy", "dram_tokens", "nvme_tokens", "hit_rate_blocks"):
            if field not in r:
                raise ValueError("%s[%d]: missing field %r" % (key, i, field))
        rate = float(r["hit_rate_blocks"])
        if not 0.0 <= rate <= 1.0:
            raise ValueError("%s[%d].hit_rate_blocks: %r is not in [0, 1]" % (key, i, rate))
        nvme = int(r["nvme_tokens"])
        blob = int(r.get("blob_tokens", 0))
        label = "%s, DRAM %s" % (r["policy"], tokens_label(int(r["dram_tokens"])))
        if nvme:
            label += " + NVMe %s" % tokens_label(nvme)
        if blob:
            label += " + Blob %s" % tokens_label(blob)
        out.append((label, int(r["dram_tokens"]) + nvme + blob, rate))
    return out


def tokens_label(x, _pos=None):
    if x >= 1e6:
        return "%gM" % (x / 1e6)
    if x >= 1e3:
        return "%gk" % (x / 1e3)
    return "%g" % x


def plot(report, output):
    series = curves(report)
    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    markers = "osD^vx+*"
    for i, (policy, points) in enumerate(series.items()):
        xs = [c for c, _ in points]
        ys = [r for _, r in points]
        # Simulator references (reference LRU, future-knowledge bound) are
        # drawn dotted so the cache's own policies stand out.
        reference = "(simulator" in policy
        ax.plot(xs, ys, marker=markers[i % len(markers)], markersize=4,
                linewidth=1.0 if reference else 1.5, linestyle=":" if reference else "-",
                label=policy)
    for j, (label, tokens, rate) in enumerate(tier_points(report)):
        ax.plot([tokens], [rate], marker="*", markersize=11 - 2 * (j % 4), linestyle="none",
                label=label)
    ceiling = report.get("unbounded_hit_rate_blocks")
    if ceiling is not None:
        ax.axhline(float(ceiling), color="grey", linestyle="--", linewidth=1,
                   label="unbounded (%.3f)" % float(ceiling))
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(tokens_label))
    ax.set_xlabel("cache capacity (tokens)")
    ax.set_ylabel("prefix hit rate (blocks)")
    title = "Trace replay: hit rate by capacity"
    if report.get("trace"):
        title += " (%s)" % os.path.basename(str(report["trace"]))
    ax.set_title(title)
    ax.set_ylim(0, 1 if ceiling is None else min(1.0, float(ceiling) * 1.15))
    ax.grid(True, which="both", linestyle=":", linewidth=0.5)
    ax.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    fig.savefig(output)
    plt.close(fig)


def main(argv):
    src = argv[1] if len(argv) > 1 else os.path.join(HERE, "replay.json")
    dst = argv[2] if len(argv) > 2 else os.path.join(HERE, "replay_hit_rate.png")
    try:
        plot(load(src), dst)
    except (OSError, ValueError) as e:
        print("plot_replay: %s: %s" % (src, e), file=sys.stderr)
        return 1
    print("plot_replay: wrote %s" % dst)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
