#!/usr/bin/env python3
"""Plot frame time against conversations from `moshi-rs bench --batch …` JSON lines (and the
reference's, if given): median and p99 per batch size, the 80 ms real-time budget as a line.

    python3 tools/bench/plot_sweep.py docs/data/sweep_int8.jsonl [more.jsonl …] -o docs/img/frames_vs_conversations.svg
"""
import argparse
import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def load(path):
    rows = []
    for line in open(path):
        line = line.strip()
        if line.startswith("{"):
            r = json.loads(line)
            if "total_ms" in r:
                rows.append(r)
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("files", nargs="+", help="JSONL files; label = file name unless LABEL=path")
    ap.add_argument("-o", "--output", required=True)
    args = ap.parse_args()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for spec in args.files:
        label, _, path = spec.rpartition("=")
        rows = load(path)
        if not rows:
            continue
        label = label or path.rsplit("/", 1)[-1].rsplit(".", 1)[0]
        b = [r["batch"] for r in rows]
        med = [r["total_ms"]["median"] for r in rows]
        p99 = [r["total_ms"]["p99"] for r in rows]
        line, = ax.plot(b, med, marker="o", label=f"{label} median")
        ax.plot(b, p99, marker="x", linestyle="--", color=line.get_color(), label=f"{label} p99")
    ax.axhline(80, color="red", linewidth=1)
    ax.text(1, 82, "80 ms: real time", color="red", fontsize=8)
    ax.set_xlabel("conversations in the batch (each at the full 3000-step context)")
    ax.set_ylabel("ms per 80 ms frame (encode + LM + decode)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.output)


if __name__ == "__main__":
    main()
