# twistd -ny tac/realtime.tac — the same service as `twistd -n realtime`, configured by the
# environment only (twistd does not put the current directory on sys.path for -y: the
# repository root is added here so this works from a checkout).
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.application import service  # noqa: E402

from realtime.tap import Options, makeService  # noqa: E402

options = Options()
options.parseOptions([])
application = service.Application("realtime")
makeService(options).setServiceParent(application)
