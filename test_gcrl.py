"""Tests for gcrl.py, in the order of its sections, then tiny_tasks/. CPU only; under a minute.

    pytest -q test_gcrl.py
"""
import builtins
import contextlib
import copy
import datetime
import json
import math
import os
import random
import signal
import sys
import threading
import time

import pytest
import torch

import gcrl
from gcrl import answers_equal, extract_boxed, verify

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "tiny_tasks"))
import make_tasks  # noqa: E402
import tiny_model  # noqa: E402

torch.set_num_threads(1)


# ---------------------------------------------------------------------------- shared fixtures
@pytest.fixture(scope="session")
def tok():
    return tiny_model.build_tokenizer()


@pytest.fixture(scope="session")
def easy_rows():
    """Eight questions the warm model below has seen: enough for mixed right/wrong samples."""
    qs = [(11, "+", 12), (23, "+", 14), (35, "-", 12), (47, "-", 25),
          (52, "+", 31), (64, "-", 33), (71, "+", 18), (86, "-", 44)]
    rows = []
    for i, (a, op, b) in enumerate(qs):
        ans = a + b if op == "+" else a - b
        rows.append({"question": f"{a}{op}{b}", "answer": str(ans), "id": i})
    return rows


def direct_answer_examples(rows):
    """A short warm-up in all three formats with direct answers ('\\boxed{23}'): quick to learn."""
    examples = []
    for r in rows:
        right, wrong = "\\boxed{" + r["answer"] + "}", "\\boxed{" + str(int(r["answer"]) + 10) + "}"
        examples.append((gcrl.solve_prompt(r["question"]), right))
        for response in (right, wrong):
            crit = tiny_model.tiny_critique(right, r["answer"], gcrl.extract_boxed(response))
            examples += [(gcrl.critique_prompt(r["question"], response), crit),
                         (gcrl.refine_prompt(r["question"], response, crit), right)]
    return examples


@pytest.fixture(scope="session")
def warm_model(tok, easy_rows):
    """A tiny model given a short warm-up on easy_rows: it knows the three formats and answers
    some questions right and some wrong at temperature 1, which every end-to-end test needs."""
    model = tiny_model.build_model(tok, hidden_size=64, num_layers=2, seed=0)
    gcrl.sft(model, tok, direct_answer_examples(easy_rows), 60, 3e-3, random.Random(0), batch_size=32)
    return model


@pytest.fixture(scope="session")
def demo_model():
    """The shipped cold-started model, loaded the way `python gcrl.py` loads it."""
    return gcrl.load_model(gcrl.DEMO_MODEL, "cpu")


def make_args(tmp_path, *extra):
    return gcrl.parse_args(["--output_dir", str(tmp_path / "out"), "--max_steps", "2", "--train_batch_size", "4",
                            "--num_generations", "4", "--eval_steps", "0", "--self_verify_samples", "0",
                            "--max_completion_length", "32", "--learning_rate", "1e-3", "--device", "cpu",
                            "--static_samples", "4", *extra])


# ---------------------------------------------------------------------------- 0. config
def test_defaults_follow_trl_names_and_fill_in():
    args = gcrl.parse_args([])
    assert args.mode == "gcrl" and args.num_critiques == args.num_generations
    assert args.epsilon_high == args.epsilon == 0.2
    assert args.critique_batch_size == args.train_batch_size and args.cache_size == 4 * args.train_batch_size
    assert args.model == gcrl.DEMO_MODEL and args.cold_start is None and args.learning_rate == 3e-5  # the demo
    assert args.max_completion_length == 64 and args.max_prompt_length == 512 + 2 * 64
    assert args.dataset.endswith("arith_train.jsonl") and args.eval_dataset.endswith("arith_test.jsonl")
    real = gcrl.parse_args(["--model", "Qwen2.5-0.5B"])
    assert real.learning_rate == 1e-6 and real.max_completion_length == 1024 and real.eval_size == 200
    assert real.self_verify_samples == 0 and real.max_prompt_length == 512 + 2 * 1024


# ---------------------------------------------------------------------------- 1. data and model
def test_tiny_data_sets_load_and_are_disjoint():
    splits = {name: gcrl.load_questions(f"tiny_tasks/arith_{name}.jsonl")[0] for name in ("train", "test", "dev")}
    qs = {name: {r["question"] for r in rows} for name, rows in splits.items()}
    qs["coldstart"] = {row["question"] for _, row in gcrl.read_jsonl("tiny_tasks/arith_coldstart.jsonl")}
    assert len(qs["train"]) == 4000 and len(qs["test"]) == 500 and len(qs["dev"]) == 500
    names = list(qs)
    assert all(not (qs[x] & qs[y]) for i, x in enumerate(names) for y in names[i + 1:])
    for _, r in gcrl.read_jsonl("tiny_tasks/arith_coldstart.jsonl")[:50]:  # worked solutions check out
        assert gcrl.verify(r["solution"], r["answer"]) and not gcrl.verify(r["wrong_solution"], r["answer"])
        wrong_answers = {extract_boxed(w) for w in r["wrong_solutions"]}  # three, all wrong, all different
        assert len(wrong_answers) == 3 and not any(verify(w, r["answer"]) for w in r["wrong_solutions"])


@pytest.mark.parametrize("lines, question, answer, how", [
    # GSM8K as published: a worked answer ending in '#### 72', thousands separators in the number
    (['{"question": "Q1", "answer": "3 + 4 = <<3+4=7>>7\\n#### 7"}', '{"question": "Q2", "answer": "x\\n#### 1,234"}'],
     "Q2", "1234", "the text after '####'"),
    (['{"problem": "P1", "answer": "\\\\frac{1}{2}", "solution": "so \\\\boxed{0.5}"}'], "P1", "\\frac{1}{2}",
     "from 'answer'"),  # MATH / MATH-500: 'answer' wins over the solution's box
    (['{"problem": "P1", "solution": "first \\\\boxed{1}, then \\\\boxed{\\\\sqrt{2}}"}'], "P1", "\\sqrt{2}",
     "the last \\boxed{}"),
    (['{"question": "Q", "answer": 7}'], "Q", "7", "from 'answer'"),  # a number is read as its text
])
def test_data_formats_are_detected_as_published(tmp_path, lines, question, answer, how):
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(lines) + "\n")
    rows, said = gcrl.load_questions(str(path))
    assert rows[-1]["question"] == question and rows[-1]["answer"] == answer and rows[-1]["id"] == len(rows) - 1
    assert how in said and f"{len(rows)} questions" in said


