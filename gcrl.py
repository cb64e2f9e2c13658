"""gcrl.py -- GC-RL: GRPO with second-order rollout, in one readable file.

Paper: "Towards Better RL Training Data Utilization via Second-Order Rollout"
(Yang, Wang, Li, Sui; arXiv 2602.22765). No official code exists; this is a reference
implementation. Choices the paper leaves open are marked "(choice)".

Vanilla GRPO samples n responses per question (first-order rollout) and learns from a
verifier's 0/1 reward. GC-RL also asks the *same* policy to critique the <question, response>
pairs it just produced (second-order rollout). A critique's reward is free: the verifier
already knows whether the critiqued response was right. Responses and critiques are trained
together in one GRPO update.

    python gcrl.py                          # tiny CPU demo: cold start, then GC-RL, then a summary
    python gcrl.py --model Qwen2.5-0.5B     # a real model (GPU recommended)
    python gcrl.py --help                   # every flag

The file follows one training step, top to bottom:
  0 config -> 1 tasks & models -> 2 verifier -> 3 prompts -> 4 rollout -> 5 filter & cache
  -> 6 critique -> 7 rewards -> 8 advantages -> 9 loss & update -> 10 cold start
  -> 11 evaluation -> 12 training loop -> 13 main
"""
import argparse
import contextlib
import copy
import itertools
import json
import math
import os
import random
import re
import shutil
import signal
import string
import sys
import threading
import time
from fractions import Fraction

import sympy
import torch
import torch.nn.functional as F
from tqdm import tqdm

HERE = os.path.dirname(os.path.abspath(__file__))


