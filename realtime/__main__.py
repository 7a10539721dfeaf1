"""
``python -m realtime [options]``: the same as ``twistd --pidfile= -n realtime [options]``.
The options are checked here first, so that a usage error (one line on stderr, exit
status 2: :meth:`realtime.tap.Options.parseOptions`) names ``python -m realtime --help``.
"""

import sys

from twisted.scripts.twistd import run

from realtime import tap


def main(argv=None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    options = tap.Options()
    options.help_command = "python -m realtime --help"
    # --help and --version print and exit here; a usage error is one line and exit 2
    options.parseOptions(args)
    sys.argv = ["twistd", "--pidfile=", "-n", "realtime", *args]
    run()


if __name__ == "__main__":
    main()