def test_custom_fields_are_named_on_the_command_line(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text('{"prompt": "2+2", "target": "4"}\n')
    rows, said = gcrl.load_questions(str(path), "prompt", "target")
    assert rows == [{"question": "2+2", "answer": "4", "id": 0}] and "'prompt'" in said and "'target'" in said
    args = gcrl.parse_args(["--question_field", "prompt", "--answer_field", "target"])
    assert (args.question_field, args.answer_field) == ("prompt", "target")


@pytest.mark.parametrize("line, message", [
    ('{"question": "1+1"', "not valid JSON"),
    ('[1, 2]', "expected a JSON object"),
    ('{"question": "1+1"}', "needs non-empty string fields 'question' and 'answer'"),
    ('{"question": "", "answer": "2"}', "needs non-empty string fields 'question' and 'answer'"),
    ('{"problem": "1+1", "answer": "2"}', "(the plain layout, detected from line 1)"),  # a line of another layout
    ('{"question": "1+1", "answer": true}', "needs non-empty string fields"),
])
def test_bad_data_line_names_file_and_line(tmp_path, line, message):
    path = tmp_path / "data.jsonl"
    path.write_text('{"question": "2+2", "answer": "4"}\n' + line + "\n")
    with pytest.raises(SystemExit) as e:
        gcrl.load_questions(str(path))
    assert f"{path}:2:" in str(e.value) and message in str(e.value)


def test_bad_lines_of_published_layouts(tmp_path):
    gsm = tmp_path / "gsm.jsonl"
    gsm.write_text('{"question": "Q", "answer": "#### 3"}\n{"question": "Q", "answer": "no marker"}\n')
    with pytest.raises(SystemExit, match=r"gsm.jsonl:2: GSM8K answer without '#### <answer>'"):
        gcrl.load_questions(str(gsm))
    math_ = tmp_path / "math.jsonl"
    math_.write_text('{"problem": "P", "solution": "\\\\boxed{1}"}\n{"problem": "P", "solution": "none"}\n')
    with pytest.raises(SystemExit, match=r"math.jsonl:2: 'solution' has no \\boxed\{\} answer"):
        gcrl.load_questions(str(math_))


def test_unreadable_data_sets(tmp_path):
    (tmp_path / "latin1.jsonl").write_bytes(b'{"question": "1+1", "answer": "2"}\n{"question": "\xe9", "answer": "2"}\n')
    with pytest.raises(SystemExit, match=r"latin1.jsonl:2: not UTF-8 text"):
        gcrl.load_questions(str(tmp_path / "latin1.jsonl"))
    with pytest.raises(SystemExit, match="is not a file"):
        gcrl.load_questions(str(tmp_path))


def test_missing_and_empty_data_sets(tmp_path):
    with pytest.raises(SystemExit, match="does not exist"):
        gcrl.load_questions(str(tmp_path / "nope.jsonl"))
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(SystemExit, match="is empty"):
        gcrl.load_questions(str(tmp_path / "empty.jsonl"))


def test_model_shorthand_resolution(tmp_path):
    assert gcrl.resolve_model_name("Qwen2.5-0.5B") == "Qwen/Qwen2.5-0.5B"
    assert gcrl.resolve_model_name("meta-llama/Llama-3.1-8B") == "meta-llama/Llama-3.1-8B"
    assert gcrl.resolve_model_name(str(tmp_path)) == str(tmp_path)


def test_bad_model_name_is_one_clear_line(tmp_path):
    with pytest.raises(SystemExit) as e:
        gcrl.load_model(str(tmp_path / "no-such-model"), "cpu")
    msg = str(e.value)
    assert msg.startswith(f"error: could not load --model '{tmp_path / 'no-such-model'}' as hub id")
    assert "check the name" in msg and "\n" not in msg


def test_an_unreachable_hub_fails_fast_in_one_line(monkeypatch):
    from huggingface_hub import constants
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # what HF_HUB_OFFLINE=1 sets; no network is touched
    t = time.time()
    with pytest.raises(SystemExit) as e:
        gcrl.load_model("someone/no-such-model", "cpu")
    assert time.time() - t < 10
    assert str(e.value) == ("error: could not load --model 'someone/no-such-model' as hub id: not in the local cache, "
                            "and the hub is off (HF_HUB_OFFLINE) -- check the name, or download it where the hub is "
                            "reachable and pass its local directory")


def test_real_model_path_loads_a_local_directory(tmp_path, tok, warm_model):
    """A model saved with save_pretrained goes through AutoModelForCausalLM/AutoTokenizer, as a hub id would."""
    warm_model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    model, tok2 = gcrl.load_model(str(tmp_path / "m"), "cpu")
    assert type(model).__name__ == "Qwen2ForCausalLM" and tok2.padding_side == "left"
    assert tok2("47+38").input_ids == tok("47+38").input_ids


CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def test_chat_template_auto_asks_the_model_name(tok):
    chat_tok = copy.deepcopy(tok)
    chat_tok.chat_template = CHAT_TEMPLATE
    assert not gcrl.use_chat_template(tok, "Qwen2.5-0.5B-Instruct")           # no template: plain
    assert not gcrl.use_chat_template(chat_tok, "Qwen/Qwen2.5-0.5B")          # base model with a template
    assert gcrl.use_chat_template(chat_tok, "Qwen/Qwen2.5-0.5B-Instruct")
    assert gcrl.use_chat_template(chat_tok, "some/model-chat")
    assert gcrl.use_chat_template(chat_tok, "Qwen/Qwen2.5-0.5B", "on")
    assert not gcrl.use_chat_template(chat_tok, "x-Instruct", "off")
    with pytest.raises(SystemExit, match="has no chat template"):
        gcrl.use_chat_template(tok, "x", "on")


def test_chat_template_renders_all_three_prompt_kinds(tok):
    chat_tok = copy.deepcopy(tok)
    chat_tok.chat_template = CHAT_TEMPLATE
    for text in (gcrl.solve_prompt("47+38"), gcrl.critique_prompt("47+38", "\\boxed{85}"),
                 gcrl.refine_prompt("47+38", "\\boxed{84}", "Conclusion: wrong [END]")):
        rendered = gcrl.render_prompt(chat_tok, text, chat=True)
        assert rendered == "<|im_start|>user\n" + text + "<|im_end|>\n<|im_start|>assistant\n"
        assert gcrl.render_prompt(chat_tok, text, chat=False) == text


# ---------------------------------------------------------------------------- 2. prompts and verdicts
@pytest.mark.parametrize("critique, verdict", [
    ("Recomputed: 85\nConclusion: right [END]", "right"),
    ("Recomputed: 85\nConclusion: wrong [END]", "wrong"),
    ("**Conclusion: right [END]**", "right"),
    ("Conclusion: right [END] ... on reflection Conclusion: wrong [END]", "wrong"),  # the last one counts
    ("Conclusion: right", None),               # no [END]
    ("the solution is right", None),
    ("", None),
])
def test_parse_verdict(critique, verdict):
    assert gcrl.parse_verdict(critique) == verdict


@pytest.mark.parametrize("hostile, verdict", [
    ("Conclusion:" + " " * 200_000 + "x", None),        # was quadratic: 20,000 spaces took 6 s
    ("Conclusion: right " * 100_000, None),             # never closed with [END]
    ("x" * 2_000_000, None),
    ("Conclusion:\x00 right [END]\x00", None),          # NUL is not a space
    ("Conclusion: rïght [END] \u202e Conclusion: wrong [END]", "wrong"),
    ("Conclusion: right [END]" + " " * 100_000 + "Conclusion: wrong", "right"),  # the last COMPLETE one
    ("Conclusion: wrong [END]" * 50_000 + "Conclusion: right [END]", "right"),
])
def test_parse_verdict_is_bounded_on_hostile_text(hostile, verdict):
    start = time.time()
    assert gcrl.parse_verdict(hostile) == verdict
    assert time.time() - start < 5  # a generous guard; typical is milliseconds


def test_prompts_follow_paper_format():
    p = gcrl.critique_prompt("Q?", "R.")
    assert p.startswith("#Question#: Q?\n#Solution#: R.\n#Instruction#: Please verify step by step")
    assert "**Conclusion: right/wrong [END]**" in p
    assert "#Critique#: C." in gcrl.refine_prompt("Q?", "R.", "C.")


# ---------------------------------------------------------------------------- 3. verifier
@pytest.mark.parametrize("response, gold, expected", [
    ("so \\boxed{85}", "85", True),
    ("\\boxed{84}", "85", False),
    ("\\boxed{1} then \\boxed{85}", "85", True),   # the last box counts
    ("\\boxed{85} then \\boxed{1}", "85", False),
    ("85", "85", False),                           # no box, no reward
    ("\\boxed{85", "85", False),                   # unclosed box
    ("\\boxed{-20}", "-20", True),
    ("\\boxed{85.0}", "85", True),
])
def test_verify_basic(response, gold, expected):
    assert gcrl.verify(response, gold) is expected


def test_extract_boxed_balances_braces():
    assert gcrl.extract_boxed("x \\boxed{\\frac{1}{2}} y") == "\\frac{1}{2}"
    assert gcrl.extract_boxed("no box") is None


EQUAL = [  # (a, b): must be equal, in both orders
    ("85", "85"), ("85.0", "85"), ("85.", "85"), (".5", "0.5"), (".5", r"\frac12"), ("-3", "-3.0"),
    ("7,425,000", "7425000"), ("7{,}425", "7425"), (r"1\,000", "1000"),
    (r"\frac{3}{4}", "0.75"), (r"\dfrac{3}{4}", "3/4"), (r"\tfrac34", r"\frac{3}{4}"),
    (r"\frac{-1}{2}", r"-\frac12"), ("-0.5", r"\frac{-1}{2}"),
    (r"\sqrt{8}", r"2\sqrt{2}"), (r"\sqrt3", r"\sqrt{3}"), (r"\sqrt[3]{8}", "2"),
    (r"\sqrt[3]{-8}", "-2"),
    (r"\frac{1}{\sqrt{2}}", r"\frac{\sqrt2}{2}"), (r"\sqrt{5+2\sqrt{6}}", r"\sqrt2+\sqrt3"),
    (r"\frac{1}{\sqrt{3}-1}", r"\frac{\sqrt{3}+1}{2}"),
    (r"2\pi", r"\pi*2"), (r"3\pi", r"3 \times \pi"), (r"\frac{\pi}{2}", r"\pi/2"),
    ("2^{10}", "1024"), ("2^10", "1024"), ("2**10", "1024"), ("x^{2}", "x^2"), ("2^{-1}", "0.5"),
    ("2x", r"x \cdot 2"), ("(x-1)(x+1)", "x^2-1"), (r"\frac{x^2-1}{x-1}", "x+1"),
    ("x = 5", "5"), ("y=2x+1", "1+2x"), (r"6 \div 3", "2"), (r"50\%", "50"),
    (r"30^\circ", "30"), (r"30^{\circ}", "30"), ("$\\frac{1}{2}$", "0.5"),
    (r"\left( \frac{1}{2} \right)", "1/2"), ("{{5}}", "5"), (r"\!5", "5"), (r"\infty", r"\infty"),
    (r"\text{(A)}", "(A)"), (r"\textbf{Yes}", "yes"), (r"\mathrm{e}", "e"),
    (r"5\text{cm}", r"5\text{ cm}"), (r"\{1,2\}", r"\{1, 2\}"),
    # shapes of MATH answers: sets and solution lists (unordered), \pm, tuples, intervals, vectors, matrices
    (r"\{1,2\}", r"\{2,1\}"), ("1, 2", "2, 1"), ("x=2, x=3", "3, 2"), (r"\{5\}", "5"), ("(5)", "5"),
    (r"2 \pm \sqrt{3}", r"2+\sqrt3, 2-\sqrt3"), (r"\pm 2", "2, -2"), ("(1,2)", "(1, 2.0)"),
    (r"(-\infty, 2) \cup (3, \infty)", r"(3,\infty)\cup(-\infty,2)"), ("[1,3)", r"\left[1, 3\right)"),
    (r"\begin{pmatrix}1\\2\end{pmatrix}", "(1,2)"), (r"\begin{pmatrix} 1 & 2 \end{pmatrix}", "(1, 2)"),
    (r"\begin{bmatrix}1&2\\3&4\end{bmatrix}", r"\begin{pmatrix}1 & 2\\ 3&4\end{pmatrix}"),
    (r"x \in [1,3]", "[1,3]"), (r"y = \frac{1}{2}x", "x/2"),
    (r"0.\overline{3}", r"\frac13"), (r"0.1\overline{6}", r"\frac{1}{6}"), (r"1.\overline{142857}", r"\frac87"),
    (r"5\text{ cm}", "5"), ("18 dollars", "18"), (r"\$18.90", "18.9"), ("30 degrees", "30"), (r"90^{\circ}", "90"),
    ("(B)", "B"), ("B)", "B"), (r"\textbf{(C)}", "C"), ("Option D", "(D)"), ("answer: E", "e"),
]

NOT_EQUAL = [
    ("85", "86"), ("0.5", r"\frac13"), ("0.333333", r"\frac13"), ("1,2", "12"), ("1,2", "1.2"),
    (r"\frac{3}{4}", r"\frac{4}{3}"), (r"\sqrt{8}", r"3\sqrt{2}"), (r"\sqrt[3]{8}", "3"),
    (r"2\pi", "6.28318530718"), ("3.14159265358979", r"\pi"), ("e", "2.718281828"),
    ("x^2", "2x"), ("(x-1)(x+1)", "x^2+1"), ("x^{300}", "x^{300}+1"), ("x = 5", "6"),
    ("2^{10}", "1000"),
    (r"5\text{ cm}", "6"), ("(1,2)", "(2,1)"), ("[1,3)", "[1,3]"), ("(0,1]", "[0,1]"), (r"\pm 2", "2"),
    ("1, 2", "1, 2, 3"), (r"\{1,2\}", "(1,2)"), (r"\begin{pmatrix}1\\2\end{pmatrix}", "(2,1)"),
    (r"\begin{pmatrix}1&2\\3&4\end{pmatrix}", r"\begin{pmatrix}1&3\\2&4\end{pmatrix}"), ("A", "B"), ("(A)", "(B)"),
    (r"0.\overline{3}", "0.3"), (r"2 \pm 1", "3"),
    ("x<3", "3"), ("yes", "no"), ("yes", "sey"), (r"-\infty", r"\infty"), (r"\infty", "10^{999}"),
    ("1/0", "1/0"), ("0/0", "0/0"), (r"\frac{1}{0}", r"\infty"), ("0^{-1}", "0^{-1}"), ("", ""),
]


@pytest.mark.parametrize("a,b", EQUAL)
def test_equal(a, b):
    assert answers_equal(a, b) is True and answers_equal(b, a) is True


@pytest.mark.parametrize("a,b", NOT_EQUAL)
def test_not_equal(a, b):
    assert answers_equal(a, b) is False and answers_equal(b, a) is False


@pytest.mark.parametrize("response,gold,expected", [
    (r"so the answer is \boxed{\frac{3}{4}}.", "0.75", True),
    (r"so the answer is \boxed{\frac{3}{4}}.", r"\frac{3}{4}", True),
    (r"\boxed{1} then, correcting myself, \boxed{2}", "2", True),  # the last box wins
    (r"\boxed{1} then, correcting myself, \boxed{2}", "1", False),
    ("no box here, the answer is 5", "5", False),
    (r"\boxed{5} and then \boxed{6", "5", False),  # last box unclosed: answer unfinished
    (r"\boxed {5}", "5", True), (r"\fbox{5}", "5", True), (r"$\boxed{7,425,000}$", "7425000", True),
    (r"\boxed{x = 5}", "5", True), (r"\boxed{5}", r"\boxed{5}", True),
    (r"\boxed{\frac{1}{\sqrt{2}}}", r"\frac{\sqrt2}{2}", True), (r"\boxed{}", "", False),
    (None, "5", False), (r"\boxed{5}", None, False), (r"\boxed{5}", 5, False),
])
def test_verify(response, gold, expected):
    result = verify(response, gold)
    assert isinstance(result, bool) and result is expected


@pytest.mark.parametrize("text,expected", [
    (r"\boxed{\frac{1}{2}}", r"\frac{1}{2}"), (r"a \boxed{1} b \boxed{{2}} c", "{2}"),
    (r"\boxed{\{1,2\}}", r"\{1,2\}"), (r"\boxed{a\}b}", r"a\}b"), (r"\boxed{1} \boxed{2", None),
    ("nothing", None), (r"\boxed {3}", "3"), (r"\fbox{4}", "4"), (r"\boxed{\boxed{5}}", "5"),
    (r"\boxed{a\\}b", "a\\\\"), (r"\boxed{\{x\}}", r"\{x\}"),  # \\ is an escaped backslash, then a brace
])
def test_extract_boxed(text, expected):
    assert extract_boxed(text) == expected


# ---------------------------------------------------------------------------- 4. first-order rollout
def _model_with_generation_defaults(tok):
    """A tiny model whose checkpoint ships generation defaults that would change what it samples."""
    model = tiny_model.build_model(tok, hidden_size=64, num_layers=2, seed=1).eval()
    g = model.generation_config
    g.top_k, g.top_p, g.min_p, g.temperature, g.repetition_penalty, g.no_repeat_ngram_size = 1, 0.5, 0.9, 0.05, 5.0, 1
    return model


def test_forward_logprobs_match_what_generate_sampled(tok, monkeypatch):
    """Left-padded prompts of different lengths, a model shipping its own sampling defaults: each token
    gcrl.generate sampled was drawn with exactly the probability the loss later computes, pi/T."""
    model = _model_with_generation_defaults(tok)
    prompts = ["1+1" + gcrl.SOLVE_INSTRUCTION, gcrl.critique_prompt("47+38", "\\boxed{85}"), "9"]
    drawn, multinomial = [], torch.multinomial  # the distributions generate() really sampled from
    monkeypatch.setattr(torch, "multinomial", lambda p, *a, **k: drawn.append(p.clone()) or multinomial(p, *a, **k))
    temperature = 0.7
    torch.manual_seed(0)
    out = gcrl.generate(model, tok, prompts, 1, max_new_tokens=12, temperature=temperature)
    ids, attn, cmask = gcrl.collate(out["prompt_ids"], out["completion_ids"], tok.pad_token_id, "cpu")
    with torch.no_grad():
        lp = gcrl.completion_logprobs(model, ids, attn, cmask.shape[1], temperature)
    assert len(drawn) >= max(map(len, out["completion_ids"]))
    for i, completion in enumerate(out["completion_ids"]):
        for t, token in enumerate(completion):
            assert drawn[t][i, token].log().item() == pytest.approx(lp[i, t].item(), abs=1e-4), (i, t)
    assert model.generation_config.top_k == 1  # the model's own config is left as it was


def test_generation_ignores_the_models_own_sampling_defaults(tok):
    model = _model_with_generation_defaults(tok)
    prompt = "12+34" + gcrl.SOLVE_INSTRUCTION
    torch.manual_seed(0)  # top_k=1 or min_p=0.9 leaking in would make every sample the greedy one
    samples = gcrl.generate(model, tok, [prompt], 16, max_new_tokens=8, temperature=1.0)["texts"]
    assert len(set(samples)) > 8
    greedy = gcrl.generate(model, tok, [prompt], 1, max_new_tokens=8, greedy=True)["completion_ids"][0]
    ids = tok(prompt, return_tensors="pt").input_ids
    expected = []
    with torch.no_grad():  # plain argmax, token by token, without any of the model's penalties
        for _ in range(8):
            nxt = model(ids).logits[0, -1].argmax().item()
            expected.append(nxt)
            ids = torch.cat([ids, torch.tensor([[nxt]])], 1)
            if nxt == tok.eos_token_id:
                break
    assert greedy == expected


def test_generate_returns_prompt_major_samples(tok, warm_model):
    out = gcrl.generate(warm_model, tok, ["11+12" + gcrl.SOLVE_INSTRUCTION, "23+14" + gcrl.SOLVE_INSTRUCTION],
                        3, max_new_tokens=24, temperature=1.0)
    assert len(out["texts"]) == 6 and len(out["completion_ids"]) == 6
    assert out["prompt_ids"][0] == out["prompt_ids"][2] != out["prompt_ids"][3]
    for ids, trunc in zip(out["completion_ids"], out["truncated"]):
        assert (ids[-1] == tok.eos_token_id) != trunc and tok.eos_token_id not in ids[:-1]


# ---------------------------------------------------------------------------- 5. filter and cache
def test_filter_keeps_one_right_one_wrong_and_drops_uniform_groups():
    rng = random.Random(0)
    for _ in range(50):
        correct = [rng.random() < 0.5 for _ in range(6)]
        pairs = gcrl.select_pairs(3, [f"r{i}" for i in range(6)], correct, "filter", rng)
        if all(correct) or not any(correct):
            assert pairs == []
        else:
            assert sorted(ok for _, _, ok in pairs) == [False, True]
            for q, text, ok in pairs:
                assert q == 3 and correct[int(text[1:])] == ok
    assert gcrl.select_pairs(0, ["a", "b"], [True, True], "random", rng) != []  # the baselines keep them


def test_cache_takes_the_filters_pairs_drops_the_oldest_and_samples_without_replacement(tok):
    args = gcrl.parse_args(["--num_generations", "3", "--cache_size", "4"])
    questions = {q: {"question": f"{q}+{q}"} for q in range(3)}
    responses = [{"question": q, "text": f"r{q}{i}", "reward": float(i == 0 or q == 2)} for q in range(3) for i in range(3)]
    cache = [(9, "old", True)]
    m = gcrl.cache_new_pairs(cache, responses, questions, tok, args, random.Random(0))
    # questions 0 and 1 are mixed (one pair each: right + wrong); question 2 is all right: none
    assert m == {"cache/added": 4, "cache/dropped": 1, "prompts/skipped_critique": 0}
    assert [(q, ok) for q, _, ok in cache] == [(0, True), (0, False), (1, True), (1, False)]  # 'old' went first
    assert all(text[1] == str(q) for q, text, _ in cache)
    rng = random.Random(0)
    a = gcrl.sample_from_cache(cache, 3, rng)
    b = gcrl.sample_from_cache(cache, 3, rng)
    assert len(a) == 3 and len(b) == 1 and not cache
    assert sorted(a + b) == sorted([(0, "r00", True), (1, "r10", True)] + [p for p in a + b if not p[2]])


# ---------------------------------------------------------------------------- 6. second-order rollout
def test_second_order_rollout_scores_m_critiques_per_pair_in_pair_major_order(tok, monkeypatch):
    canned = ["Conclusion: right [END]", "Conclusion: wrong [END]", "no verdict"]

    def fake_generate(model, tokenizer, prompts, n, *a, **k):  # prompt i's j-th critique: canned[(i + j) % 3]
        texts = [canned[(i + j) % 3] for i in range(len(prompts)) for j in range(n)]
        return {"texts": texts, "prompt_ids": [[1]] * len(texts), "completion_ids": [[2, 3]] * len(texts)}

    monkeypatch.setattr(gcrl, "generate", fake_generate)
    args = gcrl.parse_args(["--num_critiques", "3", "--device", "cpu"])
    pairs, questions = [(5, "r5", True), (7, "r7", False)], {5: {"question": "q5"}, 7: {"question": "q7"}}
    samples, m = gcrl.second_order_rollout(None, tok, pairs, questions, args)
    assert [s["pair"] for s in samples] == [pairs[0]] * 3 + [pairs[1]] * 3  # pair 0's 3 critiques, then pair 1's
    assert [s["verdict"] for s in samples] == ["right", "wrong", None, "wrong", None, "right"]
    assert [s["reward"] for s in samples] == [0.7, 0.0, 0.0, 0.7, 0.0, 0.0]  # Eq. 2 against each pair's label
    assert [s["group"] for s in samples] == [5, 5, 5, 7, 7, 7]  # its question's group
    assert m["critique/accuracy"] == m["critique/right_rate"] == m["critique/no_verdict_rate"] == 2 / 6
    assert m["critique/label_right_rate"] == 0.5
    args.group_by = "prompt"
    assert [s["group"] for s in gcrl.second_order_rollout(None, tok, pairs, questions, args)[0]] == [-1] * 3 + [-2] * 3


# ---------------------------------------------------------------------------- 7. rewards
def test_critique_reward_eq2_and_steering():
    assert gcrl.critique_reward("right", True) == 0.7
    assert gcrl.critique_reward("wrong", False) == 0.7
    assert gcrl.critique_reward("right", False) == 0.0
    assert gcrl.critique_reward("wrong", True) == 0.0
    assert gcrl.critique_reward(None, True) == gcrl.critique_reward(None, False) == 0.0
    # Eq. 5/6: a stricter critic is paid less for "right" than for "wrong"
    assert gcrl.critique_reward("right", True, 0.6, 0.8) == 0.6
    assert gcrl.critique_reward("wrong", False, 0.6, 0.8) == 0.8


def test_critique_reward_eq3_reweights_by_accuracy():
    p = 0.2
    assert gcrl.critique_reward("right", True, p=p) == pytest.approx(0.35 / 0.2)
    assert gcrl.critique_reward("wrong", False, p=p) == pytest.approx(0.35 / 0.8)
    assert gcrl.critique_reward("wrong", True, p=p) == 0.0
    # unbiased: with labels right w.p. p, "always wrong" and "always right" earn the same on average
    always_wrong = (1 - p) * gcrl.critique_reward("wrong", False, p=p)
    always_right = p * gcrl.critique_reward("right", True, p=p)
    assert always_wrong == pytest.approx(always_right) == pytest.approx(0.35)


def test_denoise_reward_eq4():
    assert gcrl.denoise_reward("right", 0.5) == pytest.approx(0.05)
    assert gcrl.denoise_reward("wrong", 0.5) == pytest.approx(0.35)
    assert gcrl.denoise_reward("wrong", 0.0) == 0.0
    assert gcrl.denoise_reward(None, 1.0) == 0.0


# ---------------------------------------------------------------------------- 8. advantages
def test_advantages_zero_mean_per_group_and_no_nan():
    rewards = torch.tensor([1., 0., 0., 1., 0.7, 0.0, 0.7, 0.0, 0.5, 0.5, 1.0])
    groups = torch.tensor([0, 0, 0, 0, 0, 0, 1, 1, 2, 2, 3])  # mixed group 0; uniform group 2; lone 3
    adv = gcrl.grpo_advantages(rewards, groups)
    assert torch.isfinite(adv).all()
    for g in groups.unique():
        assert adv[groups == g].mean().abs() < 1e-6
    assert (adv[8:] == 0).all()  # zero variance and singletons: no signal, no NaN
    r0 = rewards[:6]
    assert adv[0] == pytest.approx(((r0[0] - r0.mean()) / (r0.std() + 1e-4)).item(), rel=1e-5)
    none = gcrl.grpo_advantages(rewards, groups, scale_rewards="none")
    assert none[0] == pytest.approx((r0[0] - r0.mean()).item(), rel=1e-5)  # Dr. GRPO: no std


def test_group_stats_counts_zero_std_groups():
    frac, _ = gcrl.group_stats(torch.tensor([1., 1., 0., 1., 0.5]), torch.tensor([0, 0, 1, 1, 2]))
    assert frac == pytest.approx(2 / 3)


# ---------------------------------------------------------------------------- 9. loss and update
def _loss(loss_type, logp, old, adv, mask, beta=0.0, ref=None, eps=0.2, eps_high=0.2):
    return gcrl.policy_loss(logp, old, ref if ref is not None else old, adv, mask, eps, eps_high, beta, loss_type,
                            num_seqs=logp.shape[0], num_tokens=int(mask.sum()), max_completion_length=4)


def test_loss_matches_hand_computation_for_each_loss_type():
    logp = torch.log(torch.tensor([[0.5, 0.5, 0.5, 0.5], [0.5, 0.5, 0.5, 0.5]]))
    old = logp.clone()  # ratio 1: l_it = -A
    adv = torch.tensor([2.0, -1.0])
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]])
    # per-token loss -A: row 0 -> -2 on 3 tokens, row 1 -> +1 on 1 token
    expected = {"grpo": ((-2 * 3 / 3) + (1 * 1 / 1)) / 2,   # mean over sequences of token means
                "dapo": (-2 * 3 + 1) / 4,                   # mean over all 4 tokens
                "dr_grpo": (-2 * 3 + 1) / (2 * 4)}          # / (N * max_completion_length)
    for loss_type, value in expected.items():
        loss, _ = _loss(loss_type, logp, old, adv, mask)
        assert loss.item() == pytest.approx(value), loss_type


