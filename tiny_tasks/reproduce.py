"""The paper's comparisons in miniature: every arm, several seeds, one command.

    python tiny_tasks/reproduce.py            # 3 seeds x 7 arms (about 40 min on 2 cores)
    python tiny_tasks/reproduce.py --quick    # 1 seed, few steps, short cold start: checks that everything runs

Arms (paper section 4-5), all from the SAME cold-started model, on the same questions with the
same step budget; only the method differs:
  cold start only | G-RL (--mode grpo) | C-RL (--mode critique, static balanced set)
  GC-RL with the data filter | GC-RL with random sampling | random + re-weighted reward (Eq. 3)
  GC-RL with the filter + vote denoising (Eq. 4, one refinement per critique, as the paper)
The cold start is gcrl's tiny default (3000 SFT steps, about 18 min on 2 cores: the part of the
run that makes the tiny critic learnable). One cold start (--cold_start_seed, default 0) is shared
by every seed, so the seeds vary the RL run only (its questions' order, the sampled responses and
critiques, the eval critique set); --cold_start_seed -1 gives each seed its own cold start, about
18 min more per seed. Writes one JSONL line per run (final metrics) to --out and prints a markdown table of
mean +- standard error over seeds: greedy generation accuracy, balanced critique accuracy, the
critic's rate of "right" verdicts, plus the total wall time. Then the paper's claims as paired
contrasts: the difference between two arms within each seed (both start from the same
cold-started model and are scored on the same eval set), mean +- standard error over seeds.
    python tiny_tasks/reproduce.py --from_runs runs/reproduce/runs.jsonl   # tables only, no training
(the wall time is printed by the run itself; each line of runs.jsonl keeps its own seconds).
"""
import argparse
import json
import math
import os
import random
import statistics
import sys
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

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
# (arm A, arm B, metric): the paper expects A > B (Table 1, Table 2, section 5.2)
CONTRASTS = [("GC-RL (filter)", "G-RL", "eval/accuracy"),
             ("GC-RL (filter)", "C-RL", "eval/critique_accuracy"),
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


def make_cold_start(seed, steps, out_dir):
    """gcrl's tiny cold start (as `python gcrl.py --seed SEED` does it), saved to out_dir; returns out_dir."""
    args = gcrl.parse_args(["--seed", str(seed), "--device", "cpu", "--output_dir", out_dir]
                           + (["--cold_start_steps", str(steps)] if steps is not None else []))
    torch.manual_seed(seed)
    model, tok = gcrl.load_model(args)
    examples = gcrl.cold_start_examples(args.cold_start, random.Random(seed))
    gcrl.cold_start(model, tok, examples, args.cold_start_steps, args.cold_start_lr, random.Random(seed))
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return out_dir


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--max_steps", type=int, default=40)
    p.add_argument("--eval_size", type=int, default=200)
    p.add_argument("--quick", action="store_true", help="1 seed, 6 steps, 50 eval questions, 200 cold-start steps")
    p.add_argument("--cold_start_seed", type=int, default=0,
                   help="the seed of the one cold start every seed's arms start from (-1: one per seed)")
    p.add_argument("--cold_start_steps", type=int, default=None, help="SFT steps of the cold start (default: gcrl's)")
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
        a.seeds, a.max_steps, a.eval_size, a.cold_start_steps = a.seeds[:1], 6, 50, 200
    torch.set_num_threads(a.num_threads)
    os.makedirs(a.out, exist_ok=True)
    results_path = os.path.join(a.out, "runs.jsonl")
    open(results_path, "w").close()
    t0 = time.time()
    lines = []
    defaults = gcrl.parse_args([])  # gcrl's tiny data sets
    rows, eval_rows = gcrl.load_jsonl(defaults.dataset), gcrl.load_jsonl(defaults.eval_dataset)[:a.eval_size]
    cold_dirs = {}  # cold-start seed -> the directory its model is saved in
    for seed in a.seeds:
        common = ["--seed", str(seed), "--max_steps", str(a.max_steps), "--eval_size", str(a.eval_size),
                  "--eval_steps", "0", "--device", "cpu"]
        cold_seed = seed if a.cold_start_seed < 0 else a.cold_start_seed
        if cold_seed not in cold_dirs:
            t = time.time()
            cold_dirs[cold_seed] = make_cold_start(cold_seed, a.cold_start_steps,
                                                   os.path.join(a.out, f"coldstart-seed{cold_seed}"))
            print(f"cold start (seed {cold_seed}): {time.time() - t:.0f} s, saved to {cold_dirs[cold_seed]}", flush=True)
        cold_dir = cold_dirs[cold_seed]
        tok = AutoTokenizer.from_pretrained(cold_dir)
        for arm, flags in ARMS.items():
            t = time.time()
            args = gcrl.parse_args(common + (flags or ["--max_steps", "1"]) +
                                   ["--output_dir", os.path.join(a.out, f"seed{seed}-{arm.replace(' ', '_')}")])
            args.max_steps = a.max_steps if flags else 0
            torch.manual_seed(seed)
            policy = AutoModelForCausalLM.from_pretrained(cold_dir)
            history = gcrl.train(policy, tok, rows, eval_rows, args, log=lambda *x: None)
            final = {k: history[-1][k] for k, _ in COLUMNS if k in history[-1]}
            if not flags:  # cold start only: the step-0 evaluation is the result
                final = {k: history[0][k] for k, _ in COLUMNS if k in history[0]}  # no critique set: no critique keys
            line = {"arm": arm, "seed": seed, "cold_start_seed": cold_seed, "steps": args.max_steps,
                    "seconds": round(time.time() - t, 1), **final}
            lines.append(line)
            with open(results_path, "a") as f:
                f.write(json.dumps(line) + "\n")
            print(json.dumps(line), flush=True)
    print(f"\n{len(a.seeds)} seed(s) {a.seeds}, cold start(s) of seed(s) {sorted(cold_dirs)}, {a.max_steps} RL steps, "
          f"{a.eval_size} eval questions; "
          f"total wall time {time.time() - t0:.0f} s\n")
    print_tables(lines)


if __name__ == "__main__":
    main()
