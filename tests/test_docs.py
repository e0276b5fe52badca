"""The reference documents' runnable blocks run, so the docs cannot drift from the code.

A fenced block whose info string is `bash runnable` or `python runnable` is run, in order, in a fresh
copy of the repository (one copy per document), with this Python first on PATH.
"""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import REPO, skip_when_offline
from nanogpt.files import shared_data_dir

BLOCK = re.compile(r"^```(bash|python) runnable\n(.*?)^```", re.S | re.M)
DOCS = sorted((REPO / "references").glob("*.md"))


def runnable_blocks(path):
    return BLOCK.findall(path.read_text())


def test_every_reference_document_exists_and_has_runnable_blocks():
    assert [p.name for p in DOCS] == ["architecture.md", "data.md", "training.md"]
    assert all(runnable_blocks(p) for p in DOCS)


@pytest.mark.slow
@pytest.mark.parametrize("doc", DOCS, ids=[p.name for p in DOCS])
def test_runnable_blocks(doc, tmp_path):
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True, text=True, check=True
    )
    copy = tmp_path / "repo"
    for name in files.stdout.splitlines():
        if (REPO / name).is_file():
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, copy / name)
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    if shared_data_dir() is not None:
        env["NANOGPT_SHARED_DATA"] = str(shared_data_dir())
    for language, code in runnable_blocks(doc):
        command = ["bash", "-e", "-c", code] if language == "bash" else [sys.executable, "-c", code]
        result = skip_when_offline(
            subprocess.run(command, cwd=copy, env=env, capture_output=True, text=True, timeout=600)
        )
        assert result.returncode == 0, (
            f"{doc.name} block failed:\n{code}\n{result.stdout[-2000:]}\n{result.stderr[-6000:]}"
        )