def test_micro_batch_shares_sum_to_the_full_batch_loss():
    torch.manual_seed(0)
    logp, old = torch.randn(6, 5) * 0.1 - 1, torch.randn(6, 5) * 0.1 - 1
    adv = torch.randn(6)
    mask = torch.tensor([[1] * n + [0] * (5 - n) for n in (5, 3, 1, 4, 2, 5)])
    for loss_type in ("grpo", "dapo", "dr_grpo"):
        full, _ = gcrl.policy_loss(logp, old, old, adv, mask, 0.2, 0.28, 0.0, loss_type, 6, int(mask.sum()), 5)
        parts = sum(gcrl.policy_loss(logp[s], old[s], old[s], adv[s], mask[s], 0.2, 0.28, 0.0, loss_type,
                                     6, int(mask.sum()), 5)[0] for s in (slice(0, 2), slice(2, 6)))
        assert parts.item() == pytest.approx(full.item(), rel=1e-6), loss_type


def test_clip_stops_the_gradient_outside_the_trust_region():
    mask = torch.ones(1, 1)
    for ratio, adv, clipped in ((1.5, 1.0, True), (0.5, -1.0, True), (1.1, 1.0, False), (0.5, 1.0, False)):
        logp = torch.tensor([[math.log(ratio)]], requires_grad=True)
        loss, st = _loss("dapo", logp, torch.zeros(1, 1), torch.tensor([adv]), mask)
        loss.backward()
        assert (logp.grad.abs().item() == 0) == clipped, (ratio, adv)
        assert (st["clip_low"] + st["clip_high"] > 0) == clipped
    # clip-higher: the same ratio is clipped at epsilon_high=0.2 but not at 0.28
    logp = torch.tensor([[math.log(1.25)]])
    assert _loss("dapo", logp, torch.zeros(1, 1), torch.tensor([1.0]), mask)[1]["clip_high"] == 1
    assert _loss("dapo", logp, torch.zeros(1, 1), torch.tensor([1.0]), mask, eps_high=0.28)[1]["clip_high"] == 0


