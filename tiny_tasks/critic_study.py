"""Why the tiny critic sat at chance: cold-start variants of the critique format, each measured.
("every step slipped + misreads" is now the demo model's warm-up: tiny_model.tiny_critique, and the
"wrong_solutions" of arith_coldstart.jsonl.)

    python tiny_tasks/critic_study.py --variants "current recipe" longer      # about 9 min on 2 cores
    python tiny_tasks/critic_study.py      # all 17 variants, seed 0: about 4 h 10 min
    python tiny_tasks/critic_study.py --variants "every step slipped + misreads" --rl_steps 100   # ~31 min

The goal was a tiny critic well above chance (>= 75 % balanced accuracy after GC-RL); this
measures it after the cold start, where GC-RL starts from (and, with --rl_steps N, again after N
steps of GC-RL with gcrl's defaults). A critique here re-derives the
answer, then gives a verdict; it can fail in two places, so each variant is scored on both, on a
1:1 balanced set of the model's own right/wrong responses to held-out questions (as gcrl's
evaluation builds it), greedy decoding:
  recompute ok (right / wrong resp.)  the critique's re-derived answer is the true answer,
                                      when the response it reads is right / wrong
  copied wrong answer                 on wrong responses (all of them, boxed or not): the
                                      re-derived answer equals the response's own (wrong)
                                      answer, i.e. the critic copied it
  verdict follows own comparison      the verdict says "right" exactly when its re-derived
                                      answer equals the response's answer
  quoted answer ok                    formats with '<ours> vs <theirs>': <theirs> is the
                                      response's answer (it could also copy its own)
  marks follow own answers            check formats: the check line is the one its own two
                                      answers call for
  forced verdict (seen / new)         the warm-up critique itself, given up to its verdict, on
                                      warm-up questions / on held-out ones: does the verdict
                                      compare the two answers, or recall the question?
Variants (same data, same model, only the critique text and the cold-start budget differ):
  current recipe   gcrl's cold start before this study: 800 steps, 3/4 solve-only, 'Recomputed: <steps>'
  longer           1200 steps, 1/2 solve-only, critique examples counted twice
  side by side     as longer, the answers written next to each other: '..., 85 vs 95'
  digit check      as side by side, plus a digit-by-digit check: 'Check: 8!=9,5=5'
  verdict drill    as side by side, plus each critique again with only its verdict as the target,
                   so the comparison gets a whole example's loss rather than 1 token of ~35
  digit pairs      as digit check, but each mark comes after both digits: 'Check: 89!,55='
  own notation     as side by side, the re-derived steps in symbols the solution never uses:
                   'Recomputed: 7&8>15,4&3&1>8,85 vs 95' (nothing in the response to copy from)
  own notation + check   as own notation, plus the digit check
  fixed width      as side by side, both answers as sign + 3 digits: '+085 vs +095', so each
                   digit's partner is a constant distance back
  fixed width + pairs    as fixed width, plus a digit-pairs check line: '++=00=89!55='
  fixed width + pairs, 3000 steps   the same, 600 steps solve-only then 2400 on everything
                   (4 x the critique practice of the 1200-step variants)
  3000 steps + ones slips   the same, each warm-up wrong solution re-drawn from four slips,
                   adding a wrong ones fact ('12-9=4'): the warm-up data never has one, but
                   most of the model's own wrong responses do
  3000 steps, 3 wrong per right   the same, but each question's right solution is critiqued
                   next to three wrong ones (different answers), so repeating the response's
                   steps is wrong in 3 of 4 warm-up critiques, not 1 of 2 (the verdict reads the
                   check line, so its prior matters little)
  3 wrong per right, every step slipped   the same, but every step of each wrong solution is
                   wrong (both facts off by one, or the ones fact and the carry; only the ones
                   fact where there is no carry), so repeating the steps of a wrong warm-up
                   response writes wrong steps, not only the one slipped step
  every step slipped + misreads   the same, but about half the wrong solutions instead work
                   faithfully on a misread operand ('42-50' as 42-40; some with a fact slipped
                   too), the other kind of the model's own wrong responses
  misreads, 1500 steps   the same data in half the steps (300 solve-only, then 1200 on everything)
  misreads, 2200 steps   the same data in 2200 steps (440 solve-only, then 1760 on everything)
--tiny_hidden_size / --tiny_num_layers change the model (gcrl's defaults: 128 x 4).
Not a test: it prints a table, writes one JSONL line per variant to --out/study.jsonl, every
critique it scored to '--out/critiques <variant>.jsonl' (and '... after GC-RL.jsonl'), and the
cold-started model to '--out/cold start <variant> seed<N>.pt' (--reuse_cold_start loads it).
"""
import argparse
import json
import os
import random
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(HERE), HERE]
import gcrl  # noqa: E402
import make_tasks  # noqa: E402
import tiny_model  # noqa: E402

