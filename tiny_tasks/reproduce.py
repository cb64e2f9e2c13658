"""The paper's comparisons in miniature: every arm, several seeds, one command.

    python tiny_tasks/reproduce.py            # 3 seeds x 7 arms (about 43 min on 2 cores)
    python tiny_tasks/reproduce.py --quick    # 1 seed, 4 steps, 40 eval questions: checks that everything runs
    python tiny_tasks/plot_matrix.py          # the curves of the last run -> tiny_tasks/matrix.png

Arms (paper sections 4-5), all from the SAME starting model, the demo's cold-started
tiny_tasks/tiny-model, on the same questions with the same step budget; only the method differs:
  cold start only | G-RL (--mode grpo) | C-RL (--mode critique, static balanced set)
  GC-RL with the data filter | GC-RL with random sampling | random + re-weighted reward (Eq. 3)
  GC-RL with the filter + vote denoising (Eq. 4, one refinement per critique, as the paper)
Every other flag is gcrl's demo default. Seeds vary the RL run (the questions' order, the sampled
responses and critiques) and the balanced critique eval set, which each seed samples once from the
starting model and every arm of that seed shares. Writes runs.jsonl (each run's final metrics)
and curves.jsonl (every evaluation of every run) to --out, prints mean +- standard error over
seeds, then the paper's claims as paired contrasts: the difference between two arms within each
seed, mean +- standard error over seeds.
    python tiny_tasks/reproduce.py --from_runs runs/reproduce/runs.jsonl   # tables only, no training
"""
import argparse
import json
import math
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import gcrl  # noqa: E402

ARMS = {
    "cold start only": None,
    "G-RL": ["--mode", "grpo"],
    "C-RL": ["--mode", "critique"],
    "GC-RL (filter)": ["--mode", "gcrl", "--label_balance", "filter"],
    "GC-RL (random)": ["--mode", "gcrl", "--label_balance", "random"],
    "GC-RL (random + re-weight)": ["--mode", "gcrl", "--label_balance", "reweight"],
    "GC-RL (filter + denoise)": ["--mode", "gcrl", "--label_balance", "filter", "--num_refinements", "1"],
}
COLUMNS = [("eval/accuracy", "generation acc."), ("eval/critique_accuracy", "critique acc. (balanced)"),
           ("eval/critique_right_rate", '"right" rate')]
# (arm A, arm B, metric): the paper expects A > B, or A >= B for generation (Table 1, Table 2, section 5.2)
CONTRASTS = [("GC-RL (filter)", "G-RL", "eval/accuracy"),
             ("GC-RL (filter)", "G-RL", "eval/critique_accuracy"),
             ("GC-RL (filter)", "C-RL", "eval/critique_accuracy"),
             ("GC-RL (filter)", "C-RL", "eval/accuracy"),
             ("GC-RL (filter)", "GC-RL (random)", "eval/critique_right_rate"),
             ("GC-RL (filter)", "GC-RL (random)", "eval/accuracy"),
             ("GC-RL (filter)", "GC-RL (random)", "eval/critique_accuracy"),
             ("GC-RL (random + re-weight)", "GC-RL (random)", "eval/accuracy"),
             ("GC-RL (random + re-weight)", "GC-RL (random)", "eval/critique_accuracy"),
             ("GC-RL (filter)", "GC-RL (random + re-weight)", "eval/accuracy"),
             ("GC-RL (filter)", "GC-RL (random + re-weight)", "eval/critique_accuracy"),
             ("GC-RL (filter + denoise)", "GC-RL (filter)", "eval/accuracy"),
             ("GC-RL (filter + denoise)", "GC-RL (filter)", "eval/critique_accuracy")]


def mean_se(xs, sign=""):
    if not xs:
        return "-"
    mean = statistics.mean(xs)
    text = f"{0.0 if abs(mean) < 5e-4 else mean:{sign}.3f}"  # no '-0.000'
    return text if len(xs) < 2 else f"{text} ± {statistics.stdev(xs) / math.sqrt(len(xs)):.3f}"


def paired_differences(lines, a, b, key):
    """Per seed, arm a's metric minus arm b's: [(seed, difference)] over the seeds that ran both.

    >>> paired_differences([{"arm": "x", "seed": 0, "m": 0.5}, {"arm": "y", "seed": 0, "m": 0.4}], "x", "y", "m")
    [(0, 0.09999999999999998)]
    """
    by = {(r["arm"], r["seed"]): r for r in lines}
    seeds = sorted({r["seed"] for r in lines})
    return [(s, by[(a, s)][key] - by[(b, s)][key]) for s in seeds
            if key in by.get((a, s), {}) and key in by.get((b, s), {})]