def test_k3_kl_term_is_zero_at_reference_and_positive_away():
    mask = torch.ones(1, 2)
    logp = torch.tensor([[-1.0, -2.0]])
    adv = torch.zeros(1)
    same, st = _loss("dapo", logp, logp, adv, mask, beta=0.1, ref=logp)
    assert same.item() == pytest.approx(0.0) and st["kl"] == pytest.approx(0.0)
    ref = torch.tensor([[-1.5, -1.0]])
    loss, st = _loss("dapo", logp, logp, adv, mask, beta=0.1, ref=ref)
    d = ref - logp
    k3 = (torch.exp(d) - d - 1).mean().item()
    assert loss.item() == pytest.approx(0.1 * k3) and k3 > 0


def _hand_loss_and_grad(logp, old, ref, adv, beta, eps, bias_correction):
    """One token, written out by hand: the loss and its derivative in logp (the chain rule, no autograd)."""
    rho = math.exp(logp - old)
    clipped = min(max(rho, 1 - eps), 1 + eps)
    if rho * adv <= clipped * adv:
        surrogate, d_surrogate = -rho * adv, -rho * adv  # d(rho)/d(logp) = rho
    else:
        surrogate, d_surrogate = -clipped * adv, 0.0     # the clipped branch has no gradient
    d = ref - logp
    k3, d_k3 = math.exp(d) - d - 1, 1 - math.exp(d)      # d(k3)/d(logp)
    if bias_correction:                                  # TRL: k3 * rho, the product rule
        kl, d_kl = k3 * rho, d_k3 * rho + k3 * rho
    else:                                                # verl's low_var_kl: k3, clamped at 10
        kl, d_kl = (k3, d_k3) if k3 < 10 else (10.0, 0.0)
    return surrogate + beta * kl, d_surrogate + beta * d_kl


@pytest.mark.parametrize("bias_correction", [False, True])
@pytest.mark.parametrize("logp, old, ref, adv", [
    (-1.0, -1.0, -1.5, 1.0),    # on-policy
    (-0.9, -1.0, -1.5, 1.0),    # ratio 1.105: inside the trust region
    (-0.5, -1.0, -2.0, 1.0),    # ratio 1.65, A > 0: clipped
    (-1.4, -1.0, -0.2, -2.0),   # ratio 0.67, A < 0: clipped
    (-1.2, -1.0, -0.8, -0.5),   # ratio 0.82, A < 0: inside
    (-14.0, -14.0, -1.0, 0.0),  # ref far above pi: k3 about 4e5, clamped at 10 without the ratio
])
def test_loss_and_gradient_match_hand_computation_off_policy(logp, old, ref, adv, bias_correction):
    beta, eps = 0.1, 0.2
    f64 = lambda v: torch.tensor(v, dtype=torch.float64)  # exact enough for k3 * rho's cancellation at 4e5
    x = f64([[logp]]).requires_grad_(True)
    loss, _ = gcrl.policy_loss(x, f64([[old]]), f64([[ref]]), f64([adv]), torch.ones(1, 1), eps, eps, beta, "dapo",
                               1, 1, 1, bias_correction)
    loss.backward()
    value, grad = _hand_loss_and_grad(logp, old, ref, adv, beta, eps, bias_correction)
    assert loss.item() == pytest.approx(value, rel=1e-5)
    assert x.grad.item() == pytest.approx(grad, rel=1e-5, abs=1e-7)


def test_kl_estimators_agree_on_policy_and_differ_in_gradient():
    logp = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    ref, old = torch.tensor([[-1.5, -1.0]]), torch.tensor([[-1.0, -2.0]])
    out = {}
    for bias_correction in (False, True):
        logp.grad = None
        loss, _ = gcrl.policy_loss(logp, old, ref, torch.zeros(1), torch.ones(1, 2), 0.2, 0.2, 0.1, "dapo", 1, 2, 2,
                                   bias_correction)
        loss.backward()
        out[bias_correction] = (loss.item(), logp.grad.clone())
    assert out[False][0] == pytest.approx(out[True][0])
    assert not torch.allclose(out[False][1], out[True][1])


@pytest.mark.parametrize("junk", [0.0, -1e4, float("inf"), float("-inf"), float("nan")])
@pytest.mark.parametrize("where", ["logp", "old", "ref"])
@pytest.mark.parametrize("loss_type", ["grpo", "dapo", "dr_grpo"])
def test_masked_positions_never_change_the_loss_or_its_gradient(junk, where, loss_type):
    torch.manual_seed(0)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 0]])
    base = {"logp": torch.randn(2, 4) * 0.3 - 1, "old": torch.randn(2, 4) * 0.3 - 1, "ref": torch.randn(2, 4) * 0.3 - 1}
    adv = torch.tensor([1.0, -0.5])
    results = []
    for poison in (False, True):
        t = {k: v.clone() for k, v in base.items()}
        if poison:
            t[where][mask == 0] = junk
        x = t["logp"].requires_grad_(True)
        for bias_correction in (False, True):
            x.grad = None
            loss, _ = gcrl.policy_loss(x, t["old"], t["ref"], adv, mask, 0.2, 0.2, 0.05, loss_type, 2, 5, 4,
                                       bias_correction)
            loss.backward()
            results.append((loss.detach(), x.grad.clone()))
    for (clean_loss, clean_grad), (loss, grad) in zip(results[:2], results[2:]):
        assert torch.isfinite(loss) and torch.equal(loss, clean_loss)
        assert torch.equal(grad, clean_grad)


# ---------------------------------------------------------------------------- 10. one RL step
def test_the_shipped_model_solves_and_critiques_in_the_expected_formats(demo_model):
    model, tok = demo_model
    assert type(model).__name__ == "Qwen2ForCausalLM" and os.path.isfile(os.path.join(gcrl.DEMO_MODEL, "README.md"))
    rows = gcrl.load_questions("tiny_tasks/arith_dev.jsonl")[0][:16]
    solved = gcrl.generate(model, tok, [gcrl.solve_prompt(r["question"]) for r in rows], 1, 64, greedy=True)["texts"]
    assert all(gcrl.extract_boxed(t) is not None for t in solved)  # a worked solution ending in a box
    assert 3 <= sum(gcrl.verify(t, r["answer"]) for t, r in zip(solved, rows)) <= 14  # room to learn, not at chance
    crit = gcrl.generate(model, tok, [gcrl.critique_prompt(r["question"], t) for r, t in zip(rows, solved)], 1, 64,
                         greedy=True)["texts"]
    assert all(t.startswith("Recomputed: ") and gcrl.parse_verdict(t) in ("right", "wrong") for t in crit)


def test_one_gc_rl_step_from_the_shipped_model_mixes_groups_caches_pairs_and_parses_verdicts(tmp_path, demo_model):
    model, tok = copy.deepcopy(demo_model[0]), demo_model[1]
    args = gcrl.parse_args(["--output_dir", str(tmp_path), "--train_batch_size", "8", "--critique_batch_size", "4",
                            "--num_critiques", "4", "--device", "cpu"])
    rows = gcrl.load_questions("tiny_tasks/arith_train.jsonl")[0][:8]
    questions = {r["id"]: r for r in rows}
    state = {"cache": [], "static_set": [], "static_pool": [], "p_correct": None, "rng": random.Random(0)}
    torch.manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate)
    samples, m = gcrl.rl_step(model, None, optimizer, tok, rows, state, questions, args)
    responses = [s for s in samples if s["kind"] == "response"]
    critiques = [s for s in samples if s["kind"] == "critique"]
    assert len(responses) == 8 * 8 and len(critiques) == 4 * 4 and m["critique/pairs"] == 4
    mixed_questions = {s["question"] for s in responses
                       if 0 < sum(r["reward"] for r in responses if r["question"] == s["question"]) < 8}
    assert m["cache/added"] == 2 * len(mixed_questions) > 4  # the filter: one right + one wrong of each
    assert m["cache/size"] == m["cache/added"] - 4  # 4 pairs drawn out, without replacement
    for s in critiques:  # a critique's reward is Eq. 2 of its parsed verdict and its pair's label
        assert s["verdict"] == gcrl.parse_verdict(s["text"]) and s["verdict"] in ("right", "wrong")
        assert s["reward"] == (0.7 if gcrl.verdict_agrees(s["verdict"], s["pair"][2]) else 0.0)
        assert s["group"] == s["question"] == s["pair"][0]  # its question's group ...
    mixed = [g for g in {s["group"] for s in critiques} if any(r["group"] == g for r in responses)]
    assert mixed  # ... which holds that question's responses too: a mixed group
    for g in mixed:  # advantages are centred within the mixed group, responses and critiques together
        members = [s for s in samples if s["group"] == g]
        assert abs(sum(s["advantage"] for s in members)) < 1e-4 and len({s["kind"] for s in members}) == 2
    assert m["skipped_updates"] == 0 and m["grad_norm"] > 0 and m["critique/mixed_group_rate"] == 1.0
    later = gcrl.load_questions("tiny_tasks/arith_train.jsonl")[0][8:16]  # a step on other questions, its cache
    questions.update({r["id"]: r for r in later})  # mostly a pair of the first step's: critiqued in its own group
    state["cache"][:], args.cache_size = state["cache"][:1] * 100, 1000
    samples, m = gcrl.rl_step(model, None, optimizer, tok, later, state, questions, args)
    critiques, asked = [s for s in samples if s["kind"] == "critique"], {r["id"] for r in later}
    old = [s for s in critiques if s["question"] not in asked]
    assert old and not any(s["kind"] == "response" and s["group"] == old[0]["group"] for s in samples)
    assert m["critique/mixed_group_rate"] == 1 - len(old) / len(critiques) < 1


# ---------------------------------------------------------------------------- 11. training loop (end to end)
def _params(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()]).clone()


@pytest.mark.parametrize("mode, extra", [
    ("grpo", []),
    ("critique", []),
    ("gcrl", []),
    ("gcrl", ["--label_balance", "reweight", "--num_refinements", "2", "--group_by", "prompt",
              "--beta", "0.05", "--num_iterations", "2", "--loss_type", "dapo", "--per_device_train_batch_size", "7"]),
])
def test_training_steps_change_parameters_and_write_metrics(tmp_path, tok, warm_model, easy_rows, mode, extra):
    model = copy.deepcopy(warm_model)
    before = _params(model)
    args = make_args(tmp_path, "--mode", mode, *extra)
    history = gcrl.train(model, tok, easy_rows, easy_rows, args, log=lambda *a: None)
    assert not torch.equal(before, _params(model))
    lines = [json.loads(l) for l in open(tmp_path / "out" / "metrics.jsonl")]
    assert [l["step"] for l in lines] == [0, 1, 2] and lines == history
    last = lines[-1]
    for key in ("loss", "grad_norm", "kl", "clip_ratio/region_mean", "frac_reward_zero_std", "reward_std",
                "eval/accuracy", "tokens_per_second", "time/update"):
        assert key in last and math.isfinite(last[key]), key
    if mode != "critique":
        assert {"reward", "completions/mean_length", "time/rollout"} <= set(last)
    if mode != "grpo":
        assert "eval/critique_accuracy" in last and "eval/critique_right_rate" in last
        assert any("critique/accuracy" in l for l in lines)
    if "--num_refinements" in extra:
        assert any("critique/refine_accuracy" in l for l in lines)


def test_log_completions_prints_sampled_completions_at_each_evaluation(tmp_path, tok, warm_model, easy_rows):
    lines = []
    args = make_args(tmp_path, "--eval_steps", "1", "--log_completions")
    gcrl.train(copy.deepcopy(warm_model), tok, easy_rows, easy_rows, args, log=lines.append)
    shown = [line for line in lines if "reward" in line and " of '" in line]
    assert len(shown) == 2  # steps 1 and 2
    assert all("response of" in line and "critique of" in line for line in shown)


