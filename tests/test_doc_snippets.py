"""
The documentation's snippets work as written: every command in README.rst and docs/*.rst
is run against a gateway started as ``make run`` starts it, and a snippet that fails
fails this test.

Which blocks are snippets.  Every literal block of the pages is looked at.  A block is a
*command* when its first line starts with one of :data:`COMMAND_WORDS` (``curl``,
``python``, ``make``, ``export``, ``<script``, ``import`` ...), or when it is a
``.. code-block::`` in a language of :data:`RUNNABLE`.  Every other block (messages,
answers, rule files, logs, a layout) is an illustration and is not run.  A command that
cannot run here (it needs a CouchDB of your own, systemd, root, or it starts a server
itself) must say so: an RST comment right before its ``.. code-block::`` directive,

    .. not run by the tests: <why>

and nothing else skips a command (a command-like block without it is run; a comment
without a reason fails).  The JavaScript snippets run in Chromium with the browser tests
(tests/browser/snippets.test.js), which asks :func:`snippets` for them; this module runs
the shell and Python ones.

How shell commands run.  The shell blocks of one page run in order in one ``bash``
(variables set by one block are there for the next, as in a terminal), with
``http://127.0.0.1:8080`` replaced by the test gateway's address, and with the
environment the pages name for ``make run``: ``REALTIME_ADMIN_KEY=s3cret-admin-key``,
``JWT_SECRET``, ``REALTIME_DEMO=true``.  The demo user is connected (one WebSocket) when a
page starts.  Each command must exit 0; a ``curl`` must get a 2xx answer unless the
documented answer below it is an error, and then that error.  Lines right after a command
that start with ``{`` (and their indented continuation lines) are its documented answer:
the real answer must be JSON with at least the same top-level fields (and the same
``error``).
"""

from __future__ import annotations

import glob
import json
import os
import re
import subprocess
import sys
import tempfile
import threading

import docutils.core
import docutils.nodes
from twisted.internet.defer import inlineCallbacks
from twisted.trial import unittest

from realtime.dev.embedded import find_pouchdb_server, free_port, stop_process
from tests import harness
from tests.fakes import SECRET as JWT_SECRET
from tests.fakes import make_token

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = ["README.rst"] + sorted(os.path.relpath(p, REPO)
                                for p in glob.glob(os.path.join(REPO, "docs", "*.rst")))

ADMIN_KEY = "s3cret-admin-key"  # the admin key the pages' examples use

#: a block whose first line starts with one of these is a command
COMMAND_WORDS = ("curl", "python", "python3", "make", "export", "twistd", "npm", "node",
                 "pip", "sudo", "systemctl", "K=", "B=", "<script", "import ", "const ",
                 "let ", "await ", "async function", "function ")
#: code-block languages that are commands
RUNNABLE = {"shell": "shell", "sh": "shell", "bash": "shell", "console": "shell",
            "javascript": "javascript", "js": "javascript", "html": "javascript",
            "python": "python"}
NOT_RUN = re.compile(r"^not run by the tests:\s*(.*)$", re.S)
_ENV_ASSIGNMENT = re.compile(r"^[A-Z_][A-Z0-9_]*=\S")


def language_of(text: str, classes) -> str | None:
    """The block's language when it is a command, else None (an illustration)."""
    for name in classes:
        if name in RUNNABLE:
            return RUNNABLE[name]
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    if not (first.startswith(COMMAND_WORDS) or _ENV_ASSIGNMENT.match(first)):
        return None
    if first.startswith(("<script", "import ", "const ", "let ", "await ", "async function",
                         "function ")):
        return "javascript"
    return "shell"


