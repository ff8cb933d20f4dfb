"""CPU milliseconds per request, per process: the figure that holds while other work shares the machine.

Wall-clock requests/s moves with whatever else runs on the box; the CPU a request costs each process does not (much).
This starts the whole stack with :class:`tollgate_dev.platform.Platform` (every Tollgate process and the broker
pinned to CPU 0 where ``taskset`` exists), drives a bounded load at it (``wrk`` when installed, else aiohttp; on
CPU 1), and reads ``utime + stime`` of each service process (all its threads) and of the broker from
``/proc/<pid>/stat`` before and after the measured window. Prints, per load point, requests/s and
``CPU ms / request`` for each process and the sum. Asserts nothing.

    .venv/bin/python -m bench.cpu                    # the mock upstream (tollgate_dev.mock_upstream)
    .venv/bin/python -m bench.cpu --upstream nginx   # the peer yardstick's nginx (../shared/peer-bench)

``make bench`` prints the same breakdown for its throughput runs (:func:`cpu_window`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tollgate_dev.platform import SERVICES, Platform, PlatformConfig

__all__ = ["CpuReport", "cpu_window", "main", "process_pids"]

HERE = Path(__file__).resolve().parent
TICKS = os.sysconf("SC_CLK_TCK")
NGINX_PORT = 18080
#: ``../shared/peer-bench`` beside the checkout (a worktree sits one level deeper).
PEER_BENCH = next((p for p in (HERE.parent.parent / "shared" / "peer-bench",
                               HERE.parent.parent.parent / "shared" / "peer-bench") if p.is_dir()),
                  HERE.parent.parent / "shared" / "peer-bench")

#: The peer yardstick's request (``../shared/peer-bench/post.lua``): a system and a user message, 64 tokens out.
MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Say hello in one short sentence, please."},
]

#: Routes for the nginx upstream, as the peer yardstick configures them.
NGINX_PROVIDERS = f"""currency: USD
providers:
  nginx: {{kind: openai, base_url: "http://127.0.0.1:{NGINX_PORT}/v1"}}
  nginx-stream: {{kind: openai, base_url: "http://127.0.0.1:{NGINX_PORT}/stream/v1"}}
models:
  fake-gpt: {{provider: nginx, upstream_model: gpt-4o-mini}}
  fake-gpt-stream: {{provider: nginx-stream, upstream_model: gpt-4o-mini}}
"""
NGINX_BOOK = """version: bench-cpu-1
currency: USD
markup_bps: 2000
models:
  fake-gpt: {input_price_nanos: 150, output_price_nanos: 600, max_output_tokens: 16384}
  fake-gpt-stream: {input_price_nanos: 150, output_price_nanos: 600, max_output_tokens: 16384}
"""


def _cpu_ticks(pid: int) -> int:
    """utime + stime of the whole process (every thread), in clock ticks; 0 when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return 0
    fields = stat[stat.rindex(")") + 2 :].split()  # the command name may hold spaces
    return int(fields[11]) + int(fields[12])  # fields 14 and 15 of proc(5)


def process_pids(platform: Platform) -> dict[str, int]:
    """Every Tollgate process that serves a request, and the embedded broker (not the mock upstream)."""
    pids = {name: platform.processes[name].pid for name in SERVICES if name in platform.processes}
    if platform.broker and platform.broker.process:
        pids["broker"] = platform.broker.process.pid
    return pids


@dataclass
class CpuReport:
    label: str
    requests: int
    errors: int
    seconds: float
    cpu_ms: dict[str, float]
    p50_ms: float = float("nan")
    p99_ms: float = float("nan")

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def per_request(self) -> dict[str, float]:
        n = max(1, self.requests)
        return {name: ms / n for name, ms in self.cpu_ms.items()}

    def row(self) -> str:
        per = self.per_request()
        cells = " ".join(f"{per[name]:7.2f}" for name in self.cpu_ms)
        return (f"{self.label:26} {self.rps:8.1f} {self.p50_ms:7.2f} {self.p99_ms:7.2f} {self.errors:6d}   {cells}"
                f"   {sum(per.values()):7.2f}")

    def header(self) -> str:
        names = " ".join(f"{name[:7]:>7}" for name in self.cpu_ms)
        return f"{'load':26} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'errors':>6}   {names}   {'total':>7}"