def test_every_prompt_kind_obeys_max_prompt_length(tmp_path, tok, warm_model, easy_rows):
    # 7 tokens: every solve prompt fits ('11+12' + the instruction: 6), no critique prompt does (8 and up)
    args = make_args(tmp_path, "--max_prompt_length", "7", "--max_steps", "1")
    history = gcrl.train(copy.deepcopy(warm_model), tok, easy_rows[:4], easy_rows[:4], args, log=lambda *a: None)
    step = history[-1]
    assert step["prompts/skipped_critique"] == 4 * 4 and step["cache/added"] == 0 and step["critique/pairs"] == 0
    assert "eval/critique_accuracy" not in history[0]  # the eval pairs obey the rule too
    # refinements: the critique prompt fits, the refinement prompt (response + critique) does not
    q = {0: easy_rows[0]}
    pairs = [(0, "1+1=2,\\boxed{23}", True)]
    crit = ["Recomputed: 1+1=2,+023 vs +023\n++=00=22=33=\nConclusion: right [END]"]
    fits = lambda n: gcrl.parse_args(["--max_prompt_length", str(n), "--num_critiques", "1", "--num_refinements", "2"])
    limit = len(tok(gcrl.critique_prompt(q[0]["question"], pairs[0][1])).input_ids) + 5
    votes, out = gcrl.refinement_votes(warm_model, tok, pairs, q, crit, fits(limit))
    assert votes == [0.0] and out["skipped"] == 1 and out["texts"] == []
    votes, out = gcrl.refinement_votes(warm_model, tok, pairs, q, crit, fits(1000))
    assert out["skipped"] == 0 and len(out["texts"]) == 2


@pytest.mark.parametrize("advantage", [1.0, -1.0])
def test_an_update_raises_positive_advantage_samples_and_lowers_negative_ones(tmp_path, tok, warm_model, advantage):
    """Catches a sign-flipped loss. Plain SGD: to first order the step moves log pi(sample) by
    lr * A * |grad|^2 / |o|, so its sign is the advantage's (Adam's first step need not be)."""
    model = copy.deepcopy(warm_model)
    args = make_args(tmp_path)
    sample = {"prompt_ids": tok(gcrl.solve_prompt("11+12")).input_ids,
              "completion_ids": tok("1+2=3,1+1+0=2,\\boxed{23}").input_ids + [tok.eos_token_id], "advantage": advantage}

    def seq_logp():
        with torch.no_grad():
            lp, cmask = gcrl.batch_logprobs(model, [sample], tok.pad_token_id, "cpu", 1.0)
        return (lp * cmask).sum().item()

    before = seq_logp()
    gcrl.policy_update(model, None, torch.optim.SGD(model.parameters(), lr=1e-3), [sample], args, tok.pad_token_id,
                       random.Random(0))
    assert (seq_logp() - before) * advantage > 0


def test_same_seed_same_metrics(tmp_path, tok, warm_model, easy_rows):
    runs = []
    for name in ("a", "b"):
        torch.manual_seed(0)
        args = make_args(tmp_path / name)
        hist = gcrl.train(copy.deepcopy(warm_model), tok, easy_rows, easy_rows, args, log=lambda *a: None)
        runs.append([{k: v for k, v in m.items() if not k.startswith("time/") and k != "tokens_per_second"}
                     for m in hist])
    assert runs[0] == runs[1]


def test_how_often_a_run_evaluates_never_changes_what_it_trains_on(tmp_path, tok, warm_model, easy_rows):
    runs = []
    for every in ("0", "1"):  # evaluation samples (the self-verification) from its own seed
        torch.manual_seed(0)
        args = make_args(tmp_path / every, "--max_steps", "3", "--eval_steps", every, "--self_verify_samples", "2")
        history = gcrl.train(copy.deepcopy(warm_model), tok, easy_rows, easy_rows, args, log=lambda *a: None)
        runs.append([{k: v for k, v in m.items() if not k.startswith(("time/", "eval/")) and k != "tokens_per_second"}
                     for m in history])
    assert runs[0] == runs[1]


# ---------------------------------------------------------------------------- 12. evaluation
def test_self_verification_answers_with_what_the_critic_judged_right(tok, monkeypatch):
    rows = [{"question": "1+1", "answer": "2", "id": 0}, {"question": "2+2", "answer": "4", "id": 1}]
    answers = {"1+1": ["3", "3", "2", "2", "3"], "2+2": ["5", "5", "4", "5", "4"]}  # the majority is wrong twice
    approve = {"1+1": {"2"}, "2+2": set()}  # judged right: '2'; nothing for 2+2 -> the plain majority

    def fake_generate(model, tokenizer, prompts, num_samples, *a, **k):
        if prompts[0].endswith(gcrl.SOLVE_INSTRUCTION):
            texts = [f"\\boxed{{{x}}}" for p in prompts for x in answers[p.split("\n")[0]]]
        else:
            texts = []
            for p in prompts:
                q, given = p.split("#Question#: ")[1].split("\n")[0], p.split("boxed{")[1].split("}")[0]
                texts.append("Conclusion: " + ("right" if given in approve[q] else "wrong") + " [END]")
        return {"texts": texts}

    monkeypatch.setattr(gcrl, "generate", fake_generate)
    m = gcrl.self_verification(None, tok, rows, 5, gcrl.parse_args([]))
    assert m == {"eval/majority_accuracy": 0.0, "eval/self_verify_accuracy": 0.5}


def test_summary_gives_each_metric_with_its_standard_error():
    history = [{"step": 0, "eval/accuracy": 0.5, "eval/questions": 100},
               {"step": 5, "eval/accuracy": 0.9, "eval/questions": 100}]
    text = gcrl.summary(history, gcrl.parse_args(["--max_steps", "5"]), 12.0)
    assert "0.500 ± 0.050 -> 0.900 ± 0.030   (100 questions)" in text and "critique" not in text


# ---------------------------------------------------------------------------- A. verifier internals: hostile answers
HOSTILE = [  # (response, gold): each must give False, fast, without raising
    (r"\boxed{9^9^9^9}", "1"), (r"\boxed{9**9**9**9}", "1"), (r"\boxed{10^{10^{10^{10}}}}", "1"),
    (r"\boxed{2^{2^{2^{2^{2}}}}}", "1"), (r"\boxed{1000000!}", "1"), (r"\boxed{10^{1001}}", "0"),
    (r"\boxed{" + "(" * 5000 + "1" + ")" * 5000 + "}", "2"),
    (r"\boxed{" + "-" * 50 + "1}", "1"), (r"\boxed{" + r"\sqrt{" * 30 + "2" + "}" * 30 + "}", "2"),
    (r"\boxed{" + "1+" * 1_000_000 + "1}", "1000001"),  # a 2 MB response
    (r"\boxed{" + "{" * 1_000_000 + "}" * 1_000_000 + "}", "1"),
    ("x" * 2_000_000 + r"\boxed{2}", "1"),
    (r"\boxed{" * 200_000, "1"),  # unterminated, repeated
    ("\\boxed{\x00\x01\x02\x7f}", "1"), ("\x00" * 1000, "1"),
    (r"\boxed{1/0}", "1/0"), (r"\boxed{0/0}", "0/0"), (r"\boxed{\frac{1}{0}}", r"\infty"),
    (r"\boxed{\frac{1}{x-x}}", "1"),
    (r"\boxed{\sqrt{10^{999}+1}\sqrt{10^{999}+3}}", "1"),  # sympy would factor 2000-digit numbers
    (r"\boxed{\sqrt[97]{10^{50}+1}}", "1"),
    (r"\boxed{\sqrt[5]{12}\sqrt[7]{12}\sqrt[8]{12}\sqrt[9]{12}\sqrt[11]{12}}", "1"),
    (r"\boxed{(a+b+c+d+e)^{10}(f+g+h+i+j)^{10}}", "(a+b+c+d+e)^{10}(f+g+h+i+j)^{10}+1"),
    (r"\boxed{(z+\sqrt{\pi+7})^{50}}", "(z+\\sqrt{\\pi+7})^{49}"),
    (r"\boxed{\sqrt[3]{\frac{12345678901234567}{12-\pi^{3}-999z b^{50}}}}", "10"),
    (r"\boxed{" + ",".join(["(a+b+c+d+e)^{10}"] * 20) + "}", ",".join(["(a+b+c+d+e)^{10}+1"] * 20)),  # 400 pairings
    (r"\boxed{" + "1," * 4000 + "1}", "1"), (r"\boxed{" + r"\cup" * 300 + "}", "1"), (r"\boxed{" + "(" * 400 + ")" * 400 + "}", "1"),
    (r"\boxed{0." + r"\overline{9}" * 100 + "}", "1"), (r"\boxed{\begin{pmatrix}" + "1&" * 300 + r"1\end{pmatrix}}", "1"),
]


def _run_hostile(response, gold):
    t = time.perf_counter()
    result = verify(response, gold)
    return result, time.perf_counter() - t


@pytest.mark.parametrize("response,gold", HOSTILE, ids=range(len(HOSTILE)))
def test_hostile(response, gold):
    result, elapsed = _run_hostile(response, gold)
    assert isinstance(result, bool) and result is False
    assert elapsed < 5.0


def test_hostile_off_main_thread():  # signal.alarm is unavailable here: the guards must suffice
    picks = [HOSTILE[i] for i in (0, 1, 2, 4, 6, 19, 20, 21, 24)]
    out = []
    worker = threading.Thread(target=lambda: out.extend(_run_hostile(r, g) for r, g in picks))
    worker.start()
    worker.join(timeout=20)
    assert not worker.is_alive() and len(out) == len(picks)
    assert all(result is False and elapsed < 5.0 for result, elapsed in out)
    done = []
    worker = threading.Thread(target=lambda: done.append(verify(r"\boxed{\frac{6}{8}}", "0.75")))
    worker.start()
    worker.join(timeout=20)
    assert done == [True]


def test_model_text_is_never_executed(tmp_path, monkeypatch):
    pwned = tmp_path / "pwned"
    attacks = [
        rf"\boxed{{__import__('os').system('touch {pwned}')}}",
        rf"\boxed{{open('{pwned}', 'w').write('x')}}",
        r"\boxed{().__class__.__bases__[0].__subclasses__()}",
        r"\boxed{eval('1+1')}", r"\boxed{exec('x=1')}", r"\boxed{lambda: 0}",
        r"\boxed{x.__class__}",
    ]
    good = [(r"\boxed{\frac{3}{4}}", "0.75", True), (r"\boxed{(x-1)(x+1)}", "x^2-1", True),
            (r"\boxed{\sqrt{8}}", r"2\sqrt2", True), (r"\boxed{\sqrt{x}}", r"\sqrt{x}+1", False),
            (r"\boxed{\frac{1}{\sqrt3-1}}", r"\frac{\sqrt3+1}{2}", True)]
    cases = [(a, "2", False) for a in attacks] + good + [(r, g, False) for r, g in HOSTILE[:6]]
    for r, g, want in cases:  # warm-up: sympy imports some modules lazily (import uses exec)
        assert verify(r, g) is want

    def _forbidden(*args, **kwargs):
        raise AssertionError("eval/exec reached")

    monkeypatch.setattr(builtins, "eval", _forbidden)
    monkeypatch.setattr(builtins, "exec", _forbidden)
    for r, g, want in cases + [(r"\boxed{\sqrt[3]{16}}", r"2\sqrt[3]{2}", True)]:
        assert verify(r, g) is want
    assert not pwned.exists()


# ---------------------------------------------------------------------------- B. checkpoints, resume, interruption
def test_a_step_never_holds_a_question_twice_and_no_question_is_lost():
    rows = [{"id": i} for i in range(5)]  # 5 questions, 4 a step: every other step straddles two epochs
    batches = gcrl.question_batches(rows, 4, 10, random.Random(0))
    assert [len({r["id"] for r in b}) for b in batches] == [4] * 10
    counts = [sum(r["id"] == i for b in batches for r in b) for i in range(5)]
    assert counts == [8] * 5  # 40 slots, 8 epochs: each question once per epoch
    with pytest.raises(SystemExit, match="--train_batch_size 6 is more than the 5 training questions"):
        gcrl.question_batches(rows, 6, 1, random.Random(0))


def _strip_timing(history):
    return [{k: v for k, v in m.items() if not k.startswith("time/") and k != "tokens_per_second"} for m in history]


