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
import operator
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


# A default data set for real models (gcrl.py --model X without --dataset): multi-step arithmetic
# that a 0.5B base model does not already solve. Written by the same command, with its own seed.
MULTISTEP_SPLITS = [("multistep_train.jsonl", 4000), ("multistep_test.jsonl", 500)]
OPS = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.floordiv}


def multistep_question(rng):
    """3-4 operations on multi-digit operands, with parentheses, and an integer answer:
    ('Compute (412 - 38) * 7 + 965 / 5.', 2811)-like; division always comes out exact."""
    while True:
        value = rng.randint(10, 999)
        expr = str(value)
        for _ in range(rng.choice((3, 4))):
            op = rng.choice("+-*/")
            if op == "/":
                divisors = [d for d in range(2, 20) if value % d == 0]
                if not divisors:
                    op = "+"
            y = rng.randint(10, 999) if op in "+-" else rng.randint(2, 19) if op == "*" else rng.choice(divisors)
            grouped = f"({expr})" if op in "*/-" and any(c in expr for c in "+-") else expr
            if op in "+*" and rng.random() < 0.5:  # sometimes the new operand comes first
                expr = f"{y} {op} {grouped if op == '*' else expr}"
            else:
                expr = f"{grouped} {op} {y}"
            value = OPS[op](value, y)
        if abs(value) <= 99999 and eval_plain(expr) == value:
            return f"Compute {expr}.", value


def eval_plain(expr):
    """Our own arithmetic on the generated text (no eval): +-*/ with precedence and parentheses."""
    tokens = expr.replace("(", " ( ").replace(")", " ) ").split()

    def parse(i, level):  # level 0: + -, level 1: * /, level 2: numbers and ( ... )
        if level == 2:
            if tokens[i] == "(":
                v, i = parse(i + 1, 0)
                return v, i + 1
            return int(tokens[i]), i + 1
        v, i = parse(i, level + 1)
        while i < len(tokens) and tokens[i] in ("+-" if level == 0 else "*/"):
            op = tokens[i]
            w, i = parse(i + 1, level + 1)
            if op == "/" and v % w:
                return None, len(tokens)  # not exact: reject
            v = OPS[op](v, w)
        return v, i

    return parse(0, 0)[0]


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
    rng = random.Random(seed + 2)
    seen = set()
    for name, size in MULTISTEP_SPLITS:
        with open(os.path.join(HERE, name), "w") as f:
            written = 0
            while written < size:
                question, answer = multistep_question(rng)
                if question not in seen:  # the splits share no question
                    seen.add(question)
                    f.write(json.dumps({"question": question, "answer": str(answer)}) + "\n")
                    written += 1
        print(f"wrote {size:5d} lines to tiny_tasks/{name}")


if __name__ == "__main__":
    main()
