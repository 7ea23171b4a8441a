"""The `gptq-export` and `gptq-inspect` command lines: the bad-input contract and the success summary.

Bad input: exactly one line on stderr starting with "gptq-export: error:" that says what to do,
exit code 2, no traceback, nothing on stdout and nothing left behind (no output file, no
`.gptq-export-*` temporary folder). A few cases run as a real subprocess, to prove that no
traceback reaches the terminal; the others call `main(argv)` in-process (faster).

Tiny models: GPT-2 and Llama with hidden size 64 and 2 layers, saved once per module.
"""

from __future__ import annotations

import contextlib
import io
import json
import random
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import save_tiny_model
from test_api import tiny_model

from gptq_export.cli import main
from gptq_export.inspect import main as inspect_main

ERROR = "gptq-export: error:"
INSPECT_ERROR = "gptq-inspect: error:"
FAST = ["--nsamples", "2", "--seqlen", "16"]
GPT2_ARGS = ["--bits", "4", "--group-size", "32", "--format", "gptq", *FAST]


# --------------------------------------------------------------------------- fixtures and helpers


def _linear_names(model: torch.nn.Module) -> set[str]:
    return {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) or type(m).__name__ == "Conv1D"}


@pytest.fixture(scope="module")
def models(tiny_tokenizer, tmp_path_factory) -> SimpleNamespace:
    """Tiny GPT-2 and Llama folders (hidden 64, 2 layers) and the GPT-2 layers GPTQ should quantize."""
    root = tmp_path_factory.mktemp("cli-models")
    gpt2 = tiny_model("gpt2", len(tiny_tokenizer))
    llama = tiny_model("llama", len(tiny_tokenizer))
    return SimpleNamespace(
        gpt2=save_tiny_model(gpt2, tiny_tokenizer, root / "tiny-gpt2"),
        llama=save_tiny_model(llama, tiny_tokenizer, root / "tiny-llama"),
        gpt2_quantized=_linear_names(gpt2) - {"lm_head"},
    )


@pytest.fixture(scope="module")
def exported(models, tmp_path_factory) -> SimpleNamespace:
    """One real export of the tiny GPT-2 through `main([... --json])`, shared by the success tests."""
    path = tmp_path_factory.mktemp("cli-export") / "x.onnx"
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main([str(models.gpt2), *GPT2_ARGS, "-o", str(path), "--json"])
    return SimpleNamespace(rc=rc, out=out.getvalue(), err=err.getvalue(), path=path)


