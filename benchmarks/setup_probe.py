"""
A short probe of connection setup and idle memory only (no fan-out): for developing.

    python -m benchmarks.setup_probe [--n 3000] [--rounds 3] [--servers gateway,node]
                                     [--profile] [--before ROOT]

The same processes, load clients and tokens as ``benchmarks.run`` (whose classes it uses),
interleaved as there; per session: connections per second, idle KB per connection and the
server's CPU while accepting (both processes' for gateway2).  ``--profile`` records a py-spy
profile of each gateway session's setup (``benchmarks/results/probe-<stamp>/``).  It is not the benchmark: the
figures of record come from ``make bench``.

``--before ROOT`` also runs each gateway kind from another checkout (``git worktree add
--detach ../before <commit>``), interleaved with this tree's, and prints both: a before /
after comparison made in one sitting, as the shared machine's load drifts.
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import time

from benchmarks import run


def probe(kind, n, couch, opts, log_dir, first_user, index):
    if opts.cprofile and kind == "gateway":
        # the gateway under cProfile (exact call counts; slower): stats at its exit
        out = os.path.join(log_dir, f"cprofile-{n}-{index}.prof")
        wrapper = os.path.join(log_dir, "python-cprofile")
        with open(wrapper, "w") as f:
            # twistd re-raises SIGTERM at exit: the stats are written at reactor shutdown
            f.write(f"""#!{sys.executable}
import cProfile, runpy, sys
from twisted.internet import reactor
profile = cProfile.Profile()
reactor.addSystemEventTrigger("after", "shutdown", profile.dump_stats, {out!r})
sys.argv = sys.argv[2:]  # drop "-m realtime": run as python -m realtime
sys.path.insert(0, "")  # the working directory first, as with -m
profile.enable()
runpy.run_module("realtime", run_name="__main__", alter_sys=True)
""")
        os.chmod(wrapper, 0o755)
        saved, run.sys.executable = run.sys.executable, wrapper
        try:
            server = run.Server(kind, couch, log_dir, opts.gateway_root)
        finally:
            run.sys.executable = saved
    else:
        server = run.Server(kind, couch, log_dir, opts.gateway_root)
    clients = run.Clients(opts.client_procs, opts.client_binary)
    try:
        time.sleep(0.5)
        rss0 = server.rss()
        parts = run.split(n, len(clients.procs))
        starts = [first_user + sum(parts[:i]) for i in range(len(parts))]
        files = [run.token_file(log_dir, s, p) if kind in run.GATEWAYS else "-"
                 for p, s in zip(parts, starts)]
        spy = None
        if opts.profile and kind != "node":
            spy = run.start_profile(server.pid, os.path.join(
                log_dir, f"profile-{kind}-setup-{n}-{index}.txt"))
        cpu0 = server.cpu()
        try:
            clients.send_all([f"connect {server.port} {part} {opts.concurrency} {path}"
                              for part, path in zip(parts, files)])
            connected = clients.read_all("connected")
        finally:
            if spy is not None:
                run.stop_profile(spy)
        ok = sum(int(c[0]) for c in connected)
        seconds = max(float(c[3]) for c in connected) - min(float(c[2]) for c in connected)
        cpu = server.cpu() - cpu0
        time.sleep(opts.settle)
        kb = (server.rss() - rss0) / max(ok, 1)
        return {"server": kind, "ok": ok, "rate": ok / seconds, "kb": kb,
                "cpu_per_conn_us": cpu / max(ok, 1) * 1e6}
    finally:
        clients.stop()
        server.stop()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--servers", default="gateway,node")
    parser.add_argument("--client-procs", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--cprofile", action="store_true",
                        help="run the gateway under cProfile (call counts; slower)")
    parser.add_argument("--gateway-root")
    parser.add_argument("--before", help="another checkout whose gateway runs beside this "
                        "tree's (kinds named <kind>@before in the output)")
    opts = parser.parse_args(argv)
    opts.concurrency = 100
    opts.settle = 1.5
    run.raise_fd_limit()
    results_dir = os.path.join(run.HERE, "results")
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    log_dir = os.path.join(results_dir, f"probe-{stamp}")
    os.makedirs(log_dir, exist_ok=True)
    opts.client_binary = run.build_client(results_dir)
    couch = run.PouchDBServer().start()
    rows = []
    try:
        first = 0
        runs = [(kind, opts.gateway_root, kind) for kind in opts.servers.split(",")]
        if opts.before:
            runs = [run_ for kind, root, label in runs for run_ in
                    ([(kind, opts.before, kind + "@before")] if kind in run.GATEWAYS else [])
                    + [(kind, root, label)]]
        for r in range(opts.rounds):
            for kind, root, label in runs:
                opts.gateway_root = root
                row = probe(kind, opts.n, couch, opts, log_dir, first, r)
                row["server"] = label
                first += opts.n
                rows.append(row)
                print(f"  {label:8s} {row['ok']:6d} conns  {row['rate']:8.0f}/s  "
                      f"{row['kb']:5.2f} KB/conn  {row['cpu_per_conn_us']:6.0f} us CPU/conn",
                      file=sys.stderr, flush=True)
    finally:
        couch.stop()
    for kind in [label for _, _, label in runs]:
        mine = [r for r in rows if r["server"] == kind]
        print(f"{kind:8s} median {statistics.median(r['rate'] for r in mine):8.0f}/s  "
              f"{statistics.median(r['kb'] for r in mine):5.2f} KB/conn  "
              f"{statistics.median(r['cpu_per_conn_us'] for r in mine):6.0f} us CPU/conn")
    print(f"logs and profiles: {log_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