# name -> (critique format, cold-start steps, fraction of steps solve-only, copies of each critique example)
VARIANTS = {
    "current recipe": ("recompute", 800, 0.75, 1),
    "longer": ("recompute", 1200, 0.5, 2),
    "side by side": ("side_by_side", 1200, 0.5, 2),
    "digit check": ("digit_check", 1200, 0.5, 2),
    "verdict drill": ("side_by_side+drill", 1200, 0.5, 2),
    "digit pairs": ("digit_pairs", 1200, 0.5, 2),
    "own notation": ("notation", 1200, 0.5, 2),
    "own notation + check": ("notation_check", 1200, 0.5, 2),
    "fixed width": ("fixed", 1200, 0.5, 2),
    "fixed width + pairs": ("fixed_pairs", 1200, 0.5, 2),
    "fixed width + pairs, 3000 steps": ("fixed_pairs", 3000, 0.2, 2),
    "3000 steps + ones slips": ("fixed_pairs+slips", 3000, 0.2, 2),
    "3000 steps, 3 wrong per right": ("fixed_pairs+slips3", 3000, 0.2, 2),
    "3 wrong per right, every step slipped": ("fixed_pairs+every3", 3000, 0.2, 2),
    "every step slipped + misreads": ("fixed_pairs+misread3", 3000, 0.2, 2),
    "misreads, 1500 steps": ("fixed_pairs+misread3", 1500, 0.2, 2),
    "misreads, 2200 steps": ("fixed_pairs+misread3", 2200, 0.2, 2),
}

WARMUP_SLIPS = ("carry", "fact", "copy")  # what tiny_tasks/arith_coldstart.jsonl's "wrong_solution" uses
ALL_SLIPS = ("ones", "carry", "fact", "copy")  # + a wrong ones fact, the tiny model's own commonest slip
# Wrong at every step, so repeating any step of a wrong warm-up response writes a wrong step; then
# + an operand digit misread ('42-50' worked as 42-40): over a quarter of the model's own wrong responses
# set the question up wrong (31 of 109 in one run), and a critic that copies the response's setup copies that too.
# The last set is what arith_coldstart.jsonl's "wrong_solutions" (gcrl's warm-up) are drawn from.
EVERY_STEP_SLIPS, MISREAD_SLIPS = make_tasks.EVERY_STEP_SLIPS, make_tasks.WRONG_SLIPS
SLIP_SETS = {"slips": ALL_SLIPS, "every": EVERY_STEP_SLIPS, "misread": MISREAD_SLIPS}

# The critic's steps in symbols the solution never uses. The guess: re-deriving '4+3+1=' next to a
# response that reads '4+3+1=9' invites a literal copy of the '9', and '4&3&1>' has nothing to copy from.
# Measured (seed 0, one run each): copied wrong answers 0.25 against side by side's 0.38, and 0.41 with
# the digit check against its 0.40; the verdict stayed at chance either way.
NOTATION = str.maketrans({"+": "&", "-": "~", "=": ">"})


COLD_START = os.path.join(HERE, "arith_coldstart.jsonl")
CRITIQUE_TOKENS = 64  # the longest warm-up critique (digit check, '-(..)' questions) is 58 tokens


def critique_text(fmt, steps, gold, given, ok):
    """The warm-up critique of a response whose final answer is `given` (gold: the true answer)."""
    verdict = "\nConclusion: " + ("right" if ok else "wrong") + " [END]"
    fmt = fmt.split("+")[0]
    if fmt == "recompute":  # the warm-up critique before this study (now 'fixed_pairs': tiny_model.tiny_critique)
        return "Recomputed: " + steps + verdict
    if fmt.startswith("notation"):  # re-write the steps, not the answer that gets compared
        *work, answer = steps.split(",")
        steps = ",".join([w.translate(NOTATION) for w in work] + [answer])
    if fmt.startswith("fixed"):
        *work, _ = steps.split(",")
        steps, gold, given = ",".join(work + [tiny_model.fixed_width(gold)]), tiny_model.fixed_width(gold), tiny_model.fixed_width(given)
    text = "Recomputed: " + steps + " vs " + given
    line = check_line(fmt, gold, given)
    return text + ("\n" + line if line else "") + verdict