# ============================================================================ 0. Config
def parse_args(argv=None):
    """All flags in one place. Names follow TRL's GRPOConfig where TRL has the flag."""
    p = argparse.ArgumentParser(description="GC-RL: GRPO with second-order (critique) rollout.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    a = p.add_argument
    # what to train
    a("--model", default=None, help="HF hub id, shorthand (Qwen2.5-0.5B -> Qwen/Qwen2.5-0.5B) or a local "
      "directory. Omitted: a tiny Qwen2-architecture model with a character tokenizer, built in memory.")
    a("--mode", default="gcrl", choices=["grpo", "critique", "gcrl"],
      help="grpo = G-RL (responses only); critique = C-RL (critiques of a static balanced set "
      "built up front); gcrl = GC-RL (responses + critiques of this run's own responses).")
    a("--dataset", default=os.path.join(HERE, "tiny_tasks", "arith_train.jsonl"),
      help='training questions, JSONL lines {"question": ..., "answer": ...}')
    a("--eval_dataset", default=os.path.join(HERE, "tiny_tasks", "arith_test.jsonl"), help="held-out questions")
    a("--eval_size", type=int, default=200, help="questions used from --eval_dataset (0 = all)")
    # cold start (the paper's SFT warm-up; needed by the tiny random model)
    a("--cold_start", default=None, help="JSONL for a supervised warm-up before RL. Lines with "
      "question+answer: synthetic solve/critique/refine examples (tiny tasks); lines with "
      "question+response+critique: critique examples (as the paper distils for base models). "
      "Default: tiny_tasks/arith_coldstart.jsonl for the tiny model, none for --model.")
    a("--cold_start_steps", type=int, default=None, help="SFT steps of the warm-up (0 = skip). Default: 3000 "
      "tiny (about 18 min on 2 CPU threads; fewer leave a weaker critic), 800 with --model")
    a("--cold_start_lr", type=float, default=3e-3, help="SFT learning rate")
    a("--chat_template", default="auto", choices=["auto", "on", "off"],
      help="wrap prompts with the tokenizer's chat template. auto = on only when the tokenizer has one "
      "AND the model name says Instruct/Chat (Qwen2.5 base tokenizers ship a template too)")
    a("--gradient_checkpointing", action="store_true", help="recompute activations in backward (less memory)")
    a("--tiny_hidden_size", type=int, default=128, help="tiny model width")
    a("--tiny_num_layers", type=int, default=4, help="tiny model depth")
    # rollout
    a("--max_steps", type=int, default=40, help="RL steps")
    a("--train_batch_size", type=int, default=16, help="questions per step (verl's data.train_batch_size)")
    a("--num_generations", type=int, default=8, help="n: responses per question (first-order rollout)")
    a("--num_critiques", type=int, default=None, help="m: critiques per cached pair (second-order "
      "rollout). Default: --num_generations in modes that critique.")
    a("--critique_batch_size", type=int, default=None,
      help="<question, response> pairs critiqued per step. Default: --train_batch_size.")
    a("--max_prompt_length", type=int, default=None, help="longest prompt (tokens) sent to the model: solve, critique "
      "and refinement prompts alike; a longer one is skipped, never truncated, and counted (prompts/skipped_*). "
      "Default: 512 + 2 x --max_completion_length, room for a 512-token question's critique and refinement prompts")
    a("--max_completion_length", type=int, default=None, help="new tokens per completion (default: 64 tiny, 1024 real)")
    a("--temperature", type=float, default=1.0, help="sampling temperature (log-probs use the same)")
    a("--generation_batch_size", type=int, default=256, help="sequences per generate() call (memory)")
    # label balancing and critique reward (paper section 3 and 5)
    a("--label_balance", default="filter", choices=["filter", "random", "reweight"],
      help="filter = the paper's data filter (one right + one wrong response per mixed group); "
      "random = two random responses per question; reweight = random + Eq. 3 reward")
    a("--cache_size", type=int, default=None, help="most pairs the question-response cache holds "
      "(oldest dropped first). Default: 4 x --critique_batch_size.")
    a("--critique_reward_right", type=float, default=0.7, help='Eq. 2: reward for "right" on a correct '
      'response (Eq. 5/6 steering: 0.6/0.8 stricter critic, 0.8/0.6 more lenient)')
    a("--critique_reward_wrong", type=float, default=0.7, help='Eq. 2: reward for "wrong" on a wrong response')
    a("--num_refinements", type=int, default=0, help="vote denoising (Eq. 4): refinements per critique (0 = off)")
    a("--denoise_weight_right", type=float, default=0.1, help='Eq. 4 weight when the verdict is "right"')
    a("--denoise_weight_wrong", type=float, default=0.7, help='Eq. 4 weight when the verdict is "wrong"')
    a("--static_samples", type=int, default=10, help="C-RL: responses sampled per question to build the static set")
    # advantages and loss (TRL names)
    a("--group_by", default="question", choices=["question", "prompt"],
      help="question = one GRPO group per question: its responses + critiques of its pairs (choice); "
      "prompt = each prompt its own group")
    a("--scale_rewards", default="group", choices=["group", "batch", "none"],
      help="divide advantages by the group std, the batch std, or not at all (Dr. GRPO)")
    a("--loss_type", default="grpo", choices=["grpo", "dapo", "dr_grpo"],
      help="grpo = per-sequence token mean; dapo = global token mean; dr_grpo = sum / (N * max_len)")
    a("--epsilon", type=float, default=0.2, help="PPO clip, lower")
    a("--epsilon_high", type=float, default=None, help="PPO clip, upper (DAPO clip-higher). Default: --epsilon")
    a("--beta", type=float, default=0.0, help="k3 KL coefficient to a frozen reference model (0 = no reference model)")
    a("--use_bias_correction_kl", action=argparse.BooleanOptionalAction, default=False,
      help="multiply k3 by pi/pi_old (TRL's default); off: verl's low_var_kl, as the paper (see policy_loss)")
    a("--num_iterations", type=int, default=1, help="inner epochs over each step's samples (PPO mu)")
    a("--num_mini_batches", type=int, default=1, help="optimizer steps per rollout: a step's samples are split into "
      "this many mini-batches (verl: train_batch_size / ppo_mini_batch_size; dapo's token mean is per mini-batch)")
    a("--steps_per_generation", type=int, default=None, help=argparse.SUPPRESS)  # TRL's flag means something else
    a("--per_device_train_batch_size", type=int, default=64, help="sequences per forward/backward micro-batch")
    a("--learning_rate", type=float, default=None, help="AdamW lr (default: 3e-5 tiny, 1e-6 real, as the paper)")
    a("--max_grad_norm", type=float, default=1.0, help="gradient clipping")
    # bookkeeping
    a("--eval_steps", type=int, default=20, help="evaluate every this many steps (0 = only at start and end)")
    a("--save_steps", type=int, default=0, help="write output_dir/checkpoint-STEP every this many steps (0 = off)")
    a("--resume", nargs="?", const="latest", default=None,
      help="continue from a checkpoint: a checkpoint-STEP path, or alone for the latest in --output_dir")
    a("--max_nonfinite_steps", type=int, default=3,
      help="stop (after saving a checkpoint) when this many steps in a row had a non-finite loss or gradient")
    a("--output_dir", default=os.path.join("runs", "gcrl"), help="metrics.jsonl, checkpoints, final model")
    a("--seed", type=int, default=0, help="seeds python and torch")
    a("--device", default=None, help="cuda when available, else cpu")
    a("--num_threads", type=int, default=None, help="torch CPU threads (default: all cores, at most 8)")
    args = p.parse_args(argv)
    check_args(p, args, argv if argv is not None else sys.argv[1:])
    tiny = args.model is None
    if args.num_critiques is None:
        args.num_critiques = args.num_generations
    if args.critique_batch_size is None:
        args.critique_batch_size = args.train_batch_size
    if args.cache_size is None:
        args.cache_size = 4 * args.critique_batch_size
    if args.epsilon_high is None:
        args.epsilon_high = args.epsilon
    if args.learning_rate is None:
        args.learning_rate = 3e-5 if tiny else 1e-6
    if args.max_completion_length is None:
        args.max_completion_length = 64 if tiny else 1024  # the tiny critiques are up to 53 tokens
    if args.max_prompt_length is None:
        args.max_prompt_length = 512 + 2 * args.max_completion_length
    if args.cold_start_steps is None:
        args.cold_start_steps = 3000 if tiny else 800
    if args.cold_start is None and tiny:
        args.cold_start = os.path.join(HERE, "tiny_tasks", "arith_coldstart.jsonl")
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    args.chat = False  # decided once the tokenizer is loaded (use_chat_template)
    return args


def check_args(parser, args, argv):
    """Impossible settings fail at start-up, one line each (argparse prints 'error: ...' and exits 2)."""
    if args.steps_per_generation is not None:
        parser.error("--steps_per_generation is TRL's micro-batches per generation, which gcrl does not have; "
                     "optimizer steps per rollout are --num_mini_batches")
    for name in ("max_steps", "train_batch_size", "num_generations", "num_iterations", "num_mini_batches",
                 "per_device_train_batch_size", "generation_batch_size", "static_samples",
                 "max_nonfinite_steps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1 (got {getattr(args, name)})")
    for name in ("num_critiques", "critique_batch_size", "cache_size", "max_completion_length",
                 "max_prompt_length"):  # None: default
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1 (got {getattr(args, name)})")
    for name in ("num_refinements", "eval_steps", "save_steps", "eval_size", "cold_start_steps", "beta"):
        if getattr(args, name) is not None and getattr(args, name) < 0:
            parser.error(f"--{name} must not be negative (got {getattr(args, name)})")
    if args.temperature <= 0:
        parser.error("--temperature must be positive (greedy decoding is used for evaluation only)")
    if not 0 < args.epsilon < 1:
        parser.error(f"--epsilon must be in (0, 1) (got {args.epsilon})")
    if args.epsilon_high is not None and args.epsilon_high < args.epsilon:
        parser.error(f"--epsilon_high ({args.epsilon_high}) must not be below --epsilon ({args.epsilon})")
    critique_flags = [f for f in ("--num_critiques", "--critique_batch_size", "--num_refinements", "--label_balance",
                                  "--cache_size") if any(a == f or a.startswith(f + "=") for a in argv)]
    if args.mode == "grpo" and critique_flags:
        parser.error(f"{critique_flags[0]} has no effect with --mode grpo (no critiques); use --mode gcrl or critique")
    cache_flags = [f for f in critique_flags if f in ("--label_balance", "--cache_size")]
    if args.mode == "critique" and cache_flags:
        parser.error(f"{cache_flags[0]} has no effect with --mode critique (its static set is always balanced)")
    if args.mode == "grpo" and (args.train_batch_size * args.num_generations) % args.num_mini_batches:
        parser.error(f"--num_mini_batches {args.num_mini_batches} does not divide the "
                     f"{args.train_batch_size * args.num_generations} responses of a step")
    if os.path.exists(args.output_dir) and not os.path.isdir(args.output_dir):
        parser.error(f"--output_dir {args.output_dir!r} is a file, not a directory")


# ============================================================================ 1. Tasks and models
def load_jsonl(path, required=("question", "answer")):
    """Read a JSONL data set; anything wrong is one clear error naming file, line and problem.

    >>> load_jsonl("tiny_tasks/arith_test.jsonl")[0]
    {'question': '28+83', 'answer': '111', 'id': 0}
    """
    if not os.path.exists(path):
        raise SystemExit(f"error: data set {path!r} does not exist")
    if not os.path.isfile(path):
        raise SystemExit(f"error: data set {path!r} is not a file")
    try:
        with open(path, "rb") as f:
            lines = f.read().split(b"\n")
    except OSError as e:
        raise SystemExit(f"error: cannot read data set {path!r}: {e.strerror}")
    rows = []
    for lineno, raw in enumerate(lines, 1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise SystemExit(f"error: {path}:{lineno}: not UTF-8 text")
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise SystemExit(f"error: {path}:{lineno}: not valid JSON ({e.msg})")
        if not isinstance(row, dict):
            raise SystemExit(f"error: {path}:{lineno}: expected a JSON object")
        for key in required:
            if not isinstance(row.get(key), str) or not row[key].strip():
                raise SystemExit(f"error: {path}:{lineno}: field {key!r} missing or not a non-empty string")
        row["id"] = len(rows)
        rows.append(row)
    if not rows:
        raise SystemExit(f"error: data set {path!r} is empty")
    return rows


# Fixed strings of the prompt templates (section 3). The tiny tokenizer gives each one a single
# token, so the tiny model spends its capacity on arithmetic, not on spelling instructions.
SOLVE_INSTRUCTION = "\nPlease reason step by step, and put your final answer within \\boxed{}.\n"
CRITIQUE_INSTRUCTION = ("\n#Instruction#: Please verify step by step and judge whether the solution is "
                        "correct, and end your answer with **Conclusion: right/wrong [END]**\n")
REFINE_INSTRUCTION = ("\n#Instruction#: Please write a corrected solution, and put your final answer "
                      "within \\boxed{}.\n")
TEMPLATE_PIECES = ["#Question#: ", "\n#Solution#: ", "\n#Critique#: ", SOLVE_INSTRUCTION,
                   CRITIQUE_INSTRUCTION, REFINE_INSTRUCTION, "\\boxed{", "Recomputed: ",
                   "Conclusion: right [END]", "Conclusion: wrong [END]"]


def build_tiny_tokenizer():
    """Character-level tokenizer built in memory (no download): printable ASCII + template pieces.

    >>> tok = build_tiny_tokenizer(); tok.convert_ids_to_tokens(tok("\\\\boxed{85}").input_ids)
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


def build_tiny_model(tokenizer, hidden_size=128, num_layers=4, seed=0):
    """A small Qwen2 (about 0.6 M parameters at the defaults) from a config: same code path as a real one."""
    from transformers import Qwen2Config, Qwen2ForCausalLM
    torch.manual_seed(seed)
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                         num_hidden_layers=num_layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=1024, tie_word_embeddings=True,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                         bos_token_id=None)
    return Qwen2ForCausalLM(config)


def resolve_model_name(name):
    """'Qwen2.5-0.5B' -> 'Qwen/Qwen2.5-0.5B'; hub ids with an org and local directories pass through."""
    if os.path.isdir(name) or "/" in name:
        return name
    return f"Qwen/{name}"


def load_model(args):
    """Return (policy, tokenizer). The tiny model when --model is omitted, else AutoModelForCausalLM."""
    if args.model is None:
        tok = build_tiny_tokenizer()
        return build_tiny_model(tok, args.tiny_hidden_size, args.tiny_num_layers, args.seed).to(args.device), tok
    from transformers import AutoModelForCausalLM, AutoTokenizer
    name = resolve_model_name(args.model)
    if name != args.model:
        print(f"--model {args.model} resolved to {name}")
    # fp32 master weights everywhere: in bf16 weights an update of lr 1e-6 rounds away (8 mantissa
    # bits). On CUDA the forward passes run under bf16 autocast instead (autocast(), section 4).
    dtype = torch.float32
    where = "local directory" if os.path.isdir(name) else "hub id"
    try:
        tok = AutoTokenizer.from_pretrained(name, padding_side="left")
        model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype).to(args.device)
    except (OSError, ValueError, KeyError) as e:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise SystemExit(f"error: could not load --model {args.model!r} as {where} {name!r}: {reason} -- check "
                         "the name, or download it where the hub is reachable and pass its local directory")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token  # safe: completion masks come from EOS positions, not from pads
    return model, tok


def use_chat_template(tokenizer, model_name, setting="auto"):
    """Should prompts be wrapped with the chat template? Qwen2.5 *base* tokenizers ship a template
    too, so its presence alone does not make a chat model: auto also asks the name.

    E.g. with Qwen2.5 tokenizers (both have a template): "Qwen/Qwen2.5-0.5B" -> False,
    "Qwen/Qwen2.5-0.5B-Instruct" -> True.
    """
    has_template = getattr(tokenizer, "chat_template", None) is not None
    if setting == "on":
        if not has_template:
            raise SystemExit("error: --chat_template on, but the tokenizer has no chat template")
        return True
    if setting == "off":
        return False
    return has_template and re.search(r"instruct|chat", model_name or "", re.IGNORECASE) is not None


# ============================================================================ 2. Verifier (Eq. 1)
# The reward is r = 1[answer(response) == gold]. Model text is untrusted, so it is NEVER evaluated:
# a small whitelist parser builds sympy objects directly, and whatever could make sympy blow up is
# refused before sympy sees it: <=200 chars, <=100 tokens, nesting <=20, no power whose value could
# exceed ~1000 digits, lcm(root indices) * digits(radicands) <= 300 (sympy factors radicands), and
# expand() only when the result provably has <=100 terms. With these guards one call took at most
# ~0.15 s in any thread over ~250k fuzzed inputs (a 2 MB response: ~0.1 s). A 1 s wall-clock budget
# is also checked between stages and, in the main thread with no timer armed, enforced by SIGALRM.
# Unsupported, so compared as normalised case-insensitive strings only: sets \{1,2\}, intervals
# (0,1], tuples, matrices, units (5\text{ cm}), inequalities, \pm, factorials, functions (\sin),
# multi-letter words. Deviation from LaTeX: 2^10 means 2^{10} (what the model meant), not 2^1 0.


_ANS_MAX_CHARS, _ANS_MAX_TOKENS, _ANS_MAX_DEPTH = 200, 100, 20
_ANS_MAX_DIGITS, _ANS_MAX_RADICAL, _ANS_MAX_TERMS = 1000, 300, 100  # see the bounds above
_VERIFY_BUDGET_S = 1.0
_EVALF_DIGITS, _EVALF_REL_TOL = 30, 1e-20  # the tolerance only absorbs evalf rounding, so
                                           # a decimal such as 3.14159265359 is NOT \pi

_BOXED_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")
_LATEX_ESCAPE_RE = re.compile(r"\\.", re.S)  # \{ \} \\ are escapes, not braces
_BRACE_DELTA = {"{": 1, "}": -1}


def extract_boxed(text):
    """Content of the last \\boxed{...} (or \\fbox{...}), brace-balanced; None if absent/unclosed.

    >>> extract_boxed(r"first \\boxed{1}, then \\boxed{\\frac{1}{2}}.")
    '\\\\frac{1}{2}'
    >>> extract_boxed(r"\\boxed{1} \\boxed{2") is None   # the last box is unfinished
    True
    """
    last = None
    for last in _BOXED_RE.finditer(text):  # one linear pass; keep only the last match
        pass
    if last is None:
        return None
    start, depth = last.end(), 1
    body = _LATEX_ESCAPE_RE.sub("__", text[start:])  # same length, escapes neutralised
    for lo in range(0, len(body), 4096):  # brace depth as C-level prefix sums, chunk by chunk
        deltas = map(_BRACE_DELTA.get, body[lo:lo + 4096], itertools.repeat(0))
        run = list(itertools.accumulate(deltas, initial=depth))
        if 0 in run:
            return text[start:start + lo + run.index(0) - 1]
        depth = run[-1]
    return None


# Normalisation: linear-time regexes shared by the math and the string paths.
_CONTROL_CHARS_RE = re.compile(r"[\x00-\x1f\x7f]")  # NUL and other control chars become spaces
_LATEX_UNWRAP_RE = re.compile(r"\\(?:text|textbf|textit|textrm|mathrm|mathbf|mathit|mbox"
                              r"|operatorname)\s*\{([^{}]*)\}")
_LATEX_DROP_RE = re.compile(r"\\(?:left|right|displaystyle|q?quad)(?![A-Za-z])|\\[,;:! ]"
                            r"|\^\s*(?:\{\s*\\circ\s*\}|\\circ)|\\circ|\u00b0|\\?%|\\?\$")
_THOUSANDS_RE = re.compile(r"(?<![\d.,])\d{1,3}(?:,\d{3})+(?![\d,])")  # 7,425,000 but not 1,2
_ANS_VAR_RE = re.compile(r"[A-Za-z]\s*=")
_PLAIN_NUMBER_RE = re.compile(r"-?(?:\d+\.?\d*|\.\d+)")


def _normalize_answer(s):
    s = _CONTROL_CHARS_RE.sub(" ", s).replace("\u2212", "-").replace("{,}", ",")
    s = re.sub(r"\\[dt]frac", r"\\frac", s)
    for _ in range(3):  # \text{\textbf{x}} needs two passes; a fixed count keeps it linear
        s = _LATEX_UNWRAP_RE.sub(r"\1", s)
    s = _LATEX_DROP_RE.sub("", s)
    s = _THOUSANDS_RE.sub(lambda m: m.group().replace(",", ""), s).strip()
    m = _ANS_VAR_RE.match(s)
    return s[m.end():].strip() if m and s.count("=") == 1 else s  # "x = 5" -> "5"


# Tokenizer + recursive-descent parser over a whitelist of tokens.
_ANS_TOKEN_RE = re.compile(r"\s*(\d+\.?\d*|\.\d+|\\[A-Za-z]+|[A-Za-z]+|\*\*|[-+*/^(){}\[\]])")
_LATEX_CMDS = {"\\frac": "frac", "\\sqrt": "sqrt", "\\pi": "pi", "\\infty": "oo",
               "\\cdot": "*", "\\times": "*", "\\div": "/"}
_BRACKET_CLOSE = {"(": ")", "{": "}", "[": "]"}
_IMPLICIT_MUL = {"(", "{", "[", "frac", "sqrt", "pi", "oo"}  # may follow a factor: 2x, 3\pi, (a)(b)


def _tokenize_answer(s):
    toks, pos, s = [], 0, s.rstrip()
    while pos < len(s):
        m = _ANS_TOKEN_RE.match(s, pos)
        if m is None or len(toks) >= _ANS_MAX_TOKENS:
            raise ValueError("not a whitelisted token, or too many tokens")
        t, pos = m.group(1), m.end()
        if (t[0] == "\\" and t not in _LATEX_CMDS) or (t[0].isalpha() and len(t) > 1):
            raise ValueError("unknown command, or a word rather than a single-letter symbol")
        toks.append(_LATEX_CMDS.get(t, "^" if t == "**" else t))
    return toks


def _digits_bound(e):  # rough log10 of the largest integer sympy could build from e
    if e.is_Rational:
        return math.log10(max(abs(e.p), e.q, 2))
    if e.is_Pow and e.exp.is_Rational:
        return _digits_bound(e.base) * abs(float(e.exp))
    return sum(_digits_bound(a) for a in e.args) + 1.0  # Add/Mul; atoms (x, pi, oo) count as 1


def _safe_pow(base, e):
    if not e.is_Rational or abs(e.p) > 10**6 or e.q > 100:
        raise ValueError("exponent must be a small rational")  # also stops 9^9^9^9 towers
    if _digits_bound(base) * abs(float(e)) > _ANS_MAX_DIGITS:
        raise ValueError("power too large")  # estimated with log10, before computing it
    if base == 0 and e < 0:
        raise ZeroDivisionError
    return base ** e


def _safe_div(a, b):
    if b == 0:
        raise ZeroDivisionError  # 1/0, 0/0: never equal to anything (not even to "1/0")
    return a / b


def _parse_answer(s):
    """LaTeX/ASCII answer -> sympy expr; ValueError if it is not (supported) math."""
    toks, i, rad_lcm, rad_digits = _tokenize_answer(s), 0, 1, 0.0

    def peek():
        return toks[i] if i < len(toks) else None

    def take(expected=None):
        nonlocal i
        t = peek()
        if t is None or (expected is not None and t != expected):
            raise ValueError("unexpected token")
        i += 1
        return t

    def radical(x, q):  # x^(1/q): sympy factors x, and merges a^(1/5)*a^(1/7) into a^(12/35),
        nonlocal rad_lcm, rad_digits  # so the integers it factors stay below this product
        inner = math.lcm(1, *(p.exp.q for p in x.atoms(sympy.Pow) if p.exp.is_Rational))
        rad_lcm, rad_digits = math.lcm(rad_lcm, q * inner), rad_digits + _digits_bound(x)
        if rad_lcm * rad_digits > _ANS_MAX_RADICAL:
            raise ValueError("radicals too large")

    def expr(depth):  # expr := term (('+'|'-') term)*
        val = term(depth)
        while peek() in ("+", "-"):
            val = val + term(depth) if take() == "+" else val - term(depth)
        return val

    def term(depth):  # term := unary (('*'|'/') unary | implicitly multiplied power)*
        val = unary(depth)
        while True:
            t = peek()
            if t in ("*", "/"):
                take()
                val = val * unary(depth) if t == "*" else _safe_div(val, unary(depth))
            elif t is not None and (t in _IMPLICIT_MUL or (len(t) == 1 and t.isalpha())):
                val = val * power(depth)  # 2x, 2\sqrt{2}; but never "2 3": numbers don't chain
            else:
                return val

    def unary(depth):  # unary := ('+'|'-') unary | power
        if depth > _ANS_MAX_DEPTH:
            raise ValueError("nesting too deep")
        if peek() in ("+", "-"):
            return -unary(depth + 1) if take() == "-" else unary(depth + 1)
        return power(depth)

    def power(depth):  # power := atom ['^' unary]   (right-associative: 2^3^2 = 2^9)
        base = atom(depth)
        if peek() != "^":
            return base
        take()
        e = unary(depth + 1)
        if e.is_Rational and not e.is_Integer:
            radical(base, e.q)
        return _safe_pow(base, e)

    def arg(depth):  # argument of \frac / \sqrt: {group} or a single char, so \frac34 = 3/4
        t = peek()
        if t is not None and t[0].isdigit() and len(t) > 1:
            toks[i] = t[1:]
            return sympy.Integer(int(t[0]))
        return atom(depth + 1)

    def atom(depth):
        t = take()
        if t in _BRACKET_CLOSE:
            val = expr(depth + 1)
            take(_BRACKET_CLOSE[t])
            return val
        if t == "frac":
            num = arg(depth)
            return _safe_div(num, arg(depth))
        if t == "sqrt":
            n = sympy.Integer(2)
            if peek() == "[":
                take()
                n = expr(depth + 1)
                take("]")
                if not (n.is_Integer and 2 <= n <= 100):
                    raise ValueError("bad root index")
            x = arg(depth)
            radical(x, int(n))
            if n % 2 == 1 and x.is_negative:  # \sqrt[3]{-8} = -2, not sympy's complex root
                return -sympy.root(-x, n)
            return sympy.root(x, n)
        if t in ("pi", "oo"):
            return sympy.pi if t == "pi" else sympy.oo
        if t[0].isdigit() or t[0] == ".":
            f = Fraction(t + "0" if t.endswith(".") else t)  # exact: 0.1 is 1/10, not a float
            return sympy.Rational(f.numerator, f.denominator)
        if len(t) == 1 and t.isalpha():
            return sympy.Symbol(t, real=True)  # real: keeps sympy out of re/im case splits
        raise ValueError("unexpected token")

    val = expr(0)
    if i != len(toks):
        raise ValueError("trailing tokens")
    return val


def _try_parse_answer(s):  # sympy expr, or None if s is not supported math
    if len(s) > _ANS_MAX_CHARS:
        return None
    try:
        return _parse_answer(s)
    except ZeroDivisionError:
        raise  # 1/0 is not "not math": the caller returns False outright
    except Exception:
        return None


# Equality: structural, then expand() when provably small, then numeric at 3 fixed points.
_points_rng = random.Random(1234)  # per point: a nonzero rational in [-6, 6] for each of 52 letters
_EVAL_POINTS = [[sympy.Rational(_points_rng.choice((-1, 1)) * _points_rng.randint(1, 3000),
                                _points_rng.randint(500, 1000)) for _ in range(52)]
                for _ in range(3)]
_UNDEFINED = (sympy.zoo, sympy.nan)


def _expand_terms_bound(e, n=1):  # upper bound on the number of terms of expand(e**n), capped
    t, cap = 1, _ANS_MAX_TERMS + 1
    if e.is_Pow and e.exp.is_Rational:  # (x+1)^(7/2) expands like (x+1)^4 at worst
        return _expand_terms_bound(e.base, math.ceil(abs(e.exp) * n))
    if e.is_Add:  # multinomial count, times what each term can expand into
        t = math.comb(n + len(e.args) - 1, len(e.args) - 1)
    if e.is_Add or e.is_Mul:
        for a in e.args:
            t = min(cap, t * _expand_terms_bound(a, n))
    return min(cap, t)


def _check_deadline(deadline):
    if time.monotonic() > deadline:
        raise TimeoutError


def _sympy_equal(a, b, deadline):
    if a.has(*_UNDEFINED) or b.has(*_UNDEFINED):
        return False
    if a == b:
        return True
    if a.has(sympy.oo, -sympy.oo) or b.has(sympy.oo, -sympy.oo):
        return False  # an infinity only equals itself (checked just above)
    if a.is_Rational and b.is_Rational:
        return False
    syms = sorted(a.free_symbols | b.free_symbols, key=str)
    exact = all(p.exp.is_Integer for p in (a - b).atoms(sympy.Pow))  # no roots: a rational function
    if _expand_terms_bound(a) + _expand_terms_bound(b) <= _ANS_MAX_TERMS:
        d = sympy.expand(a - b)
        if d == 0:
            return True
        if exact and not d.has(sympy.pi) and d.is_polynomial(*syms):
            return False  # a polynomial with rational coefficients is 0 iff expand() says so
        _check_deadline(deadline)
    # Rational functions are substituted exactly (so x^300 vs x^300+1 differ); anything with a
    # root is evaluated numerically with evalf(subs=), which never builds (and factors) radicals.
    for point in _EVAL_POINTS if syms else _EVAL_POINTS[:1]:
        _check_deadline(deadline)
        sub = dict(zip(syms, point))
        va, vb = (a.xreplace(sub), b.xreplace(sub)) if exact else (a, b)
        if va.is_Rational and vb.is_Rational:
            if va != vb:
                return False
            continue
        na, nb = va.evalf(_EVALF_DIGITS, subs=sub), vb.evalf(_EVALF_DIGITS, subs=sub)
        if na.has(*_UNDEFINED) or nb.has(*_UNDEFINED):
            return False  # hit a pole: not comparable
        scale = sympy.Max(sympy.Abs(na), sympy.Abs(nb), 1)
        if not bool(sympy.Abs(na - nb) <= _EVALF_REL_TOL * scale):
            return False
    return True


@contextlib.contextmanager
def _sigalrm_limit(seconds):  # hard limit; a no-op off the main thread or if a timer is armed
    if (threading.current_thread() is not threading.main_thread()
            or not hasattr(signal, "setitimer") or signal.getitimer(signal.ITIMER_REAL)[0] > 0):
        yield
        return

    def _raise(signum, frame):
        raise TimeoutError

    old = signal.signal(signal.SIGALRM, _raise)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        try:
            signal.setitimer(signal.ITIMER_REAL, 0)
        finally:
            signal.signal(signal.SIGALRM, old)


def _answers_equal(a, b, deadline):
    if not (isinstance(a, str) and isinstance(b, str)):
        return False
    if max(len(a), len(b)) > 50 * _ANS_MAX_CHARS:  # giant answers: exact string match only
        return a.strip() == b.strip()
    a, b = _normalize_answer(a), _normalize_answer(b)
    if not a or not b:
        return False
    plain = max(len(a), len(b)) <= _ANS_MAX_CHARS and _PLAIN_NUMBER_RE.fullmatch(a)
    if plain and _PLAIN_NUMBER_RE.fullmatch(b):
        return Fraction(a) == Fraction(b)  # fast path: two plain numbers, compared exactly
    ea, eb = _try_parse_answer(a), _try_parse_answer(b)  # a ZeroDivisionError propagates -> False
    if re.sub(r"\s+", "", a).lower() == re.sub(r"\s+", "", b).lower():
        return True  # same string up to spaces and case: (A) vs (a), \text{Yes} vs yes
    if ea is None or eb is None:
        return False  # at least one side is not supported math, and the strings differ
    _check_deadline(deadline)
    return _sympy_equal(ea, eb, deadline)


def answers_equal(a, b):
    """True iff two bare answers are mathematically equal (as strings if not math). Never raises.

    >>> answers_equal(r"\\frac{-1}{2}", "-0.5"), answers_equal("(x-1)(x+1)", "x^2-1")
    (True, True)
    >>> answers_equal(r"\\sqrt{8}", r"3\\sqrt2"), answers_equal("1/0", "1/0")
    (False, False)
    """
    try:
        with _sigalrm_limit(_VERIFY_BUDGET_S):
            return bool(_answers_equal(a, b, time.monotonic() + _VERIFY_BUDGET_S))
    except Exception:  # timeout, division by zero, anything unexpected: not equal
        return False


def verify(response, gold):
    """Eq. 1 reward: True iff the last \\boxed{} answer in response equals gold. Never raises.

    >>> verify(r"so the answer is \\boxed{\\frac{3}{4}}.", "0.75")
    True
    >>> verify(r"\\boxed{1}, no wait, \\boxed{2}", "1"), verify("no box: 1", "1")
    (False, False)
    """
    try:
        pred = extract_boxed(response)
        if pred is not None and ("\\boxed" in gold or "\\fbox" in gold):
            gold = extract_boxed(gold)  # tolerate a boxed gold answer
        return pred is not None and gold is not None and answers_equal(pred, gold)
    except Exception:
        return False


# ============================================================================ 3. Prompts
def solve_prompt(question):
    """First-order prompt: the question plus the usual boxed-answer instruction."""
    return question + SOLVE_INSTRUCTION


def critique_prompt(question, response):
    """Second-order prompt in the paper's format (#Question# / #Solution# / #Instruction#)."""
    return "#Question#: " + question + "\n#Solution#: " + response + CRITIQUE_INSTRUCTION


def refine_prompt(question, response, critique):
    """Vote-denoising prompt (Eq. 4): write a corrected solution given the critique."""
    return ("#Question#: " + question + "\n#Solution#: " + response + "\n#Critique#: " + critique
            + REFINE_INSTRUCTION)


def render_prompt(tokenizer, text, chat):
    """The text a model sees: plain for base models, one user turn of the chat template for chat models."""
    if not chat:
        return text
    return tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                         add_generation_prompt=True)


def prompt_fits(tokenizer, prompts, max_length, chat):
    """Which prompts fit in max_length tokens as the model sees them (section 4 tokenises the same way).
    The one rule for every prompt gcrl builds: one that does not fit is skipped, never truncated."""
    ids = tokenizer([render_prompt(tokenizer, p, chat) for p in prompts], add_special_tokens=not chat).input_ids
    return [len(i) <= max_length for i in ids]


# Bounded gaps: with open-ended \s*\**\s* a critique of 'Conclusion:' and 20,000 spaces took 6 s
# (quadratic backtracking); bounded, the work per match start is constant.
VERDICT_RE = re.compile(r"Conclusion:\s{0,8}\*{0,2}\s{0,8}(right|wrong)\s{0,8}\*{0,2}\s{0,8}\[END\]", re.IGNORECASE)


def parse_verdict(critique):
    """Ext(c): the verdict of the LAST 'Conclusion: right/wrong [END]' -> 'correct' | 'wrong' | None.

    >>> parse_verdict("3+4=7. Conclusion: right [END]"), parse_verdict("**Conclusion: wrong [END]**")
    ('correct', 'wrong')
    """
    last = None
    for last in VERDICT_RE.finditer(critique):
        pass
    if last is None:
        return None
    return "correct" if last.group(1).lower() == "right" else "wrong"


# ============================================================================ 4. Rollout
def autocast(model):
    """bf16 autocast for forward passes on CUDA (weights stay fp32); a no-op on CPU."""
    device = next(model.parameters()).device
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


@torch.inference_mode()
def generate(model, tokenizer, prompts, num_samples, max_new_tokens, temperature=1.0, greedy=False,
             batch_size=256, chat=False):
    """Sample `num_samples` completions per prompt with HF generate (left-padded prompts).

    Returns a dict of per-sequence lists, prompt-major (prompt 0's samples first):
      prompt_ids[i]      list[int]  the prompt tokens (no padding)
      completion_ids[i]  list[int]  up to and including the first EOS (no padding)
      texts[i]           str        the decoded completion, without EOS
      truncated[i]       bool       hit max_new_tokens before EOS
    E.g. 2 prompts x num_samples=3 -> 6 entries.
    """
    from transformers import GenerationConfig
    eos = tokenizer.eos_token_id
    # Plain sampling from softmax(logits / T), or plain argmax: the distribution the loss assumes.
    # generate() fills every field left unset from model.generation_config (a checkpoint may ship
    # top_k, top_p, repetition_penalty, ...), so that config is swapped for a blank one below, and
    # top_k is set because the library's own default is 50.
    sampling = {} if greedy else {"temperature": temperature, "top_k": 0, "top_p": 1.0}
    config = GenerationConfig(do_sample=not greedy, num_beams=1, max_new_tokens=max_new_tokens,
                              pad_token_id=tokenizer.pad_token_id, eos_token_id=eos, **sampling)
    expanded = [render_prompt(tokenizer, p, chat) for p in prompts for _ in range(num_samples)]
    out = {"prompt_ids": [], "completion_ids": [], "texts": [], "truncated": []}
    device = next(model.parameters()).device
    was_training, own_config = model.training, model.generation_config
    model.eval()
    model.generation_config = GenerationConfig()
    try:
        for s in range(0, len(expanded), batch_size):
            # a chat template already holds the special tokens (BOS etc.): add none twice
            enc = tokenizer(expanded[s:s + batch_size], return_tensors="pt", padding=True,
                            add_special_tokens=not chat).to(device)
            with autocast(model):
                seqs = model.generate(**enc, generation_config=config)
            completions = seqs[:, enc.input_ids.shape[1]:]
            lengths, truncated = completion_lengths(completions, eos)
            for row, ids, mask, n in zip(completions.tolist(), enc.input_ids.tolist(), enc.attention_mask.tolist(),
                                         lengths):
                out["prompt_ids"].append([t for t, m in zip(ids, mask) if m])
                out["completion_ids"].append(row[:n])
                out["texts"].append(tokenizer.decode(row[:n], skip_special_tokens=True))
            out["truncated"] += truncated
    finally:
        model.generation_config = own_config
        model.train(was_training)
    return out


def completion_lengths(completions, eos_id):
    """Tokens to keep per row: up to and including the first EOS, or all of a truncated row.

    Found from EOS positions, never from pad-id equality: Qwen's pad token IS its EOS token.
    >>> completion_lengths(torch.tensor([[5, 0, 0], [5, 6, 7]]), eos_id=0)
    ([2, 3], [False, True])
    """
    is_eos = completions == eos_id
    has_eos = is_eos.any(1)
    lengths = torch.where(has_eos, is_eos.int().argmax(1) + 1, completions.shape[1])
    return lengths.tolist(), (~has_eos).tolist()


def collate(prompt_ids, completion_ids, pad_id, device):
    """Left-pad prompts and right-pad completions into one batch, as generate saw them.

    [[5,6],[7]] + [[1,2,eos],[3]] ->
      input_ids        [[5,6,1,2,eos], [pad,7,3,pad,pad]]
      attention_mask   [[1,1,1,1,1],   [0,1,1,0,0]]
      completion_mask  [[1,1,1],       [1,0,0]]        shape (B, C)
    """
    P = max(len(p) for p in prompt_ids)
    C = max(len(c) for c in completion_ids)
    ids, attn, cmask = [], [], []
    for p, c in zip(prompt_ids, completion_ids):
        ids.append([pad_id] * (P - len(p)) + p + c + [pad_id] * (C - len(c)))
        attn.append([0] * (P - len(p)) + [1] * (len(p) + len(c)) + [0] * (C - len(c)))
        cmask.append([1] * len(c) + [0] * (C - len(c)))
    t = lambda x: torch.tensor(x, dtype=torch.long, device=device)
    return t(ids), t(attn), t(cmask)


def completion_logprobs(model, input_ids, attention_mask, num_completion_tokens, temperature=1.0):
    """log pi(o_t | q, o_<t) for the last C tokens only; the log-softmax in fp32. Shape (B, C).

    logits_to_keep skips the LM head on prompt tokens; positions come from the mask so
    left padding does not shift them (what generate does).
    """
    C = num_completion_tokens
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    with autocast(model):
        logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                       logits_to_keep=C + 1).logits[:, :-1]
    targets = input_ids[:, -C:]
    rows = []  # row by row: a (B, C, V) fp32 log-softmax would not fit for a 150k vocabulary
    for lg, tg in zip(logits, targets):
        lg = lg.float() / temperature
        rows.append(lg.gather(-1, tg[:, None]).squeeze(-1) - torch.logsumexp(lg, -1))
    return torch.stack(rows)