def test_checkpoint_reload_gives_identical_logprobs(tmp_path, tok, warm_model):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    opt = torch.optim.AdamW(warm_model.parameters())
    path = str(tmp_path / "checkpoint-3")
    gcrl.save_checkpoint(path, warm_model, tok, opt, {"step": 3})
    assert not (tmp_path / "checkpoint-3.tmp").exists()
    model2, tok2 = AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)
    assert gcrl.load_checkpoint(path)["step"] == 3
    ids, attn, cmask = gcrl.collate([tok("47+38").input_ids, tok("9").input_ids],
                                    [tok2("7+8=15").input_ids, tok2("1").input_ids], tok.pad_token_id, "cpu")
    with torch.no_grad():
        a = gcrl.completion_logprobs(warm_model, ids, attn, cmask.shape[1])
        b = gcrl.completion_logprobs(model2, ids, attn, cmask.shape[1])
    assert torch.equal(a, b)


@pytest.mark.parametrize("extra", [[], ["--beta", "0.05", "--group_by", "prompt"]])
def test_resume_continues_exactly_like_an_uninterrupted_run(tmp_path, tok, warm_model, easy_rows, extra):
    from transformers import AutoModelForCausalLM
    torch.manual_seed(0)
    args = make_args(tmp_path, "--max_steps", "4", "--save_steps", "2", *extra)
    full = gcrl.train(copy.deepcopy(warm_model), tok, easy_rows, easy_rows, args, log=lambda *a: None)
    # a crash after step 4's metrics but before any later checkpoint: resume from checkpoint-2
    path = gcrl.latest_checkpoint(args.output_dir)
    assert path.endswith("checkpoint-4")
    path = path.replace("checkpoint-4", "checkpoint-2")
    resumed_model = AutoModelForCausalLM.from_pretrained(path)
    resumed = gcrl.train(resumed_model, tok, easy_rows, easy_rows, args, log=lambda *a: None,
                         resume=gcrl.load_checkpoint(path))
    assert [m["step"] for m in resumed] == [0, 1, 2, 3, 4]
    assert _strip_timing(resumed) == _strip_timing(full)
    lines = gcrl.read_metrics(str(tmp_path / "out" / "metrics.jsonl"))
    assert [m["step"] for m in lines] == [0, 1, 2, 3, 4]  # no duplicated steps after the resume


def test_stop_on_signals_sets_a_flag_then_stops_at_once_and_restores_the_handlers():
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with gcrl.stop_on_signals() as stop:
        signal.raise_signal(signal.SIGTERM)  # the first: only noted, the step in flight goes on
        assert stop["signal"] == signal.SIGTERM
        with pytest.raises(KeyboardInterrupt):  # the second: at once
            signal.raise_signal(signal.SIGINT)
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


def test_half_written_checkpoint_is_never_picked(tmp_path, tok, warm_model):
    out = tmp_path / "out"
    gcrl.save_checkpoint(str(out / "checkpoint-2"), warm_model, tok, torch.optim.AdamW(warm_model.parameters()),
                         {"step": 2})
    (out / "checkpoint-4.tmp").mkdir()  # a kill during the next save leaves only this behind
    (out / "checkpoint-4.tmp" / "model.safetensors").write_bytes(b"half")
    assert gcrl.latest_checkpoint(str(out)).endswith("checkpoint-2")
    with pytest.raises(SystemExit, match="no checkpoint-STEP directory"):
        gcrl.latest_checkpoint(str(tmp_path / "empty"))


def test_nonfinite_updates_are_skipped_and_stop_the_run(tmp_path, tok, warm_model, easy_rows):
    model = copy.deepcopy(warm_model)
    before = _params(model)
    next(model.parameters()).register_hook(lambda g: g * float("nan"))  # every backward: a NaN gradient
    args = make_args(tmp_path, "--mode", "grpo", "--max_steps", "6", "--max_nonfinite_steps", "2")
    history = gcrl.train(model, tok, easy_rows, easy_rows, args, log=lambda *a: None)
    assert torch.equal(before, _params(model))  # no update reached the weights
    assert history[-1]["stopped"] == "nonfinite" and history[-1]["step"] < 6
    assert (tmp_path / "out" / f"checkpoint-{history[-1]['step']}" / "trainer_state.pt").exists()


def test_sigint_finishes_the_step_checkpoints_and_exits_0(tmp_path):
    import subprocess
    import sys
    out = tmp_path / "run"
    cmd = [sys.executable, "gcrl.py", "--output_dir", str(out), "--cold_start_steps", "0", "--max_steps", "200",
           "--train_batch_size", "2", "--num_generations", "2", "--eval_size", "4", "--eval_steps", "0",
           "--max_completion_length", "8", "--num_threads", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 60
    while time.time() < deadline and len(gcrl.read_metrics(str(out / "metrics.jsonl"))) < 3:
        time.sleep(0.2)
    proc.send_signal(2)  # SIGINT, as Ctrl-C
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, output
    assert "resume with the same command plus: --resume" in output
    last = gcrl.read_metrics(str(out / "metrics.jsonl"))[-1]
    assert last["stopped"] == "SIGINT" and (out / f"checkpoint-{last['step']}" / "trainer_state.pt").exists()


def test_zero_variance_step_leaves_weights_and_adam_state_intact(tok, warm_model, easy_rows):
    model = copy.deepcopy(warm_model)
    args = gcrl.parse_args(["--device", "cpu"])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    gen = gcrl.generate(model, tok, [gcrl.solve_prompt(r["question"]) for r in easy_rows[:2]], 2, 12)
    samples = [{"prompt_ids": p, "completion_ids": c, "advantage": a}
               for p, c, a in zip(gen["prompt_ids"], gen["completion_ids"], [1.0, -1.0, 0.5, -0.5])]
    gcrl.policy_update(model, None, opt, samples, args, tok.pad_token_id, random.Random(0))  # Adam has momentum now
    before, state = _params(model), copy.deepcopy(opt.state_dict())
    for s in samples:
        s["advantage"] = 0.0
    m = gcrl.policy_update(model, None, opt, samples, args, tok.pad_token_id, random.Random(0))
    assert torch.equal(before, _params(model)) and m["loss"] == 0.0 and math.isfinite(m["grad_norm"])
    after = opt.state_dict()["state"]
    assert all(torch.equal(state["state"][k]["exp_avg"], after[k]["exp_avg"]) for k in after)


# ---------------------------------------------------------------------------- C. argument checks
@pytest.mark.parametrize("argv, message", [
    (["--num_generations", "0"], "--num_generations must be at least 1"),
    (["--max_steps", "-1"], "--max_steps must be at least 1"),
    (["--beta", "-0.1"], "--beta must not be negative"),
    (["--epsilon", "0.2", "--epsilon_high", "0.1"], "--epsilon_high (0.1) must not be below --epsilon (0.2)"),
    (["--mode", "grpo", "--num_critiques", "4"], "--num_critiques has no effect with --mode grpo"),
    (["--mode", "grpo", "--train_batch_size", "3", "--num_generations", "3", "--num_mini_batches", "2"],
     "does not divide the 9 responses"),
    (["--temperature", "0"], "--temperature must be positive"),
    (["--steps_per_generation", "4"], "optimizer steps per step are --num_mini_batches"),  # TRL's flags, not ours
    (["--generation_batch_size", "64"], "--generation_chunk_size sequences per generate() call"),
    (["--mode", "critique", "--label_balance", "random"], "--label_balance has no effect with --mode critique"),
    (["--mode", "grpo", "--label_balance", "filter"], "--label_balance has no effect with --mode grpo"),  # default too
])
def test_impossible_settings_fail_with_one_line(capsys, argv, message):
    with pytest.raises(SystemExit) as e:
        gcrl.parse_args(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1]


def test_output_dir_that_is_a_file_is_refused(tmp_path, capsys):
    f = tmp_path / "taken"
    f.write_text("x")
    with pytest.raises(SystemExit):
        gcrl.parse_args(["--output_dir", str(f)])
    assert "is a file, not a directory" in capsys.readouterr().err


# ---------------------------------------------------------------------------- D. supervised warm-up
def test_sft_micro_batches_give_the_gradient_of_one_batch(tok, easy_rows):
    model = tiny_model.build_model(tok, hidden_size=32, num_layers=1, seed=0)
    batch = [{"prompt_ids": tok(p).input_ids, "completion_ids": tok(t, add_special_tokens=False).input_ids + [1]}
             for p, t in direct_answer_examples(easy_rows)]
    grads, losses = [], []
    for size in (len(batch), 3):  # one batch; length-sorted micro-batches of 3
        model.zero_grad()
        losses.append(gcrl.sft_backward(model, batch, tok.pad_token_id, size))
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert losses[0] == pytest.approx(losses[1], rel=1e-5) and losses[0] > 1.0  # untrained: high loss
    assert torch.allclose(grads[0], grads[1], atol=1e-6) and grads[0].abs().max() > 1e-3


def test_an_interrupted_warm_up_continues_exactly_where_it_stopped(tmp_path, tok, easy_rows, monkeypatch):
    examples = direct_answer_examples(easy_rows)
    full = tiny_model.build_model(tok, hidden_size=32, num_layers=1, seed=0)
    gcrl.sft(full, tok, examples, 6, 3e-3, random.Random(0), batch_size=8)
    part = tiny_model.build_model(tok, hidden_size=32, num_layers=1, seed=0)
    calls, backward = [], gcrl.sft_backward
    monkeypatch.setattr(gcrl, "sft_backward", lambda *a: calls.append(1) or backward(*a))
    handlers = {}  # installs nothing: each call gets a fresh stop flag, kept here
    monkeypatch.setattr(gcrl, "stop_on_signals", lambda: contextlib.nullcontext(handlers.update(stop={"signal": None})
                                                                                 or handlers["stop"]))
    real_step = torch.optim.AdamW.step

    def step_then_ctrl_c(self, *a, **k):  # Ctrl-C arrives during the 4th step
        out = real_step(self, *a, **k)
        if len(calls) == 4:
            handlers["stop"]["signal"] = 2
        return out

    monkeypatch.setattr(torch.optim.AdamW, "step", step_then_ctrl_c)
    ckpt = str(tmp_path / "partial")
    with pytest.raises(SystemExit, match="cold start stopped at step 4 of 6; the same command continues it"):
        gcrl.sft(part, tok, examples, 6, 3e-3, random.Random(0), batch_size=8, checkpoint_dir=ckpt)
    monkeypatch.setattr(torch.optim.AdamW, "step", real_step)
    resumed = tiny_model.build_model(tok, hidden_size=32, num_layers=1, seed=0)  # a new process, fresh weights
    gcrl.sft(resumed, tok, examples, 6, 3e-3, random.Random(0), batch_size=8, checkpoint_dir=ckpt, log=lambda *a: None)
    assert len(calls) == 6  # 4 steps, then the 2 missing ones
    for p, q in zip(full.parameters(), resumed.parameters()):
        assert torch.allclose(p, q, atol=1e-6)


def test_self_cold_start_keeps_only_agreeing_well_formed_balanced_critiques(tmp_path, tok, monkeypatch):
    """A stub policy: responses and critiques are canned, so every kind of critique is there to be filtered."""
    rows = [{"question": f"{a}+{a}", "answer": str(2 * a), "id": i} for i, a in enumerate((11, 12, 13))]

    def fake_generate(model, tokenizer, prompts, num_samples, *a, **k):
        texts = []
        for p in prompts:
            if p.endswith(gcrl.SOLVE_INSTRUCTION):  # one right, one wrong response per question
                gold = int(p.split("+")[0]) * 2
                texts += [f"\\boxed{{{gold}}}", f"\\boxed{{{gold + 1}}}"] * (num_samples // 2)
            else:  # 4 critiques of a pair: right verdict, wrong verdict, no verdict, right verdict again
                ok = "\\boxed{" + str(int(p.split("#Question#: ")[1].split("+")[0]) * 2) + "}" in p
                good, bad = ("right", "wrong") if ok else ("wrong", "right")
                texts += [f"a\nConclusion: {good} [END]", f"b\nConclusion: {bad} [END]", "c: no verdict",
                          f"d\nConclusion: {good} [END]"][:num_samples]
        return {"texts": texts, "prompt_ids": [[1]] * len(texts), "completion_ids": [[1]] * len(texts),
                "truncated": [False] * len(texts)}

    trained = {}
    monkeypatch.setattr(gcrl, "generate", fake_generate)
    monkeypatch.setattr(gcrl, "sft", lambda model, tokenizer, examples, *a, **k: trained.update(examples=examples))
    args = gcrl.parse_args(["--num_generations", "2", "--num_critiques", "4", "--cold_start", "self"])
    lines = []
    examples = gcrl.self_cold_start(None, tok, rows, args, log=lines.append)
    assert trained["examples"] == examples and len(examples) == 12  # 3 pairs x 2 agreeing, per label: 6 + 6
    verdicts = [gcrl.parse_verdict(t) for _, t in examples]
    assert verdicts.count("right") == verdicts.count("wrong") == 6
    for prompt, text in examples:  # every kept verdict agrees with the verifier on the critiqued response
        q = prompt.split("#Question#: ")[1].split("\n")[0]
        response = prompt.split("#Solution#: ")[1].split("\n")[0]
        assert gcrl.verdict_agrees(gcrl.parse_verdict(text), gcrl.verify(response, str(int(q.split("+")[0]) * 2)))
    assert "kept 12 (6 'right', 6 'wrong' verdicts)" in lines[-1] and "no verdict 0.250" in lines[-1]


def test_self_cold_start_end_to_end_on_the_tiny_model(tmp_path, tok, warm_model, easy_rows):
    model = copy.deepcopy(warm_model)
    before = [p.detach().clone() for p in model.parameters()]
    args = make_args(tmp_path, "--cold_start", "self", "--cold_start_steps", "3", "--num_critiques", "2")
    lines = []
    examples = gcrl.self_cold_start(model, tok, easy_rows, args, log=lines.append)
    assert examples and "before: no verdict" in lines[-1] and "after: no verdict" in lines[-1]
    assert any(not torch.equal(p, q) for p, q in zip(before, model.parameters()))  # it trained


def test_self_cold_start_on_a_saved_qwen2_model_with_nothing_to_learn(tmp_path, tok, easy_rows):
    tiny_model.build_model(tok, hidden_size=32, num_layers=1, seed=5).save_pretrained(tmp_path / "qwen2")
    tok.save_pretrained(tmp_path / "qwen2")
    model, tok2 = gcrl.load_model(str(tmp_path / "qwen2"), "cpu")  # random weights: no verdict to keep
    args = gcrl.parse_args(["--model", str(tmp_path / "qwen2"), "--cold_start", "self", "--max_completion_length", "16",
                            "--num_generations", "2", "--num_critiques", "2"])
    lines = []
    assert gcrl.self_cold_start(model, tok2, easy_rows, args, log=lines.append) == []
    assert lines[-1].startswith("self cold start: skipped, nothing to learn from")


def test_cold_start_file_with_critiques(tmp_path):
    path = tmp_path / "cs.jsonl"
    path.write_text(json.dumps({"question": "Q", "response": "R \\boxed{1}", "critique": "Conclusion: wrong [END]"})
                    + "\n" + json.dumps({"question": "Q2"}) + "\n")
    with pytest.raises(SystemExit, match=r"cs.jsonl:2: a cold-start line needs 'question', 'response' and 'critique'"):
        gcrl.cold_start_examples(str(path))
    path.write_text(path.read_text().splitlines()[0] + "\n")
    assert gcrl.cold_start_examples(str(path)) == [(gcrl.critique_prompt("Q", "R \\boxed{1}"), "Conclusion: wrong [END]")]


# ---------------------------------------------------------------------------- E. several processes
def _fixed_samples(tok):
    texts = ["1+2=3,1+1+0=2,\\boxed{23}", "\\boxed{7}", "2+4=6,3+1+0=4,\\boxed{46}", "x", "Recomputed: +023 vs +023",
             "9+9=18,1+1+1=3,\\boxed{318}", "\\boxed{12}", "5-3=2,\\boxed{2}"]
    return [{"prompt_ids": tok(gcrl.solve_prompt(f"{i}+{i}")).input_ids,
             "completion_ids": tok(t, add_special_tokens=False).input_ids + [tok.eos_token_id],
             "advantage": [1.0, -0.5, 0.7, -1.2, 0.3, 2.0, -0.8, -0.4][i]} for i, t in enumerate(texts)]


UPDATES = {"grpo": ["--loss_type", "grpo"], "dapo": ["--loss_type", "dapo", "--num_iterations", "2"]}  # dapo: off-policy


def _updates_in_process(rank, world, rdzv, weights, out):
    """One process of a gloo group: for each loss type under DDP and under FSDP2, its share of the fixed
    samples (7 here, 1 there: 3 micro-batches against 1) and one update from the same weights, saved;
    then generate() with uneven work under FSDP."""
    import torch.distributed as dist
    from transformers import GenerationConfig
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{rdzv}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=60))  # unmatched collectives: an error, not a hang
    tok = tiny_model.build_tokenizer()
    for loss_type in ("grpo", "dapo"):
        for fsdp in (False, True):
            model = tiny_model.build_model(tok, hidden_size=32, num_layers=2)
            model.load_state_dict(torch.load(weights))
            args = gcrl.parse_args(UPDATES[loss_type] + ["--per_device_train_batch_size", "3"]
                                   + (["--fsdp"] if fsdp else []))
            args.rank, args.world = rank, world
            model = gcrl.wrap_model(model, args)
            gcrl.policy_update(model, None, torch.optim.SGD(model.parameters(), lr=0.5),
                               _fixed_samples(tok)[:7] if rank == 0 else _fixed_samples(tok)[7:], args,
                               tok.pad_token_id, random.Random(0))
            gcrl.save_model(model, None, f"{out}/{loss_type}-{fsdp}")
    model.generation_config = GenerationConfig()  # FSDP: 3 prompts here, 1 there, one a call: no deadlock
    texts = gcrl.generate(model, tok, ["1+1", "2+2", "3+3"][:3 - 2 * rank], 1, 6, batch_size=1)["texts"]
    torch.save(len(texts), f"{out}/generated-{rank}.pt")
    dist.destroy_process_group()
    os._exit(0)  # every result is saved; skip the C++ teardown, where gloo now and then aborts (about 1 exit in 20)


