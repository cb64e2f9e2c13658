"""The demo's starting point, tiny_tasks/tiny-model/: a tiny model cold-started in gcrl's formats.

    python tiny_tasks/tiny_model.py        # writes tiny_tasks/tiny-model/ (about 20 min on 2 cores)

Ctrl-C, or a kill, loses nothing: the warm-up is checkpointed to --out.partial every 200 steps and
the same command continues it. The result is a Hugging Face model directory (config, safetensors
weights, tokenizer files) that gcrl.py loads through AutoModelForCausalLM / AutoTokenizer, like any
real model: the paper, too, starts RL from a cold-started base model.

The model: a Qwen2 (hidden 128, 4 layers, about 0.6 M parameters) and a character tokenizer whose
template strings (the instructions, '\\boxed{', the verdict lines) are single tokens, so its
capacity goes on arithmetic. The warm-up: supervised fine-tuning (gcrl.sft) on arith_coldstart.jsonl
in gcrl's three formats, with worked column-wise steps:
  solve    '47+38'                -> '7+8=15,4+3+1=8,\\boxed{85}'
  critique (question, response)   -> 'Recomputed: 7+8=15,4+3+1=8,+085 vs +095\\n++=00=89!55=\\nConclusion: wrong [END]'
  refine   (q, response, critique) -> the right solution
The critique re-derives the answer, writes both answers at a fixed width and a check line of digit
pairs marked '=' or '!', so its verdict only has to notice a '!' (critic_study.py measured why
each part is needed). Each question's right solution is critiqued beside three wrong ones, slipped
at every step or worked from a misread operand, so copying a response's steps is rarely right.

The teacher is sloppy, on purpose, as a weak base model or a weak distillation teacher would be:
each warm-up row is drawn --draws times, and in each draw a solution that needs a carry (or a
borrow) forgets it with probability --sloppy, and the critique of such a forgetful solution
approves it (copies its steps, so the two answers agree) with probability --lazy. The cold-started
model inherits both habits, which leaves RL a visible job: a response that carries earns reward 1,
a critique that catches the forgotten carry earns the critique reward. Without them the warm-up
leaves both skills near the ceiling (0.965 generation, 0.92 critique accuracy) and RL has nothing
to show in minutes.
"""
import argparse
import os
import random
import string
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(HERE), HERE]
import gcrl  # noqa: E402
import make_tasks  # noqa: E402

TEMPLATE_PIECES = ["#Question#: ", "\n#Solution#: ", "\n#Critique#: ", gcrl.SOLVE_INSTRUCTION,
                   gcrl.CRITIQUE_INSTRUCTION, gcrl.REFINE_INSTRUCTION, "\\boxed{", "Recomputed: ",
                   "Conclusion: right [END]", "Conclusion: wrong [END]"]