# ============================================================================ 5. Filter and cache
def select_pairs(question_id, texts, correct, label_balance, rng, fits=None):
    """Paper section 3: which of one question's n responses go to the critique cache.

    filter  : all right or all wrong -> none; else ONE random right + ONE random wrong (balanced).
    random / reweight: two random responses, whatever their labels (the paper's baselines).
    fits[i] False: response i's critique prompt is too long (prompt_fits), so it is never picked.
    Returns [(question_id, response_text, response_correct), ...].

    >>> select_pairs(7, ["a", "b", "c"], [True, False, False], "filter", random.Random(0))
    [(7, 'a', True), (7, 'c', False)]
    """
    idx = [i for i in range(len(texts)) if fits is None or fits[i]]
    if label_balance == "filter":
        right = [i for i in idx if correct[i]]
        wrong = [i for i in idx if not correct[i]]
        if not right or not wrong:
            return []
        chosen = [rng.choice(right), rng.choice(wrong)]
    else:
        chosen = rng.sample(idx, min(2, len(idx)))
    return [(question_id, texts[i], bool(correct[i])) for i in chosen]


def add_to_cache(cache, pairs, cache_size):
    """Append new pairs; drop the oldest beyond cache_size. Returns how many were dropped."""
    cache.extend(pairs)
    dropped = max(0, len(cache) - cache_size)
    del cache[:dropped]
    return dropped