def snippets(page: str):
    """[(line, language, text, reason or None)] of the page's commands, in order."""
    path = os.path.join(REPO, page)
    with open(path, encoding="utf-8") as f:
        source = f.read()
    doctree = docutils.core.publish_doctree(
        source, source_path=path, settings_overrides={"report_level": 5})
    found = []
    for block in doctree.findall(docutils.nodes.literal_block):
        text = block.astext()
        language = language_of(text, block.get("classes", []))
        if language is None:
            continue
        reason = None
        index = block.parent.index(block)
        previous = block.parent[index - 1] if index else None
        if isinstance(previous, docutils.nodes.comment):
            match = NOT_RUN.match(previous.astext().strip())
            if match:
                reason = match.group(1).strip() or "(no reason)"
        line = block.line or _line_of(source, text)
        found.append((line, language, text, reason))
    return found


def _line_of(source: str, text: str) -> int:
    first = text.strip().splitlines()[0]
    for number, line in enumerate(source.splitlines(), 1):
        if line.strip() == first.strip():
            return number
    return 0


def commands(text: str):
    """[(command, documented answer text or None)] of a shell block."""
    result = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.strip() or line.lstrip().startswith("#"):
            i += 1
            continue
        command = line
        while command.rstrip().endswith("\\") and i + 1 < len(lines):
            i += 1
            command = command.rstrip()[:-1] + " " + lines[i].strip()
        i += 1
        answer = []
        if i < len(lines) and lines[i].startswith("{"):
            answer.append(lines[i])
            i += 1
            while i < len(lines) and lines[i].startswith((" ", "\t")) and lines[i].strip():
                answer.append(lines[i])
                i += 1
        result.append((command, "\n".join(answer) or None))
    return result


#: every curl of a page writes its answer and status here (a function of the page's bash)
CURL_WRAPPER = r'''
__n=0
curl() {
  __n=$((__n + 1))
  command curl -sS --max-time 20 -o "$SNIPPET_DIR/$__n.body" -w '%{http_code}' "$@" \
    > "$SNIPPET_DIR/$__n.code"
}
'''


class Gateway:
    """``python -m realtime`` as ``make run`` starts it (embedded CouchDB, demo on)."""

    def __init__(self):
        self.port = free_port()
        env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp"),
               "PYTHONPATH": REPO, "REALTIME_DEMO": "true",
               "REALTIME_LISTEN": f"tcp:{self.port}:interface=127.0.0.1",
               "REALTIME_ADMIN_KEY": ADMIN_KEY, "JWT_SECRET": JWT_SECRET,
               "POUCHDB_SERVER": find_pouchdb_server()}
        self.env = env
        self.process = subprocess.Popen([sys.executable, "-m", "realtime"], cwd=REPO, env=env,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, text=True)
        self.lines = []
        ready = threading.Event()

        def read():
            for line in self.process.stdout:
                self.lines.append(line.rstrip("\n"))
                if line.startswith("realtime: ready"):
                    ready.set()
            ready.set()

        self.reader = threading.Thread(target=read, daemon=True)
        self.reader.start()
        if not ready.wait(90) or self.process.poll() is not None:
            self.stop()
            raise AssertionError("the gateway did not start:\n" + "\n".join(self.lines))

    def stop(self):
        stop_process(self.process)
        self.reader.join(15)


