"""gcrl.py -- GC-RL: GRPO with second-order rollout, in one readable file.

Paper: "Towards Better RL Training Data Utilization via Second-Order Rollout" (Yang, Wang, Li,
Sui; arXiv 2602.22765). No official code exists; this is a reference implementation.

Vanilla GRPO samples n responses per question (first-order rollout) and learns from a verifier's
0/1 reward. GC-RL also asks the *same* policy to critique the <question, response> pairs it just
produced (second-order rollout). A critique's reward is free: the verifier already knows whether
the critiqued response was right. Responses and critiques are trained together in one GRPO update.

    python gcrl.py                          # CPU demo: the tiny cold-started model in tiny_tasks/
    python gcrl.py --model Qwen2.5-0.5B     # a real model (GPU recommended)
    torchrun --nproc_per_node 8 gcrl.py --model ... [--fsdp]    # several GPUs (Appendix E)
    python gcrl.py --help                   # every flag

One step, rl_step (§10), is the paper's Fig. 2 (§N and Appendix X are parts of this file; "paper
section N" is the paper's); by default 16 questions x 8 responses, then 16 pairs x 8 critiques:
  1. first-order rollout: n responses per question                                         §4
  2. each response rewarded by the verifier, R(r) = 1 or 0 (Eq. 1)                         §3, §4
  3. data filter: a question with right AND wrong responses puts two pairs (question,
     response, label) into the question-response cache, one right response and one wrong   §5
  4. second-order rollout: m critiques of each pair drawn from the cache                   §5, §6
  5. each critique rewarded by its verdict against the label (Eq. 2, or Eq. 3; + Eq. 4)    §6, §7
  6. GRPO advantages within groups, then one PPO-clip update on responses and critiques    §8, §9
A critique's group is its question's; when that question is in this step's batch too (always so for
a pair cached this step), its responses share the group (the mixed group). Then the critiques'
rewards move the responses' advantages too, and a right critique (0.7) ranks below right responses
(1). At step 1, describe_step prints one such group with each sample's reward and advantage.
Where the paper is silent this file makes a choice, marked "(choice)": the groups above; no
parsable verdict earns 0; p in Eq. 3 is an EMA of the response accuracy; a full cache drops its
oldest pairs; refinements (Eq. 4) score critiques and are not trained; critiques and responses
are weighed alike in the loss; truncated completions are trained on (as TRL's default).
Simplifications against a production trainer (verl, TRL): rollout with HF generate, not vLLM; no
sequence packing; no tensor parallelism; the data set fits in memory. §0-1 set up, §2-11 are the
method and its loop, §12 evaluates, §13 runs it. The appendices are plumbing a reader may skip:
A verifier internals, B checkpoints and signals, C argument checks, D the supervised warm-up,
E several processes (its lockstep and all_reduce do nothing in a single process), F padded batches
and log-probs.
"""
import argparse
import collections
import contextlib
import copy
import json
import math
import os
import random
import re
import shutil
import signal
import threading
import time
from fractions import Fraction

import sympy
import torch
import torch.nn.functional as F
from tqdm import tqdm

HERE = os.path.dirname(os.path.abspath(__file__))
TINY = os.path.join(HERE, "tiny_tasks")
DEMO_MODEL = os.path.join(TINY, "tiny-model")  # written by tiny_tasks/tiny_model.py


# ============================================================================ 0. Config
# `python gcrl.py` with no --model is the demo: the shipped tiny model, and settings chosen for it on
# tiny_tasks/arith_dev.jsonl (never on the test questions). Every other default is for real models
# (their built-in data: multi-step arithmetic, tiny_tasks/multistep_*.jsonl).
DEMO = dict(model=DEMO_MODEL, dataset=os.path.join(TINY, "arith_train.jsonl"),
            eval_dataset=os.path.join(TINY, "arith_test.jsonl"), eval_size=300, max_steps=100, learning_rate=3e-5,
            per_device_train_batch_size=16, max_completion_length=64, eval_steps=0, self_verify_samples=8)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    def _get_help_string(self, action):  # a default of None is explained in the help text itself
        return action.help if action.default is None else super()._get_help_string(action)


def parse_args(argv=None):
    """All flags in one place. Names follow TRL's GRPOConfig where TRL has the flag, with its meaning."""
    p = argparse.ArgumentParser(description="GC-RL: GRPO with second-order (critique) rollout. Without --model: "
                                "the demo, with the defaults of gcrl.DEMO.", formatter_class=HelpFormatter)
    a = p.add_argument
    # what to train
    a("--model", default=None, help="HF hub id, Qwen shorthand (Qwen2.5-0.5B) or local directory; none: the demo")
    a("--mode", default="gcrl", choices=["grpo", "critique", "gcrl"],
      help="grpo = G-RL (responses only); critique = C-RL (a static balanced set); gcrl = GC-RL")
    a("--dataset", default=os.path.join(TINY, "multistep_train.jsonl"), help="training questions (load_questions)")
    a("--eval_dataset", default=os.path.join(TINY, "multistep_test.jsonl"), help="held-out questions")
    a("--question_field", default=None, help="the question's JSONL field (default: detected)")
    a("--answer_field", default=None, help="the gold answer's JSONL field (default: detected)")
    a("--eval_size", type=int, default=200, help="questions used from --eval_dataset (0 = all)")
    a("--cold_start", default=None, help="SFT before RL: a JSONL of question/response/critique lines, or 'self'")
    a("--cold_start_questions", type=int, default=256, help="--cold_start self: training questions it answers")
    a("--cold_start_steps", type=int, default=200, help="SFT steps of the cold start")
    a("--cold_start_lr", type=float, default=1e-5, help="SFT learning rate of the cold start")
    a("--chat_template", default="auto", choices=["auto", "on", "off"],
      help="wrap prompts in the chat template; auto: if the tokenizer has one and the name says Instruct/Chat")
    a("--gradient_checkpointing", action="store_true", help="recompute activations in backward (less memory)")
    a("--fsdp", action="store_true", help="under torchrun: shard the model with FSDP2 instead of DDP")
    # first- and second-order rollout
    a("--max_steps", type=int, default=200, help="RL steps")
    a("--train_batch_size", type=int, default=16, help="questions per step (verl's data.train_batch_size)")
    a("--num_generations", type=int, default=8, help="n: responses per question")
    a("--num_critiques", type=int, default=None, help="m: critiques per pair (default: --num_generations)")
    a("--critique_batch_size", type=int, default=None, help="pairs critiqued per step (default: --train_batch_size)")
    a("--max_prompt_length", type=int, default=None, help="longest prompt of any kind; longer ones are skipped and "
      "counted, never truncated (default: 512 + 2 x --max_completion_length, for a refinement prompt's parts)")
    a("--max_completion_length", type=int, default=1024, help="new tokens per completion")
    a("--temperature", type=float, default=1.0, help="sampling temperature (the log-probs use the same)")
    a("--generation_chunk_size", type=int, default=256, help="sequences per generate() call (memory)")
    # label balancing and the critique reward (paper sections 3 and 5)
    a("--label_balance", default=None, choices=["filter", "random", "reweight"], help="filter (default): one "
      "right + one wrong response per question; random: two random ones; reweight: random + Eq. 3")
    a("--cache_size", type=int, default=None, help="most pairs the cache holds (default: 4 x --critique_batch_size)")
    a("--critique_reward_right", type=float, default=0.7, help='Eq. 2: reward for "right" on a correct response '
      '(the paper\'s Eq. 5/6 steering: 0.6/0.8 a stricter critic, 0.8/0.6 a more lenient one)')
    a("--critique_reward_wrong", type=float, default=0.7, help='Eq. 2: reward for "wrong" on a wrong response')
    a("--num_refinements", type=int, default=None, help="Eq. 4 vote denoising: refinements per critique (default 0: "
      "off)")
    a("--denoise_weight_right", type=float, default=0.1, help='Eq. 4 weight of a "right" verdict')
    a("--denoise_weight_wrong", type=float, default=0.7, help='Eq. 4 weight of a "wrong" verdict')
    a("--static_samples", type=int, default=10, help="C-RL: responses per question for its static set")
    # advantages and loss
    a("--group_by", default="question", choices=["question", "prompt"],
      help="question: a critique shares its question's group (choice); prompt: each prompt its own group")
    a("--scale_rewards", default="group", choices=["group", "batch", "none"], help="divide advantages by this std")
    a("--loss_type", default="grpo", choices=["grpo", "dapo", "dr_grpo"], help="loss normalisation (aggregate_loss)")
    a("--epsilon", type=float, default=0.2, help="PPO clip, lower")
    a("--epsilon_high", type=float, default=None, help="PPO clip, upper (default: --epsilon)")
    a("--beta", type=float, default=0.0, help="KL coefficient to the frozen starting policy (0: no reference model)")
    a("--use_bias_correction_kl", action=argparse.BooleanOptionalAction, default=False,
      help="TRL's: the k3 KL times pi/pi_old; off: verl's low_var_kl, the paper's (k3 clamped at 10)")
    a("--num_iterations", type=int, default=1, help="passes over each step's samples (PPO epochs)")
    a("--num_mini_batches", type=int, default=1, help="optimizer steps per pass over a step's samples (verl's "
      "mini-batches)")
    a("--per_device_train_batch_size", type=int, default=8, help="sequences per forward/backward")
    a("--learning_rate", type=float, default=1e-6, help="AdamW learning rate (the paper's)")
    a("--max_grad_norm", type=float, default=1.0, help="gradient clipping")
    for trl_only in ("--steps_per_generation", "--generation_batch_size"):
        a(trl_only, type=int, default=None, help=argparse.SUPPRESS)  # TRL's: refused, with a pointer (Appendix C)
    # evaluation and bookkeeping
    a("--eval_steps", type=int, default=20, help="evaluate every this many steps (0: at start and end only)")
    a("--self_verify_samples", type=int, default=0, help="k answers per eval question for self-verification (0 = off)")
    a("--log_completions", action="store_true", help="print a few of the step's sampled completions at each evaluation")
    a("--save_steps", type=int, default=0, help="write output_dir/checkpoint-STEP every this many steps (0 = off)")
    a("--resume", nargs="?", const="latest", default=None, help="a checkpoint-STEP path, or alone: the latest")
    a("--max_nonfinite_steps", type=int, default=3, help="stop after this many non-finite steps in a row")
    a("--output_dir", default=os.path.join("runs", "gcrl"), help="metrics.jsonl, checkpoints, the final model")
    a("--seed", type=int, default=0, help="seeds python and torch")
    a("--device", default=None, help="default: cuda when available, else cpu")
    a("--num_threads", type=int, default=None, help="torch CPU threads (default: all cores, at most 8)")
    args = p.parse_args(argv)
    if args.model is None:
        p.set_defaults(**DEMO)
        args = p.parse_args(argv)
    return check_args(p, args)  # Appendix C: one line for an impossible setting; the "default: ..." filled in


# ============================================================================ 1. Data and model
def read_jsonl(path):
    """[(line number, JSON object)]; anything wrong is one clear error naming the file and line."""
    try:
        with open(path, "rb") as f:
            lines = f.read().split(b"\n")
    except OSError as e:
        why = {FileNotFoundError: "does not exist", IsADirectoryError: "is not a file"}.get(type(e))
        raise SystemExit(f"error: data set {path!r} {why or 'cannot be read: ' + str(e.strerror)}")
    rows = []
    for lineno, raw in enumerate(lines, 1):
        try:
            row = json.loads(raw.decode("utf-8")) if raw.strip() else None
        except UnicodeDecodeError:
            raise SystemExit(f"error: {path}:{lineno}: not UTF-8 text")
        except json.JSONDecodeError as e:
            raise SystemExit(f"error: {path}:{lineno}: not valid JSON ({e.msg})")
        if row is not None and not isinstance(row, dict):
            raise SystemExit(f"error: {path}:{lineno}: expected a JSON object")
        rows += [(lineno, row)] if row is not None else []
    if not rows:
        raise SystemExit(f"error: data set {path!r} is empty")
    return rows