def _tree(folder: Path) -> list[str]:
    """Every file and folder under `folder` (relative paths), to prove nothing was left behind."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def _run_main(argv: list[str], capsys) -> tuple[int, str, str]:
    """main(argv) in-process; argparse errors exit through SystemExit, which is the same to a shell."""
    try:
        rc = main(argv)
    except SystemExit as exc:
        rc = exc.code
    out, err = capsys.readouterr()
    return rc, out, err


def _run_subprocess(argv: list[str], cwd: Path) -> tuple[int, str, str]:
    proc = subprocess.run(
        [sys.executable, "-m", "gptq_export", *argv], cwd=cwd, capture_output=True, text=True, timeout=300
    )
    return proc.returncode, proc.stdout, proc.stderr


def _assert_bad_input(rc: int, out: str, err: str, phrases: tuple[str, ...], prefix: str = ERROR) -> str:
    """Exit 2, one `prefix` line (the last thing printed) holding every phrase, no traceback, empty stdout."""
    assert "Traceback" not in out + err, err
    assert rc == 2, err
    error_lines = [line for line in err.splitlines() if line.startswith(prefix)]
    assert len(error_lines) == 1, err
    line = error_lines[0]
    assert err.rstrip("\n").splitlines()[-1] == line, f"the error is not the last line printed:\n{err}"
    for phrase in phrases:
        assert phrase in line, line
    assert out == ""
    return line


def _make_inputs(tmp_path: Path) -> None:
    """Bad inputs on disk, created before the snapshot of tmp_path (they must stay as they are)."""
    (tmp_path / "out").mkdir()  # the output folder: must stay empty
    (tmp_path / "afile").write_text("a regular file, not a folder\n")
    (tmp_path / "existing.onnx").mkdir()
    (tmp_path / "existing-dir").mkdir()
    (tmp_path / "no-config").mkdir()
    (tmp_path / "no-config" / "README.md").write_text("not a model folder\n")
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "short.txt").write_text("A calibration text far too short for 64 tokens.\n")


# --------------------------------------------------------------------------- gptq-export: bad input

# id: (argv with {gpt2}, {llama}, {tmp} placeholders, phrases the error line must hold)
BAD_INPUT = {
    "bits-5": (["{gpt2}", "--bits", "5", "-o", "{tmp}/out/m.onnx"], ("--bits", "invalid choice", "choose from 2, 3, 4, 8")),
    "bits-1": (["{gpt2}", "--bits", "1", "-o", "{tmp}/out/m.onnx"], ("--bits", "invalid choice", "choose from 2, 3, 4, 8")),
    "group-size-0": (["{gpt2}", "--group-size", "0", "-o", "{tmp}/out/m.onnx"],
                     ("group_size=0", "use a positive size or -1")),
    "nsamples-0": (["{gpt2}", "--nsamples", "0", "-o", "{tmp}/out/m.onnx"], ("nsamples=0", "use at least 1")),
    "layer-bits-no-equals": (["{gpt2}", "--layer-bits", "lm_head", "-o", "{tmp}/out/m.onnx"],
                             ("--layer-bits", "is not PATTERN=BITS")),
    "layer-bits-5": (["{gpt2}", "--layer-bits", "lm_head=5", "-o", "{tmp}/out/m.onnx"],
                     ("layer_bits lm_head=5 is not supported", "choose one of 2, 3, 4, 8")),
    "no-config-json": (["{tmp}/no-config", "-o", "{tmp}/out/m.onnx"],
                       ("no config.json", "point MODEL at a Hugging Face model folder")),
    "folder-output-gptq-format": (["{gpt2}", *GPT2_ARGS, "-o", "{tmp}/out/genai"],
                                  ("cannot run the gptq custom op", "use --format ort or qdq")),
    "folder-output-no-kv-cache": (["{gpt2}", *FAST, "--no-kv-cache", "-o", "{tmp}/out/genai"],
                                  ("needs the KV-cache decoder", "drop --no-kv-cache")),
    "folder-output-not-empty": (["{gpt2}", *FAST, "-o", "{tmp}/no-config"],
                                ("is not empty and holds no earlier export", "choose a new folder")),
    "output-parent-is-file": (["{gpt2}", *FAST, "-o", "{tmp}/afile/m.onnx"], ("cannot write to", "choose a writable -o")),
    "output-is-directory": (["{gpt2}", *FAST, "-o", "{tmp}/existing.onnx"],
                            ("is a directory", "give a file name such as")),
    "output-folder-is-file": (["{gpt2}", *FAST, "-o", "{tmp}/afile"], ("is a file", "give a new folder name")),
    # Detected after loading and tracing, before calibration.
    "skip-every-linear": (["{gpt2}", *FAST, "--skip", "*", "-o", "{tmp}/out/m.onnx"],
                          ("no Linear layer to quantize", "check --skip")),
    # Detected when the calibration windows are drawn (after the trace, before GPTQ).
    "calib-empty": (["{gpt2}", "--calib", "{tmp}/empty.txt", *FAST, "-o", "{tmp}/out/m.onnx"],
                    ("is empty", "--calib")),
    "calib-too-short": (["{gpt2}", "--calib", "{tmp}/short.txt", "--nsamples", "2", "--seqlen", "64",
                         "-o", "{tmp}/out/m.onnx"], ("seqlen 64", "lower --seqlen or pass a longer --calib file")),
    "calib-missing": (["{gpt2}", "--calib", "{tmp}/missing.txt", *FAST, "-o", "{tmp}/out/m.onnx"],
                      ("does not exist", "pass an existing UTF-8 text file")),
}


def _argv(template: list[str], models: SimpleNamespace, tmp_path: Path) -> list[str]:
    return [a.format(gpt2=models.gpt2, llama=models.llama, tmp=tmp_path) for a in template]


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_one_error_line_exit_2_nothing_written(case, models, tmp_path, capsys):
    _make_inputs(tmp_path)
    before = _tree(tmp_path)
    template, phrases = BAD_INPUT[case]
    rc, out, err = _run_main(_argv(template, models, tmp_path), capsys)
    _assert_bad_input(rc, out, err, phrases)
    assert _tree(tmp_path) == before  # no output file, no .gptq-export-* temp folder, inputs untouched
    assert (tmp_path / "afile").read_text() == "a regular file, not a folder\n"


# Real processes: what a user's terminal shows (argparse exit, a load error, a late error after the trace).
SUBPROCESS_CASES = {
    "bits-5": (["{gpt2}", "--bits", "5", "-o", "{tmp}/out/m.onnx"], ("invalid choice", "see gptq-export --help")),
    "missing-model-folder": (["{tmp}/no-such-model", *FAST, "-o", "{tmp}/out/m.onnx"],
                             ("does not exist", "point MODEL at a Hugging Face model folder")),
    # 48 neither divides K=64 of the attention projections nor is a power of two.
    "group-size-48": (["{llama}", "--group-size", "48", *FAST, "-o", "{tmp}/out/m.onnx"],
                      ("group size 48", "K=64", "model.layers.0.self_attn.q_proj", "choose a divisor of 64")),
}


@pytest.mark.parametrize("case", list(SUBPROCESS_CASES))
def test_bad_input_in_a_real_process_shows_no_traceback(case, models, tmp_path):
    _make_inputs(tmp_path)
    before = _tree(tmp_path)
    template, phrases = SUBPROCESS_CASES[case]
    rc, out, err = _run_subprocess(_argv(template, models, tmp_path), cwd=tmp_path)
    _assert_bad_input(rc, out, err, phrases)
    assert _tree(tmp_path) == before


@pytest.mark.parametrize(
    "extra,phrase",
    [
        pytest.param(["--nsamples", "0"], "nsamples=0", id="before-loading"),
        pytest.param(["--calib", "{tmp}/missing.txt", *FAST], "pass an existing UTF-8 text file", id="after-loading"),
    ],
)
def test_quiet_bad_input_prints_only_the_error_line(extra, phrase, models, tmp_path, capsys):
    """--quiet means no progress bar: stderr is the error line and nothing else (no weight-loading bar)."""
    argv = [str(models.gpt2), "-q", *[a.format(tmp=tmp_path) for a in extra], "-o", str(tmp_path / "m.onnx")]
    rc, out, err = _run_main(argv, capsys)
    line = _assert_bad_input(rc, out, err, (phrase,))
    assert err == line + "\n"


def test_failed_export_does_not_create_the_output_folder(tmp_path, capsys):
    """A bad model must not leave a freshly created (empty) output folder behind."""
    argv = [str(tmp_path / "no-such-model"), *FAST, "-o", str(tmp_path / "new" / "sub" / "m.onnx")]
    rc, out, err = _run_main(argv, capsys)
    _assert_bad_input(rc, out, err, ("does not exist",))
    assert _tree(tmp_path) == []


# --------------------------------------------------------------------------- gptq-export: success


def test_json_summary(exported, models):
    assert exported.rc == 0, exported.err
    assert "Traceback" not in exported.err
    summary = json.loads(exported.out)  # stdout is the JSON document and nothing else
    assert {"output", "layers_quantized", "layers_skipped", "mean_loss", "mean_rtn_loss", "file_bytes"} <= summary.keys()
    assert summary["output"] == str(exported.path)
    assert exported.path.is_file()
    assert sorted(p.name for p in exported.path.parent.iterdir()) == ["x.onnx"]  # no temp folder left
    assert summary["layers_quantized"] == len(models.gpt2_quantized)
    assert {d["name"] for d in summary["layers"]} == models.gpt2_quantized
    [skipped] = summary["layers_skipped"]
    assert skipped["name"] == "lm_head" and skipped["reason"]
    assert summary["mean_loss"] <= summary["mean_rtn_loss"]
    assert summary["file_bytes"] == exported.path.stat().st_size
    assert summary["config"]["bits"] == 4 and summary["config"]["group_size"] == 32
    assert summary["calibration"]["nsamples"] == 2 and summary["calibration"]["seqlen"] == 16


def test_quiet_prints_nothing_and_default_output_name(models, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    rc, out, err = _run_main([str(models.gpt2), *GPT2_ARGS, "--quiet"], capsys)
    assert rc == 0, err
    assert out == ""
    assert "Traceback" not in err and ERROR not in err
    assert _tree(tmp_path) == [f"{models.gpt2.name}-gptq-w4g32.onnx"]  # tiny-gpt2-gptq-w4g32.onnx, nothing else


# --------------------------------------------------------------------------- gptq-inspect


def test_inspect_prints_the_layer_table(exported, models, capsys):
    assert exported.rc == 0, exported.err
    rc = inspect_main([str(exported.path)])
    out, err = capsys.readouterr()
    assert rc == 0 and err == ""
    for name in models.gpt2_quantized:
        assert name in out
    assert "left in float: lm_head" in out


def test_inspect_json_has_one_node_per_quantized_layer(exported, models, capsys):
    assert exported.rc == 0, exported.err
    rc = inspect_main([str(exported.path), "--json"])
    out, err = capsys.readouterr()
    assert rc == 0 and err == ""
    report = json.loads(out)
    nodes = report["quantized_nodes"]
    assert len(nodes) == len(models.gpt2_quantized)
    assert {n["bits"] for n in nodes} == {4} and {n["group_size"] for n in nodes} == {32}
    assert sorted((n["K"], n["N"]) for n in nodes) == sorted((d["K"], d["N"]) for d in report["layers"])
    assert {d["name"] for d in report["layers"]} == models.gpt2_quantized


@pytest.mark.parametrize("case", ["not-onnx", "missing"])
def test_inspect_bad_file(case, tmp_path, capsys):
    path = tmp_path / "model.onnx"
    if case == "not-onnx":
        path.write_bytes(random.Random(0).randbytes(4096))
    rc = inspect_main([str(path)])
    out, err = capsys.readouterr()
    phrase = "is not a readable ONNX model" if case == "not-onnx" else "does not exist"
    _assert_bad_input(rc, out, err, (phrase,), prefix=INSPECT_ERROR)
