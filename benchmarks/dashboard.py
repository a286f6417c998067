"""The dashboard under a flood of agent updates, in headless Chromium: does it keep up?

    .venv/bin/python benchmarks/dashboard.py                 # 1,000 and 5,000 updates/s, 5 s each
    .venv/bin/python benchmarks/dashboard.py --rates 1000 --seconds 10 --agents 200

For each rate it starts ``agentcast serve``, opens the dashboard in Chromium (Debian's,
as the browser tests), publishes ``agent_status`` updates through the HTTP batch API
(a batch every 50 ms, spread over ``--agents`` agents, progress counting up), and
measures in the page: frames (``requestAnimationFrame`` intervals: the median and the
worst), main-thread long tasks (over 50 ms, the browser's own ``longtask`` entries),
how often the dashboard drew, and how long after the last publish the page showed every
agent's last state. Prints one table row per rate.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from playwright.sync_api import sync_playwright

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("AGENTCAST_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run"]
BATCHES_PER_SECOND = 20

# Runs before the page's own scripts (Playwright's init script, outside the page's CSP).
PROBE = """
window.__probe = { frames: [], longTasks: [] };
(function tick(last) {
  requestAnimationFrame((now) => {
    if (last !== undefined) window.__probe.frames.push(now - last);
    tick(now);
  });
})();
new PerformanceObserver((list) => {
  for (const entry of list.getEntries()) window.__probe.longTasks.push(entry.duration);
}).observe({ type: "longtask", buffered: true });
"""

_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def publish(base: str, items: list[dict[str, object]]) -> None:
    request = urllib.request.Request(
        base + "/api/agent-status",
        data=json.dumps(items).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    with _opener.open(request, timeout=10) as response:
        response.read()


def run(rate: int, seconds: float, agents: int, browser) -> dict[str, float]:
    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "agentcast.adapters",
            "serve",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=REPO,
    )
    try:
        assert server.stdout is not None
        for line in server.stdout:
            if "listening on" in line:
                break
        base = f"http://127.0.0.1:{port}"
        context = browser.new_context(viewport={"width": 1200, "height": 900})
        context.add_init_script(PROBE)
        page = context.new_page()
        page.goto(base + "/?token=bench")
        page.wait_for_selector("#connection[data-state=open]")
        page.wait_for_function(
            "document.getElementById('connection').textContent.startsWith('Connected as')"
        )
        page.evaluate("window.__probe.frames.length = 0; window.__probe.longTasks.length = 0")
        renders_before = int(page.locator("body").get_attribute("data-renders") or 0)

        per_batch = max(1, rate // BATCHES_PER_SECOND)
        batches = int(seconds * BATCHES_PER_SECOND)
        sent = 0
        start = time.perf_counter()
        for n in range(batches):
            items = []
            for _ in range(per_batch):
                items.append(
                    {
                        "agentName": f"agent-{sent % agents:04}",
                        "state": "working",
                        "currentTask": f"step {sent}",
                        "progress": (sent // agents) % 101,
                    }
                )
                sent += 1
            publish(base, items)
            pause = start + (n + 1) / BATCHES_PER_SECOND - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
        published = time.perf_counter()
        elapsed = published - start
        last = {f"agent-{i % agents:04}": f"step {i}" for i in range(max(0, sent - agents), sent)}
        check = json.dumps(last)
        page.wait_for_function(
            f"""Object.entries({check}).every(([name, task]) => {{
                const row = document.querySelector(`tr[data-agent="${{name}}"] .task`);
                return row && row.textContent === task;
            }})""",
            timeout=60_000,
            polling="raf",
        )
        drained = time.perf_counter() - published
        probe = page.evaluate("window.__probe")
        renders = int(page.locator("body").get_attribute("data-renders") or 0) - renders_before
        context.close()
        frames = probe["frames"] or [0.0]
        return {
            "rate": sent / elapsed,
            "updates": sent,
            "renders": renders,
            "frame_median": statistics.median(frames),
            "frame_max": max(frames),
            "long_tasks": len(probe["longTasks"]),
            "long_task_ms": sum(probe["longTasks"]),
            "drain_ms": drained * 1000,
        }
    finally:
        server.kill()
        server.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rates", default="1000,5000", help="updates per second, comma-separated")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--agents", type=int, default=100)
    args = parser.parse_args()
    rows = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        for rate in (int(r) for r in args.rates.split(",")):
            print(f"running {rate} updates/s for {args.seconds} s ...", file=sys.stderr)
            rows.append(run(rate, args.seconds, args.agents, browser))
        browser.close()
    print(
        "| updates/s | updates | draws | frame median | worst frame | long tasks (total) "
        "| last state shown after |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['rate']:,.0f} | {r['updates']:,} | {r['renders']:,} "
            f"| {r['frame_median']:.1f} ms | {r['frame_max']:.0f} ms "
            f"| {r['long_tasks']} ({r['long_task_ms']:.0f} ms) | {r['drain_ms']:.0f} ms |"
        )


if __name__ == "__main__":
    main()