def load_questions(path, question_field=None, answer_field=None):
    """Rows {"question", "answer", "id"} from GSM8K or MATH JSONL as published, or any JSONL with the
    two fields named. The layout is detected from the first line and required of every line.
    Returns (rows, a line saying what was detected).

    >>> rows, how = load_questions("tiny_tasks/arith_test.jsonl"); rows[0], how
    ({'question': '28+83', 'answer': '111', 'id': 0}, "500 questions: 'question', gold answer from 'answer'")
    """
    lines = read_jsonl(path)
    first = lines[0][1]
    if question_field or answer_field:
        name, qkey, akey = "custom", question_field or "question", answer_field or "answer"
    elif "####" in str(first.get("answer")) and "question" in first:
        name, qkey, akey = "gsm8k", "question", "answer"  # a worked answer ending in '#### 72'
    elif "problem" in first:  # MATH: its 'answer', or else the last \boxed{} of its 'solution'
        name, qkey = ("math", "problem") if "answer" in first else ("math_solution", "problem")
        akey = "answer" if name == "math" else "solution"
    else:
        name, qkey, akey = "plain", "question", "answer"
    rows = []
    for lineno, row in lines:
        q, a = row.get(qkey), row.get(akey)
        a = str(a) if isinstance(a, (int, float)) and not isinstance(a, bool) else a
        if not isinstance(q, str) or not q.strip() or not isinstance(a, str) or not a.strip():
            raise SystemExit(f"error: {path}:{lineno}: needs non-empty string fields {qkey!r} and {akey!r} "
                             f"(the {name} layout, detected from line {lines[0][0]})")
        if name == "gsm8k":
            if "####" not in a:
                raise SystemExit(f"error: {path}:{lineno}: GSM8K answer without '#### <answer>'")
            a = re.sub(r"(?<=\d),(?=\d{3})", "", a.rsplit("####", 1)[1].strip())  # 1,000 -> 1000
        elif name == "math_solution":
            a = extract_boxed(a)
            if not a:
                raise SystemExit(f"error: {path}:{lineno}: 'solution' has no \\boxed{{}} answer")
        rows.append({"question": q, "answer": a.strip(), "id": len(rows)})
    how = {"gsm8k": "the text after '####'", "math_solution": "the last \\boxed{} of 'solution'"}.get(name, repr(akey))
    return rows, f"{len(rows)} questions: '{qkey}', gold answer from {how}"


def resolve_model_name(name):
    """'Qwen2.5-0.5B' -> 'Qwen/Qwen2.5-0.5B'; hub ids with an org and local directories pass through."""
    return name if os.path.isdir(name) or "/" in name else f"Qwen/{name}"


def load_model(name, device):
    """(policy, tokenizer) through AutoModelForCausalLM / AutoTokenizer, the demo model and a real one
    alike. A hub id comes from the local cache when it is there, else from the hub if the hub answers:
    from_pretrained alone would retry an unreachable hub for about a minute."""
    from huggingface_hub import constants
    from transformers import AutoModelForCausalLM, AutoTokenizer
    local = os.path.isdir(name)
    for i, kw in enumerate([{}] if local else [{"local_files_only": True}, {}]):
        if i == 1 and (constants.HF_HUB_OFFLINE or not hub_reachable()):
            hub = "off (HF_HUB_OFFLINE)" if constants.HF_HUB_OFFLINE else "unreachable"
            reason = f"not in the local cache, and the hub is {hub}"
            break
        try:
            tok = AutoTokenizer.from_pretrained(name, padding_side="left", **kw)
            # fp32 master weights: in bf16 an update of lr 1e-6 rounds away; on CUDA forwards run under bf16 autocast
            model = AutoModelForCausalLM.from_pretrained(name, dtype=torch.float32, **kw).to(device)
            tok.pad_token = tok.pad_token or tok.eos_token  # safe: completion masks come from EOS, not from pads
            return model, tok
        except (OSError, ValueError, KeyError) as e:
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
    raise SystemExit(f"error: could not load --model {name!r} as {'local directory' if local else 'hub id'}: {reason} "
                     "-- check the name, or download it where the hub is reachable and pass its local directory")


def hub_reachable(timeout=3.0):
    """Does the hub's host accept a connection at all? Answered in seconds, not a minute of retries."""
    import socket
    import urllib.parse
    host = urllib.parse.urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def use_chat_template(tokenizer, model_name, setting="auto"):
    """Wrap prompts in the chat template? Qwen2.5 *base* tokenizers ship a template too, so its
    presence alone does not make a chat model: auto also asks the name ("...-Instruct" -> True)."""
    has_template = getattr(tokenizer, "chat_template", None) is not None
    if setting == "on" and not has_template:
        raise SystemExit("error: --chat_template on, but the tokenizer has no chat template")
    if setting != "auto":
        return setting == "on"
    return has_template and re.search(r"instruct|chat", model_name or "", re.IGNORECASE) is not None


# ============================================================================ 2. Prompts and verdicts
# The paper's formats: a boxed final answer, and a critique that ends in a verdict line.
SOLVE_INSTRUCTION = "\nPlease reason step by step, and put your final answer within \\boxed{}.\n"
CRITIQUE_INSTRUCTION = ("\n#Instruction#: Please verify step by step and judge whether the solution is "
                        "correct, and end your answer with **Conclusion: right/wrong [END]**\n")
REFINE_INSTRUCTION = ("\n#Instruction#: Please write a corrected solution, and put your final answer "
                      "within \\boxed{}.\n")


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
    """Which prompts fit in max_length tokens as the model sees them. The one rule for every prompt
    gcrl builds (solve, critique, refinement): one that does not fit is skipped, never truncated."""
    ids = tokenizer([render_prompt(tokenizer, p, chat) for p in prompts], add_special_tokens=not chat).input_ids
    return [len(i) <= max_length for i in ids]


# Bounded gaps keep the match linear on hostile text (open-ended ones backtrack quadratically on long runs of spaces).
VERDICT_RE = re.compile(r"Conclusion:\s{0,8}\*{0,2}\s{0,8}(right|wrong)\s{0,8}\*{0,2}\s{0,8}\[END\]", re.IGNORECASE)


def parse_verdict(critique):
    """Ext(c): the verdict of the LAST 'Conclusion: right/wrong [END]' -> 'right' | 'wrong' | None.

    >>> parse_verdict("3+4=7. Conclusion: right [END]"), parse_verdict("**Conclusion: wrong [END]**")
    ('right', 'wrong')
    """
    last = None
    for last in VERDICT_RE.finditer(critique):
        pass
    return None if last is None else last.group(1).lower()


def verdict_agrees(verdict, response_correct):
    """Is the critique correct: its verdict 'right' on a correct response, 'wrong' on a wrong one?"""
    return verdict == ("right" if response_correct else "wrong")


# ============================================================================ 3. Verifier (Eq. 1)
# R(r) = 1[answer(response) == gold]. Model text is untrusted, so it is NEVER evaluated: a whitelist
# parser builds sympy objects directly, inside size, depth and time bounds (Appendix A).
_BOXED_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")
_BRACE_OR_ESCAPE_RE = re.compile(r"\\.|[{}]", re.S)  # \{ \} \\ are escapes, not braces
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
    depth = 1
    for m in _BRACE_OR_ESCAPE_RE.finditer(text, last.end()) if last else ():
        depth += _BRACE_DELTA.get(m.group(), 0)
        if depth == 0:
            return text[last.end():m.start()]
    return None


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


# ============================================================================ 4. First-order rollout
@torch.no_grad()
def generate(model, tokenizer, prompts, num_samples, max_new_tokens, temperature=1.0, greedy=False,
             batch_size=256, chat=False):
    """Sample `num_samples` completions per prompt with HF generate (left-padded prompts). Returns a
    dict of per-sequence lists, prompt-major (2 prompts x num_samples=3 -> prompt 0's 3, then prompt 1's):
      prompt_ids / completion_ids  list[int], no padding; a completion ends at its first EOS, included
      texts                        str, the decoded completion without EOS
      truncated                    bool, hit max_new_tokens before EOS
    """
    from transformers import GenerationConfig
    # Plain sampling from softmax(logits / T), or plain argmax: the distribution the loss assumes. generate()
    # fills every field left unset from model.generation_config (a checkpoint may ship top_k, top_p,
    # repetition_penalty, ...): that config is swapped for a blank one below, and top_k (library default 50) set.
    sampling = {} if greedy else {"temperature": temperature, "top_k": 0, "top_p": 1.0}
    config = GenerationConfig(do_sample=not greedy, num_beams=1, max_new_tokens=max_new_tokens,
                              pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, **sampling)
    expanded = [render_prompt(tokenizer, p, chat) for p in prompts for _ in range(num_samples)]
    out = {"prompt_ids": [], "completion_ids": [], "texts": [], "truncated": []}
    device = next(model.parameters()).device
    model = getattr(model, "module", model)  # under DDP the model itself generates (Appendix E)
    fsdp = sharded(model)  # FSDP reuses the buffers it gathers here for training: no inference_mode then
    was_training, own_config = model.training, model.generation_config
    model.eval()
    model.generation_config = GenerationConfig()
    try:
        for chunk in lockstep(model, [expanded[s:s + batch_size] for s in range(0, len(expanded), batch_size)]):
            # a chat template already holds the special tokens (BOS etc.): add none twice
            enc = tokenizer(chunk or ["0"], return_tensors="pt", padding=True, add_special_tokens=not chat).to(device)
            with autocast(model), torch.inference_mode(not fsdp):  # inference_mode: less bookkeeping per op
                seqs = model.generate(**enc, generation_config=config, synced_gpus=fsdp)
            if chunk is None:
                continue  # a pass FSDP needed from this process (lockstep), with nothing to keep
            completions = seqs[:, enc.input_ids.shape[1]:]
            lengths, truncated = completion_lengths(completions, tokenizer.eos_token_id)
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


