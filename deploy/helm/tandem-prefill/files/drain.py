"""preStop hook of a vLLM container: hold back the pod's SIGTERM until it is idle, so that
stopping it cuts no request and no KV transfer.

Kubernetes runs the hook when the pod is being deleted and sends SIGTERM once it returns. It
waits `--sleep` seconds while the orchestrator and the sidecars, which drop a pod as soon as it
is being deleted, stop sending it requests. Then it reads the pod's own metrics every
`--interval` seconds until, on `--idle-polls` reads in a row, no request runs or waits
(vllm:num_requests_running, vllm:num_requests_waiting) and no KV block is in use
(vllm:kv_cache_usage_perc): on a prefill pod, every block set held for a decoder has been read
or its lease has run out. It waits `--grace` seconds more and returns 0. It gives up after
`--timeout` seconds in all, with status 1 (Kubernetes records a FailedPreStopHook event with
its message), and returns at once if the server refuses connections (nothing left to drain).

Standard library only, for `python3 -c`: vLLM's and tandem's images have Python, not curl.
"""

from __future__ import annotations

import argparse
import http.client
import ssl
import sys
import time
import urllib.error
import urllib.request

BUSY = ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc")
"""Metrics that are 0 on an idle pod; each summed over its series (one per engine)."""


def busy(exposition: str) -> dict[str, float]:
    """The BUSY metrics in a Prometheus text exposition; a metric it lacks counts 0."""
    totals = dict.fromkeys(BUSY, 0.0)
    for line in exposition.splitlines():
        if not line or line.startswith("#"):
            continue
        if "{" in line:
            name, value = line[: line.index("{")], line[line.rindex("}") + 1 :]
        else:
            name, _, value = line.partition(" ")
        if name in totals:
            totals[name] += float(value.split()[0])
    return totals


def opener(args: argparse.Namespace) -> urllib.request.OpenerDirector:
    """Straight to the pod's own port (no proxy from the environment); over TLS with the
    mounted CA, and the client certificate where the server asks for one."""
    handlers: list[urllib.request.BaseHandler] = [urllib.request.ProxyHandler({})]
    if args.cafile:
        context = ssl.create_default_context(cafile=args.cafile)
        context.check_hostname = False  # the certificate names the pod's service, not loopback
        if args.certfile:
            context.load_cert_chain(args.certfile, args.keyfile)
        handlers.append(urllib.request.HTTPSHandler(context=context))
    return urllib.request.build_opener(*handlers)


def pause(seconds: float, deadline: float) -> None:
    time.sleep(max(0.0, min(seconds, deadline - time.monotonic())))


def drain(args: argparse.Namespace) -> int:
    deadline = time.monotonic() + args.timeout
    client = opener(args)
    pause(args.sleep, deadline)
    idle_reads, last = 0, "no answer yet"
    while idle_reads < args.idle_polls:
        if time.monotonic() >= deadline:
            print(f"drain: not idle after {args.timeout:g} s: {last}", file=sys.stderr)
            return 1
        try:
            with client.open(args.url, timeout=args.interval + 2) as response:
                totals = busy(response.read().decode())
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, ConnectionRefusedError):
                print(f"drain: {args.url} refuses connections; nothing to wait for")
                return 0
            totals, last = {}, f"{args.url}: {exc}"
        except (OSError, http.client.HTTPException, ValueError) as exc:
            totals, last = {}, f"{args.url}: {exc!r}"
        if totals and not any(totals.values()):
            idle_reads += 1
        else:
            idle_reads = 0
            last = ", ".join(f"{name} {value:g}" for name, value in totals.items()) or last
        if idle_reads < args.idle_polls:
            pause(args.interval, deadline)
    pause(args.grace, deadline)
    print("drain: idle")
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="drain", description=__doc__)
    parser.add_argument("--url", required=True, help="the pod's own /metrics")
    parser.add_argument("--sleep", type=float, default=0.0)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--idle-polls", type=int, default=2)
    parser.add_argument("--grace", type=float, default=0.0)
    parser.add_argument("--timeout", type=float, required=True)
    parser.add_argument("--cafile", help="the CA that signs the server's certificate (HTTPS)")
    parser.add_argument("--certfile", help="a client certificate, for mutual TLS")
    parser.add_argument("--keyfile", help="its private key")
    return drain(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
