"""Memory and time of one GC-RL policy update at Qwen2.5-0.5B's shape (random weights, no download).

    python tiny_tasks/bench_memory.py                           # CPU, fp32, no checkpointing
    python tiny_tasks/bench_memory.py --gradient_checkpointing  # CPU, fp32, activation checkpointing
    python tiny_tasks/bench_memory.py --device cuda             # GPU, fp32 weights, bf16 autocast
    python tiny_tasks/bench_memory.py --save /tmp/qwen05b-shape # also save it for gcrl.py --model DIR

One update = gcrl.policy_update on --batch sequences of --prompt_len + --completion_len tokens
(AdamW, fp32 log-softmax), exactly what a training step runs after its rollouts. Prints seconds
and peak memory: peak RSS of the process on CPU, peak allocated memory on CUDA. Run one setting
per process, so that each peak is its own.
"""
import argparse
import os
import random
import resource
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import gcrl  # noqa: E402

QWEN25_05B = dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                  num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768,
                  rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=True)


def rss_gib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # ru_maxrss is in KiB on Linux


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--gradient_checkpointing", action="store_true")
    p.add_argument("--batch", type=int, default=8, help="sequences in the update")
    p.add_argument("--prompt_len", type=int, default=128)
    p.add_argument("--completion_len", type=int, default=128)
    p.add_argument("--updates", type=int, default=2, help="timed updates (the first also allocates Adam's state)")
    p.add_argument("--num_threads", type=int, default=2)
    p.add_argument("--save", default=None, help="save the random model and the tiny tokenizer here")
    a = p.parse_args()
    torch.set_num_threads(a.num_threads)
    torch.manual_seed(0)
    from transformers import Qwen2Config, Qwen2ForCausalLM
    t = time.time()
    model = Qwen2ForCausalLM(Qwen2Config(**QWEN25_05B)).to(a.device)  # fp32 weights, as gcrl.load_model
    print(f"built Qwen2.5-0.5B shape ({sum(p.numel() for p in model.parameters()) / 1e6:.0f} M parameters, "
          f"fp32 weights{', bf16 autocast' if a.device.startswith('cuda') else ''}) on {a.device} in "
          f"{time.time() - t:.0f} s; RSS so far {rss_gib():.2f} GiB")
    if a.save:
        import tiny_model
        tok = tiny_model.build_tokenizer()  # ids beyond its vocabulary decode to nothing
        model.config.eos_token_id, model.config.pad_token_id = tok.eos_token_id, tok.pad_token_id
        model.save_pretrained(a.save)
        tok.save_pretrained(a.save)
        print(f"saved to {a.save} (load with gcrl.py --model {a.save})")
    if a.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    model.train()
    args = gcrl.parse_args(["--model", "x", "--device", a.device, "--per_device_train_batch_size", str(a.batch),
                            "--max_completion_length", str(a.completion_len)])
    rng = random.Random(0)
    samples = [{"prompt_ids": [rng.randrange(1000, 100000) for _ in range(a.prompt_len)],
                "completion_ids": [rng.randrange(1000, 100000) for _ in range(a.completion_len)],
                "advantage": rng.choice([-1.0, 1.0])} for _ in range(a.batch)]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
    if a.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(a.updates):
        if a.device.startswith("cuda"):
            torch.cuda.synchronize()
        t = time.time()
        gcrl.policy_update(model, None, optimizer, samples, args, pad_id=0, rng=rng)
        if a.device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.time() - t)
    peak = (f"peak CUDA memory allocated {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB"
            if a.device.startswith("cuda") else f"peak RSS {rss_gib():.2f} GiB")
    print(f"update of {a.batch} x ({a.prompt_len} + {a.completion_len}) tokens, gradient_checkpointing="
          f"{a.gradient_checkpointing}: seconds per update {' '.join(f'{x:.2f}' for x in times)}; {peak}")


if __name__ == "__main__":
    main()
