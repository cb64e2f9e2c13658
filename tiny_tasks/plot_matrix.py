"""Eval curves of the miniature matrix, one line per arm (mean over seeds, band: +- one standard error).

    python tiny_tasks/plot_matrix.py                                   # runs/reproduce/curves.jsonl -> tiny_tasks/matrix.png
    python tiny_tasks/plot_matrix.py --curves DIR/curves.jsonl --out x.png

Needs matplotlib (pip install matplotlib), which neither gcrl.py nor the tests use.
"""
import argparse
import json
import math
import os
import statistics

HERE = os.path.dirname(os.path.abspath(__file__))
PANELS = [("eval/accuracy", "generation accuracy (greedy)"), ("eval/critique_accuracy", "critique accuracy (balanced)"),
          ("eval/critique_right_rate", 'critic\'s "right" rate')]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--curves", default=os.path.join("runs", "reproduce", "curves.jsonl"))
    p.add_argument("--out", default=os.path.join(HERE, "matrix.png"))
    a = p.parse_args()
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    with open(a.curves) as f:
        points = [json.loads(line) for line in f if line.strip()]
    arms = list(dict.fromkeys(pt["arm"] for pt in points))
    seeds = sorted({pt["seed"] for pt in points})
    fig, axes = plt.subplots(1, len(PANELS), figsize=(5 * len(PANELS), 4))
    for ax, (key, title) in zip(axes, PANELS):
        for arm in arms:
            by_step = {}
            for pt in points:
                if pt["arm"] == arm and key in pt:
                    by_step.setdefault(pt["step"], []).append(pt[key])
            steps = sorted(by_step)
            if arm == "cold start only":  # one evaluation: a flat reference line
                level = statistics.mean(by_step[steps[0]])
                ax.axhline(level, color="grey", linestyle=":", label=arm)
                continue
            mean = [statistics.mean(by_step[s]) for s in steps]
            se = [statistics.stdev(by_step[s]) / math.sqrt(len(by_step[s])) if len(by_step[s]) > 1 else 0 for s in steps]
            ax.plot(steps, mean, marker="o", markersize=3, label=arm)
            ax.fill_between(steps, [m - e for m, e in zip(mean, se)], [m + e for m, e in zip(mean, se)], alpha=0.15)
        ax.set_title(title)
        ax.set_xlabel("RL step")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"tiny GC-RL matrix: {len(seeds)} seed(s), mean +- one standard error")
    fig.tight_layout()
    fig.savefig(a.out, dpi=110)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