def build_tokenizer():
    """Character-level tokenizer built in memory (no download): printable ASCII + template pieces.

    >>> tok = build_tokenizer(); tok.convert_ids_to_tokens(tok("\\\\boxed{85}").input_ids)
    ['\\\\boxed{', '8', '5', '}']
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    chars = sorted(set(string.printable) - set("\t\r\x0b\x0c"))
    vocab = {t: i for i, t in enumerate(["<pad>", "<eos>", "<unk>"] + chars)}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("[\\s\\S]"), behavior="isolated")  # one char each
    core.decoder = decoders.Fuse()  # join characters back without spaces
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="<eos>",
                                  unk_token="<unk>", padding_side="left")
    tok.add_tokens(TEMPLATE_PIECES)
    return tok


def build_model(tokenizer, hidden_size=128, num_layers=4, seed=0):
    """A small Qwen2 from a config (random weights): the same code path as a real model."""
    from transformers import Qwen2Config, Qwen2ForCausalLM
    torch.manual_seed(seed)
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                         num_hidden_layers=num_layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=1024, tie_word_embeddings=True,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                         bos_token_id=None)
    return Qwen2ForCausalLM(config)


def fixed_width(answer):
    """'85' -> '+085', '-4' -> '-004' (anything not an integer is kept as it is): written at one
    width, each digit of two answers sits a constant distance from its partner."""
    try:
        n = int(answer)
    except ValueError:
        return answer
    return ("-" if n < 0 else "+") + str(abs(n)).zfill(3)


def tiny_critique(solution, ours, given, ok=None):
    """The warm-up critique of a response whose final answer is `given`: the critic's own worked
    `solution` (answer `ours`), both answers side by side at a fixed width, a check line of digit
    pairs each followed by '=' or '!', then the verdict ('right' iff the two answers agree, unless ok
    says otherwise):

    >>> tiny_critique("7+8=15,4+3+1=8,\\\\boxed{85}", "85", "95")
    'Recomputed: 7+8=15,4+3+1=8,+085 vs +095\\n++=00=89!55=\\nConclusion: wrong [END]'
    """
    a, b = fixed_width(ours), fixed_width(given)
    w = max(len(a), len(b))  # only a non-integer answer differs in width; '_' pads it
    check = "".join(x + y + ("=" if x == y else "!") for x, y in zip(a.rjust(w, "_"), b.rjust(w, "_")))
    work = solution.rsplit("\\boxed{", 1)[0]  # the steps before the boxed answer ('' if none)
    ok = (a == b) if ok is None else ok
    return f"Recomputed: {work}{a} vs {b}\n{check}\nConclusion: {'right' if ok else 'wrong'} [END]"


def parse_question(question):
    """'47+38' -> (47, '+', 38); '58-78' -> (58, '-', 78)."""
    i = next(i for i, c in enumerate(question) if c in "+-" and i > 0)
    return int(question[:i]), question[i], int(question[i + 1:])


def warmup_examples(rows, rng, sloppy=0.0, lazy=0.0, draws=1):
    """The warm-up in all three formats from arith_coldstart.jsonl rows ('solution' and three
    'wrong_solutions'); on a question with a carry or a borrow, the solution that forgets it is
    critiqued too. Each row is written `draws` times, the teacher's slips drawn anew each time: the
    solve target forgets the carry with probability `sloppy`, and the critique of the forgetful
    solution rubber-stamps it (copies its steps, so the answers agree: 'right') with probability
    `lazy`; every other critique re-derives the right steps. Returns [(prompt, target)]."""
    examples = []
    for row in rows:
        q, right = row["question"], row["solution"]
        forgot, _ = make_tasks.worked_solution(*parse_question(q), slip="carry")
        forgot = forgot if gcrl.extract_boxed(forgot) != row["answer"] else None  # no carry, nothing to forget
        for _ in range(draws):
            examples.append((gcrl.solve_prompt(q), forgot if forgot and rng.random() < sloppy else right))
            for response in [right] + row["wrong_solutions"] + ([forgot] if forgot else []):
                work = response if response is forgot and rng.random() < lazy else right
                crit = tiny_critique(work, gcrl.extract_boxed(work), gcrl.extract_boxed(response) or "")
                examples.append((gcrl.critique_prompt(q, response), crit))
                examples.append((gcrl.refine_prompt(q, response, crit), right))
    return examples


def cold_start(model, tokenizer, examples, steps, lr, rng, checkpoint_dir=None):
    """Solving first, then all formats: 1/5 of the steps on solve examples, the rest on everything,
    with solve and critique examples counted twice (solving keeps being practised; critiquing is the
    hardest format to learn, and 1500 or 2200 steps left its check line unlearned)."""
    solve = [e for e in examples if e[0].endswith(gcrl.SOLVE_INSTRUCTION)]
    critique = [e for e in examples if e[0].endswith(gcrl.CRITIQUE_INSTRUCTION)]
    return gcrl.sft(model, tokenizer, examples + solve + critique, steps, lr, rng, first_examples=solve,
                    first_steps=steps // 5, checkpoint_dir=checkpoint_dir)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=os.path.join(HERE, "tiny-model"))
    p.add_argument("--steps", type=int, default=3000, help="SFT steps")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sloppy", type=float, default=0.6, help="how often a solution forgets a carry it needs")
    p.add_argument("--lazy", type=float, default=0.85, help="how often the critique of such a solution approves it")
    p.add_argument("--draws", type=int, default=3, help="copies of each warm-up row, each drawn anew")
    p.add_argument("--num_threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.num_threads)
    tok = build_tokenizer()
    model = build_model(tok, seed=args.seed)
    rows = [row for _, row in gcrl.read_jsonl(os.path.join(HERE, "arith_coldstart.jsonl"))]
    examples = warmup_examples(rows, random.Random(args.seed), args.sloppy, args.lazy, args.draws)
    t = time.time()
    partial = args.out + ".partial"
    loss = cold_start(model, tok, examples, args.steps, args.lr, random.Random(args.seed), checkpoint_dir=partial)
    model.generation_config.pad_token_id, model.generation_config.eos_token_id = tok.pad_token_id, tok.eos_token_id
    model.save_pretrained(args.out)
    tok.save_pretrained(args.out)
    with open(os.path.join(args.out, "README.md"), "w") as f:
        f.write(f"# tiny-model\n\ngcrl's demo starting point, written by `python tiny_tasks/tiny_model.py"
                f"{' ' + ' '.join(argv or sys.argv[1:]) if (argv or sys.argv[1:]) else ''}` (its docstring says what "
                f"it is and why): {args.steps} SFT steps on {len(examples)} examples of arith_coldstart.jsonl, the "
                f"teacher sloppy {args.sloppy} and lazy {args.lazy}; final loss {loss:.4f}, {time.time() - t:.0f} s.\n")
    import shutil
    shutil.rmtree(partial, ignore_errors=True)
    print(f"wrote {args.out}: {args.steps} SFT steps on {len(examples)} examples, final loss {loss:.4f}, "
          f"{time.time() - t:.0f} s")


if __name__ == "__main__":
    main()