def print_tables(lines):
    """The markdown tables: mean +- SE per arm, then the paired contrasts."""
    print("| arm | " + " | ".join(name for _, name in COLUMNS) + " |")
    print("|---|" + "---|" * len(COLUMNS))
    for arm in ARMS:
        runs = [r for r in lines if r["arm"] == arm]
        if runs:
            print(f"| {arm} | " + " | ".join(mean_se([r[k] for r in runs if k in r]) for k, _ in COLUMNS) + " |")
    names = dict(COLUMNS)
    print("\n| paired contrast (same seed) | metric | A - B, mean ± SE | per seed |")
    print("|---|---|---|---|")
    for a, b, key in CONTRASTS:
        diffs = paired_differences(lines, a, b, key)
        if diffs:
            per_seed = ", ".join(f"{d:+.3f}" for _, d in diffs)
            print(f"| {a} - {b} | {names[key]} | {mean_se([d for _, d in diffs], '+')} | {per_seed} |")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=gcrl.DEMO_MODEL, help="the starting model of every arm")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--max_steps", type=int, default=None, help="RL steps of every arm (default: the demo's)")
    p.add_argument("--eval_steps", type=int, default=25, help="evaluate every this many steps (the curves)")
    p.add_argument("--eval_size", type=int, default=None, help="eval questions (default: the demo's)")
    p.add_argument("--quick", action="store_true", help="1 seed, 4 steps, 40 eval questions")
    p.add_argument("--out", default=os.path.join("runs", "reproduce"))
    p.add_argument("--num_threads", type=int, default=2)
    p.add_argument("--from_runs", default=None, help="print the tables of an earlier runs.jsonl, train nothing")
    a = p.parse_args()
    if a.from_runs:
        with open(a.from_runs) as f:
            lines = [json.loads(line) for line in f if line.strip()]
        print(f"{len(lines)} runs from {a.from_runs}: seeds {sorted({r['seed'] for r in lines})}\n")
        return print_tables(lines)
    if a.quick:
        a.seeds, a.max_steps, a.eval_size, a.eval_steps = a.seeds[:1], 4, 40, 2
    torch.set_num_threads(a.num_threads)
    os.makedirs(a.out, exist_ok=True)
    paths = {name: os.path.join(a.out, name + ".jsonl") for name in ("runs", "curves")}
    for path in paths.values():
        open(path, "w").close()
    t0 = time.time()
    lines = []
    for seed in a.seeds:
        for arm, flags in ARMS.items():
            t = time.time()
            args = gcrl.parse_args(["--seed", str(seed), "--eval_steps", str(a.eval_steps), "--device", "cpu",
                                    "--self_verify_samples", "0", "--output_dir",
                                    os.path.join(a.out, f"seed{seed}-{arm.replace(' ', '_')}")]
                                   + (["--max_steps", str(a.max_steps)] if a.max_steps else [])
                                   + (["--eval_size", str(a.eval_size)] if a.eval_size else []) + (flags or []))
            args.max_steps = args.max_steps if flags else 0  # cold start only: the step-0 evaluation is the result
            rows, _ = gcrl.load_questions(args.dataset)
            eval_rows = gcrl.load_questions(args.eval_dataset)[0][:args.eval_size]
            torch.manual_seed(seed)
            policy, tok = gcrl.load_model(a.model, "cpu")
            history = gcrl.train(policy, tok, rows, eval_rows, args, log=lambda *x: None)
            evals = [{"arm": arm, "seed": seed, "step": m["step"], **{k: m[k] for k, _ in COLUMNS if k in m}}
                     for m in history if "eval/accuracy" in m]
            line = {**evals[-1], "steps": args.max_steps, "seconds": round(time.time() - t, 1)}
            lines.append(line)
            for name, new in (("runs", [line]), ("curves", evals)):
                with open(paths[name], "a") as f:
                    f.writelines(json.dumps(x) + "\n" for x in new)
            print(json.dumps(line), flush=True)
    print(f"\n{len(a.seeds)} seed(s) {a.seeds}, {lines[-1]['steps']} RL steps, {len(eval_rows)} eval questions, "
          f"from {a.model}; total wall time {time.time() - t0:.0f} s\n")
    print_tables(lines)


if __name__ == "__main__":
    main()
