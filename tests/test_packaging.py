"""
Packaging: a real (non-editable) install makes the twistd plugin discoverable, and
``twistd realtime --help`` documents every option.
"""

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile

from twisted.trial import unittest

from realtime import config as config_module

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class PackagingTests(unittest.TestCase):
    timeout = 300

    def test_non_editable_install_lists_plugin(self):
        """
        A wheel built from the repository holds the plugin (and no twisted/__init__.py) and
        every file of realtime/; installed into a fresh directory, twistd's plugin
        discovery finds `realtime` there.
        """
        work = tempfile.mkdtemp(prefix="realtime-pkg-")
        self.addCleanup(shutil.rmtree, work, True)
        source = os.path.join(work, "src")
        # Build from a copy, so that no build/ or egg-info lands in the repository.
        shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(
            "node_modules", ".git", "_trial_temp*", "build", "*.egg-info", "benchmarks"))
        subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
             "--no-build-isolation", "--disable-pip-version-check", "-w",
             os.path.join(work, "dist"), source],
            check=True, cwd=work)
        wheels = [f for f in os.listdir(os.path.join(work, "dist")) if f.endswith(".whl")]
        self.assertEqual(len(wheels), 1)
        names = zipfile.ZipFile(os.path.join(work, "dist", wheels[0])).namelist()
        self.assertIn("twisted/plugins/realtime_plugin.py", names)
        self.assertNotIn("twisted/__init__.py", names)
        self.assertNotIn("twisted/plugins/__init__.py", names)
        self.assertIn("realtime/tap.py", names)
        # Every file of the source tree ships: a subpackage left out of setup.cfg, or a
        # static file not declared as package data, works from a checkout and is missing
        # once installed.
        source_files = sorted(
            os.path.relpath(os.path.join(folder, name), REPO).replace(os.sep, "/")
            for folder, dirs, files in os.walk(os.path.join(REPO, "realtime"))
            if "__pycache__" not in folder
            for name in files if not name.endswith((".pyc", "~")))
        self.assertIn("realtime/transport/websocket.py", source_files)
        self.assertEqual([f for f in source_files if f not in names], [])

        target = os.path.join(work, "site")
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
             "--disable-pip-version-check", "--target", target,
             os.path.join(work, "dist", wheels[0])],
            check=True, cwd=work)
        # twistd scans every twisted/plugins directory on sys.path; the probe checks that the
        # installed one is among them, then scans it alone (an earlier install of realtime in
        # site-packages must not answer for this one).
        probe = (
            "import os, sys\n"
            "import twisted.plugins\n"
            f"installed = os.path.join({target!r}, 'twisted', 'plugins')\n"
            "assert installed in twisted.plugins.__path__, twisted.plugins.__path__\n"
            "twisted.plugins.__path__[:] = [installed]\n"
            "from twisted.plugin import getPlugins\n"
            "from twisted.application.service import IServiceMaker\n"
            "makers = {p.tapname: p for p in getPlugins(IServiceMaker)}\n"
            "maker = makers['realtime']\n"
            "import realtime, twisted.plugins.realtime_plugin as plugin\n"
            "print(realtime.__file__)\n"
            "print(plugin.__file__)\n"
            "print(maker.module)\n"
        )
        env = dict(os.environ, PYTHONPATH=target)
        out = subprocess.run([sys.executable, "-c", probe], check=True, cwd=work, env=env,
                             capture_output=True, text=True).stdout.split()
        self.assertTrue(out[0].startswith(target), out)
        self.assertTrue(out[1].startswith(target), out)
        self.assertEqual(out[2], "realtime.tap")

    def test_help_documents_every_option(self):
        """`twistd realtime --help` lists every option with its environment name."""
        out = subprocess.run([sys.executable, "-m", "realtime", "--help"], cwd=REPO,
                             capture_output=True, text=True, timeout=60)
        text = out.stdout + out.stderr
        for option in config_module.OPTIONS:
            self.assertIn("--" + option.flag, text)
            self.assertIn(option.env, text)


class ReadmeTests(unittest.TestCase):
    def test_readme_documents_every_option(self):
        """The README's configuration table names every option's environment variable."""
        with open(os.path.join(REPO, "README.rst"), encoding="utf-8") as f:
            readme = f.read()
        missing = [o.env for o in config_module.OPTIONS if f"   * - ``{o.env}``" not in readme]
        self.assertEqual(missing, [])


class BannerTests(unittest.TestCase):
    def test_printed_commands_work_with_any_password(self):
        """The run command's printed client commands parse, even for a password like '-x'."""
        import io
        import runpy
        import shlex
        from contextlib import redirect_stdout

        from realtime.tap import _print_banner

        class Server:
            url, admin, password, admin_auth = "http://127.0.0.1:5999", "admin", "pw", "YWRtaW46cHc="

        out = io.StringIO()
        with redirect_stdout(out):
            _print_banner(Server(), "demo", "-dash-first", config_module.defaults(), out)
        client = runpy.run_path(os.path.join(REPO, "examples", "client.py"))
        commands = [line.split("python examples/client.py", 1)[1].rstrip(")")
                    for line in out.getvalue().splitlines() if "examples/client.py" in line]
        self.assertEqual(len(commands), 2)
        for command in commands:
            args = client["make_parser"]().parse_args(shlex.split(command))
            self.assertEqual((args.user, args.password), ("demo", "-dash-first"))