def sample_from_cache(cache, k, rng):
    """Take k pairs out of the cache uniformly at random, without replacement (they leave it)."""
    k = min(k, len(cache))
    picked = sorted(rng.sample(range(len(cache)), k), reverse=True)
    return [cache.pop(i) for i in picked][::-1]


def build_balanced_pairs(model, tokenizer, rows, num_samples, args, rng):
    """Sample responses to each question and keep one right + one wrong where both exist.

    Used for C-RL's static set (paper: 10 pre-sampled responses per question) and for the
    1:1 balanced critique evaluation set.
    """
    gen = generate(model, tokenizer, [solve_prompt(r["question"]) for r in rows], num_samples,
                   args.max_completion_length, args.temperature, batch_size=args.generation_batch_size, chat=args.chat)
    pairs = []
    for qi, row in enumerate(rows):
        texts = gen["texts"][qi * num_samples:(qi + 1) * num_samples]
        correct = [verify(t, row["answer"]) for t in texts]
        fits = prompt_fits(tokenizer, [critique_prompt(row["question"], t) for t in texts], args.max_prompt_length,
                           args.chat)
        pairs += select_pairs(row["id"], texts, correct, "filter", rng, fits)
    return pairs


# ============================================================================ 6. Critique (second-order rollout)
def critique_rollout(model, tokenizer, pairs, questions, num_critiques, args):
    """m critiques per <question, response> pair; each gets its parsed verdict Ext(c).

    pairs: [(question_id, response_text, response_correct)]; questions: id -> row.
    Returns generate()'s dict plus 'verdicts' (len(pairs) * m entries, pair-major).
    """
    prompts = [critique_prompt(questions[q]["question"], r) for q, r, _ in pairs]
    out = generate(model, tokenizer, prompts, num_critiques, args.max_completion_length, args.temperature,
                   batch_size=args.generation_batch_size, chat=args.chat)
    out["verdicts"] = [parse_verdict(t) for t in out["texts"]]
    return out


