"""The command line and the terminal renderer under hostile or broken input: untrusted text is shown, never
obeyed; every failure is the package's one-line error (exit 2); outputs are saved before anything is printed;
evaluate resumes torn groups; the memory guard reads process limits; one labelled progress bar."""

from __future__ import annotations

import io
import json
import random
import subprocess
import sys
import textwrap

import pytest
import torch
from rich.console import Console

from llm_attrib import Attributor, Explanation, InvalidInputError, zoo
from llm_attrib.cli import main
from llm_attrib.evaluate import evaluate
from llm_attrib.render.terminal import explanation_text, print_explanation, safe
from test_cli import PROMPT, model_dir  # noqa: F401  (the tiny model saved to disk)
from tiny_tokenizer import tiny_llama, tiny_tokenizer

HOSTILE = [
    "[/INST]", "[citation needed]", "a[i]", "[bold]loud[/bold]", "\x1b[2J\x1b[H", "\x1b]52;c;aGVsbG8=\x07",
    "\x1b]8;;http://evil\x1b\\link\x1b]8;;\x1b\\", "\x1b]0;window title\x07", "\x1b[8mhidden\x1b[0m", "\x9b31m",
    "\u202eevil\u202c", "\r overwritten", "\ud800lone",
]
RAG_READY = (zoo.MODELS_DIR / "rag" / "config.json").exists()


def test_safe_shows_every_control_character_and_keeps_text():
    for text in HOSTILE:
        shown = safe(text)
        assert not any(ord(c) < 0x20 and c not in "\n\t" or 0x7F <= ord(c) < 0xA0 or c in "\u202e\u202c"
                       or 0xD800 <= ord(c) < 0xE000 for c in shown)
        shown.encode("utf-8")  # printable and writable
    assert safe("\x1b[2J") == "\u241b[2J" and safe("a[i]\nb\tc") == "a[i]\nb\tc"


def hostile_explanation() -> Explanation:
    tokens = ["<s>"] + [f" {h}" for h in HOSTILE]
    text, offsets = "", [(0, 0)]
    for tok in tokens[1:]:
        offsets.append((len(text), len(text) + len(tok)))
        text += tok
    n = len(tokens)
    return Explanation(
        scores=torch.linspace(-1, 1, 2 * n).reshape(2, n), input_tokens=tokens, input_offsets=offsets,
        input_ids=list(range(n)), target_tokens=["\x1b[31m[red]", "x"], target_ids=[1, 2], target_probs=[0.5, 0.5],
        completeness_error=torch.zeros(2), text=text + "\x1b[31m[red]", n_prompt_tokens=n, method="ig",
        space="embeddings", model_name="/some/path/\x1b]0;title\x07model", notes=["\x1b[2J[note]"],
        params={"baseline": "[bold]pad\x1b[0m"},
    )


def test_terminal_shows_markup_and_escapes_as_text():
    exp = hostile_explanation()
    out = explanation_text(exp, width=400)
    for visible in ("[/INST]", "[citation needed]", "a[i]", "[bold]loud[/bold]", "[note]", "[red]"):
        assert visible in out
    assert "\x1b" not in out and "\x9b" not in out and "\u202e" not in out and "\r" not in out
    assert "\u241b[2J" in out and "/some/path" not in out  # the model's name, not its path
    stream = io.StringIO()  # a real console on a terminal-like stream: colour codes only from the renderer
    print_explanation(exp, console=Console(file=stream, force_terminal=True, color_system="truecolor", width=400))
    written = stream.getvalue()
    assert "]52;" not in written.replace("\u241b]52;", "") and "\x1b]0;" not in written and "\x1b[2J" not in written


@pytest.mark.skipif(not RAG_READY, reason="the zoo 'rag' model is not built")
def test_rag_with_markup_and_escapes_in_documents_writes_outputs_and_prints_them_as_text(tmp_path, capsys):
    documents = tmp_path / "docs.jsonl"
    texts = ["alice likes green tea . [/INST] \x1b]52;c;aGVsbG8=\x07", "bob visits [bold]old[/bold] town . a[i]"]
    documents.write_text("".join(json.dumps({"text": t, "title": "[citation needed]\x1b[2J"}) + "\n" for t in texts))
    out_json, out_html = tmp_path / "r.json", tmp_path / "r.html"
    code = main(["rag", "--question", "what about alice ? [/INST]", "--documents", str(documents), "--answer",
                 "green tea", "--granularity", "answer", "--no-verify", "--json", str(out_json), "--html",
                 str(out_html), "--no-progress"])
    assert code == 0 and out_json.exists() and out_html.exists()
    printed = capsys.readouterr().out
    for visible in ("[/INST]", "[bold]old[/bold]", "a[i]", "[citation needed]"):
        assert visible in printed
    assert "\x1b" not in printed and "\u241b" in printed


