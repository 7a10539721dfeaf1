"""
The user documentation (``docs/``, ``README.rst``, ``LICENSE``) is complete and readable
from a clone: every page is valid reStructuredText, reachable from ``docs/index.rst``,
links only to files that exist, and never sends a reader to a file a clone does not have.
"""

import io
import os
import re

from twisted.trial import unittest

from realtime import config as config_module

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(REPO, "docs")

#: relative links written as `text <target>`_ or `text <target>`__
_LINK = re.compile(r"`[^`<]*<([^`>]+)>`_{1,2}")
#: what a clone does not have: the team's private design notes
_OUTSIDE = re.compile(r"DESIGN\.md|PITFALLS\.md|STYLE\.md|/work/shared|shared folder")


def _pages():
    return sorted(f for f in os.listdir(DOCS) if f.endswith(".rst"))


def _read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def _user_docs():
    """(path, text) of README.rst and every page of docs/."""
    paths = [os.path.join(REPO, "README.rst")] + [os.path.join(DOCS, p) for p in _pages()]
    return [(p, _read(p)) for p in paths]


class DocsTests(unittest.TestCase):

    def test_every_page_is_valid_restructuredtext(self):
        """docutils reads README.rst and every docs/ page without a warning."""
        try:
            import docutils.core
        except ImportError:
            raise unittest.SkipTest("docutils is not installed")
        for path, text in _user_docs():
            warnings = io.StringIO()
            docutils.core.publish_doctree(
                text, source_path=path,
                settings_overrides={"warning_stream": warnings, "report_level": 2,
                                    "halt_level": 5})
            self.assertEqual(warnings.getvalue(), "", path)

    def test_index_links_every_page(self):
        """docs/index.rst links every other page of docs/ (add a new page there)."""
        linked = set(_LINK.findall(_read(os.path.join(DOCS, "index.rst"))))
        for page in _pages():
            if page != "index.rst":
                self.assertIn(page, linked, f"docs/{page} is not linked from docs/index.rst")

    def test_local_links_resolve(self):
        """Every relative link of the user docs names a file that exists."""
        for path, text in _user_docs():
            for target in _LINK.findall(text):
                if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
                    continue
                resolved = os.path.normpath(os.path.join(os.path.dirname(path),
                                                         target.split("#")[0]))
                self.assertTrue(os.path.exists(resolved), f"{path}: {target} does not exist")

    def test_no_reference_to_files_outside_the_repository(self):
        """No user doc, docstring, test or shipped file sends a reader to notes a clone lacks."""
        texts = list(_user_docs())
        for top in ("contrib", "examples", "tac", "realtime", "tests", "twisted", "clients",
                    "benchmarks"):
            for folder, dirs, files in os.walk(os.path.join(REPO, top)):
                dirs[:] = [d for d in dirs if d not in ("node_modules", "__pycache__")]
                for name in files:
                    if name.endswith((".py", ".tac", ".rst", ".md", ".service", ".socket",
                                      ".env", ".js", ".html")):
                        path = os.path.join(folder, name)
                        texts.append((path, _read(path)))
        for path, text in texts:
            if path == os.path.abspath(__file__):
                continue
            found = _OUTSIDE.search(text)
            self.assertIsNone(found, f"{path} mentions {found and found.group(0)}")

    def test_configuration_page_lists_every_option(self):
        """docs/configuration.rst names every option's environment variable and flag."""
        text = _read(os.path.join(DOCS, "configuration.rst"))
        for option in config_module.OPTIONS:
            self.assertIn(f"``{option.env}``", text)
            self.assertIn(f"``--{option.flag}``", text)

    def test_license_is_the_one_setup_cfg_declares(self):
        """LICENSE holds the MIT licence that setup.cfg declares."""
        self.assertIn("license = MIT", _read(os.path.join(REPO, "setup.cfg")))
        text = _read(os.path.join(REPO, "LICENSE"))
        self.assertTrue(text.startswith("MIT License"))
        self.assertIn("Permission is hereby granted, free of charge", text)