def refinement_votes(model, tokenizer, pairs, questions, critiques, num_critiques, num_refinements, args):
    """Vote denoising (paper section 5.2): k/n_ref of the refinements written after each critique
    that the verifier accepts. Returns (one fraction per critique, generate()'s dict). A critique
    whose refinement prompt is too long (prompt_fits) gets no refinements and a vote of 0."""
    prompts, golds = [], []
    for j, text in enumerate(critiques["texts"]):
        q, response, _ = pairs[j // num_critiques]
        prompts.append(refine_prompt(questions[q]["question"], response, text))
        golds.append(questions[q]["answer"])
    fits = prompt_fits(tokenizer, prompts, args.max_prompt_length, args.chat)
    kept = [j for j, f in enumerate(fits) if f]
    out = generate(model, tokenizer, [prompts[j] for j in kept], num_refinements, args.max_completion_length,
                   args.temperature, batch_size=args.generation_batch_size, chat=args.chat)
    votes = [0.0] * len(prompts)
    for k, j in enumerate(kept):
        texts = out["texts"][k * num_refinements:(k + 1) * num_refinements]
        votes[j] = sum(verify(t, golds[j]) for t in texts) / num_refinements
    out["skipped"] = len(prompts) - len(kept)
    return votes, out


# ============================================================================ 7. Rewards
def critique_reward(verdict, response_correct, reward_right=0.7, reward_wrong=0.7, p=None):
    """Eq. 2 (and Eq. 3 when p is given): only the final verdict is scored.

    Eq. 2: 0.7 for 'right' on a correct response, 0.7 for 'wrong' on a wrong one, else 0.
    Eq. 3: with p = E[R(r)], the two cases are re-weighted by 1/(2p) and 1/(2(1-p)), i.e.
           0.35/p and 0.35/(1-p) at the defaults, which makes the reward unbiased under skew.
    No parsable verdict -> 0 (choice).

    >>> critique_reward("correct", True), critique_reward("correct", False), critique_reward(None, True)
    (0.7, 0.0, 0.0)
    >>> critique_reward("wrong", False, p=0.25)   # 0.35 / 0.75
    0.4666...
    """
    if verdict == "correct" and response_correct:
        return reward_right if p is None else reward_right / (2 * p)
    if verdict == "wrong" and not response_correct:
        return reward_wrong if p is None else reward_wrong / (2 * (1 - p))
    return 0.0


def denoise_reward(verdict, vote, weight_right=0.1, weight_wrong=0.7):
    """Eq. 4: R_q(c) = 0.1 k/n if Ext(c) = correct, 0.7 k/n if Ext(c) = wrong (0 without a verdict).

    A 'wrong' verdict that leads to a right corrected solution earns the most: it found a real error.
    >>> denoise_reward("wrong", 0.5), denoise_reward("correct", 1.0)
    (0.35, 0.1)
    """
    if verdict == "correct":
        return weight_right * vote
    if verdict == "wrong":
        return weight_wrong * vote
    return 0.0


# ============================================================================ 8. Advantages
def grpo_advantages(rewards, group_ids, scale_rewards="group", eps=1e-4):
    """A_i = (R_i - mean(group)) / (std(group) + eps). Shapes: (N,), (N,) -> (N,).

    Groups may mix responses and critiques (GC-RL's mixed group). A group whose rewards are all
    equal, or that has one member, gets advantage 0 (never NaN). scale_rewards: 'group' divides
    by the group's std, 'batch' by the whole batch's, 'none' not at all (Dr. GRPO).

    >>> grpo_advantages(torch.tensor([1., 0., 0.7, 0.7]), torch.tensor([0, 0, 1, 1]))
    tensor([ 0.7070, -0.7070,  0.0000,  0.0000])
    """
    rewards = rewards.float()
    _, g = torch.unique(group_ids, return_inverse=True)
    G = int(g.max()) + 1 if len(g) else 0
    count = torch.zeros(G).index_add_(0, g, torch.ones_like(rewards))
    mean = torch.zeros(G).index_add_(0, g, rewards) / count
    centred = rewards - mean[g]
    var = torch.zeros(G).index_add_(0, g, centred ** 2) / (count - 1).clamp(min=1)  # unbiased, as torch.std
    std = var.sqrt()[g]
    if scale_rewards == "group":
        adv = centred / (std + eps)
    elif scale_rewards == "batch":
        adv = centred / (rewards.std() + eps) if len(rewards) > 1 else centred * 0
    else:
        adv = centred
    return torch.where(count[g] > 1, adv, torch.zeros_like(adv))


def group_stats(rewards, group_ids):
    """(fraction of groups with zero reward std, mean within-group std): TRL's frac_reward_zero_std."""
    zero, stds = [], []
    for gid in torch.unique(group_ids):
        r = rewards[group_ids == gid]
        s = r.std().item() if len(r) > 1 else 0.0
        stds.append(s)
        zero.append(s < 1e-8)
    return sum(zero) / max(1, len(zero)), sum(stds) / max(1, len(stds))


# ============================================================================ 9. Loss and update
def aggregate_loss(per_token, mask, loss_type, num_seqs, num_tokens, max_completion_length):
    """Every loss normalisation behind one switch (as verl's agg_loss).

    Returns this micro-batch's share of the global loss, so summing the shares of all micro-batches
    gives exactly the loss of the whole batch (gradient accumulation needs no extra scaling):
      grpo    : (1/N) sum_i (1/|o_i|) sum_t l_it    every sequence weighs the same (GRPO)
      dapo    : (1/T) sum_i sum_t l_it              every token weighs the same (DAPO)
      dr_grpo : (1/(N L)) sum_i sum_t l_it          constant normaliser, no length bias (Dr. GRPO)
    with N sequences and T tokens in the whole batch, L = max_completion_length.
    """
    mask = mask.to(per_token.dtype)
    if loss_type == "grpo":
        return ((per_token * mask).sum(1) / mask.sum(1).clamp(min=1)).sum() / num_seqs
    if loss_type == "dapo":
        return (per_token * mask).sum() / num_tokens
    if loss_type == "dr_grpo":
        return (per_token * mask).sum() / (num_seqs * max_completion_length)
    raise ValueError(f"unknown loss_type {loss_type!r}")


def policy_loss(logp, old_logp, ref_logp, advantages, mask, epsilon, epsilon_high, beta, loss_type,
                num_seqs, num_tokens, max_completion_length, bias_correction_kl=False):
    """PPO-clip surrogate with optional k3 KL. logp/old_logp/ref_logp/mask: (B, C); advantages: (B,).

    l_it = -min(rho A, clip(rho, 1-eps, 1+eps_high) A) + beta * KL_it,   rho = pi / pi_old
    KL_it = k3 = exp(ref - logp) - (ref - logp) - 1 (Schulman's estimator of KL(pi || ref), >= 0),
      clamped at 10: verl's low_var_kl, what the paper trained with (no ratio factor), or
      times rho with bias_correction_kl: TRL's default, whose gradient is the unbiased reverse-KL
      gradient (DeepSeek-V3.2). Both have the same value on-policy; their gradients differ.
    Positions where mask is 0 never reach the loss or its gradient, whatever they hold (inf, NaN).
    Returns (loss share, stats) where stats holds token sums for logging.
    """
    m = mask.bool()
    logp, old_logp = logp.masked_fill(~m, 0.0), old_logp.masked_fill(~m, 0.0)  # inf * 0 would be NaN
    ratio = torch.exp(logp - old_logp)                                          # (B, C)
    A = advantages[:, None]                                                     # (B, 1)
    per_token = -torch.min(ratio * A, torch.clamp(ratio, 1 - epsilon, 1 + epsilon_high) * A)  # (B, C)
    mf = m.float()
    stats = {"tokens": mf.sum().item(),
             "clip_low": (((ratio < 1 - epsilon) & (A < 0)).float() * mf).sum().item(),
             "clip_high": (((ratio > 1 + epsilon_high) & (A > 0)).float() * mf).sum().item(), "kl": 0.0}
    if beta > 0:
        d = ref_logp.masked_fill(~m, 0.0) - logp                                # (B, C) log(ref / pi)
        kl = torch.exp(d) - d - 1                                               # (B, C) k3
        kl = kl * ratio if bias_correction_kl else kl.clamp(max=10.0)
        per_token = per_token + beta * kl
        stats["kl"] = (kl.detach() * mf).sum().item()
    return aggregate_loss(per_token, mask, loss_type, num_seqs, num_tokens, max_completion_length), stats


def micro_batches(samples, size):
    """Sort by length, then chunk: sequences of similar length share a batch, so little padding."""
    order = sorted(samples, key=lambda s: len(s["prompt_ids"]) + len(s["completion_ids"]))
    return [order[i:i + size] for i in range(0, len(order), size)]


def batch_logprobs(model, batch, pad_id, device, temperature):
    ids, attn, cmask = collate([s["prompt_ids"] for s in batch], [s["completion_ids"] for s in batch], pad_id, device)
    return completion_logprobs(model, ids, attn, cmask.shape[1], temperature), cmask


def pad_stack(rows, C, device):
    return torch.stack([F.pad(r, (0, C - len(r))) for r in rows]).to(device)


def policy_update(model, ref_model, optimizer, samples, args, pad_id, rng):
    """The GRPO update on one step's samples (responses and critiques alike).

    Each sample: {"prompt_ids", "completion_ids", "advantage"}. Splits samples into
    num_mini_batches mini-batches (one optimizer step each), repeats num_iterations times, and
    accumulates gradients over micro-batches of per_device_train_batch_size sequences.
    """
    device = next(model.parameters()).device
    stats = {"tokens": 0.0, "clip_low": 0.0, "clip_high": 0.0, "kl": 0.0, "loss": 0.0, "grad_norm": 0.0,
             "skipped": 0, "updates": 0, "time_logprobs": 0.0}
    if ref_model is None and all(s["advantage"] == 0 for s in samples):
        # Every group had zero reward variance: the gradient is exactly 0, yet an optimizer step would
        # still move the weights by Adam's momentum. Skip it (counted in frac_reward_zero_std).
        return policy_update_metrics(stats)
    # old log-probs are needed only when the policy moves before a sample is used (off-policy);
    # with one iteration and one mini-batch they equal the current ones, detached: no extra pass.
    on_policy = args.num_iterations == 1 and args.num_mini_batches == 1
    t0 = time.time()
    frozen = ([("old_logp", model)] if not on_policy else []) + ([("ref_logp", ref_model)] if ref_model is not None else [])
    with torch.no_grad():
        for mb in micro_batches(samples, args.per_device_train_batch_size):
            for key, m in frozen:  # each sample keeps its own unpadded row
                lp, cm = batch_logprobs(m, mb, pad_id, device, args.temperature)
                for s, row, n in zip(mb, lp, cm.sum(1).tolist()):
                    s[key] = row[:n].cpu()
    stats["time_logprobs"] = time.time() - t0
    for _ in range(args.num_iterations):
        order = samples[:]
        rng.shuffle(order)
        k = args.num_mini_batches
        for mini in [order[i::k] for i in range(k)]:
            if not mini:
                continue
            num_seqs, num_tokens = len(mini), sum(len(s["completion_ids"]) for s in mini)
            optimizer.zero_grad(set_to_none=True)
            for mb in micro_batches(mini, args.per_device_train_batch_size):
                logp, cmask = batch_logprobs(model, mb, pad_id, device, args.temperature)
                C = cmask.shape[1]
                old = logp.detach() if on_policy else pad_stack([s["old_logp"] for s in mb], C, device)
                ref = pad_stack([s["ref_logp"] for s in mb], C, device) if ref_model is not None else None
                adv = torch.tensor([s["advantage"] for s in mb], device=device, dtype=torch.float32)
                loss, st = policy_loss(logp, old, ref, adv, cmask, args.epsilon, args.epsilon_high, args.beta,
                                       args.loss_type, num_seqs, num_tokens, args.max_completion_length,
                                       args.use_bias_correction_kl)
                loss.backward()
                stats["loss"] += loss.item() / (args.num_iterations * k)
                for key in ("tokens", "clip_low", "clip_high", "kl"):
                    stats[key] += st[key]
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm)
            if torch.isfinite(grad_norm):
                optimizer.step()
                stats["updates"] += 1
                stats["grad_norm"] += grad_norm.item()
            else:  # a non-finite gradient would poison the weights and Adam's moments: skip it
                stats["skipped"] += 1
            optimizer.zero_grad(set_to_none=True)
    return policy_update_metrics(stats)