def test_two_processes_update_exactly_like_one_on_the_global_batch(tmp_path, tok):
    """The processes hold uneven shares of the samples, as they hold uneven numbers of critiques; grpo
    and dapo (off-policy), DDP and FSDP2: the weights after the update equal the single-process update
    on all the samples, to 1e-6."""
    import torch.multiprocessing as mp
    from transformers import AutoModelForCausalLM
    start = tiny_model.build_model(tok, hidden_size=32, num_layers=2, seed=3)
    torch.save(start.state_dict(), tmp_path / "w.pt")
    mp.spawn(_updates_in_process, args=(2, str(tmp_path / "rdzv"), str(tmp_path / "w.pt"), str(tmp_path)), nprocs=2)
    for loss_type in ("grpo", "dapo"):
        one = copy.deepcopy(start)  # one process, every sample
        gcrl.policy_update(one, None, torch.optim.SGD(one.parameters(), lr=0.5), _fixed_samples(tok),
                           gcrl.parse_args(UPDATES[loss_type] + ["--per_device_train_batch_size", "3"]),
                           tok.pad_token_id, random.Random(0))
        moved = max((p - q).abs().max().item() for p, q in zip(one.parameters(), start.parameters()))
        for fsdp in (False, True):
            two = AutoModelForCausalLM.from_pretrained(tmp_path / f"{loss_type}-{fsdp}")
            diff = max((p - q).abs().max().item() for p, q in zip(one.parameters(), two.parameters()))
            assert moved > 1e-3 and diff < 1e-6, (loss_type, fsdp, moved, diff)
    assert [torch.load(tmp_path / f"generated-{r}.pt") for r in (0, 1)] == [3, 1]


def test_torchrun_two_processes_write_one_metrics_file_and_a_normal_checkpoint(tmp_path):
    import socket
    import subprocess
    with socket.socket() as s:  # a free port on loopback only
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(port), "gcrl.py", "--output_dir", str(out), "--max_steps", "2", "--train_batch_size",
           "4", "--num_generations", "2", "--eval_size", "4", "--self_verify_samples", "0", "--num_threads", "1",
           "--max_completion_length", "40", "--save_steps", "2"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert proc.stdout.count("summary (gcrl") == 1  # only rank 0 prints
    lines = gcrl.read_metrics(str(out / "metrics.jsonl"))
    assert [m["step"] for m in lines] == [0, 1, 2] and lines[1]["num_samples"] > 8  # both processes' samples
    assert {"model.safetensors", "config.json", "trainer_state.pt", "trainer_state_rank1.pt"} <= set(
        os.listdir(out / "checkpoint-2"))  # the model once, each process's trainer state
    from transformers import AutoModelForCausalLM
    assert type(AutoModelForCausalLM.from_pretrained(out)).__name__ == "Qwen2ForCausalLM"


# ---------------------------------------------------------------------------- F. batches and log-probs
def test_completion_lengths_stop_at_first_eos_even_when_pad_is_eos():
    eos = 0  # pad == eos, as in Qwen
    comps = torch.tensor([[5, 0, 0, 0], [5, 6, 7, 8], [0, 0, 0, 0], [5, 6, 0, 9]])
    lengths, truncated = gcrl.completion_lengths(comps, eos)
    assert lengths == [2, 4, 1, 3]
    assert truncated == [False, True, False, False]


def test_collate_pads_prompts_left_and_completions_right():
    ids, attn, cmask = gcrl.collate([[5, 6], [7]], [[1, 2, 9], [3]], pad_id=0, device="cpu")
    assert ids.tolist() == [[5, 6, 1, 2, 9], [0, 7, 3, 0, 0]]
    assert attn.tolist() == [[1, 1, 1, 1, 1], [0, 1, 1, 0, 0]]
    assert cmask.tolist() == [[1, 1, 1], [1, 0, 0]]


# ---------------------------------------------------------------------------- tiny_tasks: the demo model and the scripts
def test_tiny_tokenizer_round_trips_prompts(tok):
    text = gcrl.critique_prompt("47+38", "7+8=15,4+3+1=8,\\boxed{85}") + "Conclusion: wrong [END]"
    ids = tok(text).input_ids
    assert tok.decode(ids) == text
    assert len(ids) < len(text) / 3  # template pieces are single tokens
    assert tok.convert_ids_to_tokens(tok("\\boxed{85}").input_ids) == ["\\boxed{", "8", "5", "}"]


def test_tiny_critique_compares_fixed_width_answers_digit_by_digit():
    assert [tiny_model.fixed_width(a) for a in ("85", "-4", "103", "x")] == ["+085", "-004", "+103", "x"]
    text = tiny_model.tiny_critique("5+8=13,5+4+1=10,\\boxed{103}", "103", "93")
    assert text == "Recomputed: 5+8=13,5+4+1=10,+103 vs +093\n++=10!09!33=\nConclusion: wrong [END]"
    neg = tiny_model.tiny_critique("-(78-58):8-8=0,7-5-0=2,\\boxed{-20}", "-20", "-20")
    assert neg == "Recomputed: -(78-58):8-8=0,7-5-0=2,-020 vs -020\n--=00=22=00=\nConclusion: right [END]"
    unboxed = tiny_model.tiny_critique("\\boxed{7}", "7", "")  # a response without an answer: '_' marks
    assert unboxed.split("\n")[1] == "+_!0_!0_!7_!" and gcrl.parse_verdict(unboxed) == "wrong"