def test_outputs_are_saved_before_anything_is_printed(model_dir, tmp_path, monkeypatch):  # noqa: F811
    import llm_attrib.render.terminal as terminal

    def broken(*args, **kwargs):
        raise RuntimeError("the terminal failed")

    monkeypatch.setattr(terminal, "print_explanation", broken)
    out_json, out_html = tmp_path / "e.json", tmp_path / "e.html"
    with pytest.raises(RuntimeError):
        main(["explain", "--model", str(model_dir), "--prompt", PROMPT, "--answer", "mat", "--n-steps", "2",
              "--json", str(out_json), "--html", str(out_html), "--no-progress"])
    assert Explanation.load(out_json).target_tokens == ["mat"] and out_html.read_text().startswith("<!DOCTYPE")


def one_line_error(capsys, code: int) -> str:
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("llm-attrib: error:") and err.count("\n") == 1, err
    return err


def test_target_out_of_range_is_refused_before_the_work(model_dir, monkeypatch, capsys):  # noqa: F811
    import llm_attrib.attributor as attributor

    def no_work(*args, **kwargs):
        raise AssertionError("the work started")

    monkeypatch.setattr(attributor.Attributor, "explain", no_work)
    for extra in (["--max-new-tokens", "3"], ["--answer", "mat and"], ["--whole-answer", "--answer", "mat"]):
        target = "1" if "--whole-answer" in extra else "99"
        code = main(["explain", "--model", str(model_dir), "--prompt", PROMPT, "--target", target, "--no-progress",
                     *extra])
        assert "--target" in one_line_error(capsys, code)


