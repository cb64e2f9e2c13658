"""Seconds per step of gcrl's tiny cold start (SFT), by micro-batch size. Not a test: it prints figures.

    python tiny_tasks/bench_sft.py                          # micro-batches of 16 (gcrl's default)
    python tiny_tasks/bench_sft.py --micro_batch_size 64    # each batch of 64 in one pass

The work: the first --steps steps (default 100) of gcrl.cold_start on tiny_tasks/arith_coldstart.jsonl
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

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import gcrl  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--micro_batch_size", type=int, default=16)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--num_threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.num_threads)
    args = gcrl.parse_args(["--device", "cpu"])
    model, tok = gcrl.load_model(args)
    examples = gcrl.cold_start_examples(args.cold_start, random.Random(0))
    t = time.time()
    gcrl.cold_start(model, tok, examples, a.steps, args.cold_start_lr, random.Random(0),
                    micro_batch_size=a.micro_batch_size)
    print(f"micro_batch_size {a.micro_batch_size}: {(time.time() - t) / a.steps:.3f} s/step over {a.steps} steps")


if __name__ == "__main__":
    main()