def policy_update_metrics(stats):
    """Token sums from policy_update -> TRL-style metrics (means over completion tokens)."""
    tokens = max(1.0, stats["tokens"])
    return {"loss": stats["loss"], "grad_norm": stats["grad_norm"] / max(1, stats["updates"]),
            "kl": stats["kl"] / tokens, "clip_ratio/low_mean": stats["clip_low"] / tokens,
            "clip_ratio/high_mean": stats["clip_high"] / tokens,
            "clip_ratio/region_mean": (stats["clip_low"] + stats["clip_high"]) / tokens,
            "skipped_updates": stats["skipped"], "time/logprobs": stats["time_logprobs"]}


# ============================================================================ 10. Cold start (SFT)
def fixed_width(answer):
    """'85' -> '+085', '-4' -> '-004' (anything not an integer is kept as it is): written at one
    width, each digit of two answers sits a constant distance from its partner, so a tiny model
    can compare them digit by digit."""
    try:
        n = int(answer)
    except ValueError:
        return answer
    return ("-" if n < 0 else "+") + str(abs(n)).zfill(3)


def tiny_critique(solution, gold, given, ok):
    """The warm-up critique of a response whose final answer is `given`; `solution` is the right
    worked solution, `gold` its answer. It re-derives the answer step by step, writes both answers
    side by side at a fixed width, then a check line of digit pairs, each followed by '=' or '!':

    >>> tiny_critique("7+8=15,4+3+1=8,\\\\boxed{85}", "85", "95", ok=False)
    'Recomputed: 7+8=15,4+3+1=8,+085 vs +095\\n++=00=89!55=\\nConclusion: wrong [END]'

    Why this shape (tiny_tasks/critic_study.py measured each part): without the check line the tiny
    model's verdict never learned to compare two numbers (0.50-0.55 even when given the right steps);
    with it the verdict only has to notice a '!'.
    """
    ours, theirs = fixed_width(gold), fixed_width(given)
    w = max(len(ours), len(theirs))  # only a non-integer answer differs in width; '_' pads it
    check = "".join(a + b + ("=" if a == b else "!") for a, b in zip(ours.rjust(w, "_"), theirs.rjust(w, "_")))
    work = solution.rsplit("\\boxed{", 1)[0]  # the steps before the boxed answer ('' if none)
    return f"Recomputed: {work}{ours} vs {theirs}\n{check}\nConclusion: {'right' if ok else 'wrong'} [END]"


def tiny_cold_start_examples(rows, rng):
    """Synthetic warm-up data in all three formats (solve, critique, refine) from data set rows.

    A row with a worked 'solution' and 'wrong_solutions' (tiny_tasks/arith_coldstart.jsonl: three
    wrong ones, each slipped at every step or worked from a misread operand) gives
      solve   : solve_prompt('47+38')                  -> '7+8=15,4+3+1=8,\\boxed{85}'
      critique: critique_prompt(q, response)           -> tiny_critique(...), for the right
                                                          solution and each wrong one
      refine  : refine_prompt(q, response, critique)   -> the right solution
    Three wrong solutions per right one, slipped at every step or set up from a misread operand,
    so repeating a response's steps is the way to a right critique in 1 warm-up critique of 4
    (tiny_tasks/critic_study.py: with fewer or milder slips, the tiny critic learned to copy).
    A row with one 'wrong_solution' uses that; a row with only question and answer falls back to
    '\\boxed{answer}' and a wrong answer off by a typical slip.
    """
    examples = []
    for row in rows:
        q, gold = row["question"], row["answer"]
        right = row.get("solution") or "\\boxed{" + gold + "}"
        wrongs = row.get("wrong_solutions") or [row.get("wrong_solution")]
        if not wrongs[0]:
            try:
                wrongs = ["\\boxed{" + str(int(gold) + rng.choice([-10, -1, 1, 10])) + "}"]
            except ValueError:
                wrongs = ["\\boxed{" + gold + "0}"]
        examples.append((solve_prompt(q), right))
        for response, ok in [(right, True)] + [(w, False) for w in wrongs]:
            crit = tiny_critique(right, gold, extract_boxed(response) or "", ok)
            examples.append((critique_prompt(q, response), crit))
            examples.append((refine_prompt(q, response, crit), right))
    return examples


def cold_start_examples(path, rng):
    """Read --cold_start: question+answer lines -> tiny synthetic examples; lines that also carry
    response+critique -> critique examples, as the paper's distilled cold-start data."""
    rows = load_jsonl(path, required=("question",))
    examples = []
    for i, row in enumerate(rows):
        if isinstance(row.get("critique"), str) and isinstance(row.get("response"), str):
            examples.append((critique_prompt(row["question"], row["response"]), row["critique"]))
        elif isinstance(row.get("answer"), str):
            examples += tiny_cold_start_examples([row], rng)
        else:
            raise SystemExit(f"error: {path}:{i + 1}: needs 'answer', or 'response' and 'critique'")
    return examples


def sft_backward(model, batch, pad_id, micro_batch_size=16):
    """Backward of the SFT loss -mean log pi(target | prompt) over all target tokens of `batch`,
    in length-sorted micro-batches; returns the loss (a float).

    batch: [{"prompt_ids", "completion_ids"}] (the completion is the target, EOS included). Each
    micro-batch's summed loss is divided by the WHOLE batch's token count, so the gradients add up
    to one big batch's. Why split: the warm-up mixes short solve examples (~30 tokens), critiques
    (~75) and refinements (~100 with a 75-token prompt); padded together, half of a batch of 64 is
    padding. Micro-batches of 16 against one pass per batch of 64 (tiny_tasks/bench_sft.py, 60 steps,
    2 threads, median of 4 whole-process runs): 0.74 x the wall time, 586 against 982 MiB peak RSS.
    """
    device = next(model.parameters()).device
    num_tokens = sum(len(s["completion_ids"]) for s in batch)
    total = 0.0
    for mb in micro_batches(batch, micro_batch_size):
        logp, cmask = batch_logprobs(model, mb, pad_id, device, 1.0)
        loss = -(logp * cmask).sum() / num_tokens
        loss.backward()
        total += loss.item()
    return total


def sft(model, tokenizer, examples, steps, lr, batch_size, rng, first_examples=None, first_steps=0, chat=False,
        micro_batch_size=16):
    """Supervised warm-up: maximise log pi(target | prompt) on completion tokens only.

    examples: [(prompt, target)]. The first `first_steps` steps draw from `first_examples` instead
    (a curriculum); the learning rate decays linearly to 0 over all steps, without a restart.
    """
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    enc = lambda s: tokenizer(s, add_special_tokens=False).input_ids
    # prompts tokenised as generate() does (BOS etc. unless a chat template holds them); targets plain
    enc_prompt = lambda s: tokenizer(render_prompt(tokenizer, s, chat), add_special_tokens=not chat).input_ids
    encode = lambda exs: [{"prompt_ids": enc_prompt(p), "completion_ids": enc(t) + [tokenizer.eos_token_id]}
                          for p, t in exs]
    data, first = encode(examples), encode(first_examples or [])
    model.train()
    loss = float("nan")
    bar = tqdm(range(steps), desc="cold start", leave=False, dynamic_ncols=True)
    for step in bar:
        pool = first if step < first_steps and first else data
        batch = rng.sample(pool, min(batch_size, len(pool)))
        optimizer.zero_grad(set_to_none=True)
        loss = sft_backward(model, batch, tokenizer.pad_token_id, micro_batch_size)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        for g in optimizer.param_groups:
            g["lr"] = lr * (1 - step / steps)
        optimizer.step()
        bar.set_postfix(loss=f"{loss:.3f}")
    return loss