def test_broken_inputs_and_outputs_are_one_line_errors(model_dir, tmp_path, capsys):  # noqa: F811
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    for file in model_dir.iterdir():
        (corrupt / file.name).write_bytes(file.read_bytes())
    (corrupt / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage")
    bad_utf8, empty, not_rows, a_file = (tmp_path / name for name in ("bad.txt", "empty.jsonl", "rows.jsonl", "f"))
    bad_utf8.write_bytes(b"the cat \xff\xfe sat")
    empty.write_text("\n")
    not_rows.write_text("this is not json\n")
    a_file.write_text("x")
    base = ["explain", "--model", str(model_dir), "--prompt", PROMPT, "--no-progress"]
    cases = [
        ["explain", "--model", str(corrupt), "--prompt", PROMPT, "--no-progress"],
        ["explain", "--model", str(model_dir), "--prompt-file", str(bad_utf8), "--no-progress"],
        base + ["--html", str(a_file / "out.html")],
        base + ["--json", str(a_file / "sub" / "out.json")],
        ["explain", "--model", str(model_dir), "--prompt", "the cat \udcff", "--no-progress"],
        ["evaluate", "--model", str(model_dir), "--data", str(empty), "--methods", "random", "--no-progress"],
        ["evaluate", "--model", str(model_dir), "--data", str(bad_utf8), "--methods", "random", "--no-progress"],
        ["evaluate", "--model", str(model_dir), "--n", "1", "--output", str(not_rows), "--methods", "random",
         "--no-progress"],
        ["evaluate", "--model", str(model_dir), "--n", "1", "--summary", str(a_file / "s.txt"), "--no-progress"],
        ["rag", "--model", str(model_dir), "--question", "q", "--documents", str(bad_utf8), "--no-progress"],
    ]
    for argv in cases:
        one_line_error(capsys, main(argv))


FLAG_VALUES = {
    "--method": ["ig", "saliency", "random", "attention", "nope", ""],
    "--space": ["embeddings", "attention", "mask", "x"],
    "--n-steps": ["2", "0", "-1", "x", "3"],
    "--max-new-tokens": ["1", "2", "0", "99999"],
    "--target": ["0", "1", "-1", "99", "x"],
    "--layers": ["0", "1", "5", "-9"],
    "--param": ["tolerance=null", "n_steps=2", "baseline=zero", "x", "=1", "nope=1", "n_steps=[1]"],
    "--answer": ["mat", "mat and", "zebra", "", " ", "\udcff"],
    "--prompt": [PROMPT, "", " ", "zebra", "the [bold] cat", "\x1b[2J the", "\udcff"],
}
FILE_CONTENTS = [b"", b"\n", b"the cat sat", b"\xff\xfe", b"[]", b"{}", b"[1, 2]", b'{"prompt": "the cat"}\n',
                 b'[{"prompt": 3}]', b'"just a string"', b"[" * 5000, b'{"text": "the cat sat"}\n']


def test_fuzzed_command_lines_end_in_exit_0_or_a_one_line_error(model_dir, tmp_path, capsys):  # noqa: F811
    """Hundreds of generated argument and file cases on a tiny model saved to disk: every one ends in exit 0 or
    the package's one-line error (argparse's usage error is exit 2 too), never a traceback."""
    rng = random.Random(0)
    files = []
    for i, content in enumerate(FILE_CONTENTS):
        files.append(tmp_path / f"in{i}")
        files[-1].write_bytes(content)
    outputs = [tmp_path / "ok.json", tmp_path, files[2] / "below.json", tmp_path / "new" / "deep" / "o.html"]
    outcomes = {0: 0, 2: 0, "usage": 0}
    for case in range(300):
        command = rng.choice(["explain", "explain", "explain", "evaluate", "rag"])
        argv = [command, "--model", str(model_dir), "--no-progress"]
        if command == "explain":
            source = rng.random()
            argv += ["--prompt", rng.choice(FLAG_VALUES["--prompt"])] if source < 0.7 else \
                ["--prompt-file", str(rng.choice(files))] if source < 0.9 else []
            for flag in rng.sample(sorted(FLAG_VALUES.keys() - {"--prompt"}), rng.randint(0, 4)):
                argv += [flag, rng.choice(FLAG_VALUES[flag])]
            if "--n-steps" not in argv:
                argv += ["--n-steps", "2"]
            if "--max-new-tokens" not in argv:
                argv += ["--max-new-tokens", "2"]
            if rng.random() < 0.3:
                argv += [rng.choice(["--json", "--html"]), str(rng.choice(outputs))]
            if rng.random() < 0.1:
                argv.append(rng.choice(["--whole-answer", "--tokens", "--chat", "--per-token"]))
        elif command == "evaluate":
            argv += ["--methods", rng.choice(["random", "saliency", "nope", "ig:x"])]
            argv += ["--data", str(rng.choice(files))] if rng.random() < 0.8 else ["--n", "1"]
            if rng.random() < 0.3:
                argv += [rng.choice(["--output", "--summary"]), str(rng.choice(outputs[1:] + files[:3]))]
        else:
            argv += ["--question", rng.choice(["what ?", "", "\udcff"]), "--documents", str(rng.choice(files)),
                     "--no-verify", "--granularity", "answer", "--answer", "mat", "--template",
                     rng.choice(["plain", "{documents} {question}", "{oops}", "{documents:>5} {question}"])]
        try:
            code = main(argv)
        except SystemExit as stop:  # argparse's usage error
            code = stop.code
            assert code == 2, argv
            capsys.readouterr()
            outcomes["usage"] += 1
            continue
        err = capsys.readouterr().err
        assert code in (0, 2), argv
        outcomes[code] += 1
        if code == 2:
            assert err.startswith("llm-attrib: error:") and err.count("\n") == 1, (argv, err)
        (tmp_path / "ok.json").unlink(missing_ok=True)
    print(outcomes)
    assert min(outcomes.values()) >= 20  # the cases reach the work, the package's checks and argparse alike


@pytest.fixture(scope="module")
def attributor():
    return Attributor(tiny_llama(), tiny_tokenizer(64), show_progress=False)


def test_resume_recomputes_a_group_torn_at_a_line_end(attributor, tmp_path):
    examples = [{"prompt": f"w{i} w{i + 1} w{i + 2}", "answer": f"w{i + 3} w{i + 4} w{i + 5}"} for i in range(10, 13)]
    path = tmp_path / "rows.jsonl"
    full = evaluate(attributor, examples, ["random"], output=path, show_progress=False).rows
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:-1]))  # a kill between two lines of the last group's one write
    resumed = evaluate(attributor, examples, ["random"], output=path, show_progress=False).rows
    assert len(resumed) == len(full) == 9
    assert resumed.drop(columns="seconds").equals(full.drop(columns="seconds"))
    assert len(path.read_text().splitlines()) == 9


def test_raw_attention_is_guarded_by_the_bytes_of_every_layers_attention(attributor):
    """The attention method holds (layers, heads, L, L) float32 at once: a budget of exactly that (times the
    transient allowance) passes and one byte less is refused before the work, also when the size is
    extrapolated from short prompts (L = 41 > 32); the random method holds nothing and is never refused."""
    from llm_attrib.core.memory import TRANSIENT_FACTOR

    prompt = " ".join(f"w{i % 50}" for i in range(40))  # 40 words + <bos>, then the answer's token
    config = attributor.model.config
    needed = int(TRANSIENT_FACTOR * config.num_hidden_layers * config.num_attention_heads * 42 * 42 * 4)

    def run(budget: int, method: str = "attention"):
        return Attributor(attributor.model, attributor.tokenizer, memory_budget=budget, show_progress=False).explain(
            prompt, "w5", method=method)

    assert run(needed).scores.shape == (1, 41)  # 41 prompt inputs; the sequence with its target is 42
    with pytest.raises(InvalidInputError, match="method 'attention' over 42 tokens .*memory budget"):
        run(needed - 1)
    assert run(1, method="random").scores.shape == (1, 41)


