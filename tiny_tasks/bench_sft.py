"""Seconds per step of gcrl's tiny cold start (SFT), by micro-batch size. Not a test: it prints figures.

    python tiny_tasks/bench_sft.py                          # micro-batches of 16 (gcrl's default)
    python tiny_tasks/bench_sft.py --micro_batch_size 64    # each batch of 64 in one pass

The work: the first --steps steps (default 100) of the tiny cold start on tiny_tasks/arith_coldstart.jsonl
(the first fifth solve-only, then the whole mixture), the tiny model, 2 torch threads. Every batch of
64 gives the same gradient at any micro-batch size (test_sft_micro_batches_give_the_gradient_of_one_batch);
only the padding differs: a batch mixes solve examples (~30 tokens), critiques (~75) and refinements
(~100, 75 of them prompt), and padded as one, about half of its tokens are padding.
"""
import argparse
import os
import random
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(HERE), HERE]
import gcrl  # noqa: E402
import tiny_model  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--micro_batch_size", type=int, default=16)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--num_threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.num_threads)
    tok = tiny_model.build_tokenizer()
    model = tiny_model.build_model(tok)
    rows = [row for _, row in gcrl.read_jsonl(os.path.join(HERE, "arith_coldstart.jsonl"))]
    examples = tiny_model.warmup_examples(rows, random.Random(0))
    solve = [e for e in examples if e[0].endswith(gcrl.SOLVE_INSTRUCTION)]
    critique = [e for e in examples if e[0].endswith(gcrl.CRITIQUE_INSTRUCTION)]
    t = time.time()
    gcrl.sft(model, tok, examples + solve + critique, a.steps, 3e-3, random.Random(0), first_examples=solve,
             first_steps=a.steps // 5, micro_batch_size=a.micro_batch_size)
    print(f"micro_batch_size {a.micro_batch_size}: {(time.time() - t) / a.steps:.3f} s/step over {a.steps} steps")


if __name__ == "__main__":
    main()
