"""Serial tests of jobs/doc_commands.py: the block extractor and `run` on a tiny tree."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[1] / "jobs" / "doc_commands.py"
_spec = importlib.util.spec_from_file_location("doc_commands", _PATH)
dc = importlib.util.module_from_spec(_spec)
sys.modules["doc_commands"] = dc  # dataclasses look the module up by name
_spec.loader.exec_module(dc)

FENCE = "```"

README = f"""# Demo

{FENCE}bash
./setup.sh   # first
{FENCE}

After set-up, `source jobs/_env.sh` puts the tools on the PATH.

{FENCE}text
output, not a command
{FENCE}

{FENCE}
cocoi plan --n 10
{FENCE}

{FENCE}toml
k = 4
{FENCE}

{FENCE}console
$ cocoi info \\
    --verbose
python 3.11
{FENCE}
"""

GUIDE = f"""# Guide

{FENCE}sh
echo one
{FENCE}

- a list item
  {FENCE}shell
  echo two
  {FENCE}

{FENCE}python
>>> x = 1
>>> print(x)
1
{FENCE}

{FENCE}bash no-run
cocoi report X.h5 [--csv DIR]
{FENCE}
"""


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    (tmp_path / "docs").mkdir()
    (tmp_path / "README.md").write_text(README)
    (tmp_path / "docs" / "guide.md").write_text(GUIDE)
    (tmp_path / "docs" / "another.md").write_text(f"{FENCE}bash\necho first doc\n{FENCE}\n")
    return tmp_path


def test_tags_order_and_skipped_blocks(tree: Path):
    blocks, suspicious = dc.extract(tree)
    assert [(b.id, b.tag) for b in blocks] == [
        ("README.md:3", "bash"),
        ("README.md:21", "console"),
        ("docs/another.md:1", "bash"),  # README first, then docs/*.md by name
        ("docs/guide.md:3", "sh"),
        ("docs/guide.md:8", "shell"),
        ("docs/guide.md:12", "python"),
        ("docs/guide.md:18", "bash"),
    ]
    assert [b.kind for b in blocks] == ["shell"] * 5 + ["python", "shell"]
    # untagged: not run, but flagged because it starts like a command
    assert [b.id for b in suspicious] == ["README.md:13"]
    assert [b.no_run for b in blocks] == [False] * 6 + [True]


def test_prompts_comments_and_first_line(tree: Path):
    blocks, _ = dc.extract(tree)
    by_id = {b.id: b for b in blocks}
    assert by_id["README.md:3"].first_line == "./setup.sh"
    console = by_id["README.md:21"]
    assert console.script == "cocoi info \\\n    --verbose\n"  # output line dropped
    assert console.first_line == "cocoi info …"
    assert by_id["docs/guide.md:8"].text == "echo two\n"  # dedented like the fence
    assert by_id["docs/guide.md:12"].script == "x = 1\nprint(x)\n"


def test_sha_is_stable_and_follows_the_text(tree: Path):
    first = {b.id: b.sha for b in dc.extract(tree)[0]}
    readme = tree / "README.md"
    readme.write_text("Intro line that moves every block down.\n\n" + readme.read_text())
    second = {b.id: b.sha for b in dc.extract(tree)[0]}
    assert first["README.md:3"] == second["README.md:5"]  # moved, same text: same sha
    assert len(first["README.md:3"]) == dc.SHA_LEN
    assert first["docs/guide.md:3"] == second["docs/guide.md:3"]
    (tree / "docs" / "guide.md").write_text(GUIDE.replace("echo one", "echo uno"))
    third = {b.id: b.sha for b in dc.extract(tree)[0]}
    assert third["docs/guide.md:3"] != first["docs/guide.md:3"]


def test_prelude_only_after_readme_says_so(tree: Path):
    line = dc.prelude_line(tree)
    assert line == 7  # prose, not a code block
    blocks = {b.id: b for b in dc.extract(tree)[0]}
    assert not dc.needs_prelude(blocks["README.md:3"], line)
    assert dc.needs_prelude(blocks["README.md:21"], line)
    assert dc.needs_prelude(blocks["docs/guide.md:3"], line)
    (tree / "README.md").write_text("# no set-up sentence\n")
    assert dc.prelude_line(tree) is None


def test_run_records_ok_and_failing_blocks(tmp_path: Path, capsys):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "two.md").write_text(
        f"{FENCE}bash\necho made > made.txt\n{FENCE}\n\n"
        f"{FENCE}bash\ncat made.txt\necho 'broken on purpose' >&2\nexit 7\necho never\n{FENCE}\n"
    )
    record = tmp_path / "record.md"
    rc = dc.main(
        ["run", "--root", str(tmp_path), "--record", str(record), "--logs", str(tmp_path / "logs")]
    )
    assert rc == 1
    text = record.read_text()
    rows = [ln for ln in text.splitlines() if ln.startswith("| docs/")]
    assert len(rows) == 2
    assert "| 0 |" in rows[0] and "| 7 |" in rows[1]
    assert "`echo made > made.txt`" in rows[0]
    assert "broken on purpose" in text and "made" in text  # the failed block saw the file
    assert "never" not in text.split("## Failed")[1]  # bash -e stopped at exit 7
    # --only-changed skips the block that passed, reruns the failed one
    (tmp_path / "made.txt").unlink()
    record2 = tmp_path / "record2.md"
    rc = dc.main(
        [
            "run",
            "--root",
            str(tmp_path),
            "--record",
            str(record2),
            "--only-changed",
            str(record),
            "--logs",
            str(tmp_path / "logs"),
        ]
    )
    assert rc == 1
    assert not (tmp_path / "made.txt").exists()  # block 1 was not rerun
    assert "unchanged" in capsys.readouterr().out
    assert len([ln for ln in record2.read_text().splitlines() if ln.startswith("| docs/")]) == 2


def test_run_timeout_and_python_block(tmp_path: Path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "t.md").write_text(
        f"{FENCE}python\nprint('py ok')\n{FENCE}\n\n{FENCE}bash\nsleep 30\n{FENCE}\n"
    )
    record = tmp_path / "r.md"
    rc = dc.main(
        [
            "run",
            "--root",
            str(tmp_path),
            "--record",
            str(record),
            "--timeout",
            "1",
            "--logs",
            str(tmp_path / "logs"),
        ]
    )
    assert rc == 1
    rows = [ln for ln in record.read_text().splitlines() if ln.startswith("| docs/")]
    assert "| 0 |" in rows[0]
    assert "| 124 (timeout after 1 s) |" in rows[1]


def test_continued_python_block_runs_after_the_one_it_continues(tmp_path: Path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "s.md").write_text(
        f"{FENCE}python\nx = 41\n{FENCE}\n\n{FENCE}bash\necho between\n{FENCE}\n\n"
        f"{FENCE}python continued\nassert x + 1 == 42\nprint('continued ok')\n{FENCE}\n\n"
        f"{FENCE}python\nprint(x)\n{FENCE}\n"
    )
    blocks = dc.extract(tmp_path)[0]
    cont, alone = blocks[2], blocks[3]
    assert cont.previous is blocks[0] and alone.previous is None
    assert cont.script == "x = 41\n\nassert x + 1 == 42\nprint('continued ok')\n"
    assert cont.first_line == "assert x + 1 == 42 …"  # its own first line
    record = tmp_path / "r.md"
    args = ["run", "--root", str(tmp_path), "--record", str(record)]
    assert dc.main([*args, "--logs", str(tmp_path / "logs")]) == 1
    rows = [ln for ln in record.read_text().splitlines() if ln.startswith("| docs/")]
    assert [r.split("|")[4].strip() for r in rows] == ["0", "0", "0", "1"]  # NameError: x
