"""`sd35 tokens`: text and JSON output, the >256 T5 warning, bad input, no torch needed."""

from __future__ import annotations

import io
import json
import subprocess
import sys

from sd35.cli.main import main


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["tokens", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_json_output(capsys) -> None:
    code, out, _ = run_cli(capsys, "a photo of a cat", "--json")
    assert code == 0
    data = json.loads(out)
    assert set(data) == {"clip_l", "clip_g", "t5xxl", "warnings"}
    assert data["clip_l"] == {"ids": [[49406, 320, 1125, 539, 320, 2368, 49407] + [49407] * 70], "count": 5}
    assert data["clip_g"] == {"ids": [[49406, 320, 1125, 539, 320, 2368, 49407] + [0] * 70], "count": 5}
    assert data["t5xxl"] == {"ids": [[3, 9, 1202, 13, 3, 9, 1712, 1] + [0] * 69], "count": 7}
    assert data["warnings"] == []


def test_json_long_prompt_warns(capsys, caplog) -> None:
    prompt = " ".join(["a photo of a cat"] * 60)
    code, out, _ = run_cli(capsys, prompt, "--json")
    data = json.loads(out)
    assert code == 0
    assert len(data["clip_l"]["ids"]) == 4 and all(len(row) == 77 for row in data["clip_l"]["ids"])
    assert data["clip_l"]["count"] == 300
    assert data["t5xxl"]["count"] == 420 and len(data["t5xxl"]["ids"][0]) == 421
    assert len(data["warnings"]) == 1 and "420 T5 tokens" in data["warnings"][0]
    assert any("420 T5 tokens" in r.getMessage() and r.levelname == "WARNING" for r in caplog.records)  # logged


def test_text_output(capsys) -> None:
    code, out, _ = run_cli(capsys, "a (photo:1.3) of a \\(cat\\)")
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "clip_l: 7 tokens, 1 row(s) of 77 ids (pad 49407)"
    assert lines[1] == "  row 1: 49406 320 1125*1.3 539 320 263 2368 264 49407 + 68 x 49407 (padding)"
    assert lines[3].endswith("49407 + 68 x 0 (padding)")
    assert lines[4].startswith("t5xxl: ")
    assert not any(line.startswith("warning") for line in lines)
    code, out, _ = run_cli(capsys, " ".join(["cat"] * 257))
    assert "warning: prompt has 257 T5 tokens" in out
    assert "clip_l: 257 tokens, 4 row(s) of 77 ids" in out


def test_bad_input(capsys, monkeypatch) -> None:
    for prompt in ("((unbalanced", "a ) b ((c", "\x00\x07\x1b ctrl", "日本語 😀 ünïcödé"):
        code, out, _ = run_cli(capsys, prompt, "--json")
        assert code == 0 and json.loads(out)["clip_l"]["count"] > 0
    code, _, err = run_cli(capsys, "(x:nan)")
    assert code == 2 and "not a finite number" in err
    monkeypatch.setattr(sys, "stdin", io.StringIO("cat " * 25_000))  # 100 kB from stdin
    code, out, _ = run_cli(capsys, "-", "--json")
    data = json.loads(out)
    assert data["t5xxl"]["count"] == 25_000 and any("too long to encode" in w for w in data["warnings"])


def test_bad_tokenizer_folder(capsys, tmp_path) -> None:
    code, _, err = run_cli(capsys, "cat", "--tokenizers", str(tmp_path / "nope"))
    assert code == 2 and "does not exist" in err


def test_tokens_command_does_not_import_torch() -> None:
    code = (
        "import argparse, sys; from sd35.cli import cmd_tokens; "
        "cmd_tokens.run(argparse.Namespace(prompt='a cat', json=True, tokenizers=None)); "
        "print('torch' in sys.modules, file=sys.stderr)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(result.stdout)["clip_l"]["count"] == 2
    assert result.stderr.strip().splitlines()[-1] == "False"