def check_line(fmt, ours, theirs):
    """The digit-by-digit comparison line of the check formats (None for the others)."""
    w = max(len(ours), len(theirs))
    digits = list(zip(ours.rjust(w, "_"), theirs.rjust(w, "_")))  # right-aligned, '_' pads the shorter
    if fmt in ("digit_check", "notation_check"):  # each mark sits between its two digits: '8!=9' (the mark comes first)
        return "Check: " + ",".join(a + ("=" if a == b else "!=") + b for a, b in digits)
    if fmt == "digit_pairs":  # both digits first, then the mark: '89!' (the mark compares its neighbours)
        return "Check: " + ",".join(a + b + ("=" if a == b else "!") for a, b in digits)
    if fmt == "fixed_pairs":  # same widths: '++=00=89!55=' (no padding, no separators needed)
        return "".join(a + b + ("=" if a == b else "!") for a, b in digits)
    return None


def warmup_examples(rows, fmt, critique_copies):
    examples = []
    for row in rows:
        q, gold, right = row["question"], row["answer"], row["solution"]
        steps = right.replace("\\boxed{" + gold + "}", gold)
        examples.append((gcrl.solve_prompt(q), right))
        wrongs = row.get("wrong_solutions") or [row["wrong_solution"]]
        for response, ok in [(right, True)] + [(w, False) for w in wrongs]:
            crit = critique_text(fmt, steps, gold, gcrl.extract_boxed(response) or "", ok)
            examples += [(gcrl.critique_prompt(q, response), crit)] * critique_copies
            if fmt.endswith("+drill"):  # the verdict alone as the target: its loss is not 1 token of ~35
                head, verdict = crit.rsplit("\n", 1)
                examples += [(gcrl.critique_prompt(q, response) + head, "\n" + verdict)] * critique_copies
            examples.append((gcrl.refine_prompt(q, response, crit), right))
    return examples


def recomputed_answer(critique):
    """'Recomputed: 7+8=15,4+3+1=8,85 vs 95\\n...' -> '85' (the last field before ' vs ' / newline)."""
    head = critique.split("\n")[0].split(" vs ")[0].removeprefix("Recomputed: ")
    return head.rsplit(",", 1)[-1].strip()


def quoted_answer(critique):
    """'Recomputed: ...,85 vs 95\\n...' -> '95', the response's answer as the critic wrote it (None: no ' vs ')."""
    head = critique.split("\n")[0]
    return head.split(" vs ", 1)[1].strip() if " vs " in head else None


def same_answer(a, b):
    """'+085' and '85' are the same answer; anything that is not an integer compares as text."""
    try:
        return int(a) == int(b)
    except (TypeError, ValueError):
        return a == b


def score_critiques(pairs, texts, questions, fmt=None):
    """Both halves of each critique, on a 1:1 balanced set: pairs [(question_id, response, right)],
    texts the critiques in the same order. Rates over all right / all wrong responses. For a check
    format (fmt), also: is the check line the one its own two answers call for?"""
    n = {True: 0, False: 0}
    ok_rec = {True: 0, False: 0}
    copied = follows = judged = hits = says_right = quoted = quoted_ok = checked = marks_ok = 0
    for (q, response, right), text in zip(pairs, texts):
        rec, given, verdict = recomputed_answer(text), gcrl.extract_boxed(response), gcrl.parse_verdict(text)
        n[right] += 1
        hits += gcrl.verdict_agrees(verdict, right)  # the set is 1:1, so this is balanced accuracy
        says_right += verdict == "right"
        ok_rec[right] += same_answer(rec, questions[q]["answer"])
        copied += (not right) and same_answer(rec, given)
        theirs = quoted_answer(text)
        if theirs is not None:  # side-by-side formats: did it write the response's answer?
            quoted += 1
            quoted_ok += same_answer(theirs, given)
            expected = check_line(fmt.split("+")[0], rec, theirs) if fmt else None
            if expected is not None:
                checked += 1
                marks_ok += text.split("\n")[1:2] == [expected]
        if verdict is not None:  # a critique without a verdict neither follows nor breaks its comparison
            judged += 1
            follows += (verdict == "right") == same_answer(rec, given)
    return {"critique_acc_balanced": hits / max(1, len(pairs)), "right_rate": says_right / max(1, len(pairs)),
            "recompute_ok_right": ok_rec[True] / max(1, n[True]),
            "recompute_ok_wrong": ok_rec[False] / max(1, n[False]),
            "copied_wrong_answer": copied / max(1, n[False]), "verdict_follows_comparison": follows / max(1, judged),
            "quoted_answer_ok": quoted_ok / quoted if quoted else float("nan"),
            "marks_follow_own_answers": marks_ok / checked if checked else float("nan")}


