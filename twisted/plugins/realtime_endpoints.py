from realtime.reuseport import ReusePortParser

reuseport = ReusePortParser()