def first_order_rollout(model, tokenizer, batch, args):
    """Fig. 2 steps 1-2: n responses per question, each rewarded by the verifier (Eq. 1).

    Returns (samples, metrics). A sample is one completion to train on: its tokens and text, its
    reward, and its GRPO group (here: its question's id).
    """
    n, t = args.num_generations, time.time()
    gen = generate(model, tokenizer, [solve_prompt(r["question"]) for r in batch], n, args.max_completion_length,
                   args.temperature, batch_size=args.generation_chunk_size, chat=args.chat)
    t_reward = time.time()
    samples = []
    for i, text in enumerate(gen["texts"]):
        row = batch[i // n]  # prompt-major: question 0's n responses come first
        samples.append({"kind": "response", "question": row["id"], "group": row["id"], "text": text,
                        "prompt_ids": gen["prompt_ids"][i], "completion_ids": gen["completion_ids"][i],
                        "reward": float(verify(text, row["answer"]))})
    lengths = [len(c) for c in gen["completion_ids"]]
    return samples, {"reward": sum(s["reward"] for s in samples) / len(samples),
                     "completions/mean_length": sum(lengths) / len(lengths),
                     "completions/clipped_ratio": sum(gen["truncated"]) / len(lengths), "tokens/rollout": sum(lengths),
                     "time/rollout": t_reward - t, "time/reward": time.time() - t_reward}


# ============================================================================ 5. Filter and cache
def select_pairs(question_id, texts, correct, label_balance, rng, fits=None):
    """Paper section 3: which of one question's n responses go to the critique cache, each as a
    pair (question_id, response_text, response_correct): the paper's <q, r>, with its label.

    filter  : all right or all wrong -> none; else ONE random right + ONE random wrong (balanced).
    random / reweight: two random responses, whatever their labels (the paper's baselines).
    fits[i] False: response i's critique prompt is too long (prompt_fits), so it is never picked.

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


def cache_new_pairs(cache, responses, questions, tokenizer, args, rng):
    """Fig. 2 step 3: the filter's pairs of this step's questions enter the question-response cache
    (up to 2 per question), whose oldest pairs are dropped beyond --cache_size (choice). Returns metrics."""
    new, skipped, n = [], 0, args.num_generations
    for start in range(0, len(responses), n):  # one question's n responses at a time
        group = responses[start:start + n]
        q = group[0]["question"]
        fits = prompt_fits(tokenizer, [critique_prompt(questions[q]["question"], s["text"]) for s in group],
                           args.max_prompt_length, args.chat)
        skipped += fits.count(False)
        new += select_pairs(q, [s["text"] for s in group], [s["reward"] == 1 for s in group], args.label_balance,
                            rng, fits)
    cache.extend(new)
    dropped = max(0, len(cache) - args.cache_size)
    del cache[:dropped]
    return {"cache/added": len(new), "cache/dropped": dropped, "prompts/skipped_critique": skipped}


def sample_from_cache(cache, k, rng):
    """Fig. 2 step 4: take k pairs out of the cache uniformly at random, without replacement: a pair is
    critiqued once, in this step or (while the cache holds it) a later one."""
    picked = sorted(rng.sample(range(len(cache)), min(k, len(cache))), reverse=True)
    return [cache.pop(i) for i in picked][::-1]


def next_pairs(state, args):
    """The pairs critiqued this step: drawn out of the cache (GC-RL), or the next ones of C-RL's
    static set, shuffled once per pass over it."""
    k = args.critique_batch_size
    if args.mode == "gcrl":
        return sample_from_cache(state["cache"], k, state["rng"])
    if len(state["static_pool"]) < k:
        state["static_pool"] = state["static_pool"] + state["rng"].sample(state["static_set"], len(state["static_set"]))
    pairs, state["static_pool"] = state["static_pool"][:k], state["static_pool"][k:]
    return pairs


# ============================================================================ 6. Second-order rollout
def second_order_rollout(model, tokenizer, pairs, questions, args, p_correct=None):
    """Fig. 2 steps 4-5 for the drawn pairs: m critiques of each <question, response> pair, each rewarded
    by its verdict (Eq. 2; Eq. 3 when p_correct is given; + Eq. 4 with --num_refinements).
    Returns (samples, metrics)."""
    m, t = args.num_critiques, time.time()
    prompts = [critique_prompt(questions[q]["question"], r) for q, r, _ in pairs]
    crit = generate(model, tokenizer, prompts, m, args.max_completion_length, args.temperature,
                    batch_size=args.generation_chunk_size, chat=args.chat)
    metrics = {"time/critique_rollout": time.time() - t,
               "tokens/critique_rollout": sum(map(len, crit["completion_ids"]))}
    verdicts = [parse_verdict(text) for text in crit["texts"]]
    votes = [None] * len(verdicts)
    if args.num_refinements:
        t = time.time()
        votes, refinements = refinement_votes(model, tokenizer, pairs, questions, crit["texts"], args)
        metrics.update({"time/refine_rollout": time.time() - t,
                        "critique/refine_accuracy": sum(votes) / max(1, len(votes)),
                        "tokens/refine_rollout": sum(map(len, refinements["completion_ids"])),
                        "prompts/skipped_refine": refinements["skipped"]})
    samples = []
    for j, (text, verdict, vote) in enumerate(zip(crit["texts"], verdicts, votes)):
        q, _, ok = pairs[j // m]  # pair-major: pair 0's m critiques come first
        reward = critique_reward(verdict, ok, args.critique_reward_right, args.critique_reward_wrong, p_correct)
        if vote is not None:
            reward += denoise_reward(verdict, vote, args.denoise_weight_right, args.denoise_weight_wrong)
        samples.append({"kind": "critique", "question": q, "group": critique_group(q, j // m, args.group_by),
                        "text": text, "verdict": verdict, "pair": pairs[j // m], "reward": reward,
                        "prompt_ids": crit["prompt_ids"][j], "completion_ids": crit["completion_ids"][j]})
    if samples:
        hits = [verdict_agrees(v, pairs[j // m][2]) for j, v in enumerate(verdicts)]
        metrics.update({"critique/reward": sum(s["reward"] for s in samples) / len(samples),
                        "critique/accuracy": sum(hits) / len(hits),
                        "critique/right_rate": verdicts.count("right") / len(verdicts),
                        "critique/no_verdict_rate": verdicts.count(None) / len(verdicts),
                        "critique/label_right_rate": sum(ok for _, _, ok in pairs) / len(pairs),
                        "critique/mean_length": metrics["tokens/critique_rollout"] / len(verdicts)})
    return samples, metrics


def refinement_votes(model, tokenizer, pairs, questions, critiques, args):
    """Vote denoising (paper section 5.2): after each critique, n_ref refinements (corrected solutions);
    its vote is k/n_ref, the share of them that the verifier accepts. Returns (one vote per critique,
    generate()'s dict). A critique whose refinement prompt is too long (prompt_fits) gets none, vote 0."""
    m, n_ref = args.num_critiques, args.num_refinements
    prompts = [refine_prompt(questions[pairs[j // m][0]]["question"], pairs[j // m][1], c)
               for j, c in enumerate(critiques)]
    kept = [j for j, f in enumerate(prompt_fits(tokenizer, prompts, args.max_prompt_length, args.chat)) if f]
    out = generate(model, tokenizer, [prompts[j] for j in kept], n_ref, args.max_completion_length,
                   args.temperature, batch_size=args.generation_chunk_size, chat=args.chat)
    votes = [0.0] * len(prompts)
    for k, j in enumerate(kept):
        gold = questions[pairs[j // m][0]]["answer"]
        votes[j] = sum(verify(t, gold) for t in out["texts"][k * n_ref:(k + 1) * n_ref]) / n_ref
    out["skipped"] = len(prompts) - len(kept)
    return votes, out


# ============================================================================ 7. Rewards
def critique_reward(verdict, response_correct, reward_right=0.7, reward_wrong=0.7, p=None):
    """Eq. 2 (and Eq. 3 when p is given): only the final verdict is scored.

    Eq. 2: 0.7 for 'right' on a correct response, 0.7 for 'wrong' on a wrong one, else 0.
    Eq. 3: with p = E[R(r)], the two cases are re-weighted by 1/(2p) and 1/(2(1-p)), i.e.
           0.35/p and 0.35/(1-p) at the defaults, which makes the reward unbiased under skew.
    No parsable verdict -> 0 (choice).

    >>> critique_reward("right", True), critique_reward("right", False), critique_reward(None, True)
    (0.7, 0.0, 0.0)
    >>> round(critique_reward("wrong", False, p=0.25), 4)   # 0.35 / 0.75
    0.4667
    """
    if verdict == "right" and response_correct:
        return reward_right if p is None else reward_right / (2 * p)
    if verdict == "wrong" and not response_correct:
        return reward_wrong if p is None else reward_wrong / (2 * (1 - p))
    return 0.0


def denoise_reward(verdict, vote, weight_right=0.1, weight_wrong=0.7):
    """Eq. 4: R_q(c) = 0.1 k/n if Ext(c) = right, 0.7 k/n if Ext(c) = wrong (0 without a verdict).

    A 'wrong' verdict that leads to a right corrected solution earns the most: it found a real error.
    Added to Eq. 2 as the paper writes it (kept so here), a false 'wrong' on a right response also
    earns 0.7 k/n when the refinements stay right: about what a true 'right' earns (0.7 + 0.1 k/n).
    >>> denoise_reward("wrong", 0.5), denoise_reward("right", 1.0)
    (0.35, 0.1)
    """
    return {"right": weight_right, "wrong": weight_wrong}.get(verdict, 0.0) * vote


def reweight_p(p_correct, label_balance):
    """p for Eq. 3 with --label_balance reweight, else None. p_correct is E[R(r)], the response accuracy
    as rl_step keeps it: an EMA over steps (choice; under torchrun each process's own). It is kept
    inside [0.05, 0.95] here so that 1/p stays finite (choice)."""
    if label_balance != "reweight" or p_correct is None:
        return None
    return min(max(p_correct, 0.05), 0.95)


# ============================================================================ 8. Advantages
def critique_group(question_id, pair_index, group_by):
    """A critique's GRPO group (choice): its question's id, so it shares the group with that question's
    responses when they are in this step too (the mixed group; else a group of critiques only); or,
    with --group_by prompt, its own pair's (ids below 0, never a question's). In a mixed group a right
    critique (0.7) sits below right responses (1): where most responses are right, even a right
    critique gets a negative advantage, only a smaller one than a wrong critique."""
    return question_id if group_by == "question" else -1 - pair_index


def grpo_advantages(rewards, group_ids, scale_rewards="group", eps=1e-4):
    """A_i = (R_i - mean(group)) / (std(group) + eps). Shapes: (N,), (N,) -> (N,).

    Groups may mix responses and critiques (GC-RL's mixed group). A group whose rewards are all
    equal, or that has one member, gets advantage 0 (never NaN). scale_rewards: 'group' divides
    by the group's std, 'batch' by the whole batch's, 'none' not at all (Dr. GRPO).

    >>> grpo_advantages(torch.tensor([1., 0., 0.7, 0.7]), torch.tensor([0, 0, 1, 1]))
    tensor([ 0.7070, -0.7070,  0.0000,  0.0000])
    >>> grpo_advantages(torch.tensor([1., 0., 0., 0., 0.7, 0.]), torch.zeros(6))  # 4 responses, 2 critiques
    tensor([ 1.5955, -0.6308, -0.6308, -0.6308,  0.9276, -0.6308])
    """
    rewards = rewards.float()
    _, g = torch.unique(group_ids, return_inverse=True)                              # (N,) group index
    G = int(g.max()) + 1 if len(g) else 0
    count = torch.zeros(G).index_add_(0, g, torch.ones_like(rewards))               # (G,)
    mean = torch.zeros(G).index_add_(0, g, rewards) / count                          # (G,)
    centred = rewards - mean[g]                                                      # (N,)
    var = torch.zeros(G).index_add_(0, g, centred ** 2) / (count - 1).clamp(min=1)  # (G,) unbiased, as torch.std
    if scale_rewards == "group":
        adv = centred / (var.sqrt()[g] + eps)
    elif scale_rewards == "batch":
        adv = centred / (rewards.std() + eps) if len(rewards) > 1 else centred * 0
    else:
        adv = centred
    return torch.where(count[g] > 1, adv, torch.zeros_like(adv))


def group_stats(rewards, group_ids):
    """(fraction of groups with zero reward std, mean within-group std): TRL's frac_reward_zero_std."""
    stds = [rewards[group_ids == g].std().item() if (group_ids == g).sum() > 1 else 0.0
            for g in torch.unique(group_ids)]
    return sum(s < 1e-8 for s in stds) / max(1, len(stds)), sum(stds) / max(1, len(stds))


# ============================================================================ 9. Loss and update
# log pi of each completion token comes from batch_logprobs (Appendix F): shape (B, C), B sequences
# of a micro-batch, C = its longest completion, with a (B, C) mask of the real tokens.
def aggregate_loss(per_token, mask, loss_type, num_seqs, num_tokens, max_completion_length):
    """Every loss normalisation behind one switch (as verl's agg_loss).

    Returns this micro-batch's share of the loss of the whole mini-batch, so the shares of all its
    micro-batches add up to exactly that loss (gradient accumulation needs no extra scaling):
      grpo    : (1/N) sum_i (1/|o_i|) sum_t l_it    every sequence weighs the same (GRPO)
      dapo    : (1/T) sum_i sum_t l_it              every token weighs the same (DAPO)
      dr_grpo : (1/(N L)) sum_i sum_t l_it          constant normaliser, no length bias (Dr. GRPO)
    with N sequences and T tokens in the mini-batch, L = max_completion_length.
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
    k3 = exp(ref - logp) - (ref - logp) - 1, Schulman's estimator of KL(pi || ref), >= 0;
    KL_it = min(k3, 10): verl's low_var_kl, what the paper trained with (TRL's default is k3 unclamped), or
    KL_it = k3 * rho with bias_correction_kl (TRL's use_bias_correction_kl): its gradient is the unbiased
    reverse-KL gradient (DeepSeek-V3.2). The two agree in value on-policy; their gradients differ.
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


def frozen_logprobs(model, samples, key, args, pad_id):
    """Log-probs under a model that does not move during the update (pi_old, or the KL reference),
    kept on each sample under `key`, one unpadded row each."""
    device = next(model.parameters()).device
    with torch.no_grad():
        for mb in lockstep(model, micro_batches(samples, args.per_device_train_batch_size)):
            lp, cm = batch_logprobs(model, mb or samples[:1], pad_id, device, args.temperature)
            for s, row, n in zip(mb or [], lp, cm.sum(1).tolist()):
                s[key] = row[:n].cpu()


def policy_update(model, ref_model, optimizer, samples, args, pad_id, rng):
    """The GRPO update on one step's samples, responses and critiques alike: num_iterations passes,
    each over num_mini_batches mini-batches, one optimizer step per mini-batch. Reads each sample's
    "prompt_ids", "completion_ids" and "advantage". Returns TRL-style metrics."""
    stats, t0 = collections.Counter(), time.time()
    # Every group with zero reward variance (frac_reward_zero_std = 1) makes the gradient exactly 0, yet an
    # optimizer step would still move the weights by Adam's momentum: then no step at all.
    if ref_model is not None or all_reduce([any(s["advantage"] != 0 for s in samples)])[0]:
        # pi_old is needed only when the policy moves before a sample is used (off-policy); with one
        # iteration and one mini-batch it equals the current log-probs, detached: no extra pass.
        on_policy = args.num_iterations == 1 and args.num_mini_batches == 1
        if not on_policy:
            frozen_logprobs(model, samples, "old_logp", args, pad_id)
        if ref_model is not None:
            frozen_logprobs(ref_model, samples, "ref_logp", args, pad_id)
        stats["time_logprobs"] = time.time() - t0
        for _ in range(args.num_iterations):
            order = samples[:]
            rng.shuffle(order)
            for mini in [order[i::args.num_mini_batches] for i in range(args.num_mini_batches)]:
                stats.update(mini_batch_step(model, optimizer, mini, samples[:1], args, pad_id, on_policy))
    tokens = max(1.0, stats["tokens"])  # TRL-style metrics: means over completion tokens
    return {"loss": stats["loss"] / (args.num_iterations * args.num_mini_batches),
            "grad_norm": stats["grad_norm"] / max(1, stats["updates"]), "kl": stats["kl"] / tokens,
            "clip_ratio/low_mean": stats["clip_low"] / tokens, "clip_ratio/high_mean": stats["clip_high"] / tokens,
            "clip_ratio/region_mean": (stats["clip_low"] + stats["clip_high"]) / tokens,
            "skipped_updates": stats["skipped"], "time/logprobs": stats["time_logprobs"]}


def mini_batch_step(model, optimizer, mini, spare, args, pad_id, on_policy):
    """One optimizer step on a mini-batch, its gradient accumulated over micro-batches. spare: a
    sample for the dummy passes DDP and FSDP need from a process with fewer micro-batches (Appendix E)."""
    device, stats = next(model.parameters()).device, collections.Counter()
    batches = lockstep(model, micro_batches(mini, args.per_device_train_batch_size))
    if not batches:
        return stats
    # every micro-batch (on every process) is normalised by the whole mini-batch's counts, so the shares add up
    num_seqs, num_tokens = all_reduce([len(mini), sum(len(s["completion_ids"]) for s in mini)])
    optimizer.zero_grad(set_to_none=True)
    for mb in batches:
        weight, mb = (0.0, spare) if mb is None else (1.0, mb)
        logp, cmask = batch_logprobs(model, mb, pad_id, device, args.temperature)              # (B, C)
        pad = lambda key: torch.stack([F.pad(s[key], (0, cmask.shape[1] - len(s[key]))) for s in mb]).to(device)
        old = logp.detach() if on_policy else pad("old_logp")                                  # (B, C)
        ref = pad("ref_logp") if args.beta > 0 else None                                       # (B, C)
        adv = torch.tensor([s["advantage"] for s in mb], device=device)                        # (B,)
        loss, st = policy_loss(logp, old, ref, adv, cmask, args.epsilon, args.epsilon_high, args.beta,
                               args.loss_type, num_seqs, num_tokens, args.max_completion_length,
                               args.use_bias_correction_kl)
        (loss * weight * args.world).backward()  # DDP and FSDP average the processes' gradients: we want the sum
        stats.update({k: v * weight for k, v in st.items()} | {"loss": loss.item() * weight})
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm)
    grad_norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm  # FSDP: a DTensor
    if torch.isfinite(grad_norm):
        optimizer.step()
        stats.update(updates=1, grad_norm=grad_norm.item())
    else:  # a non-finite gradient would poison the weights and Adam's moments: skip it
        stats["skipped"] += 1
    optimizer.zero_grad(set_to_none=True)
    return stats


# ============================================================================ 10. One RL step
def rl_step(model, ref_model, optimizer, tokenizer, batch, state, questions, args):
    """One GC-RL step, Fig. 2: first-order rollout -> filter and cache -> second-order rollout ->
    mixed-group advantages -> the GRPO update (num_iterations x num_mini_batches optimizer steps). Returns
    (samples, metrics). A sample is one completion to train on, a dict:
      kind "response" | "critique", question (id), group, text, prompt_ids, completion_ids, reward;
      a critique also: verdict, pair (question_id, response_text, response_correct);
      advantage, set here; old_logp and ref_logp, set by the update when it needs them.
    state carries over between steps: the question-response cache, C-RL's static set and pool,
    p_correct (the running response accuracy, for Eq. 3) and the rng.
    """
    samples, metrics = [], {}
    if args.mode in ("grpo", "gcrl"):  # 1-2. n responses per question, rewarded by Eq. 1
        responses, rollout = first_order_rollout(model, tokenizer, batch, args)
        samples += responses
        metrics.update(rollout)
        p = state["p_correct"]
        state["p_correct"] = rollout["reward"] if p is None else 0.9 * p + 0.1 * rollout["reward"]  # an EMA (choice)
        if args.mode == "gcrl":  # 3. the data filter feeds the question-response cache
            metrics.update(cache_new_pairs(state["cache"], responses, questions, tokenizer, args, state["rng"]))
    if args.mode in ("critique", "gcrl"):  # 4-5. m critiques of each drawn pair, rewarded by Eq. 2-4
        pairs = next_pairs(state, args)
        metrics["critique/pairs"] = len(pairs)
        if args.mode == "gcrl":
            metrics["cache/size"] = len(state["cache"])
        if pairs or distributed():  # every process enters generate(): with FSDP each forward needs all
            critiques, rollout = second_order_rollout(model, tokenizer, pairs, questions, args,
                                                      reweight_p(state["p_correct"], args.label_balance))
            with_responses = {s["group"] for s in samples}  # a critique in one of these is in a mixed group
            if critiques:
                rollout["critique/mixed_group_rate"] = sum(c["group"] in with_responses for c in critiques) / len(
                    critiques)
            samples += critiques
            metrics.update(rollout)
    if samples:  # 6. advantages within each group (critique_group: mixed by question, by default)
        R = torch.tensor([s["reward"] for s in samples])                                # (N,)
        G = torch.tensor([s["group"] for s in samples])                                 # (N,)
        for s, adv in zip(samples, grpo_advantages(R, G, args.scale_rewards).tolist()):
            s["advantage"] = adv
        metrics["frac_reward_zero_std"], metrics["reward_std"] = group_stats(R, G)
        metrics["num_samples"] = len(samples)
        t = time.time()
        metrics.update(policy_update(model, ref_model, optimizer, samples, args, tokenizer.pad_token_id, state["rng"]))
        metrics["time/update"] = time.time() - t - metrics["time/logprobs"]
    return samples, metrics


# ============================================================================ 11. Training loop
def train(model, tokenizer, train_rows, eval_rows, args, log=print, resume=None, stop=None):
    """RL for --max_steps steps of rl_step. Returns the list of metrics dicts (step 0 = before RL).

    resume: a checkpoint's trainer state (load_checkpoint); the run continues exactly as if it had
    not stopped. stop: a dict whose "signal" a handler sets (stop_on_signals): the step in flight
    finishes, a checkpoint is written and train returns.
    """
    stop = stop if stop is not None else {"signal": None}
    questions = {r["id"]: r for r in train_rows}
    run = start_run(model, tokenizer, train_rows, eval_rows, args, log, resume)  # Appendix B
    model.train()  # from_pretrained returns eval mode, in which gradient checkpointing is off
    bar = tqdm(range(run["start"], args.max_steps + 1), desc=args.mode, dynamic_ncols=True,
               initial=run["start"] - 1, total=args.max_steps, disable=args.rank > 0)
    for step in bar:
        t = time.time()
        batch = run["schedule"][step - 1][args.rank::args.world]  # this process's share (Appendix E)
        samples, metrics = rl_step(model, run["ref_model"], run["optimizer"], tokenizer, batch, run["state"],
                                   questions, args)
        metrics = merge_metrics(metrics)
        rollout_time = sum(v for k, v in metrics.items() if k.startswith("time/") and k.endswith("rollout"))
        tokens = sum(v for k, v in metrics.items() if k.startswith("tokens/"))
        metrics = {"step": step, **metrics, "learning_rate": args.learning_rate, "time/step": time.time() - t,
                   "tokens_per_second": tokens / rollout_time if rollout_time > 0 else 0.0}
        if step == 1:
            log(describe_step(samples, questions, args))
        run["state"]["nonfinite"] = run["state"]["nonfinite"] + 1 if metrics.get("skipped_updates") else 0
        if (args.eval_steps and step % args.eval_steps == 0) or step == args.max_steps:
            metrics.update(evaluate(model, tokenizer, eval_rows, run["critique_eval"], args))
            if args.log_completions:  # TRL's flag: a few of this step's sampled completions
                few = samples[:2] + [s for s in samples if s["kind"] == "critique"][:2]
                log("\n".join(f"  {s['kind']} of {questions[s['question']]['question']!r}, reward {s['reward']:.2f}: "
                               f"{s['text']!r}" for s in few))
        signum = int(all_reduce([stop["signal"] or 0], "max")[0])  # every process stops at the same step
        if run["state"]["nonfinite"] >= args.max_nonfinite_steps:
            metrics["stopped"] = "nonfinite"
        elif signum:
            metrics["stopped"] = signal.Signals(signum).name
        run["record"](metrics)
        shown = {k.split("/")[-1]: f"{metrics[k]:.2f}" for k in ("reward", "critique/accuracy", "eval/accuracy",
                                                                  "eval/critique_accuracy") if k in metrics}
        bar.set_postfix({**shown, "t_step": f"{metrics['time/step']:.2f}s"})
        if "stopped" in metrics or (args.save_steps and step % args.save_steps == 0):
            path = save_run(run, model, tokenizer, step, args)
            if "stopped" in metrics:
                bar.close()
                log(f"stopped at step {step} ({metrics['stopped']}); checkpoint: {path}\n"
                    f"resume with the same command plus: --resume {path}")
                break
    return run["history"]


# ============================================================================ 12. Evaluation
def build_balanced_pairs(model, tokenizer, rows, num_samples, args, rng):
    """Sample responses to each question and keep one right + one wrong where both exist: the 1:1
    balanced critique evaluation set, and C-RL's static set (paper: 10 responses per question)."""
    gen = generate(model, tokenizer, [solve_prompt(r["question"]) for r in rows], num_samples,
                   args.max_completion_length, args.temperature, batch_size=args.generation_chunk_size, chat=args.chat)
    pairs = []
    for qi, row in enumerate(rows):
        texts = gen["texts"][qi * num_samples:(qi + 1) * num_samples]
        fits = prompt_fits(tokenizer, [critique_prompt(row["question"], t) for t in texts], args.max_prompt_length,
                           args.chat)
        pairs += select_pairs(row["id"], texts, [verify(t, row["answer"]) for t in texts], "filter", rng, fits)
    return pairs


@contextlib.contextmanager
def eval_seed(seed):
    """Evaluation samples from a seed of its own: the training run's random stream is left as it was,
    so how often a run evaluates never changes what it trains on."""
    with torch.random.fork_rng(devices=[torch.cuda.current_device()] if torch.cuda.is_available() else []):
        torch.manual_seed(seed)
        yield


def evaluate(model, tokenizer, eval_rows, critique_set, args):
    """The paper's two metrics (paper section 4), greedy: generation accuracy on held-out questions, and
    critique accuracy on a 1:1 balanced set of right/wrong responses (critique_set: built once, before
    RL, from the starting policy's answers), with the rate of 'right' verdicts (0 = a critic that always
    says wrong); with --self_verify_samples k, also majority-vote and self-verified accuracy."""
    with eval_seed(args.seed + 2):
        gen = generate(model, tokenizer, [solve_prompt(r["question"]) for r in eval_rows], 1,
                       args.max_completion_length, greedy=True, batch_size=args.generation_chunk_size, chat=args.chat)
        right = sum(verify(t, r["answer"]) for t, r in zip(gen["texts"], eval_rows))
        metrics = {"eval/accuracy": right / len(eval_rows), "eval/questions": len(eval_rows)}
        if critique_set:
            questions = {r["id"]: r for r in eval_rows}
            prompts = [critique_prompt(questions[q]["question"], r) for q, r, _ in critique_set]
            crit = generate(model, tokenizer, prompts, 1, args.max_completion_length, greedy=True,
                            batch_size=args.generation_chunk_size, chat=args.chat)
            verdicts = [parse_verdict(t) for t in crit["texts"]]
            hits = [verdict_agrees(v, ok) for v, (_, _, ok) in zip(verdicts, critique_set)]
            metrics.update({"eval/critique_accuracy": sum(hits) / len(hits), "eval/critique_pairs": len(hits),
                            "eval/critique_right_rate": verdicts.count("right") / len(verdicts)})
        if args.self_verify_samples:
            metrics.update(self_verification(model, tokenizer, eval_rows, args.self_verify_samples, args))
        return metrics


def self_verification(model, tokenizer, eval_rows, k, args):
    """Why train a critic: sample k answers per question, let the policy critique each one (greedy),
    and answer with the most common answer among those it judged right, or the plain majority
    when it judged none right. Returns majority-vote and self-verified accuracy."""
    gen = generate(model, tokenizer, [solve_prompt(r["question"]) for r in eval_rows], k, args.max_completion_length,
                   args.temperature, batch_size=args.generation_chunk_size, chat=args.chat)
    prompts = [critique_prompt(eval_rows[i // k]["question"], t) for i, t in enumerate(gen["texts"])]
    fits = prompt_fits(tokenizer, prompts, args.max_prompt_length, args.chat)
    crit = generate(model, tokenizer, [p for p, f in zip(prompts, fits) if f], 1, args.max_completion_length,
                    greedy=True, batch_size=args.generation_chunk_size, chat=args.chat)
    verdicts = iter(parse_verdict(t) for t in crit["texts"])
    judged_right = [f and next(verdicts) == "right" for f in fits]  # a prompt too long is not judged
    majority = verified = 0
    for qi, row in enumerate(eval_rows):
        answers = [extract_boxed(t) for t in gen["texts"][qi * k:(qi + 1) * k]]
        votes = collections.Counter(a.strip() for a in answers if a is not None)
        kept = collections.Counter(a.strip() for a, ok in zip(answers, judged_right[qi * k:(qi + 1) * k])
                                   if a is not None and ok)
        top_is_right = lambda c: bool(c) and answers_equal(c.most_common(1)[0][0], row["answer"])  # ties: first seen
        majority += top_is_right(votes)
        verified += top_is_right(kept or votes)
    return {"eval/majority_accuracy": majority / len(eval_rows), "eval/self_verify_accuracy": verified / len(eval_rows)}


def describe_step(samples, questions, args, width=90):
    """One question's part of a step in plain text: its responses, the pairs critiqued, their critiques,
    and each one's reward and advantage in the (mixed) group. Printed once, at step 1."""
    if not samples:
        return "step 1: no samples"
    variety = lambda q: len({(s["kind"], s["reward"]) for s in samples if s["question"] == q})
    q = max(dict.fromkeys(s["question"] for s in samples), key=variety)  # most kinds of reward: most to see
    short = lambda t: (t.replace("\n", " | ")[:width] + ("..." if len(t) > width else "")) or "(empty)"
    lines = [f"step 1, question {questions[q]['question']!r} (gold {questions[q]['answer']!r}):"]
    mine = [s for s in samples if s["question"] == q]
    for kind, pair in [("response", None)] + [("critique", p) for p in dict.fromkeys(
            s["pair"] for s in mine if s["kind"] == "critique")]:
        if pair:
            lines.append(f"  the cached pair, a {'right' if pair[2] else 'wrong'} response: {short(pair[1])}")
        same = collections.Counter((s.get("verdict", ""), s["reward"], round(s["advantage"], 2), s["text"])
                                   for s in mine if s["kind"] == kind and s.get("pair") == pair)
        for (verdict, reward, adv, text), n in same.items():  # identical samples on one line
            lines.append(f"  {n} x {kind:8s} {'verdict ' + (verdict or 'none') + '  ' if pair else ''}reward "
                         f"{reward:.2f}  advantage {adv:+.2f}  {short(text)}")
    how = "one mixed group" if args.group_by == "question" else "a group per prompt"
    return "\n".join(lines + [f"  ({how}; advantage = (reward - group mean) / group std)"])


# ============================================================================ 13. Main
def main(argv=None):
    args = parse_args(argv)
    init_distributed(args)  # torchrun: one process per GPU (Appendix E); plain python: nothing
    say = print if args.rank == 0 else (lambda *a, **k: None)
    torch.set_num_threads(args.num_threads or min(8, os.cpu_count() or 1))
    random.seed(args.seed)
    torch.manual_seed(args.seed + args.rank)
    t_start = time.time()
    fields = (args.question_field, args.answer_field)
    train_rows, train_how = load_questions(args.dataset, *fields)  # data errors surface before any model loads
    eval_rows, eval_how = load_questions(args.eval_dataset, *fields)
    eval_rows = eval_rows[:args.eval_size] if args.eval_size else eval_rows
    resume = None
    if args.resume:
        resume = load_checkpoint(latest_checkpoint(args.output_dir) if args.resume == "latest" else args.resume)
        args.cold_start = None  # weights and tokenizer come from the checkpoint
    model, tokenizer = load_model(resume["path"] if resume else args.model, args.device)
    args.chat = use_chat_template(tokenizer, args.model, args.chat_template)  # by the model's name, also on resume
    here = lambda p: p if not os.path.exists(p) or os.path.relpath(p).startswith("..") else os.path.relpath(p)
    size = sum(p.numel() for p in model.parameters()) / 1e6
    say(f"model: {here(args.model)} ({size:.2f} M parameters) on {args.device}"
        f"{f' x {args.world} processes' if args.world > 1 else ''} | mode {args.mode}\ntrain: {here(args.dataset)}: "
        f"{train_how}\neval:  {here(args.eval_dataset)}: {eval_how}, {len(eval_rows)} used\nprompts: "
        f"{'chat template' if args.chat else 'plain text'} (--chat_template {args.chat_template}); the first "
        "question renders as:\n" + render_prompt(tokenizer, solve_prompt(train_rows[0]["question"]), args.chat))
    for name, rows in (("train", train_rows), ("eval", eval_rows)):  # too long: skipped and counted, never truncated
        fits = prompt_fits(tokenizer, [solve_prompt(r["question"]) for r in rows], args.max_prompt_length, args.chat)
        rows[:] = [r for r, f in zip(rows, fits) if f]
        limit = f"longer than --max_prompt_length {args.max_prompt_length}"
        if not rows:
            raise SystemExit(f"error: every {name} question is {limit}")
        if fits.count(False):
            say(f"skipped {fits.count(False)} {name} questions {limit}")
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    model = wrap_model(model, args)
    if args.cold_start:  # Appendix D
        cold_start(model, tokenizer, train_rows, args, log=say)
    with stop_on_signals() as stop:  # Appendix B: Ctrl-C finishes the step, then checkpoints
        history = train(model, tokenizer, train_rows, eval_rows, args, log=tqdm.write if args.rank == 0 else say,
                        resume=resume, stop=stop)
    end = history[-1]
    if end.get("stopped") == "nonfinite":
        raise SystemExit(f"error: {args.max_nonfinite_steps} steps in a row had a non-finite gradient; "
                         f"stopped at step {end['step']} (checkpoint saved). Try a lower --learning_rate.")
    if not end.get("stopped") or end["step"] == args.max_steps:  # else: interrupted, and how to resume was printed
        save_model(model, tokenizer, args.output_dir)  # beside metrics.jsonl; from_pretrained(output_dir) loads it
        say(summary(history, args, time.time() - t_start))
    if distributed():
        torch.distributed.destroy_process_group()
    return history


def summary(history, args, seconds):
    """Before -> after for every evaluation metric, each with its standard error sqrt(p(1-p)/n)."""
    start, end, k = history[0], history[-1], args.self_verify_samples
    rows = [("generation accuracy (greedy)", "eval/accuracy", "eval/questions", "questions"),
            ("critique accuracy (balanced)", "eval/critique_accuracy", "eval/critique_pairs", "pairs"),
            ('critic\'s "right" rate', "eval/critique_right_rate", "eval/critique_pairs", "pairs"),
            (f"majority vote of {k}", "eval/majority_accuracy", "eval/questions", "questions"),
            (f"self-verification of {k}", "eval/self_verify_accuracy", "eval/questions", "questions")]
    se = lambda m, key, n: math.sqrt(m[key] * (1 - m[key]) / max(1, m[n]))
    lines = [f"\nsummary ({args.mode}, {args.max_steps} steps, {seconds:.0f} s), step 0 -> step {end['step']}, "
             "± one standard error:"]
    for name, key, n, unit in rows:
        if key in start and key in end:
            lines.append(f"  {name:32s} {start[key]:.3f} ± {se(start, key, n):.3f} -> {end[key]:.3f} ± "
                         f"{se(end, key, n):.3f}   ({start[n]} {unit})")
    return "\n".join(lines + [f"  metrics: {os.path.join(args.output_dir, 'metrics.jsonl')}; model: {args.output_dir}"])


# ============================================================================ Appendix A. Verifier internals
# PLUMBING: how answers_equal stays safe on untrusted model text; a reader of the method may skip it.
# Model text is NEVER evaluated: a small whitelist parser builds sympy objects directly, and whatever
# could make sympy blow up is refused before sympy sees it: <=200 chars, <=100 tokens, nesting <=20,
# no power whose value could exceed ~1000 digits, lcm(root indices) * digits(radicands) <= 300 (sympy
# factors radicands). A 1 s wall-clock budget is also checked between stages and, in the main thread
# with no timer armed, enforced by SIGALRM. Above the scalar comparison sits a structural one (_shape):
# sets and solution lists, \pm, tuples, intervals, vectors and matrices, compared part by part.
# Compared as normalised case-insensitive strings only: inequalities, factorials, functions (\sin),
# multi-letter words. Deviation from LaTeX: 2^10 means 2^{10} (what the model meant), not 2^1 0.
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


_ANS_MAX_CHARS, _ANS_MAX_TOKENS, _ANS_MAX_DEPTH = 200, 100, 20
_ANS_MAX_DIGITS, _ANS_MAX_RADICAL = 1000, 300  # see the bounds above
_VERIFY_BUDGET_S = 1.0
_EVALF_DIGITS, _EVALF_REL_TOL = 30, 1e-20  # the tolerance only absorbs evalf rounding, so
                                           # a decimal such as 3.14159265359 is NOT \pi

# Normalisation: linear-time regexes shared by the math and the string paths.
_CONTROL_CHARS_RE = re.compile(r"[\x00-\x1f\x7f]")  # NUL and other control chars become spaces
_LATEX_UNWRAP_RE = re.compile(r"\\(?:text|textbf|textit|textrm|mathrm|mathbf|mathit|mbox"
                              r"|operatorname)\s*\{([^{}]*)\}")
_LATEX_DROP_RE = re.compile(r"\\(?:left|right|displaystyle|q?quad)(?![A-Za-z])|(?<!\\)\\[,;:! ]"
                            r"|\^\s*(?:\{\s*\\circ\s*\}|\\circ)|\\circ|\u00b0|\\?%|\\?\$")
_THOUSANDS_RE = re.compile(r"(?<![\d.,])\d{1,3}(?:,\d{3})+(?![\d,])")  # 7,425,000 but not 1,2
_ANS_VAR_RE = re.compile(r"[A-Za-z]\s*(?:=|\\in(?![A-Za-z]))")  # "x = 5", "x \in [1,3]"
_PLAIN_NUMBER_RE = re.compile(r"-?(?:\d+\.?\d*|\.\d+)")
_REPEATING_RE = re.compile(r"(-?)(\d{0,12})\.(\d{0,12})\\overline\{(\d{1,12})\}")  # 0.1\overline{6} = 1/6
_UNIT_RE = re.compile(r"(-?(?:\d+\.?\d*|\.\d+))\s*(?:[A-Za-z]{2,}\.?\s*){1,3}")  # "5 cm", "18.90 dollars"
_CHOICE_RE = re.compile(r"(?:(?:option|choice|answer)\s*:?\s*)?\(?([A-Ea-e])\)?[.:]?", re.IGNORECASE)  # "(B)", "B)"
_MATRIX_RE = re.compile(r"\\begin\{[pbv]matrix\}(.*)\\end\{[pbv]matrix\}", re.S)


def _repeating(m):  # sign, whole, fixed digits, repeating digits -> an exact fraction
    sign, whole, fixed, rep = m.groups()
    den = 10 ** len(fixed) * (10 ** len(rep) - 1)
    num = int(whole or 0) * den + int(fixed or 0) * (10 ** len(rep) - 1) + int(rep)
    return f"{sign}({num}/{den})"


def _normalize_answer(s):
    s = _CONTROL_CHARS_RE.sub(" ", s).replace("\u2212", "-").replace("{,}", ",")
    s = re.sub(r"\\[dt]frac", r"\\frac", s)
    for _ in range(3):  # \text{\textbf{x}} needs two passes; a fixed count keeps it linear
        s = _LATEX_UNWRAP_RE.sub(r"\1", s)
    s = _LATEX_DROP_RE.sub("", s)
    s = _THOUSANDS_RE.sub(lambda m: m.group().replace(",", ""), s).strip()
    s = _REPEATING_RE.sub(_repeating, s)
    m = _ANS_VAR_RE.match(s)
    s = s[m.end():].strip() if m and s.count("=") + s.count("\\in") == 1 else s  # "x = 5" -> "5"
    for pattern in (_UNIT_RE, _CHOICE_RE):  # "5 cm" -> "5"; "(B)", "Option B" -> "B"
        m = pattern.fullmatch(s)
        s = m.group(1) if m else s
    return s


def _split_top(s):
    """s cut at the commas outside every bracket; None where the brackets do not balance."""
    parts, depth, start = [], 0, 0
    for i, c in enumerate(s):
        depth += (c in "([{") - (c in ")]}")
        if depth < 0:
            return None
        if c == "," and depth == 0:
            parts, start = parts + [s[start:i]], i + 1
    return parts + [s[start:]] if depth == 0 else None


def _wraps_all(s):  # the bracket at s[0] closes at s[-1]: '(1,2)' yes, '(x-1)(x+1)' no
    depth = 0
    for i, c in enumerate(s):
        depth += (c in "([{") - (c in ")]}")
        if depth == 0:
            return i == len(s) - 1
    return False


def _shape(s, depth=0):
    """An answer's structure: ('scalar', text) | ('set', parts), unordered: \\{1,2\\}, a solution
    list '1, 2', a \\pm, a \\cup of intervals | ('seq', brackets, parts), ordered: tuples,
    intervals, vectors and matrices (brackets '()' and '[)' differ: [1,3) is not [1,3])."""
    s = _normalize_answer(s)
    if depth > 3 or len(s) > 5 * _ANS_MAX_CHARS:
        return ("scalar", s)
    sub = lambda parts: [_shape(p, depth + 1) for p in parts]
    m = _MATRIX_RE.fullmatch(s)
    if m:  # rows split by \\, entries by &; a single row or column is a plain vector, as '(1,2)'
        rows = [r.split("&") for r in m.group(1).split("\\\\") if r.strip()]
        flat = sum(rows, []) if min(len(rows), max(map(len, rows), default=0)) == 1 else None
        return ("seq", "()", sub(flat)) if flat else ("seq", "matrix", [("seq", "()", sub(r)) for r in rows])
    if s.count("\\pm") == 1:  # a \pm b -> {a+b, a-b}
        left, right = s.split("\\pm")
        return ("set", sub([f"{left}+({right})", f"{left}-({right})"]))
    if "\\cup" in s:
        return ("set", sub(s.split("\\cup")))
    if s.startswith("\\{") and s.endswith("\\}"):
        return ("set", sub(_split_top(s[2:-2]) or [s[2:-2]]))
    parts = _split_top(s[1:-1]) if len(s) > 1 and s[0] in "([" and s[-1] in ")]" and _wraps_all(s) else None
    if parts is not None:
        return _shape(parts[0], depth + 1) if len(parts) == 1 else ("seq", s[0] + s[-1], sub(parts))
    parts = _split_top(s)
    return ("set", sub(parts)) if parts and len(parts) > 1 else ("scalar", s)


def _shapes_equal(x, y, deadline):
    x, y = (z[1][0] if z[0] == "set" and len(z[1]) == 1 else z for z in (x, y))  # {5} is 5
    if x[0] != y[0] or x[0] != "scalar" and (len(x[-1]) != len(y[-1]) or len(x[-1]) > 20):
        return False
    if x[0] == "scalar":
        return _scalar_equal(x[1], y[1], deadline)
    if x[0] == "seq":
        return x[1] == y[1] and all(_shapes_equal(p, q, deadline) for p, q in zip(x[2], y[2]))
    unmatched = list(y[1])  # a set: match every part to a distinct equal part (equality is transitive)
    for p in x[1]:
        hit = next((q for q in unmatched if _shapes_equal(p, q, deadline)), None)
        if hit is None:
            return False
        unmatched.remove(hit)
    return True


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


class _AnswerParser:
    """LaTeX/ASCII answer -> sympy expr by recursive descent over whitelisted tokens; ValueError if
    it is not (supported) math. The grammar is in the method names' comments."""

    def __init__(self, s):
        self.toks, self.i, self.rad_lcm, self.rad_digits = _tokenize_answer(s), 0, 1, 0.0

    def parse(self):
        val = self.expr(0)
        if self.i != len(self.toks):
            raise ValueError("trailing tokens")
        return val

    def peek(self):
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self, expected=None):
        t = self.peek()
        if t is None or (expected is not None and t != expected):
            raise ValueError("unexpected token")
        self.i += 1
        return t

    def radical(self, x, q):  # x^(1/q): sympy factors x, and merges a^(1/5)*a^(1/7) into a^(12/35),
        inner = math.lcm(1, *(p.exp.q for p in x.atoms(sympy.Pow) if p.exp.is_Rational))  # so the
        self.rad_lcm = math.lcm(self.rad_lcm, q * inner)  # integers it factors stay below this product
        self.rad_digits += _digits_bound(x)
        if self.rad_lcm * self.rad_digits > _ANS_MAX_RADICAL:
            raise ValueError("radicals too large")

    def expr(self, depth):  # expr := term (('+'|'-') term)*
        val = self.term(depth)
        while self.peek() in ("+", "-"):
            val = val + self.term(depth) if self.take() == "+" else val - self.term(depth)
        return val

    def term(self, depth):  # term := unary (('*'|'/') unary | implicitly multiplied power)*
        val = self.unary(depth)
        while True:
            t = self.peek()
            if t in ("*", "/"):
                self.take()
                val = val * self.unary(depth) if t == "*" else _safe_div(val, self.unary(depth))
            elif t is not None and (t in _IMPLICIT_MUL or (len(t) == 1 and t.isalpha())):
                val = val * self.power(depth)  # 2x, 2\sqrt{2}; but never "2 3": numbers don't chain
            else:
                return val

    def unary(self, depth):  # unary := ('+'|'-') unary | power
        if depth > _ANS_MAX_DEPTH:
            raise ValueError("nesting too deep")
        if self.peek() in ("+", "-"):
            return -self.unary(depth + 1) if self.take() == "-" else self.unary(depth + 1)
        return self.power(depth)

    def power(self, depth):  # power := atom ['^' unary]   (right-associative: 2^3^2 = 2^9)
        base = self.atom(depth)
        if self.peek() != "^":
            return base
        self.take()
        e = self.unary(depth + 1)
        if e.is_Rational and not e.is_Integer:
            self.radical(base, e.q)
        return _safe_pow(base, e)

    def arg(self, depth):  # argument of \frac / \sqrt: {group} or a single char, so \frac34 = 3/4
        t = self.peek()
        if t is not None and t[0].isdigit() and len(t) > 1:
            self.toks[self.i] = t[1:]
            return sympy.Integer(int(t[0]))
        return self.atom(depth + 1)

    def sqrt(self, depth):  # \sqrt[n]{x}
        n = sympy.Integer(2)
        if self.peek() == "[":
            self.take()
            n = self.expr(depth + 1)
            self.take("]")
            if not (n.is_Integer and 2 <= n <= 100):
                raise ValueError("bad root index")
        x = self.arg(depth)
        self.radical(x, int(n))
        if n % 2 == 1 and x.is_negative:  # \sqrt[3]{-8} = -2, not sympy's complex root
            return -sympy.root(-x, n)
        return sympy.root(x, n)

    def atom(self, depth):  # atom := (expr) | {expr} | [expr] | \frac a b | \sqrt.. | number | letter | \pi | \infty
        t = self.take()
        if t in _BRACKET_CLOSE:
            val = self.expr(depth + 1)
            self.take(_BRACKET_CLOSE[t])
            return val
        if t == "frac":
            num = self.arg(depth)
            return _safe_div(num, self.arg(depth))
        if t == "sqrt":
            return self.sqrt(depth)
        if t in ("pi", "oo"):
            return sympy.pi if t == "pi" else sympy.oo
        if t[0].isdigit() or t[0] == ".":
            f = Fraction(t + "0" if t.endswith(".") else t)  # exact: 0.1 is 1/10, not a float
            return sympy.Rational(f.numerator, f.denominator)
        if len(t) == 1 and t.isalpha():
            return sympy.Symbol(t, real=True)  # real: keeps sympy out of re/im case splits
        raise ValueError("unexpected token")


def _try_parse_answer(s):  # sympy expr, or None if s is not supported math
    if len(s) > _ANS_MAX_CHARS:
        return None
    try:
        return _AnswerParser(s).parse()
    except ZeroDivisionError:
        raise  # 1/0 is not "not math": the caller returns False outright
    except Exception:
        return None


# Equality of two sympy expressions: exactly at 3 fixed random points, or numerically where roots are.
_points_rng = random.Random(1234)  # per point: a nonzero rational in [-6, 6] for each of 52 letters
_EVAL_POINTS = [[sympy.Rational(_points_rng.choice((-1, 1)) * _points_rng.randint(1, 3000),
                                _points_rng.randint(500, 1000)) for _ in range(52)]
                for _ in range(3)]
_UNDEFINED = (sympy.zoo, sympy.nan)


def _check_deadline(deadline):
    if time.monotonic() > deadline:
        raise TimeoutError


def _sympy_equal(a, b, deadline):
    if a.has(*_UNDEFINED) or b.has(*_UNDEFINED):
        return False
    if a == b:
        return True
    if a.has(sympy.oo, -sympy.oo) or b.has(sympy.oo, -sympy.oo) or (a.is_Rational and b.is_Rational):
        return False  # an infinity only equals itself, and two rationals are equal only if identical
    syms = sorted(a.free_symbols | b.free_symbols, key=str)
    exact = all(p.exp.is_Integer for p in (a - b).atoms(sympy.Pow))  # no roots: a rational function
    # A rational function is substituted exactly (so x^300 vs x^300+1 differ); two different ones agree at
    # 3 random rational points with probability ~0. Anything with a root is evaluated numerically with
    # evalf(subs=), which never builds (and factors) radicals.
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
    return _shapes_equal(_shape(a), _shape(b), deadline)


def _scalar_equal(a, b, deadline):
    _check_deadline(deadline)
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


# ============================================================================ Appendix B. Checkpoints, resume, signals
# PLUMBING: a run can stop at any moment (Ctrl-C, a kill, a crash) and continue exactly where it was.
def start_run(model, tokenizer, train_rows, eval_rows, args, log, resume=None):
    """What train() carries across steps, fresh or from a checkpoint: the optimizer, the frozen KL
    reference, the question schedule, the critique eval set, the step state and metrics.jsonl."""
    rng = random.Random(args.seed)
    ref_model = None
    if args.beta > 0:  # the KL anchor is the starting policy, which a checkpoint carries (the policy has moved)
        from transformers import AutoModelForCausalLM
        ref_model = (wrap_model(AutoModelForCausalLM.from_pretrained(os.path.join(resume["path"], "reference"))
                                .to(args.device).eval().requires_grad_(False), args) if resume
                     else frozen_copy(model, args))
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, weight_decay=0.0)
    # the schedule is a function of the seed alone, so a resumed run (and every process) sees the same questions
    schedule = question_batches(train_rows, args.train_batch_size, args.max_steps, rng)
    rng.seed(args.seed + 1000 * args.rank) if args.world > 1 else None  # each process its own draws
    os.makedirs(args.output_dir, exist_ok=True)
    metrics_path = os.path.join(args.output_dir, "metrics.jsonl")
    history = [m for m in read_metrics(metrics_path) if m["step"] <= resume["step"]] if resume else []
    if args.rank == 0:  # a resumed run keeps the lines up to its checkpoint, redoes the rest
        with open(metrics_path, "w") as f:
            f.writelines(json.dumps(m) + "\n" for m in history)

    def record(m):
        history.append(m)
        if args.rank == 0:  # one metrics file, however many processes
            with open(metrics_path, "a") as f:
                f.write(json.dumps(m) + "\n")

    run = {"ref_model": ref_model, "optimizer": optimizer, "schedule": schedule, "history": history, "record": record}
    if resume is not None:
        optimizer.load_state_dict(resume["optimizer"])
        rng.setstate(resume["python_rng"])
        torch.set_rng_state(resume["torch_rng"])
        if resume.get("cuda_rng") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(resume["cuda_rng"])
        run["state"] = {k: resume[k] for k in ("cache", "static_set", "static_pool", "p_correct", "nonfinite")}
        run.update(critique_eval=resume["critique_eval"], start=resume["step"] + 1)
        run["state"]["rng"] = rng
        log(f"resumed at step {resume['step']}")
        return run
    # the balanced critique eval set, built once from the starting policy (1 right + 1 wrong per question)
    with eval_seed(args.seed + 1):
        run["critique_eval"] = build_balanced_pairs(model, tokenizer, eval_rows, 8, args, random.Random(args.seed + 1))
    static_set = []  # C-RL trains on a static balanced set built up front from the questions it will see
    if args.mode == "critique":
        seen = list({r["id"]: r for batch in schedule for r in batch[args.rank::args.world]}.values())
        static_set = build_balanced_pairs(model, tokenizer, seen, args.static_samples, args, rng)
        log(f"C-RL static set: {len(static_set)} balanced pairs from {len(seen)} questions")
    run["state"] = {"cache": [], "static_set": static_set, "static_pool": [], "p_correct": None, "nonfinite": 0,
                    "rng": rng}
    run["start"] = 1
    first = {"step": 0, **evaluate(model, tokenizer, eval_rows, run["critique_eval"], args)}
    record(first)
    log("step 0 | " + " | ".join(f"{k} {v:.3f}" for k, v in first.items() if k != "step"))
    return run


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


def save_run(run, model, tokenizer, step, args):
    """checkpoint-STEP of a run (save_checkpoint); returns its path."""
    state = {k: v for k, v in run["state"].items() if k != "rng"}
    state.update(step=step, critique_eval=run["critique_eval"], python_rng=run["state"]["rng"].getstate())
    path = os.path.join(args.output_dir, f"checkpoint-{step}")
    save_checkpoint(path, model, tokenizer, run["optimizer"], state, run["ref_model"])
    return path


def save_checkpoint(path, model, tokenizer, optimizer, state, ref_model=None):
    """output_dir/checkpoint-STEP: model + tokenizer (from_pretrained loads them), trainer_state.pt
    (optimizer, RNG states, question-response cache, step; one file per process under torchrun) and,
    when beta > 0, reference/ (the KL anchor). Written to path.tmp, then renamed, so a kill at any
    moment leaves every earlier checkpoint whole and never a half-written one."""
    tmp, rank = path + ".tmp", process_rank()
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
    save_model(model, tokenizer, tmp)
    if ref_model is not None:
        save_model(ref_model, None, os.path.join(tmp, "reference"))
    barrier()
    state = {**state, "optimizer": optimizer.state_dict() if optimizer else None, "torch_rng": torch.get_rng_state(),
             "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}
    torch.save(state, os.path.join(tmp, trainer_state_file(rank)))
    barrier()
    if rank == 0:
        shutil.rmtree(path, ignore_errors=True)  # only when this very step was saved before
        os.replace(tmp, path)
    barrier()


def trainer_state_file(rank):
    return "trainer_state.pt" if rank == 0 else f"trainer_state_rank{rank}.pt"


def latest_checkpoint(output_dir):
    """The checkpoint-STEP directory with the highest STEP (half-written .tmp ones never count)."""
    names = os.listdir(output_dir) if os.path.isdir(output_dir) else []
    found = [d for d in names if re.fullmatch(r"checkpoint-\d+", d)]
    if not found:
        raise SystemExit(f"error: --resume: no checkpoint-STEP directory in {output_dir!r}")
    return os.path.join(output_dir, max(found, key=lambda d: int(d.split("-")[1])))


def load_checkpoint(path):
    """The trainer state saved by save_checkpoint (the model is loaded with from_pretrained)."""
    state_file = os.path.join(path, trainer_state_file(process_rank()))
    if not os.path.isfile(state_file):
        raise SystemExit(f"error: --resume: {path!r} has no {os.path.basename(state_file)} (not a gcrl checkpoint of "
                         "this many processes)")
    return {**torch.load(state_file, map_location="cpu", weights_only=False), "path": path}


def read_metrics(path):
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


@contextlib.contextmanager
def stop_on_signals():
    """Yields {"signal": None}; SIGINT/SIGTERM only set it, so the step in flight finishes, then the loop
    checkpoints and returns. A second Ctrl-C stops at once. The old handlers come back on exit.
    (Signals can only be caught in the main thread; elsewhere this does nothing.)"""
    stop = {"signal": None}

    def on_signal(signum, frame):
        if stop["signal"] is not None:
            raise KeyboardInterrupt
        stop["signal"] = signum
        tqdm.write(f"received {signal.Signals(signum).name}: finishing this step, then saving a checkpoint")

    main_thread = threading.current_thread() is threading.main_thread()
    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)} if main_thread else {}
    try:
        yield stop
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


# ============================================================================ Appendix C. Argument checks
# PLUMBING: impossible settings fail at start-up, one line each (argparse prints 'error: ...', exits 2);
# then the defaults that depend on other flags are filled in.
def check_args(parser, args):
    for flag, ours in (("steps_per_generation", "optimizer steps per step are --num_mini_batches"),
                       ("generation_batch_size", "a step generates all its completions; --generation_chunk_size "
                                                 "sequences per generate() call")):
        if getattr(args, flag) is not None:  # TRL's flags for what gcrl does differently: one line, a pointer
            parser.error(f"--{flag} is TRL's, and gcrl has no such setting: {ours}")
    for name in ("max_steps", "train_batch_size", "num_generations", "num_iterations", "num_mini_batches",
                 "per_device_train_batch_size", "generation_chunk_size", "static_samples", "max_nonfinite_steps",
                 "cold_start_questions", "num_critiques", "critique_batch_size", "cache_size",
                 "max_completion_length", "max_prompt_length"):
        if getattr(args, name) is not None and getattr(args, name) < 1:  # None: a default filled in below
            parser.error(f"--{name} must be at least 1 (got {getattr(args, name)})")
    for name in ("num_refinements", "eval_steps", "save_steps", "eval_size", "cold_start_steps", "beta",
                 "self_verify_samples"):
        if getattr(args, name) is not None and getattr(args, name) < 0:
            parser.error(f"--{name} must not be negative (got {getattr(args, name)})")
    if args.temperature <= 0:
        parser.error("--temperature must be positive (greedy decoding is used for evaluation only)")
    if not 0 < args.epsilon < 1:
        parser.error(f"--epsilon must be in (0, 1) (got {args.epsilon})")
    if args.epsilon_high is not None and args.epsilon_high < args.epsilon:
        parser.error(f"--epsilon_high ({args.epsilon_high}) must not be below --epsilon ({args.epsilon})")
    critique_flags = [f"--{f}" for f in ("num_critiques", "critique_batch_size", "num_refinements", "label_balance",
                                         "cache_size") if getattr(args, f) is not None]  # None: not given
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
    args.label_balance, args.num_refinements = args.label_balance or "filter", args.num_refinements or 0
    args.max_prompt_length = args.max_prompt_length or 512 + 2 * args.max_completion_length
    args.num_critiques = args.num_critiques or args.num_generations
    args.critique_batch_size = args.critique_batch_size or args.train_batch_size
    args.cache_size = args.cache_size or 4 * args.critique_batch_size
    args.epsilon_high = args.epsilon if args.epsilon_high is None else args.epsilon_high
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    args.model = resolve_model_name(args.model)  # printed at start-up as resolved
    args.chat, args.rank, args.world = False, 0, 1  # chat: use_chat_template; rank, world: init_distributed
    return args


# ============================================================================ Appendix D. Supervised warm-up
# PLUMBING: the paper cold-starts base models with SFT on distilled critiques, so they emit the verdict format.
def cold_start(model, tokenizer, rows, args, log=print):
    """--cold_start FILE: --cold_start_steps of SFT on its critiques, distilled from a stronger model;
    --cold_start self: on the model's own (self_cold_start). Returns the examples trained on."""
    if args.cold_start == "self":
        return self_cold_start(model, tokenizer, rows, args, log)
    examples = cold_start_examples(args.cold_start)
    loss = sft(model, tokenizer, examples, args.cold_start_steps, args.cold_start_lr, random.Random(args.seed),
               chat=args.chat, log=log)
    log(f"cold start: {args.cold_start_steps} SFT steps on {len(examples)} examples, final loss {loss:.3f}")
    return examples


def cold_start_examples(path):
    """--cold_start FILE: lines {"question", "response", "critique"} -> (critique prompt, critique) pairs."""
    examples = []
    for lineno, row in read_jsonl(path):
        if not all(isinstance(row.get(k), str) and row[k].strip() for k in ("question", "response", "critique")):
            raise SystemExit(f"error: {path}:{lineno}: a cold-start line needs 'question', 'response' and 'critique'")
        examples.append((critique_prompt(row["question"], row["response"]), row["critique"]))
    return examples


def self_cold_start(model, tokenizer, rows, args, log=print):
    """--cold_start self: a critique warm-up from the model's own critiques, for when no stronger model
    distils them (rejection-sampling fine-tuning). Balanced right/wrong pairs of its responses to
    training questions, m critiques of each; kept are those whose verdict parses and agrees with the
    verifier, as many 'right' as 'wrong' verdicts; then SFT on them. Returns the examples kept."""
    rng, m = random.Random(args.seed), args.num_critiques
    rows = rows[:args.cold_start_questions]
    questions = {r["id"]: r for r in rows}
    pairs = build_balanced_pairs(model, tokenizer, rows, args.num_generations, args, rng)
    prompts = [critique_prompt(questions[q]["question"], response) for q, response, _ in pairs]

    def sample():  # (critique texts, verdicts, agrees with the verifier), pair-major
        texts = generate(model, tokenizer, prompts, m, args.max_completion_length, args.temperature,
                         batch_size=args.generation_chunk_size, chat=args.chat)["texts"] if pairs else []
        verdicts = [parse_verdict(t) for t in texts]
        hits = [verdict_agrees(v, pairs[j // m][2]) for j, v in enumerate(verdicts)]
        report = (f"no verdict {verdicts.count(None) / max(1, len(verdicts)):.3f}, balanced critique accuracy "
                  f"{sum(hits) / max(1, len(hits)):.3f}")
        return texts, verdicts, hits, report

    texts, verdicts, hits, before = sample()
    kept = {"right": [], "wrong": []}
    for j, (text, verdict, hit) in enumerate(zip(texts, verdicts, hits)):
        if hit:
            kept[verdict].append((prompts[j // m], text))
    n = min(len(kept["right"]), len(kept["wrong"]))
    if n == 0:
        log(f"self cold start: skipped, nothing to learn from ({len(pairs)} balanced pairs, {before})")
        return []
    examples = rng.sample(kept["right"], n) + rng.sample(kept["wrong"], n)  # balanced verdicts
    sft(model, tokenizer, examples, args.cold_start_steps, args.cold_start_lr, rng, chat=args.chat, log=log)
    log(f"self cold start: {len(pairs)} balanced pairs from {len(rows)} training questions, {m} critiques each; "
        f"kept {2 * n} ({n} 'right', {n} 'wrong' verdicts), {args.cold_start_steps} SFT steps\n"
        f"  sampled critiques of those pairs, before: {before}; after: {sample()[3]}")
    return examples


def sft_backward(model, batch, pad_id, micro_batch_size=16):
    """Backward of the SFT loss -mean log pi(target | prompt) over all target tokens of `batch`, in
    length-sorted micro-batches (less padding, less memory); returns the loss (a float). Each
    micro-batch's summed loss is divided by the WHOLE batch's token count, so the gradients add up
    to one big batch's. batch: [{"prompt_ids", "completion_ids"}], the completion being the target."""
    device = next(model.parameters()).device
    num_tokens = sum(len(s["completion_ids"]) for s in batch)
    total = 0.0
    for mb in micro_batches(batch, micro_batch_size):
        logp, cmask = batch_logprobs(model, mb, pad_id, device, 1.0)       # (B, C)
        loss = -(logp * cmask).sum() / num_tokens
        loss.backward()
        total += loss.item()
    return total


def sft(model, tokenizer, examples, steps, lr, rng, batch_size=64, first_examples=None, first_steps=0, chat=False,
        micro_batch_size=16, checkpoint_dir=None, save_every=200, log=print):
    """Supervised warm-up: maximise log pi(target | prompt) on target tokens; returns the last loss.

    examples: [(prompt, target)]. The first `first_steps` steps draw from `first_examples` instead (a
    curriculum); the learning rate decays linearly to 0 over all steps, without a restart. With
    checkpoint_dir, model, optimizer and rng are saved every save_every steps and on Ctrl-C, and a
    later call with the same checkpoint_dir continues from there.
    """
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    # prompts tokenised as generate() does (BOS etc. unless a chat template holds them); targets plain
    enc = lambda s: tokenizer(s, add_special_tokens=False).input_ids
    enc_prompt = lambda s: tokenizer(render_prompt(tokenizer, s, chat), add_special_tokens=not chat).input_ids
    encode = lambda exs: [{"prompt_ids": enc_prompt(p), "completion_ids": enc(t) + [tokenizer.eos_token_id]}
                          for p, t in exs]
    data, first = encode(examples), encode(first_examples or [])
    start, loss = 0, float("nan")
    if checkpoint_dir and os.path.isfile(os.path.join(checkpoint_dir, "trainer_state.pt")):
        state = load_checkpoint(checkpoint_dir)
        model.load_state_dict(type(model).from_pretrained(checkpoint_dir).state_dict())
        optimizer.load_state_dict(state["optimizer"])
        rng.setstate(state["python_rng"])
        start, loss = state["step"], state["loss"]
        log(f"cold start: continuing from step {start} ({checkpoint_dir})")
    model.train()
    with stop_on_signals() if checkpoint_dir else contextlib.nullcontext({"signal": None}) as stop:
        bar = tqdm(range(start, steps), desc="cold start", leave=False, dynamic_ncols=True, initial=start, total=steps,
                   disable=process_rank() > 0)
        for step in bar:
            pool = first if step < first_steps and first else data
            optimizer.zero_grad(set_to_none=True)
            loss = sft_backward(model, rng.sample(pool, min(batch_size, len(pool))), tokenizer.pad_token_id,
                                micro_batch_size)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            for g in optimizer.param_groups:
                g["lr"] = lr * (1 - step / steps)
            optimizer.step()
            bar.set_postfix(loss=f"{loss:.3f}")
            done = step + 1
            if checkpoint_dir and (done % save_every == 0 or stop["signal"] is not None or done == steps):
                save_checkpoint(checkpoint_dir, model, tokenizer, optimizer,
                                {"step": done, "loss": loss, "python_rng": rng.getstate()})
            if stop["signal"] is not None:
                raise SystemExit(f"cold start stopped at step {done} of {steps}; the same command continues it")
    return loss


# ============================================================================ Appendix E. Several processes (torchrun)
# PLUMBING: `torchrun --nproc_per_node N gcrl.py ...` runs N processes, one per GPU (gloo on CPU). Each
# takes its share of a step's questions with its own cache, so a question's mixed group stays on one
# process and advantages need no communication. Loss shares use global counts, so the gradient is the
# whole batch's (DDP and FSDP2 average the processes' gradients, so each share is scaled by their
# number to make that average a sum). Processes hold different numbers of critiques, yet every forward
# pass of a DDP or FSDP model is a collective that needs every process: the update (and generate(), with
# FSDP) pad their calls to the same count (lockstep).
def init_distributed(args):
    """Join the process group torchrun describes in the environment; a plain `python gcrl.py` has none."""
    args.rank, args.world = 0, 1
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return
    import torch.distributed as dist
    if args.device.startswith("cuda"):
        args.device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
        torch.cuda.set_device(args.device)
    dist.init_process_group("nccl" if args.device.startswith("cuda") else "gloo")
    args.rank, args.world = dist.get_rank(), dist.get_world_size()
    if args.train_batch_size % args.world:
        raise SystemExit(f"error: --train_batch_size {args.train_batch_size} is not a multiple of {args.world} "
                         "processes")
    args.critique_batch_size = max(1, args.critique_batch_size // args.world)  # per process, as its cache
    args.cache_size = max(1, args.cache_size // args.world)


def distributed():
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def sharded(model):
    """Is this model sharded by FSDP2 (whose modules have unshard())?"""
    return distributed() and hasattr(model, "unshard")


def wrap_model(model, args):
    """DDP, or with --fsdp FSDP2: each decoder layer, then the whole model, sharded (fully_shard)."""
    if not distributed():
        return model
    if args.fsdp:
        from torch.distributed.fsdp import fully_shard
        for module in model.modules():
            if type(module).__name__ in (getattr(model, "_no_split_modules", None) or []):
                fully_shard(module)
        return fully_shard(model)
    if not any(p.requires_grad for p in model.parameters()):
        return model  # a frozen reference needs no gradient synchronisation
    from torch.nn.parallel import DistributedDataParallel
    return DistributedDataParallel(model, device_ids=[torch.cuda.current_device()] if args.device.startswith("cuda")
                                   else None)


def frozen_copy(model, args):
    """The KL anchor: a frozen copy of the policy, sharded like it. An FSDP2 module cannot be
    deep-copied, so under --fsdp the copy is rebuilt from the gathered full weights."""
    if not sharded(model):
        return wrap_model(copy.deepcopy(getattr(model, "module", model)).eval().requires_grad_(False), args)
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from transformers import AutoModelForCausalLM
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))
    ref = AutoModelForCausalLM.from_config(model.config).to(args.device)
    ref.load_state_dict(full)
    return wrap_model(ref.eval().requires_grad_(False), args)


def all_reduce(values, op="sum"):
    """Each value summed (or maxed) over all processes; as they are in one process."""
    if not distributed():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device="cuda" if torch.cuda.is_available() else "cpu")
    ops = torch.distributed.ReduceOp
    torch.distributed.all_reduce(t, op=ops.SUM if op == "sum" else ops.MAX)
    return t.tolist()


def lockstep(model, chunks):
    """With DDP or FSDP every process must run as many forward passes: pad the list of chunks with None
    to the longest list of any process (for a None the caller runs a dummy pass and discards it). A
    plain module (one process, a frozen reference, or what generate() runs under DDP) needs none."""
    if not (sharded(model) or distributed() and hasattr(model, "module")):  # DDP wraps the model as .module
        return chunks
    return chunks + [None] * (int(all_reduce([len(chunks)], "max")[0]) - len(chunks))


SUMMED_METRICS = ("loss", "num_samples", "skipped_updates", "critique/pairs", "cache/", "tokens/", "prompts/")


def merge_metrics(m):
    """The step as rank 0 records it: counts summed over processes, every other metric averaged."""
    if not distributed():
        return m
    every = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(every, m)
    out = {}
    for k in dict.fromkeys(k for d in every for k in d):
        vals = [d[k] for d in every if k in d]
        numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals)
        out[k] = vals[0] if not numbers else sum(vals) if k.startswith(SUMMED_METRICS) else sum(vals) / len(vals)
    return out


def process_rank():
    return torch.distributed.get_rank() if distributed() else 0


def barrier():
    if distributed():
        torch.distributed.barrier()


def save_model(model, tokenizer, path):
    """A normal HF checkpoint (save_pretrained) from any number of processes: FSDP gathers the full
    weights first (every process takes part), rank 0 writes."""
    state = None
    if sharded(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
        state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if process_rank() == 0:
        getattr(model, "module", model).save_pretrained(path, state_dict=state)
        if tokenizer is not None:
            tokenizer.save_pretrained(path)


# ============================================================================ Appendix F. Batches and log-probs
# PLUMBING: completions cut at EOS, sequences of different lengths padded into tensors, and log pi of
# their completion tokens, under bf16 autocast on CUDA.
def autocast(model):
    """bf16 autocast for forward passes on CUDA (weights stay fp32); a no-op on CPU."""
    device = next(model.parameters()).device
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


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
    P, C = max(map(len, prompt_ids)), max(map(len, completion_ids))
    ids, attn, cmask = [], [], []
    for p, c in zip(prompt_ids, completion_ids):
        ids.append([pad_id] * (P - len(p)) + p + c + [pad_id] * (C - len(c)))
        attn.append([0] * (P - len(p)) + [1] * (len(p) + len(c)) + [0] * (C - len(c)))
        cmask.append([1] * len(c) + [0] * (C - len(c)))
    return [torch.tensor(x, dtype=torch.long, device=device) for x in (ids, attn, cmask)]


def completion_logprobs(model, input_ids, attention_mask, num_completion_tokens, temperature=1.0):
    """log pi(o_t | q, o_<t) for the last C tokens only; the log-softmax in fp32. Shape (B, C).

    logits_to_keep skips the LM head on prompt tokens; positions come from the mask so
    left padding does not shift them (what generate does).
    """
    C = num_completion_tokens
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    with autocast(model):
        logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                       logits_to_keep=C + 1).logits[:, :-1]                               # (B, C, V)
    targets = input_ids[:, -C:]                                                          # (B, C)
    rows = []  # row by row: a (B, C, V) fp32 log-softmax would not fit for a 150k vocabulary
    for lg, tg in zip(logits, targets):
        lg = lg.float() / temperature                                                    # (C, V)
        rows.append(lg.gather(-1, tg[:, None]).squeeze(-1) - torch.logsumexp(lg, -1))   # (C,)
    return torch.stack(rows)


def batch_logprobs(model, batch, pad_id, device, temperature):
    """completion_logprobs of a list of samples: ((B, C) log-probs, (B, C) completion mask)."""
    ids, attn, cmask = collate([s["prompt_ids"] for s in batch], [s["completion_ids"] for s in batch], pad_id, device)
    return completion_logprobs(model, ids, attn, cmask.shape[1], temperature), cmask


def micro_batches(samples, size):
    """Sort by length, then chunk: sequences of similar length share a batch, so little padding."""
    order = sorted(samples, key=lambda s: len(s["prompt_ids"]) + len(s["completion_ids"]))
    return [order[i:i + size] for i in range(0, len(order), size)]


if __name__ == "__main__":
    main()
