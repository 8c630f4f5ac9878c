"""What a cold ``whisper-spec`` process imports: only what the chosen verb needs (issue 22).

Each case runs the CLI in a fresh interpreter and lists ``sys.modules`` at exit, so an eager import added
anywhere on the path (the text stack, the demo, the evaluation, plotting, transformers) makes it fail.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

LIBRIVOX = Path("/usr/share/pocketsphinx/test/data/librivox")

# Runs the CLI with argv and prints the top-level modules and whisper_spec's submodules imported by then.
_LIST_MODULES = """
import json, sys
from whisper_spec.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print(json.dumps(sorted(sys.modules)))
"""

# Never needed to transcribe or to print help.
_NEVER = ("matplotlib", "evaluation", "whisper_spec.text", "whisper_spec.examples", "whisper_spec.server",
          "gradio", "jiwer", "faster_whisper", "ctranslate2", "fastapi", "ray")


def _imported(argv: list[str], cwd) -> set[str]:
    done = subprocess.run([sys.executable, "-c", _LIST_MODULES, *argv], capture_output=True, text=True,
                          cwd=cwd, check=True)
    return set(json.loads(done.stdout.strip().splitlines()[-1]))


def _offending(modules: set[str], banned) -> list[str]:
    return sorted(m for m in modules if any(m == b or m.startswith(b + ".") for b in banned))


@pytest.mark.parametrize("argv", [["--help"], ["transcribe", "--help"]])
def test_help_imports_neither_transformers_nor_extras(argv, tmp_path):
    modules = _imported(argv, tmp_path)
    assert "whisper_spec.cli" in modules
    assert _offending(modules, _NEVER + ("transformers",)) == []


def test_top_level_help_does_not_import_torch(tmp_path):
    assert _offending(_imported(["--help"], tmp_path), ("torch",)) == []


def test_transcribe_run_imports_no_demo_evaluation_or_plotting(tmp_path):
    clip = sorted(LIBRIVOX.glob("*.wav"))[0]
    modules = _imported(["transcribe", str(clip), "--formats", "txt", "--output-dir", str(tmp_path),
                         "--no-speculative"], tmp_path)
    assert [p.read_text().strip() != "" for p in tmp_path.glob("*.txt")] == [True], "the clip must be transcribed"
    assert "whisper_spec.audio" in modules
    assert _offending(modules, _NEVER) == []
