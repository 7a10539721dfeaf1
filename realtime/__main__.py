"""``python -m realtime [options]``: the same as ``twistd --pidfile= -n realtime [options]``."""

import sys

from twisted.scripts.twistd import run

if __name__ == "__main__":
    sys.argv = ["twistd", "--pidfile=", "-n", "realtime", *sys.argv[1:]]
    run()