@contextlib.contextmanager
def cpu_window(pids: dict[str, int]) -> Iterator[dict[str, float]]:
    """CPU milliseconds each process spent inside the ``with`` block (filled in when it ends)."""
    before = {name: _cpu_ticks(pid) for name, pid in pids.items()}
    spent: dict[str, float] = {}
    try:
        yield spent
    finally:
        for name, pid in pids.items():
            spent[name] = (_cpu_ticks(pid) - before[name]) * 1000 / TICKS


# ---- load ---------------------------------------------------------------------------------------------------------


@dataclass
class Load:
    requests: int
    errors: int
    seconds: float
    p50_ms: float
    p99_ms: float


def _wrk_script(path: Path, model: str, stream: bool, key: str) -> None:
    import json

    body = {"model": model, "messages": MESSAGES, "max_tokens": 64}
    if stream:
        body |= {"stream": True, "stream_options": {"include_usage": True}}
    path.write_text(
        'wrk.method = "POST"\n'
        'wrk.headers["Content-Type"] = "application/json"\n'
        f'wrk.headers["Authorization"] = "Bearer {key}"\n'
        f"wrk.body = {json.dumps(json.dumps(body))}\n"
        "done = function(summary, latency, requests)\n"
        '  io.write(string.format("RESULT reqs=%d non2xx=%d sockerr=%d dur_us=%d p50=%.3f p99=%.3f\\n",\n'
        "    summary.requests, summary.errors.status, summary.errors.connect + summary.errors.read +\n"
        "    summary.errors.write + summary.errors.timeout, summary.duration,\n"
        "    latency:percentile(50) / 1000, latency:percentile(99) / 1000))\n"
        "end\n"
    )


def _wrk(url: str, script: Path, connections: int, seconds: float, cpus: str | None) -> Load:
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout", "10s", "-s", str(script),
            url]
    if cpus and shutil.which("taskset"):
        argv = ["taskset", "-c", cpus, *argv]
    out = subprocess.run(argv, capture_output=True, text=True, check=False).stdout
    line = next((x for x in out.splitlines() if x.startswith("RESULT")), "")
    if not line:
        raise RuntimeError(f"wrk printed no result:\n{out}")
    f = {k: float(v) for k, v in (kv.split("=") for kv in line.split()[1:])}
    errors = int(f["non2xx"] + f["sockerr"])
    return Load(int(f["reqs"]) - int(f["non2xx"]), errors, f["dur_us"] / 1e6, f["p50"], f["p99"])


async def _aiohttp(url: str, body: dict[str, object], key: str, connections: int, seconds: float) -> Load:
    from .run import measure

    s = await measure(url, {"Authorization": f"Bearer {key}"}, body, concurrency=connections, seconds=seconds)
    return Load(len(s.latencies_ms), s.errors, s.elapsed_s, s.pct(50), s.pct(99))


def drive(url: str, *, model: str, stream: bool, key: str, connections: int, seconds: float, tool: str,
          cpus: str | None, workdir: Path) -> Load:
    if tool == "wrk":
        script = workdir / f"load-{'s' if stream else 'n'}.lua"
        _wrk_script(script, model, stream, key)
        return _wrk(url, script, connections, seconds, cpus)
    body: dict[str, object] = {"model": model, "messages": MESSAGES, "max_tokens": 64}
    if stream:
        body |= {"stream": True, "stream_options": {"include_usage": True}}
    return asyncio.run(_aiohttp(url, body, key, connections, seconds))


# ---- the stack ----------------------------------------------------------------------------------------------------


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.3)
        return s.connect_ex(("127.0.0.1", port)) == 0