def cold_start(model, tokenizer, examples, steps, lr, rng, batch_size=64, chat=False, micro_batch_size=16):
    """Solving first, then all formats: 1/5 of the steps on solve examples, the rest on everything,
    with solve and critique examples counted twice (solving keeps being practised; critiquing is
    the hardest format to learn).

    The critique and the refinement re-use the solution's worked steps, so a model that can solve
    picks the other formats up. Measured on the tiny model (tiny_tasks/critic_study.py, 2 threads):
    3000 steps give a critic at 0.83 / 0.78 balanced accuracy (seeds 0 / 1) and 0.91 / 0.71 greedy
    generation accuracy; the same data in 1500 or 2200 steps left the check line unlearned (0.69, 0.54).
    From arith_coldstart.jsonl (seed 0, tiny_tasks/reproduce.py): 0.92 critic, 0.965 generation.
    """
    solve = [e for e in examples if e[0].endswith(SOLVE_INSTRUCTION)]
    if not solve or len(solve) == len(examples):
        return sft(model, tokenizer, examples, steps, lr, batch_size, rng, chat=chat, micro_batch_size=micro_batch_size)
    critique = [e for e in examples if e[0].endswith(CRITIQUE_INSTRUCTION)]
    return sft(model, tokenizer, examples + solve + critique, steps, lr, batch_size, rng,
               first_examples=solve, first_steps=steps // 5, chat=chat, micro_batch_size=micro_batch_size)


# ============================================================================ 11. Evaluation
def evaluate(model, tokenizer, eval_rows, critique_set, questions, args):
    """Greedy generation accuracy on held-out questions, and critique accuracy on a 1:1 balanced
    set of right/wrong responses, plus the rate of 'right' verdicts (0 = a critic that always
    says wrong; 0.5 is the balanced truth)."""
    gen = generate(model, tokenizer, [solve_prompt(r["question"]) for r in eval_rows], 1,
                   args.max_completion_length, greedy=True, batch_size=args.generation_batch_size, chat=args.chat)
    acc = sum(verify(t, r["answer"]) for t, r in zip(gen["texts"], eval_rows)) / len(eval_rows)
    metrics = {"eval/accuracy": acc}
    if critique_set:
        prompts = [critique_prompt(questions[q]["question"], r) for q, r, _ in critique_set]
        crit = generate(model, tokenizer, prompts, 1, args.max_completion_length, greedy=True,
                        batch_size=args.generation_batch_size, chat=args.chat)
        verdicts = [parse_verdict(t) for t in crit["texts"]]
        metrics["eval/critique_accuracy"] = sum(
            v == ("correct" if ok else "wrong") for v, (_, _, ok) in zip(verdicts, critique_set)) / len(critique_set)
        metrics["eval/critique_right_rate"] = sum(v == "correct" for v in verdicts) / len(verdicts)
        metrics["eval/critique_pairs"] = len(critique_set)
    return metrics


# ============================================================================ 12. Training loop
def question_batches(rows, batch_size, num_batches, rng):
    """The questions of every step: a fresh shuffle per epoch, and never one question twice in a step
    (it would get one merged group of 2n responses). Where a step straddles two epochs, a question
    it already holds waits for the next step.

    >>> [[r["id"] for r in b] for b in question_batches([{"id": i} for i in range(3)], 2, 3, random.Random(0))]
    [[0, 2], [1, 2], [1, 0]]
    """
    if batch_size > len(rows):
        raise SystemExit(f"error: --train_batch_size {batch_size} is more than the {len(rows)} training questions")
    batches, pool = [], []
    while len(batches) < num_batches:
        if len(pool) < batch_size:
            epoch = rows[:]
            rng.shuffle(epoch)
            pool += epoch
        batch, ids, rest = [], set(), []
        for r in pool:
            if len(batch) < batch_size and r["id"] not in ids:
                batch.append(r)
                ids.add(r["id"])
            else:
                rest.append(r)
        batches.append(batch)
        pool = rest
    return batches


def train(model, tokenizer, train_rows, eval_rows, args, log=print, resume=None, stop=None):
    """RL: every step does first-order rollout -> filter/cache -> second-order rollout -> rewards
    -> mixed-group advantages -> GRPO update. Returns the list of metrics dicts (one per step).

    resume: the trainer state of a checkpoint (load_checkpoint); the run then continues exactly as
    if it had not stopped. stop: a dict whose "signal" a handler sets (install_stop_handlers); once
    set, the current step finishes, a checkpoint is written and train returns.
    """
    stop = stop if stop is not None else {"signal": None}
    rng = random.Random(args.seed)
    pad_id = tokenizer.pad_token_id
    questions = {r["id"]: r for r in train_rows}
    eval_questions = {r["id"]: r for r in eval_rows}
    ref_model = None
    if args.beta > 0:  # the frozen reference exists only when the KL term needs it: the starting policy
        if resume is not None:  # ... which a checkpoint carries, since the policy has moved since
            from transformers import AutoModelForCausalLM
            ref_model = AutoModelForCausalLM.from_pretrained(os.path.join(resume["path"], "reference"))
            ref_model = ref_model.to(next(model.parameters()).device)
        else:
            ref_model = copy.deepcopy(model)
        ref_model.eval().requires_grad_(False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, weight_decay=0.0)
    critiques_on = args.mode in ("critique", "gcrl")
    os.makedirs(args.output_dir, exist_ok=True)
    metrics_path = os.path.join(args.output_dir, "metrics.jsonl")
    history = []
    if resume is None:
        open(metrics_path, "w").close()
    else:  # keep the lines up to the checkpoint; later ones (a crash after it) are redone
        history = [m for m in read_metrics(metrics_path) if m["step"] <= resume["step"]]
        with open(metrics_path, "w") as f:
            f.writelines(json.dumps(m) + "\n" for m in history)

    def record(m):
        history.append(m)
        with open(metrics_path, "a") as f:
            f.write(json.dumps(m) + "\n")

    # The data order is a function of the seed alone, so a resumed run sees the same questions.
    schedule = question_batches(train_rows, args.train_batch_size, args.max_steps, rng)
    if resume is None:
        # Balanced critique eval set, built once from the starting policy (1 right + 1 wrong per question).
        critique_eval = build_balanced_pairs(model, tokenizer, eval_rows, 8, args, random.Random(args.seed + 1))
        # C-RL trains on a static balanced set built up front from the questions this run will see.
        static_set = []
        if args.mode == "critique":
            seen = list({r["id"]: r for batch in schedule for r in batch}.values())
            static_set = build_balanced_pairs(model, tokenizer, seen, args.static_samples, args, rng)
            log(f"C-RL static set: {len(static_set)} balanced pairs from {len(seen)} questions")
        first = evaluate(model, tokenizer, eval_rows, critique_eval, eval_questions, args)
        record({"step": 0, **first})
        log("step 0 | " + " | ".join(f"{k} {v:.3f}" for k, v in first.items()))
        cache, static_pool = [], []
        p_correct = None  # running E[R(r)] for Eq. 3
        start, nonfinite = 1, 0
    else:
        optimizer.load_state_dict(resume["optimizer"])
        rng.setstate(resume["python_rng"])
        torch.set_rng_state(resume["torch_rng"])
        if resume.get("cuda_rng") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(resume["cuda_rng"])
        critique_eval, static_set, static_pool = resume["critique_eval"], resume["static_set"], resume["static_pool"]
        cache, p_correct, nonfinite = resume["cache"], resume["p_correct"], resume["nonfinite"]
        start = resume["step"] + 1
        log(f"resumed at step {resume['step']}")

    def checkpoint(step):
        state = {"step": step, "cache": cache, "static_pool": static_pool, "static_set": static_set,
                 "critique_eval": critique_eval, "p_correct": p_correct, "nonfinite": nonfinite,
                 "python_rng": rng.getstate()}
        path = os.path.join(args.output_dir, f"checkpoint-{step}")
        save_checkpoint(path, model, tokenizer, optimizer, state, ref_model)
        return path

    bar = tqdm(range(start, args.max_steps + 1), desc=f"{args.mode}", dynamic_ncols=True, initial=start - 1,
               total=args.max_steps)
    for step in bar:
        t_step = time.time()
        m = {"step": step}
        batch = schedule[step - 1]
        samples, rewards, groups = [], [], []

        # ---- 1-2. first-order rollout and Eq. 1 rewards
        if args.mode in ("grpo", "gcrl"):
            t = time.time()
            gen = generate(model, tokenizer, [solve_prompt(r["question"]) for r in batch], args.num_generations,
                           args.max_completion_length, args.temperature, batch_size=args.generation_batch_size, chat=args.chat)
            m["time/rollout"] = time.time() - t
            t = time.time()
            correct = [verify(txt, batch[i // args.num_generations]["answer"]) for i, txt in enumerate(gen["texts"])]
            m["time/reward"] = time.time() - t
            for i, ok in enumerate(correct):
                samples.append({"prompt_ids": gen["prompt_ids"][i], "completion_ids": gen["completion_ids"][i]})
                rewards.append(float(ok))
                groups.append(batch[i // args.num_generations]["id"])
            acc = sum(correct) / len(correct)
            p_correct = acc if p_correct is None else 0.9 * p_correct + 0.1 * acc  # EMA (choice)
            m["reward"] = acc
            m["completions/mean_length"] = sum(map(len, gen["completion_ids"])) / len(gen["completion_ids"])
            m["completions/clipped_ratio"] = sum(gen["truncated"]) / len(gen["truncated"])
            m["tokens/rollout"] = sum(map(len, gen["completion_ids"]))

            # ---- 3. label balancing: the data filter feeds the question-response cache
            if args.mode == "gcrl":
                n = args.num_generations
                new, skipped = [], 0
                for qi, row in enumerate(batch):
                    texts = gen["texts"][qi * n:(qi + 1) * n]
                    fits = prompt_fits(tokenizer, [critique_prompt(row["question"], t) for t in texts],
                                       args.max_prompt_length, args.chat)
                    skipped += fits.count(False)
                    new += select_pairs(row["id"], texts, correct[qi * n:(qi + 1) * n], args.label_balance, rng, fits)
                m["cache/dropped"] = add_to_cache(cache, new, args.cache_size)
                m["cache/added"] = len(new)
                m["prompts/skipped_critique"] = skipped

        # ---- 4-5. second-order rollout: critiques of cached pairs, Eq. 2/3 (+ Eq. 4) rewards
        # A separate generate() call on purpose: the paper samples the cache AFTER adding this step's
        # pairs, and one call for 64 responses + 64 critiques of older pairs was also slower (0.184 s
        # against 0.156 s for two calls, tiny model, 1 thread): solve prompts get padded to critique
        # length, and every row decodes until the longest one in the call ends.
        if critiques_on:
            if args.mode == "critique":
                if len(static_pool) < args.critique_batch_size:  # refill: one pass over the static set per epoch
                    static_pool = static_pool + rng.sample(static_set, len(static_set))
                pairs, static_pool = static_pool[:args.critique_batch_size], static_pool[args.critique_batch_size:]
            else:
                pairs = sample_from_cache(cache, args.critique_batch_size, rng)
            if args.mode == "gcrl":
                m["cache/size"] = len(cache)
            m["critique/pairs"] = len(pairs)
            if pairs:
                mc = args.num_critiques
                t = time.time()
                crit = critique_rollout(model, tokenizer, pairs, questions, mc, args)
                m["time/critique_rollout"] = time.time() - t
                m["tokens/critique_rollout"] = sum(map(len, crit["completion_ids"]))
                votes = None
                if args.num_refinements > 0:
                    t = time.time()
                    votes, ref_out = refinement_votes(model, tokenizer, pairs, questions, crit, mc,
                                                      args.num_refinements, args)
                    m["time/refine_rollout"] = time.time() - t
                    m["tokens/refine_rollout"] = sum(map(len, ref_out["completion_ids"]))
                    m["prompts/skipped_refine"] = ref_out["skipped"]
                    m["critique/refine_accuracy"] = sum(votes) / len(votes)
                p = p_correct if args.label_balance == "reweight" and p_correct is not None else None
                if p is not None:
                    p = min(max(p, 0.05), 0.95)  # keep 1/p finite early in training
                hits = []
                for j, verdict in enumerate(crit["verdicts"]):
                    q, _, ok = pairs[j // mc]
                    r = critique_reward(verdict, ok, args.critique_reward_right, args.critique_reward_wrong, p)
                    if votes is not None:
                        r += denoise_reward(verdict, votes[j], args.denoise_weight_right, args.denoise_weight_wrong)
                    samples.append({"prompt_ids": crit["prompt_ids"][j], "completion_ids": crit["completion_ids"][j]})
                    rewards.append(r)
                    # mixed group (choice): critiques join their question's group; or one group per pair
                    groups.append(q if args.group_by == "question" else max(questions) + 1 + j // mc)  # > any question id
                    hits.append(verdict == ("correct" if ok else "wrong"))
                crit_rewards = rewards[-len(hits):]
                m["critique/reward"] = sum(crit_rewards) / len(crit_rewards)
                m["critique/accuracy"] = sum(hits) / len(hits)
                m["critique/right_rate"] = sum(v == "correct" for v in crit["verdicts"]) / len(hits)
                m["critique/no_verdict_rate"] = sum(v is None for v in crit["verdicts"]) / len(hits)
                m["critique/label_right_rate"] = sum(ok for _, _, ok in pairs) / len(pairs)
                m["critique/mean_length"] = m["tokens/critique_rollout"] / len(hits)

        # ---- 6. mixed-group advantages, then one GRPO update
        if samples:
            R = torch.tensor(rewards)
            G = torch.tensor(groups)
            adv = grpo_advantages(R, G, args.scale_rewards)
            for s, a in zip(samples, adv.tolist()):
                s["advantage"] = a
            m["frac_reward_zero_std"], m["reward_std"] = group_stats(R, G)
            m["num_samples"] = len(samples)
            t = time.time()
            m.update(policy_update(model, ref_model, optimizer, samples, args, pad_id, rng))
            m["time/update"] = time.time() - t - m["time/logprobs"]
        m["learning_rate"] = args.learning_rate
        rollout_time = sum(v for k, v in m.items() if k.endswith("_rollout") and k.startswith("time/")) + m.get("time/rollout", 0)
        tokens = sum(v for k, v in m.items() if k.startswith("tokens/"))
        m["tokens_per_second"] = tokens / rollout_time if rollout_time > 0 else 0.0

        m["time/step"] = time.time() - t_step  # the whole step, evaluation excluded
        # a non-finite loss or gradient skipped the update (policy_update); too many in a row: stop
        nonfinite = nonfinite + 1 if m.get("skipped_updates") else 0
        if (args.eval_steps and step % args.eval_steps == 0) or step == args.max_steps:
            m.update(evaluate(model, tokenizer, eval_rows, critique_eval, eval_questions, args))
        if nonfinite >= args.max_nonfinite_steps:
            m["stopped"] = "nonfinite"
        elif stop["signal"] is not None:
            m["stopped"] = signal.Signals(stop["signal"]).name
        record(m)
        shown = {k.split("/")[-1]: f"{m[k]:.2f}" for k in ("reward", "critique/accuracy", "eval/accuracy",
                                                            "eval/critique_accuracy") if k in m}
        shown.update({"t_" + k[5:].replace("_rollout", ""): f"{v:.2f}s" for k, v in m.items() if k.startswith("time/")})
        bar.set_postfix(shown)  # e.g. reward=0.27, accuracy=0.45, t_rollout=0.31s, t_critique=0.20s, t_update=0.40s
        if "stopped" in m or (args.save_steps and step % args.save_steps == 0):
            path = checkpoint(step)
            if "stopped" in m:
                bar.close()
                log(f"stopped at step {step} ({m['stopped']}); checkpoint: {path}\n"
                    f"resume with the same command plus: --resume {path}")
                break
    return history


def install_stop_handlers(stop):
    """SIGINT/SIGTERM only set a flag: the step in flight finishes, then the loop checkpoints and
    returns. A second Ctrl-C stops at once. (Signals can only be caught in the main thread.)"""
    if threading.current_thread() is not threading.main_thread():
        return None

    def on_signal(signum, frame):
        if stop["signal"] is not None:
            raise KeyboardInterrupt
        stop["signal"] = signum
        tqdm.write(f"received {signal.Signals(signum).name}: finishing this step, then saving a checkpoint")

    return {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}


def restore_stop_handlers(handlers):
    for s, h in (handlers or {}).items():
        signal.signal(s, h)


def save_checkpoint(path, model, tokenizer, optimizer, state, ref_model=None):
    """output_dir/checkpoint-STEP: model + tokenizer (from_pretrained loads them), trainer_state.pt
    (optimizer, RNG states, question-response cache, step) and, when beta > 0, reference/ (the KL
    anchor). Written to path.tmp, then renamed, so a kill at any moment leaves every earlier
    checkpoint whole and never a half-written one."""
    tmp = path + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if ref_model is not None:
        ref_model.save_pretrained(os.path.join(tmp, "reference"))
    state = {**state, "optimizer": optimizer.state_dict(), "torch_rng": torch.get_rng_state(),
             "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}
    torch.save(state, os.path.join(tmp, "trainer_state.pt"))
    shutil.rmtree(path, ignore_errors=True)  # only when this very step was saved before
    os.replace(tmp, path)


def latest_checkpoint(output_dir):
    """The checkpoint-STEP directory with the highest STEP (half-written .tmp ones never count)."""
    found = [d for d in os.listdir(output_dir) if re.fullmatch(r"checkpoint-\d+", d)] if os.path.isdir(output_dir) else []
    if not found:
        raise SystemExit(f"error: --resume: no checkpoint-STEP directory in {output_dir!r}")
    return os.path.join(output_dir, max(found, key=lambda d: int(d.split("-")[1])))


def load_checkpoint(path):
    """The trainer state saved by save_checkpoint (the model is loaded with from_pretrained)."""
    state_file = os.path.join(path, "trainer_state.pt")
    if not os.path.isfile(state_file):
        raise SystemExit(f"error: --resume: {path!r} has no trainer_state.pt (not a gcrl checkpoint)")
    return {**torch.load(state_file, map_location="cpu", weights_only=False), "path": path}


def read_metrics(path):
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


# ============================================================================ 13. Main
def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.num_threads or min(8, os.cpu_count() or 1))
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    t_start = time.time()
    train_rows = load_jsonl(args.dataset)  # data errors surface before any model loads
    eval_rows = load_jsonl(args.eval_dataset)
    if args.eval_size:
        eval_rows = eval_rows[:args.eval_size]
    resume, model_name = None, args.model  # the name decides the chat template, also on resume
    if args.resume:
        path = latest_checkpoint(args.output_dir) if args.resume == "latest" else args.resume
        resume = load_checkpoint(path)
        args.model, args.cold_start = path, None  # weights and tokenizer come from the checkpoint
    model, tokenizer = load_model(args)
    args.chat = use_chat_template(tokenizer, model_name, args.chat_template)
    example = render_prompt(tokenizer, solve_prompt(train_rows[0]["question"]), args.chat)
    print(f"prompts: {'chat template' if args.chat else 'plain text'} (--chat_template {args.chat_template}); "
          f"the first question renders as:\n{example}")
    for name, rows in (("train", train_rows), ("eval", eval_rows)):
        fits = prompt_fits(tokenizer, [solve_prompt(r["question"]) for r in rows], args.max_prompt_length, args.chat)
        kept = [r for r, f in zip(rows, fits) if f]
        if len(kept) < len(rows):  # skipped, never silently truncated
            print(f"skipped {len(rows) - len(kept)} {name} questions longer than --max_prompt_length {args.max_prompt_length}")
        if not kept:
            raise SystemExit(f"error: every {name} question is longer than --max_prompt_length {args.max_prompt_length}")
        rows[:] = kept
    if args.gradient_checkpointing:
        enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
        enable()
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {args.model or 'tiny Qwen2'} ({n_params / 1e6:.2f} M parameters) on {args.device} | "
          f"mode {args.mode} | {len(train_rows)} train / {len(eval_rows)} eval questions")
    if args.cold_start and args.cold_start_steps > 0:
        examples = cold_start_examples(args.cold_start, random.Random(args.seed))
        t = time.time()
        loss = cold_start(model, tokenizer, examples, args.cold_start_steps, args.cold_start_lr, random.Random(args.seed),
                          chat=args.chat)
        print(f"cold start: {args.cold_start_steps} SFT steps on {len(examples)} examples, "
              f"final loss {loss:.3f}, {time.time() - t:.0f} s")
    stop = {"signal": None}
    handlers = install_stop_handlers(stop)
    try:
        history = train(model, tokenizer, train_rows, eval_rows, args, log=tqdm.write, resume=resume, stop=stop)
    finally:
        restore_stop_handlers(handlers)
    end = history[-1]
    if end.get("stopped") == "nonfinite":
        raise SystemExit(f"error: {args.max_nonfinite_steps} steps in a row had a non-finite loss or gradient; "
                         f"stopped at step {end['step']} (checkpoint saved). Try a lower --learning_rate.")
    if end.get("stopped") and end["step"] < args.max_steps:
        return history  # interrupted: the checkpoint and how to resume were printed; exit 0
    model.save_pretrained(args.output_dir)  # beside metrics.jsonl; from_pretrained(output_dir) loads it
    tokenizer.save_pretrained(args.output_dir)
    start = history[0]
    print(f"\nsummary ({args.mode}, {args.max_steps} steps, {time.time() - t_start:.0f} s):")
    for key in ("eval/accuracy", "eval/critique_accuracy", "eval/critique_right_rate"):
        if key in start and key in end:
            print(f"  {key:28s} {start[key]:.3f} -> {end[key]:.3f}")
    print(f"  metrics: {os.path.join(args.output_dir, 'metrics.jsonl')}; model: {args.output_dir}")
    return history


if __name__ == "__main__":
    main()
