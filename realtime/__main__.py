"""
``python -m realtime [options]``: the same as ``twistd --pidfile= -n realtime [options]``,
except that an option that cannot be used ends the process with one line on stderr
(``realtime: <option>: <why>``) and exit status 2, instead of twistd's whole help text.
"""

import sys

from twisted.python import usage
from twisted.scripts.twistd import run

from realtime import tap
from realtime.service import EXIT_STARTUP_FAILED


def main(argv=None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        tap.Options().parseOptions(args)  # --help and --version print and exit here
    except usage.UsageError as e:
        sys.stderr.write(f"realtime: {e} (python -m realtime --help lists the options)\n")
        sys.exit(EXIT_STARTUP_FAILED)
    sys.argv = ["twistd", "--pidfile=", "-n", "realtime", *args]
    run()


if __name__ == "__main__":
    main()