def with_worked_solutions(rows, rng, slips=WARMUP_SLIPS, num_wrong=1):
    """Questions ('47+38') with a worked right and a slipped wrong solution, as in the warm-up;
    num_wrong > 1 also gives 'wrong_solutions', that many with different wrong answers."""
    draws = random.Random(rng.random())  # misread digits and miscopied answers, apart from the slip choices
    out = []
    for r in rows:
        a, op, b = int(r["question"][:2]), r["question"][2], int(r["question"][3:])
        wrongs = make_tasks.wrong_solutions(a, op, b, rng, num_wrong, slips, draws)
        out.append({**r, "solution": make_tasks.worked_solution(a, op, b)[0], "wrong_solution": wrongs[0]}
                   | ({"wrong_solutions": wrongs} if num_wrong > 1 else {}))
    return out


@torch.no_grad()
def teacher_forced_verdicts(model, tok, rows, fmt):
    """Verdict accuracy when the warm-up critique itself is given up to its verdict (right steps, both
    answers): 1.0 if the model compares the answers, ~0.5 if it cannot, on questions it never saw."""
    hits = total = 0
    for row in rows:
        q, gold = row["question"], row["answer"]
        steps = row["solution"].replace("\\boxed{" + gold + "}", gold)
        for response, ok in ((row["solution"], True), (row["wrong_solution"], False)):
            head = critique_text(fmt, steps, gold, gcrl.extract_boxed(response) or "", ok).rsplit("\n", 1)[0]
            ids = tok(gcrl.critique_prompt(q, response) + head + "\n", return_tensors="pt").input_ids
            verdict = gcrl.parse_verdict(tok.decode([model(input_ids=ids).logits[0, -1].argmax().item()]))
            hits += gcrl.verdict_agrees(verdict, ok)
            total += 1
    return hits / total


def measure(model, tok, rows, fmt, args, seed):
    """Generation accuracy and both halves of the critique, on the model's own responses to `rows`."""
    questions = {r["id"]: r for r in rows}
    pairs = gcrl.build_balanced_pairs(model, tok, rows, 8, args, random.Random(seed + 1))
    m = gcrl.evaluate(model, tok, rows, [], args)  # generation accuracy; critiques below
    crit = gcrl.generate(model, tok, [gcrl.critique_prompt(questions[q]["question"], r) for q, r, _ in pairs], 1,
                         CRITIQUE_TOKENS, greedy=True)
    return {"generation_acc": m["eval/accuracy"], "pairs": len(pairs),
            **score_critiques(pairs, crit["texts"], questions, fmt),
            "critiques": [{"question": questions[q]["question"], "response": r, "right": ok, "critique": c}
                          for (q, r, ok), c in zip(pairs, crit["texts"])]}


