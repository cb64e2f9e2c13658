"""gcrl's verifier beside math-verify on the answer shapes real data sets use. Not a test: it prints a table.

    python tiny_tasks/verifier_table.py            # gcrl's column only
    pip install math-verify && python tiny_tasks/verifier_table.py   # + math-verify's (not a gcrl dependency)

Each row is (model's boxed answer, gold answer, whether a grader should accept it). gcrl is asked
with gcrl.verify(r'\\boxed{pred}', gold); math-verify with verify(parse(gold), parse(r'\\boxed{pred}')),
gold written as '$gold$', its documented use. A row counts as agreement when the verdict is the
expected one; the last line gives each verifier's agreement over all rows.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import gcrl  # noqa: E402

CASES = [  # (shape, prediction, gold, expected)
    ("integer", "72", "72", True), ("integer", "71", "72", False),
    ("thousands separator", "1,234", "1234", True), ("decimal", "0.50", r"\frac12", True),
    ("fraction", r"\dfrac{3}{4}", "0.75", True), ("fraction", r"\frac{4}{3}", r"\frac{3}{4}", False),
    ("radical", r"2\sqrt{2}", r"\sqrt{8}", True), ("radical", r"3\sqrt{2}", r"\sqrt{8}", False),
    ("pi", r"\frac{\pi}{2}", r"\pi/2", True), ("expression", "(x-1)(x+1)", "x^2-1", True),
    ("expression", "x^2+1", "x^2-1", False),
    ("set, unordered", r"\{2,1\}", r"\{1,2\}", True), ("set, unordered", r"\{1,3\}", r"\{1,2\}", False),
    ("solution list", "2, 1", "1, 2", True), ("solution list", "1, 2", "1, 2, 3", False),
    ("solution list", "x=3, x=-2", "-2, 3", True),
    (r"\pm", r"2 \pm \sqrt{3}", r"2+\sqrt{3}, 2-\sqrt{3}", True), (r"\pm", r"\pm 2", "2", False),
    ("tuple, ordered", "(1, 2)", "(1,2)", True), ("tuple, ordered", "(2, 1)", "(1,2)", False),
    ("interval", "[1,3)", r"\left[1, 3\right)", True), ("interval", "[1,3]", "[1,3)", False),
    ("interval", "(0,1]", "[0,1]", False),
    ("union of intervals", r"(3,\infty)\cup(-\infty,2)", r"(-\infty, 2) \cup (3, \infty)", True),
    ("x \\in interval", r"x \in [1,3]", "[1,3]", True), ("y = ...", r"y = 2x+1", "2x+1", True),
    ("vector", "(1,2)", r"\begin{pmatrix}1\\2\end{pmatrix}", True),
    ("vector", r"\begin{pmatrix}2\\1\end{pmatrix}", r"\begin{pmatrix}1\\2\end{pmatrix}", False),
    ("matrix", r"\begin{bmatrix}1&2\\3&4\end{bmatrix}", r"\begin{pmatrix}1 & 2\\ 3&4\end{pmatrix}", True),
    ("matrix", r"\begin{pmatrix}1&3\\2&4\end{pmatrix}", r"\begin{pmatrix}1&2\\3&4\end{pmatrix}", False),
    ("repeating decimal", r"0.\overline{3}", r"\frac13", True), ("repeating decimal", r"0.1\overline{6}", r"\frac16", True),
    ("repeating decimal", "0.3", r"0.\overline{3}", False),
    ("unit", r"5\text{ cm}", "5", True), ("unit", "18 dollars", "18", True), ("unit", r"6\text{ cm}", "5", False),
    ("money", r"\$18.90", "18.90", True), ("percent", r"50\%", "50", True),
    ("degrees", r"30^\circ", "30", True), ("degrees", "30 degrees", "30", True),
    ("multiple choice", "(B)", "B", True), ("multiple choice", r"\textbf{(C)}", "C", True),
    ("multiple choice", "B)", "B", True), ("multiple choice", "(A)", "B", False),
    ("text", r"\text{yes}", "Yes", True), ("text", "no", "yes", False),
    ("undefined", "1/0", "1/0", False), ("infinity", r"\infty", r"\infty", True),
]


def main():
    try:
        from math_verify import parse, verify as mv_verify
    except ImportError:
        mv_verify = None
    rows, hits = [], {"gcrl": 0, "math-verify": 0}
    for shape, pred, gold, expected in CASES:
        ours = gcrl.verify("\\boxed{" + pred + "}", gold)
        assert ours == gcrl.answers_equal(gold, pred), (pred, gold)  # gcrl is symmetric
        theirs = mv_verify(parse("$" + gold + "$"), parse("\\boxed{" + pred + "}")) if mv_verify else None
        hits["gcrl"] += ours == expected
        hits["math-verify"] += theirs == expected
        mark = lambda v: "–" if v is None else ("accept" if v else "reject") + ("" if v == expected else " ✗")
        rows.append(f"| {shape} | `{pred}` | `{gold}` | {'accept' if expected else 'reject'} | {mark(ours)} | {mark(theirs)} |")
    print("| shape | prediction | gold | expected | gcrl | math-verify |\n|---|---|---|---|---|---|")
    print("\n".join(rows))
    n = len(CASES)
    print(f"\nagreement with the expected verdict: gcrl {hits['gcrl']}/{n}"
          + (f", math-verify {hits['math-verify']}/{n}" if mv_verify else " (math-verify not installed)"))


if __name__ == "__main__":
    main()
