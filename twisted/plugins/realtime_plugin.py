from twisted.application.service import ServiceMaker

realtime = ServiceMaker("realtime", "realtime.tap", "Real-time gateway for CouchDB over WebSocket",
                        "realtime")