def study(name, fmt, steps, solve_frac, copies, args, seed, rl_steps=0, out=".", reuse=False, rl_lr=None):
    tok = tiny_model.build_tokenizer()
    model = tiny_model.build_model(tok, args.tiny_hidden_size, args.tiny_num_layers, seed=seed)
    # the file's single wrong solution per question; the variants with slips draw their own
    warmup = [{k: v for k, v in r.items() if k != "wrong_solutions"} for _, r in gcrl.read_jsonl(COLD_START)]
    slips = fmt.split("+")[-1].rstrip("3")
    if slips in SLIP_SETS:  # the same questions, wrong solutions re-drawn from those slips (3 each for '...3')
        train = with_worked_solutions(warmup, random.Random(seed), SLIP_SETS[slips], 3 if fmt.endswith("3") else 1)
    else:
        train = warmup
    examples = warmup_examples(train, fmt, copies)
    solve = [e for e in examples if e[0].endswith(gcrl.SOLVE_INSTRUCTION)]
    t = time.time()
    saved = os.path.join(out, f"cold start {name} seed{seed}.pt")  # ~2.5 MB: GC-RL can be re-tried from it
    if reuse and os.path.exists(saved):
        model.load_state_dict(torch.load(saved))
    else:
        gcrl.sft(model, tok, examples + solve, steps, 3e-3, random.Random(seed), first_examples=solve,
                 first_steps=int(steps * solve_frac))
        torch.save(model.state_dict(), saved)
    rows = gcrl.load_questions(args.eval_dataset)[0][:args.eval_size]  # ids 0..n-1, set by load_questions
    result = {"variant": name, "seed": seed, "hidden_size": args.tiny_hidden_size, "num_layers": args.tiny_num_layers,
              "cold_start_steps": steps, **measure(model, tok, rows, fmt, args, seed)}
    seen = warmup[:len(rows)]  # as the data file has them, whatever the variant trained on
    result["forced_verdict_seen"] = teacher_forced_verdicts(model, tok, seen, fmt)
    result["forced_verdict_new"] = teacher_forced_verdicts(model, tok, with_worked_solutions(rows, random.Random(seed)),
                                                           fmt)
    if rl_steps:  # then GC-RL (gcrl's defaults: the data filter, lr 3e-5), as the matrix's GC-RL arm
        rl_args = gcrl.parse_args(["--seed", str(seed), "--device", "cpu", "--mode", "gcrl", "--max_steps",
                                   str(rl_steps), "--eval_steps", "0", "--eval_size", str(args.eval_size),
                                   "--self_verify_samples", "0",
                                   "--max_completion_length", str(CRITIQUE_TOKENS), "--learning_rate", "3e-5",
                                   "--output_dir", os.path.join(out, "gcrl " + name)]
                                  + (["--learning_rate", str(rl_lr)] if rl_lr else []))
        torch.manual_seed(seed)
        gcrl.train(model, tok, gcrl.load_questions(rl_args.dataset)[0], rows, rl_args, log=lambda *x: None)
        after = measure(model, tok, rows, fmt, args, seed)
        result["critiques_after_rl"] = after.pop("critiques")
        result.update({"rl_steps": rl_steps, "rl_learning_rate": rl_args.learning_rate}
                      | {"rl_" + k: v for k, v in after.items()})
    result["seconds"] = round(time.time() - t)  # cold start + evaluation (+ GC-RL)
    return result


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval_size", type=int, default=200)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--out", default=os.path.join("runs", "critic_study"))
    p.add_argument("--num_threads", type=int, default=2)
    p.add_argument("--tiny_hidden_size", type=int, default=128, help="model width (gcrl's default 128)")
    p.add_argument("--tiny_num_layers", type=int, default=4, help="model depth (gcrl's default 4)")
    p.add_argument("--rl_steps", type=int, default=0, help="then this many GC-RL steps, and measure again")
    p.add_argument("--rl_learning_rate", type=float, default=None, help="GC-RL's lr (default: 3e-5, as measured)")
    p.add_argument("--reuse_cold_start", action="store_true",
                   help="load '--out/cold start <variant> seed<N>.pt' when an earlier run saved it, not re-train")
    a = p.parse_args()
    torch.set_num_threads(a.num_threads)
    os.makedirs(a.out, exist_ok=True)
    args = gcrl.parse_args(["--seed", str(a.seed), "--device", "cpu", "--eval_size", str(a.eval_size),
                            "--self_verify_samples", "0"])
    args.tiny_hidden_size, args.tiny_num_layers = a.tiny_hidden_size, a.tiny_num_layers
    t0 = time.time()
    results = []
    for name in a.variants:
        torch.manual_seed(a.seed)
        r = study(name, *VARIANTS[name], args, a.seed, a.rl_steps, a.out, a.reuse_cold_start, a.rl_learning_rate)
        for key, suffix in (("critiques", ""), ("critiques_after_rl", " after GC-RL")):
            if key in r:  # to read what the critic wrote
                with open(os.path.join(a.out, f"critiques {name}{suffix}.jsonl"), "w") as f:
                    f.writelines(json.dumps(c) + "\n" for c in r.pop(key))
        results.append(r)
        with open(os.path.join(a.out, "study.jsonl"), "a") as f:
            f.write(json.dumps(r) + "\n")
        print(json.dumps(r), flush=True)
    cols = ["generation_acc", "critique_acc_balanced", "right_rate", "recompute_ok_right", "recompute_ok_wrong",
            "copied_wrong_answer", "verdict_follows_comparison", "quoted_answer_ok", "marks_follow_own_answers",
            "forced_verdict_seen", "forced_verdict_new"]
    print(f"\nseed {a.seed}, {a.eval_size} eval questions, model {a.tiny_hidden_size} x {a.tiny_num_layers}, "
          f"total wall time {time.time() - t0:.0f} s\n")
    print("| variant | steps | " + " | ".join(c.replace("_", " ") for c in cols) + " |")
    print("|---|---|" + "---|" * len(cols))
    for r in results:
        print(f"| {r['variant']} | {r['cold_start_steps']} | " + " | ".join(f"{r[c]:.3f}" for c in cols) + " |")
        if "rl_steps" in r:
            print(f"| {r['variant']}, then {r['rl_steps']} GC-RL steps | {r['cold_start_steps']} | " +
                  " | ".join(f"{r['rl_' + c]:.3f}" if "rl_" + c in r else "–" for c in cols) + " |")


if __name__ == "__main__":
    main()