@contextlib.contextmanager
def nginx_upstream(cpus: str | None) -> Iterator[None]:
    """The peer yardstick's nginx on 127.0.0.1:18080: reused when it already runs, else started (and stopped)."""
    if _port_open(NGINX_PORT):
        yield
        return
    script = PEER_BENCH / "run_upstream.sh"
    if not script.exists():
        raise SystemExit(f"--upstream nginx needs {script} (the peer yardstick) or nginx already on :{NGINX_PORT}")
    subprocess.run([str(script), "start", *([cpus] if cpus else [])], check=True, capture_output=True)
    try:
        yield
    finally:
        subprocess.run([str(script), "stop"], check=False, capture_output=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--upstream", choices=("mock", "nginx"), default="mock")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per load point")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--connections", default="1,32,128", help="non-streaming load points")
    parser.add_argument("--stream-connections", default="32", help="streaming load points ('' for none)")
    parser.add_argument("--tool", choices=("wrk", "aiohttp"), default="wrk" if shutil.which("wrk") else "aiohttp")
    parser.add_argument("--policy-hop", action="store_true",
                        help="ingress asks policy's Inspect per request (INGRESS_POLICY_IN_PROCESS=false): the A/B")
    parser.add_argument("--hold", action="store_true", help="keep the stack up after the load (for py-spy); Ctrl-C")
    args = parser.parse_args(argv)

    pinned = shutil.which("taskset") is not None and (os.cpu_count() or 1) >= 2
    stack_cpus, load_cpus = ("0", "1") if pinned else (None, None)
    if pinned:
        os.sched_setaffinity(0, {1})
    points = [(int(c), False) for c in args.connections.split(",") if c]
    points += [(int(c), True) for c in args.stream_connections.split(",") if c]

    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="tollgate-bench-cpu-")))
        extra_env: dict[str, dict[str, str]] = {}
        models = ("gpt-4o-mini", "gpt-4o-mini")
        if args.upstream == "nginx":
            stack.enter_context(nginx_upstream(load_cpus))
            (tmp / "providers.yaml").write_text(NGINX_PROVIDERS)
            (tmp / "book.yaml").write_text(NGINX_BOOK)
            extra_env = {"router": {"ROUTER_PROVIDERS_FILE": str(tmp / "providers.yaml")},
                         "metering": {"METERING_PRICE_BOOK_FILE": str(tmp / "book.yaml")}}
            models = ("fake-gpt", "fake-gpt-stream")
        if args.policy_hop:
            extra_env["ingress"] = {"INGRESS_POLICY_IN_PROCESS": "false"}
        config = PlatformConfig(
            var_dir=tmp / "var",
            admin_token="tga-" + secrets.token_urlsafe(16),
            ports={name: 0 for name in ("ingress", "router", "policy", "billing", "metering", "mock", "broker")},
            use_mock=args.upstream == "mock",
            cpu_list=stack_cpus,
            mock_cpu_list=load_cpus,
            extra_env=extra_env,
        )
        platform = Platform(config)
        platform.start()
        stack.callback(platform.stop)
        if pinned and platform.broker and platform.broker.process:
            subprocess.run(["taskset", "-a", "-cp", "0", str(platform.broker.process.pid)], capture_output=True,
                           check=False)
        account = "acct_bench_cpu"
        platform.admin("POST", "/admin/v1/accounts", {"id": account, "name": "bench-cpu", "currency": "USD"})
        platform.admin("POST", f"/admin/v1/accounts/{account}/credits",
                       {"amount": "1000000", "idempotency_key": "bench-cpu-credit"})
        key = str(platform.admin("POST", f"/admin/v1/accounts/{account}/keys", {"label": "bench-cpu"})["key"])
        url = f"{platform.ingress_url}/v1/chat/completions"
        pids = process_pids(platform)

        print(f"CPU per request ({args.upstream} upstream, load by {args.tool}, "
              + ("stack on CPU 0, upstream and load on CPU 1)" if pinned else "not pinned)"))
        reports: list[CpuReport] = []
        for connections, stream in points:
            model = models[1] if stream else models[0]
            drive(url, model=model, stream=stream, key=key, connections=connections, seconds=args.warmup,
                  tool=args.tool, cpus=load_cpus, workdir=tmp)
            with cpu_window(pids) as spent:
                load = drive(url, model=model, stream=stream, key=key, connections=connections,
                             seconds=args.seconds, tool=args.tool, cpus=load_cpus, workdir=tmp)
            label = f"{'streaming' if stream else 'non-streaming'} c={connections}"
            report = CpuReport(label, load.requests, load.errors, load.seconds, spent, load.p50_ms, load.p99_ms)
            if not reports:
                print(report.header())
            reports.append(report)
            print(report.row(), flush=True)
        if platform.deaths:
            print("deaths:", platform.deaths)
        if args.hold:
            print("stack up; pids:", pids, "ingress:", url, "key:", key, flush=True)
            with contextlib.suppress(KeyboardInterrupt):
                while True:
                    time.sleep(3600)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