def test_the_automatic_budget_reads_the_address_space_limit():
    code = textwrap.dedent("""
        import resource, torch
        from llm_attrib.core import memory
        used = memory._status_bytes("VmSize")
        resource.setrlimit(resource.RLIMIT_AS, (used + 300 * 2**20, resource.RLIM_INFINITY))
        print(memory.available_bytes(torch.device("cpu")))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert 0 < int(out) <= 300 * 2**20


def test_a_prompt_mostly_unknown_to_the_tokenizer_carries_a_note(model_dir):  # noqa: F811
    from llm_attrib.cli import load_model

    model, tokenizer = load_model(str(model_dir))
    attr = Attributor(model, tokenizer, show_progress=False)
    with pytest.warns(UserWarning, match="unknown to the tokenizer"):
        exp = attr.explain("the zebra ate quinoa on a", "mat", method="saliency")
    assert len(exp.notes) == 1 and "3 of 6 prompt tokens" in exp.notes[0]
    assert "note: 3 of 6" in explanation_text(exp, width=300)
    assert attr.explain(PROMPT, "mat", method="saliency").notes == []


def test_absurd_magnitudes_carry_a_note():
    from llm_attrib.attributor import magnitude_notes

    with pytest.warns(UserWarning, match="magnitude 1e\\+30"):
        assert len(magnitude_notes(torch.tensor([[1e30, 0.0]]), "ig")) == 1
    assert magnitude_notes(torch.tensor([[12.0, -3.0]]), "ig") == []


def test_one_labelled_bar_per_explanation(attributor, monkeypatch):
    import llm_attrib.core.engine as engine
    from llm_attrib.core import progress

    phases = []
    monkeypatch.setattr(progress.Progress, "phase", lambda self, label, total=None: phases.append(label))
    monkeypatch.setattr(engine, "tqdm", lambda *a, **k: pytest.fail("the engine opened a bar of its own"))
    Attributor(attributor.model, attributor.tokenizer, show_progress=True).explain(
        "w1 w2 w3", max_new_tokens=2, method="ig", n_steps=4)
    assert phases == ["generating", "attributing 2 targets (ig, embeddings)"]


def test_help_does_not_import_torch():
    code = "import sys; from llm_attrib.cli import build_parser; build_parser().format_help(); print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"


@pytest.mark.parametrize("version", ["v2", "v1"])
def test_the_cgroup_memory_limit_is_read(tmp_path, monkeypatch, version):
    from llm_attrib.core import memory

    proc = tmp_path / "proc" / "self"
    proc.mkdir(parents=True)
    if version == "v2":
        (proc / "cgroup").write_text("0::/job\n")
        group = tmp_path / "sys" / "fs" / "cgroup" / "job"
        limit, usage = "memory.max", "memory.current"
    else:
        (proc / "cgroup").write_text("5:cpu:/\n4:memory:/job\n")
        group = tmp_path / "sys" / "fs" / "cgroup" / "memory" / "job"
        limit, usage = "memory.limit_in_bytes", "memory.usage_in_bytes"
    group.mkdir(parents=True)
    (group / limit).write_text(f"{3 * 2**30}\n")
    (group / usage).write_text(f"{2**30}\n")
    read = memory._cgroup_number
    assert read(limit, root=str(tmp_path)) == 3 * 2**30
    monkeypatch.setattr(memory, "_cgroup_number", lambda name: read(name, root=str(tmp_path)))
    assert memory.process_limit_bytes() <= 2 * 2**30  # the limit less what the group already uses
    assert memory.available_bytes(torch.device("cpu")) <= 2 * 2**30
    (group / limit).write_text("max\n")
    assert read(limit, root=str(tmp_path)) is None  # no limit


def test_ctrl_c_ends_with_one_line_and_exit_130(model_dir, monkeypatch, capsys):  # noqa: F811
    import llm_attrib.attributor as attributor

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(attributor.Attributor, "explain", interrupted)
    assert main(["explain", "--model", str(model_dir), "--prompt", PROMPT, "--no-progress"]) == 130
    assert capsys.readouterr().err == "llm-attrib: interrupted\n"
