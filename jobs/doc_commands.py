#!/usr/bin/env python3
"""Run every command of README.md and docs/*.md as written, and record the result.

Issue 7's definition of done: "Every command in README and docs/ was run as written
on a fresh clone." This tool finds those commands and runs them (stdlib only; plain
``python3``):

    python3 jobs/doc_commands.py list [--root DIR]
    python3 jobs/doc_commands.py run --root DIR [--only PATTERN] [--timeout S]
        [--record FILE] [--only-changed RECORD] [--logs DIR] [--prelude auto|none]

What counts as a command
    Fenced code blocks whose info string starts with ``bash``, ``sh``, ``shell`` or
    ``console`` (shell commands) or ``python``/``py``/``python3`` (snippets), in
    README.md and then docs/*.md (by name), each in document order. Untagged blocks
    and every other tag (``text``, ``toml``, ...) are output or configuration and are
    not run; ``list`` warns about untagged blocks that start like a command, since they
    probably should be tagged. A block whose info string also carries ``no-run``
    (e.g. ```` ```bash no-run ````) is a synopsis, not a command: it is listed and
    recorded as not run. A python block whose info string carries ``continued``
    (```` ```python continued ````: "continuing the session above") runs with the
    previous python block of the same document (and what that one continues) before
    it, in one interpreter; its sha covers that code too.

    Prompts: in a ``console`` block, or any shell block with a line starting ``$ ``,
    only the ``$ `` lines (and their ``\\`` continuation lines) are commands; the rest
    is output. In a python block with ``>>> `` lines, only ``>>> ``/``... `` lines
    are code. ``# comment`` lines are left to bash/python (they are comments there
    too); the "first line" shown skips them.

How a block runs
    Each block runs in a fresh ``bash -e -o pipefail`` (python blocks: ``python FILE``
    started from such a bash), cwd = the checkout, stdin /dev/null, with a per-block
    timeout (default 1800 s; rc 124 on timeout, the whole process group is killed).
    Blocks of one document run one after the other in the same checkout, so a later
    block sees the files an earlier one made. A failed block does not stop the run.

    The environment is the caller's, plus ``OMPI_ALLOW_RUN_AS_ROOT=1`` and
    ``OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1`` (these runs are made as root in containers).
    Nothing else is run before a block, with one exception that README itself asks
    for: its "Running it yourself" section tells the reader "After set-up,
    ``source jobs/_env.sh`` (or activate ``.venv``) puts ``mpirun``, ``python`` and
    ``cocoi`` on the PATH" -- an instruction to run in the shell before the commands
    that follow. So, with ``--prelude auto`` (the default), the tool finds the first
    prose line of README.md (outside code blocks) that mentions
    ``source jobs/_env.sh``; every README block after that line, and every block of
    docs/*.md (read after README), is run with ``source jobs/_env.sh`` prepended.
    README blocks before that line (the Quick start: ``./jobs/local.sh``,
    ``./jobs/test.sh``, which set themselves up) run with nothing prepended, exactly
    as a reader on a fresh clone types them. If README stops saying so, nothing is
    prepended anywhere. ``--prelude none`` turns it off.

The record
    A markdown file (default docs/commands-checked.md under the checkout): one row per
    block -- file:line, sha1 of the block's text (10 hex digits), first command line,
    rc, seconds, commit of the checkout, date -- then the last lines of output of each
    failed block. Full logs go to ``--logs`` (default: a new temporary directory).
    ``--only-changed RECORD`` runs only the blocks whose sha does not appear in RECORD
    with rc 0; the others are carried over into the new record with their old result.
    The record is rewritten after every block, so a long run can be watched.

Exit status: 0 when every block run passed, 1 when any failed, 2 on a usage error.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import fnmatch
import hashlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

SHELL_TAGS = {"bash", "sh", "shell", "console"}
PYTHON_TAGS = {"python", "py", "python3"}
NO_RUN = {"no-run", "norun"}
CONTINUED = {"continued", "continues"}
PRELUDE = "source jobs/_env.sh"
DEFAULT_RECORD = "docs/commands-checked.md"
TAIL_LINES = 20
SHA_LEN = 10

_FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})(?P<info>.*)$")
_LOOKS_LIKE_COMMAND = re.compile(
    r"^(\$ )?(\./|\.venv/|~/|"
    r"(cocoi|mpirun|mpiexec|python3?|pip3?|source|cd|export|bash|sh|git|ruff|pytest|make|"
    r"sbatch|srun|apt-get|apt|sudo)(?=\s|$)|[A-Z_][A-Z0-9_]*=\S*\s)"
)


@dataclass
class Block:
    """One fenced code block of a markdown file."""

    path: str  # relative to the root, e.g. "docs/hdf5.md"
    line: int  # 1-based line of the opening fence
    tag: str  # first word of the info string, lowercased ("" when untagged)
    attrs: list[str]  # the rest of the info string
    text: str  # the block's content, exactly as written (dedented by the fence's indent)
    previous: Block | None = None  # the python block a `continued` one continues

    @property
    def id(self) -> str:
        return f"{self.path}:{self.line}"

    @property
    def full_text(self) -> str:
        """The text, preceded by the blocks it continues (python `continued`)."""
        return (self.previous.full_text + "\n" if self.previous else "") + self.text

    @property
    def sha(self) -> str:
        return hashlib.sha1(self.full_text.encode("utf-8")).hexdigest()[:SHA_LEN]

    @property
    def kind(self) -> str | None:
        """The kind of command: "shell", "python", or None (not a command block)."""
        if self.tag in SHELL_TAGS:
            return "shell"
        if self.tag in PYTHON_TAGS:
            return "python"
        return None

    @property
    def no_run(self) -> bool:
        return any(a.lower() in NO_RUN for a in self.attrs)

    @property
    def script(self) -> str:
        """The code to run: prompts stripped, output lines of prompt-style blocks dropped."""
        if self.kind == "python":
            before = self.previous.script + "\n" if self.previous else ""
            return before + _strip_python_prompts(self.text)
        return _strip_shell_prompts(self.text, console=self.tag == "console")

    @property
    def first_line(self) -> str:
        own = Block(self.path, self.line, self.tag, self.attrs, self.text)
        lines = own.script.splitlines()
        for i, raw in enumerate(lines):
            s = raw.strip()
            if not s or s.startswith("#"):
                continue
            more = s.endswith("\\") or any(x.strip() for x in lines[i + 1 :])
            s = re.sub(r"\s{2,}#\s.*$", "", s)  # a trailing comment set off by spaces
            return s.rstrip("\\").rstrip() + (" …" if more else "")
        return ""


def _strip_shell_prompts(text: str, console: bool) -> str:
    lines = text.splitlines()
    prompted = console or any(ln.startswith("$ ") or ln.rstrip() == "$" for ln in lines)
    if not prompted:
        return text
    out: list[str] = []
    cont = False
    for ln in lines:
        if cont:
            out.append(ln)
        elif ln.startswith("$ ") or ln.rstrip() == "$":
            out.append(ln[2:])
        else:
            continue  # output
        cont = ln.rstrip().endswith("\\")
    return "\n".join(out) + "\n"


def _strip_python_prompts(text: str) -> str:
    lines = text.splitlines()
    if not any(ln.startswith(">>>") for ln in lines):
        return text
    out = []
    for ln in lines:
        if ln.startswith(">>> ") or ln.startswith("... "):
            out.append(ln[4:])
        elif ln.rstrip() in (">>>", "..."):
            out.append("")
    return "\n".join(out) + "\n"


def parse_markdown(text: str, path: str) -> tuple[list[Block], list[tuple[int, str]]]:
    """All fenced blocks of one file, in order, and the prose lines (number, text)."""
    blocks: list[Block] = []
    prose: list[tuple[int, str]] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m or (m["fence"][0] == "`" and "`" in m["info"]):
            prose.append((i + 1, lines[i]))
            i += 1
            continue
        fence, indent = m["fence"], len(m["indent"])
        words = m["info"].strip().strip("{}").split()
        tag = words[0].lstrip(".").lower() if words else ""
        body: list[str] = []
        j = i + 1
        closer = re.compile(r"^ {0,3}" + re.escape(fence[0]) + "{" + str(len(fence)) + r",}\s*$")
        while j < len(lines) and not closer.match(lines[j]):
            ln = lines[j]
            strip = min(indent, len(ln) - len(ln.lstrip(" ")))
            body.append(ln[strip:])
            j += 1
        text_ = "\n".join(body) + ("\n" if body else "")
        blocks.append(Block(path, i + 1, tag, words[1:], text_))
        i = j + 1  # an unclosed fence runs to the end of the file
    return blocks, prose


def documents(root: Path) -> list[Path]:
    """README.md, then docs/*.md by name (those that exist)."""
    docs = [root / "README.md"] if (root / "README.md").is_file() else []
    docs += sorted(p for p in (root / "docs").glob("*.md") if p.is_file())
    return docs


def extract(root: Path, record_path: Path | None = None) -> tuple[list[Block], list[Block]]:
    """(command blocks, untagged blocks that look like commands), in document order.

    The record (docs/commands-checked.md, or record_path when inside docs/) is left
    out: it is not documentation.
    """
    commands: list[Block] = []
    suspicious: list[Block] = []
    for doc in documents(root):
        if doc.resolve() == (root / DEFAULT_RECORD).resolve() or (
            record_path is not None and doc.resolve() == record_path.resolve()
        ):
            continue
        rel = doc.relative_to(root).as_posix()
        blocks, _ = parse_markdown(doc.read_text(encoding="utf-8"), rel)
        last_python: Block | None = None
        for b in blocks:
            if b.kind == "python":
                if any(a.lower() in CONTINUED for a in b.attrs):
                    b.previous = last_python
                last_python = b
            if b.kind is not None:
                commands.append(b)
            elif b.tag == "":
                first = next((ln for ln in b.text.splitlines() if ln.strip()), "")
                if _LOOKS_LIKE_COMMAND.match(first.strip()):
                    suspicious.append(b)
    return commands, suspicious


def prelude_line(root: Path) -> int | None:
    """Line of README's prose telling the reader to `source jobs/_env.sh`, or None."""
    readme = root / "README.md"
    if not readme.is_file():
        return None
    _, prose = parse_markdown(readme.read_text(encoding="utf-8"), "README.md")
    for num, ln in prose:
        if PRELUDE in ln:
            return num
    return None


def needs_prelude(block: Block, readme_line: int | None) -> bool:
    if readme_line is None:
        return False
    return block.path != "README.md" or block.line > readme_line


# ---------------------------------------------------------------------------- running


@dataclass
class Result:
    block_id: str
    sha: str
    first: str
    rc: int | None  # None: not run (no-run)
    seconds: float
    commit: str
    date: str
    tail: list[str] = field(default_factory=list)
    note: str = ""  # "timeout", "no-run", "carried over"


def _git(root: Path, *args: str) -> str:
    """stdout of one git command in ``root``, stripped."""
    done = subprocess.run(
        ["git", "-C", str(root), *args], capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


def git_commit(root: Path) -> str:
    try:
        head = _git(root, "rev-parse", "--short=7", "HEAD")
        dirty = _git(root, "status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def _descendants(pid: int) -> list[int]:
    """Every process below pid (Linux /proc; [] elsewhere). mpirun puts its ranks in
    process groups of their own, so killing the block's group alone can orphan them."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
            ppid = int(text[text.rindex(")") + 2 :].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _kill_group(proc: subprocess.Popen) -> None:
    """End the block: its process group and every descendant, TERM first, then KILL."""
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        pids = _descendants(proc.pid)
        with contextlib.suppress(ProcessLookupError):  # the group may be gone already
            os.killpg(proc.pid, sig)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):  # so may a descendant
                os.kill(pid, sig)
        try:
            proc.wait(timeout=wait)
            if not _descendants(proc.pid):
                return
        except subprocess.TimeoutExpired:
            continue


class _Terminated(Exception):
    """SIGTERM/SIGHUP to the tool: stop the running block, write the record, exit."""


def _raise_terminated(signum, frame):
    raise _Terminated(signal.Signals(signum).name)


def run_block(
    block: Block, root: Path, timeout: float, prelude: bool, log: Path
) -> tuple[int, float, list[str], str]:
    """Run one block; (rc, seconds, last lines of output, note)."""
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    pre = PRELUDE + "\n" if prelude else ""
    with tempfile.TemporaryDirectory(prefix="doc_commands-") as tmp:
        if block.kind == "python":
            snippet = Path(tmp) / "snippet.py"
            snippet.write_text(block.script, encoding="utf-8")
            script = f'{pre}exec python "{snippet}"\n'
        else:
            script = pre + block.script
        script_file = Path(tmp) / "block.sh"
        script_file.write_text(script, encoding="utf-8")
        log.parent.mkdir(parents=True, exist_ok=True)
        note = ""
        t0 = time.monotonic()
        header = [f"# {block.id} sha {block.sha}", "# script:"]
        header += [f"#   {ln}" for ln in script.splitlines()] + ["# output:"]
        with open(log, "w", encoding="utf-8") as out:
            out.write("".join(ln + "\n" for ln in header))
            out.flush()
            proc = subprocess.Popen(
                ["bash", "-e", "-o", "pipefail", str(script_file)],
                cwd=root,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            try:
                rc = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                _kill_group(proc)
                rc, note = 124, f"timeout after {timeout:g} s"
            except BaseException:
                _kill_group(proc)
                raise
        seconds = time.monotonic() - t0
    lines = log.read_text(encoding="utf-8", errors="replace").splitlines()
    return rc, seconds, lines[len(header) :][-TAIL_LINES:], note


# ----------------------------------------------------------------------------- record

_HEADER = "| block | sha | first command line | rc | s | commit | date |"


def _cell(s: str) -> str:
    s = s.replace("|", "\\|")
    return f"`` {s} ``" if "`" in s else f"`{s}`"


def _uncell(s: str) -> str:
    s = s.strip()
    if s.startswith("`` ") and s.endswith(" ``"):
        s = s[3:-3]
    elif s.startswith("`") and s.endswith("`"):
        s = s[1:-1]
    return s.replace("\\|", "|")


def write_record(
    path: Path, results: list[Result], root_note: str, suspicious: list[Block], done: bool
) -> None:
    now = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    ran = [r for r in results if r.rc is not None]
    failed = [r for r in ran if r.rc != 0]
    lines = [
        "# Commands checked",
        "",
        "Every bash/sh/shell/console and python block of README.md and docs/*.md, run as",
        "written by `python3 jobs/doc_commands.py run` (see its docstring for the rules).",
        root_note,
        "",
        f"{'Finished' if done else 'In progress, last updated'} {now}: {len(ran)} blocks run, "
        f"{len(ran) - len(failed)} passed, {len(failed)} failed"
        + (f", {len(results) - len(ran)} not run (no-run)." if len(results) > len(ran) else "."),
        "",
        _HEADER,
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        rc = "not run" if r.rc is None else str(r.rc)
        if r.note:
            rc += f" ({r.note})"
        lines.append(
            f"| {r.block_id} | {r.sha} | {_cell(r.first)} | {rc} | {r.seconds:.1f} "
            f"| {r.commit} | {r.date} |"
        )
    if failed:
        lines += ["", "## Failed blocks: last lines of output", ""]
        for r in failed:
            tail = r.tail or ["(no output)"]
            lines += [f"### {r.block_id} (rc {r.rc})", "", "```text", *tail, "```", ""]
    if suspicious:
        lines += [
            "",
            "## Untagged blocks that look like commands (not run)",
            "",
            *[f"- {b.id}: `{b.text.splitlines()[0].strip()}`" for b in suspicious],
        ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines).rstrip() + "\n", encoding="utf-8")


def read_record(path: Path) -> dict[str, Result]:
    """sha -> its last row with rc 0 in an existing record."""
    passed: dict[str, Result] = {}
    for ln in path.read_text(encoding="utf-8").splitlines():
        if not ln.startswith("| ") or ln.startswith(_HEADER):
            continue
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", ln)[1:-1]]
        if len(cells) != 7:
            continue
        m = re.match(r"-?\d+", cells[3])
        if not m or int(m.group()) != 0:
            continue
        try:
            seconds = float(cells[4])
        except ValueError:
            continue
        passed[cells[1]] = Result(
            cells[0], cells[1], _uncell(cells[2]), 0, seconds, cells[5], cells[6]
        )
    return passed


# -------------------------------------------------------------------------------- CLI


def _select(blocks: list[Block], pattern: str | None) -> list[Block]:
    if not pattern:
        return blocks
    if any(c in pattern for c in "*?["):
        return [b for b in blocks if fnmatch.fnmatch(b.id, pattern)]
    return [b for b in blocks if pattern in b.id]


def cmd_list(args: argparse.Namespace) -> int:
    root = Path(args.root).resolve()
    blocks, suspicious = extract(root)
    for b in _select(blocks, args.only):
        flag = " [no-run]" if b.no_run else ""
        print(f"{b.id:<28} {b.sha}  {b.tag:<7} {b.first_line}{flag}")
    for b in suspicious:
        first = b.text.splitlines()[0].strip()
        print(
            f"note: untagged block {b.id} starts like a command ({first!r}); "
            "tag it ```bash to have it run",
            file=sys.stderr,
        )
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    root = Path(args.root).resolve()
    if not root.is_dir():
        print(f"doc_commands: no such directory: {root}", file=sys.stderr)
        return 2
    record = Path(args.record) if args.record else root / DEFAULT_RECORD
    if not record.is_absolute():
        record = Path.cwd() / record
    blocks, suspicious = extract(root, record)
    blocks = _select(blocks, args.only)
    previous: dict[str, Result] = {}
    if args.only_changed:
        previous = read_record(Path(args.only_changed))
    logs = Path(args.logs) if args.logs else Path(tempfile.mkdtemp(prefix="doc_commands-logs-"))
    readme_line = prelude_line(root) if args.prelude == "auto" else None
    commit = git_commit(root)
    if readme_line is None:
        root_note = "Nothing was prepended to the blocks."
    else:
        root_note = (
            f"`{PRELUDE}` was prepended to README blocks after README.md:{readme_line} "
            "(where README tells the reader to run it) and to every docs/ block."
        )
    print(f"doc_commands: {len(blocks)} blocks of {root} (commit {commit}); logs in {logs}")
    print(f"doc_commands: {root_note}")
    results: list[Result] = []
    saved = {sig: signal.signal(sig, _raise_terminated) for sig in (signal.SIGTERM, signal.SIGHUP)}
    b = None
    try:
        for i, b in enumerate(blocks, 1):
            date = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
            tag = f"[{i}/{len(blocks)}] {b.id} {b.sha}"
            if b.no_run:
                results.append(
                    Result(b.id, b.sha, b.first_line, None, 0.0, commit, date, [], "no-run")
                )
                print(f"{tag} not run (no-run): {b.first_line}", flush=True)
                continue
            if b.sha in previous:
                old = previous[b.sha]
                results.append(
                    Result(b.id, b.sha, b.first_line, 0, old.seconds, old.commit, old.date, [])
                )
                print(f"{tag} unchanged, passed at {old.commit}: skipped", flush=True)
                continue
            print(f"{tag} {b.first_line}", flush=True)
            log = logs / (re.sub(r"[^A-Za-z0-9_.-]+", "_", b.id) + ".log")
            rc, seconds, tail, note = run_block(
                b, root, args.timeout, needs_prelude(b, readme_line), log
            )
            results.append(Result(b.id, b.sha, b.first_line, rc, seconds, commit, date, tail, note))
            status = "ok" if rc == 0 else f"FAILED rc {rc}" + (f" ({note})" if note else "")
            print(f"    {status} in {seconds:.1f} s", flush=True)
            if rc != 0:
                for ln in tail[-5:]:
                    print(f"    | {ln}", flush=True)
            write_record(record, results, root_note, suspicious, done=False)
    except (KeyboardInterrupt, _Terminated) as exc:
        why = str(exc) or "SIGINT"
        date = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
        if b is not None:
            results.append(Result(b.id, b.sha, b.first_line, 130, 0.0, commit, date, [], why))
        write_record(record, results, root_note, suspicious, done=False)
        print(f"doc_commands: interrupted ({why}); record: {record}", flush=True)
        return 130
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
    write_record(record, results, root_note, suspicious, done=True)
    failed = [r for r in results if r.rc not in (0, None)]
    print(
        f"doc_commands: {len(results)} blocks, {len(failed)} failed; record: {record}",
        flush=True,
    )
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="doc_commands.py",
        description="List or run the command blocks of README.md and docs/*.md.",
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    pl = sub.add_parser("list", help="print every command block: id, sha, tag, first line")
    pl.add_argument("--root", default=str(Path(__file__).resolve().parents[1]))
    pl.add_argument("--only", help="substring or glob of the block id (file:line)")
    pr = sub.add_parser("run", help="run the blocks and write a markdown record")
    pr.add_argument("--root", required=True, help="the checkout to run in (cwd of every block)")
    pr.add_argument("--only", help="substring or glob of the block id (file:line)")
    pr.add_argument("--timeout", type=float, default=1800.0, help="seconds per block")
    pr.add_argument("--record", help=f"markdown record (default ROOT/{DEFAULT_RECORD})")
    pr.add_argument(
        "--only-changed",
        metavar="RECORD",
        help="skip blocks whose sha passed (rc 0) in this record; carry their rows over",
    )
    pr.add_argument("--logs", help="directory for the full output of each block")
    pr.add_argument(
        "--prelude",
        choices=("auto", "none"),
        default="auto",
        help=f"auto: prepend `{PRELUDE}` where README says to run it (default)",
    )
    args = p.parse_args(argv)
    return cmd_list(args) if args.cmd == "list" else cmd_run(args)


if __name__ == "__main__":
    sys.exit(main())