class DocSnippetTests(unittest.TestCase):
    timeout = 240

    def test_snippets_are_found_and_marked(self):
        """
        The pages hold commands (this test finds them), and every command that is not run
        says why (a reason after "not run by the tests:").
        """
        found = {page: snippets(page) for page in PAGES}
        self.assertGreater(sum(1 for page in found.values() for s in page
                               if s[1] == "shell" and s[3] is None), 10)
        for page, items in found.items():
            for line, _, _, reason in items:
                self.assertNotEqual(reason, "(no reason)", f"{page}:{line}")

    @inlineCallbacks
    def test_shell_commands_work_as_written(self):
        """Every shell command of every page, run against the gateway (see the module)."""
        gateway = Gateway()
        self.addCleanup(gateway.stop)
        ran = 0
        failures = []
        for page in PAGES:
            blocks = [s for s in snippets(page) if s[1] == "shell" and s[3] is None]
            if not blocks:
                continue
            demo = yield harness.connect(gateway.port, query={"token": make_token("demo")})
            self.addCleanup(demo.close)
            yield demo.next("connected")
            problems, count = self.run_page(gateway, page, blocks)
            failures += problems
            ran += count
            if demo.state != demo.STATE_CLOSED:
                yield demo.close()
        self.assertEqual(failures, [])
        self.assertGreater(ran, 10)

    def test_python_snippets_run(self):
        """Every Python block runs (with the repository on the path) and exits 0."""
        ran = 0
        for page in PAGES:
            for line, language, text, reason in snippets(page):
                if language != "python" or reason is not None:
                    continue
                result = subprocess.run([sys.executable, "-"], input=text, cwd=REPO,
                                        env={"PYTHONPATH": REPO, "PATH": os.environ["PATH"]},
                                        capture_output=True, text=True, timeout=60)
                self.assertEqual(result.returncode, 0, f"{page}:{line}: {result.stderr}")
                ran += 1
        self.assertGreater(ran, 0)

    def run_page(self, gateway, page, blocks):
        """Run the page's shell blocks in one bash: (problems, commands run)."""
        base = f"http://127.0.0.1:{gateway.port}"
        script = ["set -u", CURL_WRAPPER]
        expected = []  # (page:line, command, answer, curl number or None)
        curls = 0
        for line, _, text, _ in blocks:
            for command, answer in commands(text.replace("http://127.0.0.1:8080", base)):
                where = f"{page}:{line}: {command.strip()[:100]}"
                is_curl = bool(re.match(r"\s*curl\s", command))
                if is_curl:
                    curls += 1
                expected.append((where, command, answer, curls if is_curl else None))
                script.append(command)
                script.append(f'__rc=$?; [ $__rc = 0 ] || echo "FAILED {len(expected)} $__rc"')
        directory = tempfile.mkdtemp(prefix="realtime-snippets-")
        env = dict(gateway.env, SNIPPET_DIR=directory)
        result = subprocess.run(["bash", "-c", "\n".join(script)], cwd=REPO, env=env,
                                capture_output=True, text=True, timeout=180,
                                stdin=subprocess.DEVNULL)
        problems = []
        failed = {int(m.group(1)): m.group(2)
                  for m in re.finditer(r"^FAILED (\d+) (\d+)$", result.stdout, re.M)}
        for number, (where, command, answer, curl) in enumerate(expected, 1):
            if number in failed:
                problems.append(f"{where}: exit status {failed[number]} "
                                f"({result.stderr.strip()[-300:]})")
                continue
            if curl is None:
                continue
            problem = self.check_answer(directory, curl, answer)
            if problem:
                problems.append(f"{where}: {problem}")
        return problems, len(expected)

    def check_answer(self, directory, number, documented):
        try:
            with open(os.path.join(directory, f"{number}.code")) as f:
                code = int(f.read().strip() or 0)
            with open(os.path.join(directory, f"{number}.body"), encoding="utf-8") as f:
                body = f.read()
        except OSError as e:
            return f"no answer ({e})"
        expected = _documented_json(documented)
        wanted_error = expected.get("error") if isinstance(expected, dict) else None
        if wanted_error is None and not 200 <= code < 300:
            return f"HTTP {code}: {body[:300]}"
        if expected is None:
            return None
        try:
            actual = json.loads(body)
        except ValueError:
            return f"HTTP {code}, not the documented JSON: {body[:300]}"
        if wanted_error is not None and actual.get("error") != wanted_error:
            return f"HTTP {code}: {body[:300]} (documented: error {wanted_error})"
        missing = sorted(set(expected) - set(actual)) if isinstance(actual, dict) else ["*"]
        if missing:
            return f"the answer lacks {missing}: {body[:300]}"
        return None


def _documented_json(text):
    """The documented answer as JSON (``…`` stands for elided values), or None."""
    if not text:
        return None
    cleaned = re.sub(r'"[^"]*…[^"]*"', '""', text.replace("\n", " "))
    cleaned = cleaned.replace("{…}", "{}").replace("…", "0")
    try:
        return json.loads(cleaned)
    except ValueError:
        raise AssertionError(f"a documented answer that is not JSON: {text!r}") from None

