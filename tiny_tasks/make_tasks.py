"""Write the tiny arithmetic data sets used by the CPU demo and the tests.

    python tiny_tasks/make_tasks.py            # rewrites the .jsonl files here

Each line is {"question": "47+38", "answer": "85"}, the same format a real math data set
uses with gcrl.py (--dataset / --eval_dataset), so both go through one loader.
Questions are a+b or a-b with a, b two-digit numbers (10..99): 16,200 distinct questions,
shuffled with a fixed seed and cut into disjoint splits:
  arith_coldstart.jsonl  1,000   supervised warm-up of the tiny model (the paper's cold start)
  arith_train.jsonl      4,000   RL questions
  arith_test.jsonl         500   held-out evaluation
  arith_dev.jsonl          500   for choosing settings (learning rate, steps), so the test split stays unseen
Cold-start lines also carry a worked "solution" (one column at a time, so a 0.6 M-parameter
model can learn it), a "wrong_solution" with one typical slip, and "wrong_solutions": three
with different wrong answers, every step slipped or worked from a misread operand (WRONG_SLIPS),
which gcrl's critique warm-up uses:
  47+38  ->  7+8=15,4+3+1=8,\\boxed{85}
  71-38  ->  11-8=3,7-3-1=3,\\boxed{33}
  58-78  ->  -(78-58):8-8=0,7-5-0=2,\\boxed{-20}
"""
import json
import os
import random

HERE = os.path.dirname(os.path.abspath(__file__))
SPLITS = [("arith_coldstart.jsonl", 1000), ("arith_train.jsonl", 4000), ("arith_test.jsonl", 500),
          ("arith_dev.jsonl", 500)]


def worked_solution(a, op, b, slip=None, rng=random):
    """Column-wise steps for a op b; `slip` injects one mistake: 'carry' (drop the carry or
    borrow), 'fact' (the tens fact off by one), 'ones' (the ones fact off by one, carry kept) or
    'copy' (final answer copied wrong) or 'read' (one digit of an operand misread by one, then
    worked on faithfully); several joined by '+' ('ones+fact': both facts wrong).
    'read' and 'copy' draw from `rng`."""
    slips = set((slip or "").split("+"))
    if "read" in slips:  # e.g. 42-50 read as 42-40: every step follows from the misread question
        place, step = rng.choice([1, 10]), rng.choice([-1, 1])
        if rng.random() < 0.5:
            a = min(99, max(10, a + place * step))
        else:
            b = min(99, max(10, b + place * step))
    prefix, sign = "", 1
    if op == "-" and a < b:  # a-b = -(b-a), so every subtraction below has a >= b
        prefix, sign, a, b = f"-({b}-{a}):", -1, b, a
    a1, a0, b1, b0 = a // 10, a % 10, b // 10, b % 10
    if op == "+":
        ones = a0 + b0
        carry = ones // 10
        ones_step, ones_digit = f"{a0}+{b0}={ones}", ones % 10
        if "carry" in slips:
            carry = 0
        tens = a1 + b1 + carry
        tens_step = f"{a1}+{b1}+{carry}={tens}"
    else:
        borrow = int(a0 < b0)
        top = a0 + 10 * borrow
        ones_digit = top - b0
        ones_step = f"{top}-{b0}={ones_digit}"
        if "carry" in slips:
            borrow = 0
        tens = a1 - b1 - borrow
        tens_step = f"{a1}-{b1}-{borrow}={tens}"
    if "ones" in slips:
        ones_digit += 1 if ones_digit < 9 else -1
        ones_step = ones_step.rsplit("=", 1)[0] + "=" + str(ones_digit + 10 * (op == "+" and carry))
    if "fact" in slips:
        tens += 1 if tens < 9 else -1
        tens_step = tens_step.rsplit("=", 1)[0] + f"={tens}"
    answer = sign * (tens * 10 + ones_digit)
    if "copy" in slips:
        answer += rng.choice([-10, -1, 1, 10])
    return f"{prefix}{ones_step},{tens_step},\\boxed{{{answer}}}", answer


# The warm-up's three wrong solutions per question: every step wrong (both facts off by one, or the
# ones fact and the carry), or worked faithfully from an operand digit misread by one, alone or with
# a fact wrong too. Both kinds are how the tiny model itself goes wrong; with warm-up slips that
# left some steps right, its critic learned to repeat a wrong response's steps (critic_study.py).
EVERY_STEP_SLIPS = ("ones+fact", "ones+carry", "ones+fact+carry")
WRONG_SLIPS = EVERY_STEP_SLIPS + ("read", "read+ones", "read+fact")


def wrong_solutions(a, op, b, rng, num=3, slips=WRONG_SLIPS, draws=None):
    """`num` slipped solutions of a op b with different wrong answers (fewer if the question has fewer).
    `rng` picks the slips; `draws` (default: rng) the misread digit and the miscopied answer."""
    right = a + b if op == "+" else a - b
    found = {}
    for _ in range(100):
        text, answer = worked_solution(a, op, b, rng.choice(slips), draws or rng)
        if answer != right:
            found.setdefault(answer, text)
        if len(found) == num:
            break
    return list(found.values())


def all_questions():
    return [(a, op, b) for a in range(10, 100) for b in range(10, 100) for op in "+-"]


def main(seed=1234):
    rng = random.Random(seed)
    random.seed(seed)  # for the 'copy' slip of "wrong_solution"
    rng3 = random.Random(seed + 1)  # "wrong_solutions" draw apart, so the fields made before stay as they were
    rows = all_questions()
    rng.shuffle(rows)
    start = 0
    for name, size in SPLITS:
        with open(os.path.join(HERE, name), "w") as f:
            for a, op, b in rows[start:start + size]:
                solution, answer = worked_solution(a, op, b)
                assert answer == (a + b if op == "+" else a - b)
                row = {"question": f"{a}{op}{b}", "answer": str(answer)}
                if name == "arith_coldstart.jsonl":
                    wrong, wrong_answer = solution, answer
                    while wrong_answer == answer:  # a slip that changes nothing is not a slip
                        wrong, wrong_answer = worked_solution(a, op, b, rng.choice(["carry", "fact", "copy"]))
                    row.update(solution=solution, wrong_solution=wrong, wrong_solutions=wrong_solutions(a, op, b, rng3))
                f.write(json.dumps(row) + "\n")
        start += size
        print(f"wrote {size:5d} lines to tiny_tasks/{name}")


if __name__ == "__main__":
    main()