def test_warmup_examples_cover_three_formats_and_the_sloppy_teacher():
    right = "7+8=15,4+3+1=8,\\boxed{85}"
    row = {"question": "47+38", "answer": "85", "solution": right,
           "wrong_solutions": ["7+8=16,4+3+1=9,\\boxed{96}", "7+8=6,4+3+0=7,\\boxed{76}", "7+9=16,4+3+1=8,\\boxed{86}"]}
    ex = tiny_model.warmup_examples([row], random.Random(0))  # a careful teacher
    crits = [t for p, t in ex if p.endswith(gcrl.CRITIQUE_INSTRUCTION)]
    assert len(ex) == 1 + 2 * 5 and len(crits) == 5  # solve; critique + refine of right, 3 wrong, the forgotten carry
    assert [c.split("\n")[0][-4:] for c in crits] == ["+085", "+096", "+076", "+086", "+075"]  # the answer it reads
    assert [gcrl.parse_verdict(c) for c in crits] == ["right", "wrong", "wrong", "wrong", "wrong"]
    assert all(c.startswith("Recomputed: 7+8=15,4+3+1=8,+085 vs ") for c in crits)  # always the right steps
    assert all(gcrl.verify(t, "85") for p, t in ex if not p.endswith(gcrl.CRITIQUE_INSTRUCTION))
    lazy = tiny_model.warmup_examples([row], random.Random(0), sloppy=1.0, lazy=1.0)
    solve = [t for p, t in lazy if p.endswith(gcrl.SOLVE_INSTRUCTION)]
    assert solve == ["7+8=15,4+3+0=7,\\boxed{75}"]  # the sloppy teacher forgot the carry
    stamp = [t for p, t in lazy if p == gcrl.critique_prompt("47+38", "7+8=15,4+3+0=7,\\boxed{75}")]
    assert stamp == ["Recomputed: 7+8=15,4+3+0=7,+075 vs +075\n++=00=77=55=\nConclusion: right [END]"]  # rubber stamp
    no_carry = {"question": "12+13", "answer": "25", "solution": "2+3=5,1+1+0=2,\\boxed{25}", "wrong_solutions": []}
    assert [t for p, t in tiny_model.warmup_examples([no_carry], random.Random(0), 1.0, 1.0)
            if p.endswith(gcrl.SOLVE_INSTRUCTION)] == ["2+3=5,1+1+0=2,\\boxed{25}"]  # nothing to forget


def test_cold_start_counts_solve_and_critique_twice_after_a_solve_only_fifth(monkeypatch):
    seen = {}
    monkeypatch.setattr(gcrl, "sft", lambda model, tok, examples, steps, lr, rng, **kw: seen.update(examples=examples, **kw))
    rows = [row for _, row in gcrl.read_jsonl("tiny_tasks/arith_coldstart.jsonl")[:20]]
    examples = tiny_model.warmup_examples(rows, random.Random(0))
    tiny_model.cold_start(None, None, examples, 100, 1e-3, random.Random(0))
    for instruction, copies in ((gcrl.SOLVE_INSTRUCTION, 2), (gcrl.CRITIQUE_INSTRUCTION, 2), (gcrl.REFINE_INSTRUCTION, 1)):
        count = lambda exs: sum(p.endswith(instruction) for p, _ in exs)
        assert count(seen["examples"]) == copies * count(examples) > 0
    assert seen["first_steps"] == 20 and all(p.endswith(gcrl.SOLVE_INSTRUCTION) for p, _ in seen["first_examples"])


def test_tiny_warmup_critiques_fit_the_default_completion_length(tok):
    rows = [row for _, row in gcrl.read_jsonl("tiny_tasks/arith_coldstart.jsonl")]
    crits = [t for p, t in tiny_model.warmup_examples(rows, random.Random(0)) if p.endswith(gcrl.CRITIQUE_INSTRUCTION)]
    longest = max(len(tok(t, add_special_tokens=False).input_ids) + 1 for t in crits)  # + EOS
    assert longest <= gcrl.parse_args([]).max_completion_length, longest  # else every long critique is cut off


def _tiny_task_script(name):
    import importlib.util
    spec = importlib.util.spec_from_file_location(name, f"tiny_tasks/{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_reproduce_pairs_arms_within_a_seed_and_skips_seeds_missing_one():
    reproduce = _tiny_task_script("reproduce")
    lines = [{"arm": "A", "seed": 0, "m": 0.50}, {"arm": "B", "seed": 0, "m": 0.40},
             {"arm": "A", "seed": 1, "m": 0.30}, {"arm": "B", "seed": 1, "m": 0.35},
             {"arm": "A", "seed": 2, "m": 0.90}]  # seed 2 has no B: not paired
    diffs = reproduce.paired_differences(lines, "A", "B", "m")
    assert [s for s, _ in diffs] == [0, 1]
    assert diffs[0][1] == pytest.approx(0.10) and diffs[1][1] == pytest.approx(-0.05)
    assert reproduce.mean_se([d for _, d in diffs], "+").startswith("+0.025 ± ")


def test_critic_study_formats_compare_right_aligned_digits_and_parse_back():
    study = _tiny_task_script("critic_study")
    text = study.critique_text("digit_check", "9+6=15,9+9+1=19,195", "195", "95", False)
    assert text == "Recomputed: 9+6=15,9+9+1=19,195 vs 95\nCheck: 1!=_,9=9,5=5\nConclusion: wrong [END]"
    assert study.recomputed_answer(text) == "195" and gcrl.parse_verdict(text) == "wrong"
    plain = study.critique_text("recompute", "7+8=15,4+3+1=8,85", "85", "85", True)
    assert study.recomputed_answer(plain) == "85" and gcrl.parse_verdict(plain) == "right"
    assert study.quoted_answer(plain) is None and study.quoted_answer(text) == "95"


def test_critic_study_fixed_width_and_own_notation_formats():
    study = _tiny_task_script("critic_study")
    text = study.critique_text("fixed_pairs", "5+8=13,5+4+1=10,103", "103", "93", False)
    assert text == tiny_model.tiny_critique("5+8=13,5+4+1=10,\\boxed{103}", "103", "93")  # the demo's warm-up
    assert study.same_answer(study.recomputed_answer(text), "103") and not study.same_answer("+093", "103")
    own = study.critique_text("notation", "-(78-58):8-8=0,7-5-0=2,-20", "-20", "-30", False)
    assert own.startswith("Recomputed: ~(78~58):8~8>0,7~5~0>2,-20 vs -30\n")  # the compared answer keeps its '-'
    assert study.recomputed_answer(own) == "-20"


def test_critic_study_held_out_rows_get_a_right_and_a_slipped_solution():
    study = _tiny_task_script("critic_study")
    questions = [{"question": "47+38", "answer": "85"}, {"question": "29-33", "answer": "-4"}]
    for slips in (study.WARMUP_SLIPS, study.ALL_SLIPS):
        for r in study.with_worked_solutions(questions, random.Random(0), slips):
            assert gcrl.verify(r["solution"], r["answer"]) and not gcrl.verify(r["wrong_solution"], r["answer"])
    for r in study.with_worked_solutions(questions, random.Random(0), study.ALL_SLIPS, num_wrong=3):
        answers = {gcrl.extract_boxed(w) for w in r["wrong_solutions"]}
        assert len(answers) == 3 and r["answer"] not in answers


def test_multistep_questions_for_real_models_have_exact_integer_answers():
    rows, _ = gcrl.load_questions("tiny_tasks/multistep_train.jsonl")
    test, _ = gcrl.load_questions("tiny_tasks/multistep_test.jsonl")
    assert len(rows) == 4000 and len(test) == 500 and not {r["question"] for r in rows} & {r["question"] for r in test}
    for r in rows[:300]:  # our own arithmetic on the text agrees with the stored answer; 3-4 operations
        expr = r["question"].removeprefix("Compute ").removesuffix(".")
        assert make_tasks.eval_plain(expr) == int(r["answer"])
        assert sum(expr.count(f" {op} ") for op in "+-*/") in (3, 4)
    rng = random.Random(5)
    assert all(make_tasks.eval_plain(q.removeprefix("Compute ").removesuffix(".")) == a
               for q, a in (make_tasks.multistep_question(rng) for _ in range(200)))
    assert make_tasks.eval_plain("7 / 2") is None and make_tasks.eval_plain("(1 + 2) * 3 - 4 / 2") == 7
    assert gcrl.parse_args(["--model", "x"]).dataset.endswith("multistep_train.jsonl")


def test_make_tasks_ones_slip_changes_only_the_ones_fact():
    make_tasks = _tiny_task_script("make_tasks")
    assert make_tasks.worked_solution(52, "-", 19, "ones") == ("12-9=4,5-1-1=3,\\boxed{34}", 34)
    assert make_tasks.worked_solution(47, "+", 38, "ones") == ("7+8=16,4+3+1=8,\\boxed{86}", 86)  # carry kept
    assert make_tasks.worked_solution(49, "+", 30, "ones") == ("9+0=8,4+3+0=7,\\boxed{78}", 78)  # 9 -> 8, no carry made


def test_make_tasks_joined_slips_and_misread_operands():
    make_tasks = _tiny_task_script("make_tasks")
    assert make_tasks.worked_solution(47, "+", 38, "ones+fact") == ("7+8=16,4+3+1=9,\\boxed{96}", 96)  # both facts
    assert make_tasks.worked_solution(47, "+", 38, "ones+carry") == ("7+8=6,4+3+0=7,\\boxed{76}", 76)
    random.seed(0)
    for _ in range(50):  # a misread: the right steps of a question one operand digit away
        text, answer = make_tasks.worked_solution(42, "-", 50, "read")
        near = {(a, b) for a, b in [(42 + d, 50) for d in (-10, -1, 1, 10)] + [(42, 50 + d) for d in (-10, -1, 1, 10)]}
        assert any(make_tasks.worked_solution(a, "-", b) == (text, answer) for a, b in near), text


def test_critic_study_scores_rederivation_copying_and_verdict_agreement():
    study = _tiny_task_script("critic_study")
    questions = {0: {"question": "47+38", "answer": "85"}}
    pairs = [(0, "7+8=15,4+3+1=8,\\boxed{85}", True), (0, "7+8=15,4+3+0=7,\\boxed{75}", False),
             (0, "7+8=15,4+3+1=8,\\boxed{85}", True), (0, "7+8=15,4+3+0=7,\\boxed{75}", False)]
    texts = ["Recomputed: 7+8=15,4+3+1=8,85\nConclusion: right [END]",   # right, and follows its comparison
             "Recomputed: 7+8=15,4+3+0=7,75\nConclusion: right [END]",   # copied the wrong answer: says right
             "Recomputed: 7+8=15,4+3+1=8,85\nConclusion: wrong [END]",   # re-derived right, verdict ignores it
             "Recomputed: 7+8=15,4+3+1=8,85"]                            # cut off: no verdict
    m = study.score_critiques(pairs, texts, questions)
    assert m["critique_acc_balanced"] == 0.25 and m["right_rate"] == 0.5  # only the first is right
    assert m["recompute_ok_right"] == 1.0 and m["recompute_ok_wrong"] == 0.5 and m["copied_wrong_answer"] == 0.5
    assert m["verdict_follows_comparison"] == pytest.approx(2 / 3)  # of the three with a verdict


def test_critic_study_scores_the_quoted_answer_and_the_check_marks():
    study = _tiny_task_script("critic_study")
    questions = {0: {"question": "47+38", "answer": "85"}}
    pairs = [(0, "7+8=15,4+3+1=9,\\boxed{95}", False)] * 3
    texts = ["Recomputed: 7+8=15,4+3+1=8,+085 vs +095\n++=00=89!55=\nConclusion: wrong [END]",  # all as taught
             "Recomputed: 7+8=15,4+3+1=8,+085 vs +085\n++=00=88=55=\nConclusion: right [END]",  # quoted its own
             "Recomputed: 7+8=15,4+3+1=8,+085 vs +095\n++=00=89=55=\nConclusion: right [END]"]  # a wrong mark
    m = study.score_critiques(pairs, texts, questions, "fixed_pairs")
    assert m["quoted_answer_ok"] == pytest.approx(2 / 3) and m["marks_follow_own_answers"] == pytest.approx(2 / 3)
    assert m["recompute_ok_wrong"] == 1.0 and m["critique_acc_balanced"] == pytest.approx(1 / 3)
    assert math.isnan(study.score_critiques(pairs, texts, questions)["marks_follow_own_answers"])  # no fmt given


def test_critic_study_warmup_critiques_fit_the_critique_budget():
    study, tok = _tiny_task_script("critic_study"), tiny_model.build_tokenizer()
    rows = [row for _, row in gcrl.read_jsonl("tiny_tasks/arith_coldstart.jsonl")]
    for fmt in {f for f, *_ in study.VARIANTS.values()}:
        crits = [t for p, t in study.warmup_examples(rows, fmt, 1) if "#Instruction#: Please verify" in p]
        longest = max(len(tok(t, add_special_tokens=False).input_ids) + 1 for t in crits)  # + EOS
        assert longest <= study.CRITIQUE_TOKENS, (fmt, longest)


# ---------------------------------------------------------------------------- docstrings
def test_docstring_examples_hold():
    import doctest
    failed, attempted = doctest.testmod(gcrl, optionflags=doctest.ELLIPSIS)
    assert failed == 0 and attempted >= 15
