"""Seconds per step of gcrl (G-RL and GC-RL) and, when trl is importable, of TRL's GRPOTrainer on
the same work. Not a test: it prints figures.

    python tiny_tasks/bench_speed.py                                  # gcrl only
    python tiny_tasks/bench_speed.py --trl_python /path/to/venv/bin/python   # + TRL, in its own venv

The work: a tiny Qwen2 (hidden 128, intermediate 256, 4 layers, 4 heads, 2 KV heads,
~0.6 M parameters, character tokenizer), 8 prompts x 8 generations per step, 16 new tokens,
temperature 1.0, beta 0, one torch thread, 20 steps; reward = gcrl.verify against the answer.
Both start from the same supervised model (gcrl's 600-step cold start on direct answers in
all three formats, saved to a temporary directory), so rewards vary and every step does a real
update: a random model earns reward 0 everywhere, and gcrl skips an update whose advantages are
all 0 while TRL does not, which would not be the same work. Each implementation runs in its own
process, so each peak RSS is its own. Reported: median seconds per step over steps 3-20, peak
RSS, and the ratio gcrl / TRL. GC-RL runs with --label_balance random so that every step critiques the same number
of pairs; its sampled tokens per second are printed next to G-RL's. Timings on a shared machine
drift, so each implementation runs --repeat times (default 5), in rounds (G-RL, GC-RL, TRL, then
again), and every figure is the median over rounds with its min-max; a ratio is taken within each
round, then its median, so slow and fast spells of the machine cancel.
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
STEPS, PROMPTS, GENERATIONS, NEW_TOKENS = 20, 8, 8, 16


def warm_model(path):
    """The shared starting point: the tiny model after a 600-step cold start (gcrl.sft) on direct answers.

    Direct answers ('\\boxed{85}'), because worked solutions (~20 tokens) would not fit in 16 new
    tokens; all three formats, so GC-RL's critiques are real ones ('Recomputed: 85' + verdict):
    a critic never taught the format writes junk of random length, and generate() then decodes every
    critique until the longest stops (measured with a solve-only warm-up: 6.8 critique tokens per
    sequence on average, 16 decode steps per call; GC-RL's sampled tokens/s were 0.73 x G-RL's).
    """
    import random
    import torch
    sys.path[:0] = [ROOT, HERE]
    import gcrl
    import tiny_model
    torch.set_num_threads(1)
    tok = tiny_model.build_tokenizer()
    model = tiny_model.build_model(tok, 128, 4, seed=0)
    rows, _ = gcrl.load_questions(os.path.join(HERE, "arith_coldstart.jsonl"))
    # the warm-up this benchmark was measured with (gcrl's before its check-line critique, whose ~25
    # tokens would not fit in 16): a wrong answer off by a typical slip, 3/4 of the steps solve-only
    rng, examples = random.Random(0), []
    for r in rows:
        q, right = r["question"], "\\boxed{" + r["answer"] + "}"
        wrong = "\\boxed{" + str(int(r["answer"]) + rng.choice([-10, -1, 1, 10])) + "}"
        examples.append((gcrl.solve_prompt(q), right))
        for response, ok in ((right, True), (wrong, False)):
            crit = "Recomputed: " + r["answer"] + "\nConclusion: " + ("right" if ok else "wrong") + " [END]"
            examples += [(gcrl.critique_prompt(q, response), crit), (gcrl.refine_prompt(q, response, crit), right)]
    solve = examples[::5]
    gcrl.sft(model, tok, examples + solve, 600, 3e-3, random.Random(0), first_examples=solve, first_steps=450)
    model.save_pretrained(path)
    tok.save_pretrained(path)


def load(model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    return AutoModelForCausalLM.from_pretrained(model_dir), AutoTokenizer.from_pretrained(model_dir, padding_side="left")


def run_gcrl(mode, out, model_dir):
    sys.path.insert(0, ROOT)
    import torch
    import gcrl
    torch.set_num_threads(1)
    argv = ["--mode", mode, "--output_dir", out, "--max_steps", str(STEPS), "--train_batch_size", str(PROMPTS),
            "--num_generations", str(GENERATIONS), "--max_completion_length", str(NEW_TOKENS), "--beta", "0",
            "--temperature", "1.0", "--eval_steps", "0", "--eval_size", "8", "--device", "cpu", "--seed", "0",
            "--learning_rate", "3e-5", "--self_verify_samples", "0"]
    if mode == "gcrl":
        argv += ["--label_balance", "random"]
    args = gcrl.parse_args(argv)
    model, tok = load(model_dir)
    rows, _ = gcrl.load_questions(args.dataset)
    history = gcrl.train(model, tok, rows, gcrl.load_questions(args.eval_dataset)[0][:8], args, log=lambda *a: None)
    steps = [m for m in history if 3 <= m["step"] <= STEPS]
    return {"s_per_step": statistics.median(m["time/step"] for m in steps),
            "tokens_per_second": statistics.median(m["tokens_per_second"] for m in steps),
            "mean_reward": statistics.mean(m.get("reward", 0.0) for m in steps),
            "frac_steps_updated": statistics.mean(m.get("grad_norm", 0.0) > 0 for m in steps)}


def run_trl(out, model_dir):
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer
    sys.path.insert(0, ROOT)
    import gcrl
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model, tok = load(model_dir)
    rows = gcrl.load_questions(os.path.join(HERE, "arith_train.jsonl"))[0][:PROMPTS * STEPS]
    data = Dataset.from_list([{"prompt": gcrl.solve_prompt(r["question"]), "answer": r["answer"]} for r in rows])

    def reward(completions, answer, **kw):
        return [float(gcrl.verify(c, a)) for c, a in zip(completions, answer)]

    stamps = []

    class Stamp(TrainerCallback):
        def on_step_end(self, *a, **kw):
            stamps.append(time.time())

    config = GRPOConfig(output_dir=out, per_device_train_batch_size=PROMPTS * GENERATIONS,
                        num_generations=GENERATIONS, max_completion_length=NEW_TOKENS, temperature=1.0, beta=0.0,
                        max_steps=STEPS, learning_rate=3e-5, logging_steps=1, report_to="none", save_strategy="no",
                        use_cpu=True, bf16=False, seed=0, dataloader_num_workers=0)
    trainer = GRPOTrainer(model=model, reward_funcs=reward, args=config, train_dataset=data, processing_class=tok,
                          callbacks=[Stamp()])
    start = time.time()
    trainer.train()
    times = [b - a for a, b in zip([start] + stamps[:-1], stamps)]
    logs = [h for h in trainer.state.log_history if "reward" in h][2:STEPS]
    return {"s_per_step": statistics.median(times[2:STEPS]),
            "mean_reward": statistics.mean(h["reward"] for h in logs),
            "frac_steps_updated": statistics.mean(h.get("grad_norm", 0.0) > 0 for h in logs)}


def child(impl, model_dir):
    if impl == "warm":  # in its own process too, so the parent's peak RSS stays small (children inherit it)
        return warm_model(model_dir)
    with tempfile.TemporaryDirectory() as out:
        result = run_trl(out, model_dir) if impl == "trl" else run_gcrl(impl, out, model_dir)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(result))


def spawn(python, impl, model_dir):
    proc = subprocess.run([python, os.path.abspath(__file__), "--child", impl, "--model_dir", model_dir],
                          capture_output=True, text=True)
    if impl == "warm":
        return proc.check_returncode()
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise SystemExit(f"error: the {impl} run failed:\n{proc.stderr[-3000:]}")


def spread(results, key, fmt=".3f"):
    """'0.145 (0.139-0.150)': median over rounds, then min-max."""
    xs = [r[key] for r in results]
    return f"{statistics.median(xs):{fmt}} ({min(xs):{fmt}}-{max(xs):{fmt}})"


def median_ratio(a, b, key):
    return statistics.median(x[key] / y[key] for x, y in zip(a, b))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trl_python", default=None, help="a python that can import trl (default: this one, if it can)")
    p.add_argument("--repeat", type=int, default=5, help="rounds: each implementation runs this many times")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--model_dir", default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        return child(a.child, a.model_dir)
    if a.repeat < 1:
        p.error("--repeat must be at least 1")
    trl_python = a.trl_python or sys.executable
    has_trl = subprocess.run([trl_python, "-c", "import trl"], capture_output=True).returncode == 0
    tmp = tempfile.TemporaryDirectory()
    model_dir = tmp.name
    spawn(sys.executable, "warm", model_dir)
    runs = {"grpo": [], "gcrl": [], "trl": []}
    for _ in range(a.repeat):
        runs["grpo"].append(spawn(sys.executable, "grpo", model_dir))
        runs["gcrl"].append(spawn(sys.executable, "gcrl", model_dir))
        if has_trl:
            runs["trl"].append(spawn(trl_python, "trl", model_dir))
    grpo, gc, trl = runs["grpo"], runs["gcrl"], runs["trl"]
    print(f"{a.repeat} round(s); each figure: median (min-max) over rounds; s/step is the median of steps 3-{STEPS}")
    print(f"gcrl G-RL : {spread(grpo, 's_per_step')} s/step, peak RSS {spread(grpo, 'peak_rss_mb', '.0f')} MB, "
          f"{spread(grpo, 'tokens_per_second', '.0f')} sampled tokens/s, mean reward {spread(grpo, 'mean_reward')}, "
          f"steps updated {spread(grpo, 'frac_steps_updated', '.2f')}")
    print(f"gcrl GC-RL: {spread(gc, 's_per_step')} s/step, peak RSS {spread(gc, 'peak_rss_mb', '.0f')} MB, "
          f"{spread(gc, 'tokens_per_second', '.0f')} sampled tokens/s "
          f"({median_ratio(gc, grpo, 'tokens_per_second'):.2f} x G-RL's)")
    if not has_trl:
        print("TRL: not importable by", trl_python, "- skipped (install trl in a separate venv, pass --trl_python)")
        return
    print(f"TRL GRPOTrainer: {spread(trl, 's_per_step')} s/step, peak RSS {spread(trl, 'peak_rss_mb', '.0f')} MB, "
          f"mean reward {spread(trl, 'mean_reward')}, steps with grad_norm > 0 {spread(trl, 'frac_steps_updated', '.2f')}")
    print(f"ratio gcrl G-RL / TRL: {median_ratio(grpo, trl, 's_per_step'):.2f} (time), "
          f"{median_ratio(grpo, trl, 'peak_rss_mb'):.2f} (peak RSS)")


if __name__ == "__main__":
    main()
