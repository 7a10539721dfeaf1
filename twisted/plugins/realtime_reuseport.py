# The ``reuseport:`` endpoint (realtime.transport.reuseport).  Named apart from the flat
# layout's ``realtime_endpoints.py``: an installed copy of that file imports a module that
# no longer exists and would shadow this one (twistd imports plugins by module name).
from realtime.transport.reuseport import ReusePortParser

reuseport = ReusePortParser()
