"""The status page in a real headless Chromium, driven over the DevTools protocol.

Run by scripts/browser-check.sh, which provides the database, the binary and
Chromium. This script starts a scripted cursor source whose changes carry
markup (`<img src=x onerror=...>`, `</script><script>...`), a target_service
syncing from it with an admin token, and Chromium; then checks that the page
renders, shows the live cursor (and follows it without a reload when the
source moves on), shows times relative with the UTC instant on hover, names
the source and database with their secrets masked, lists rejection reasons by
count with zeros left out, draws the throughput and lag charts from its polls,
lists the rejections once the token is typed in, shows their payloads as
text, and that no injected element or script ran. It saves a screenshot.

Arguments: TARGET_BINARY DATABASE_URL CHROMIUM SCREENSHOT WORKDIR

Or, to photograph a running target's page after it has polled a while:
    browser_check.py shoot URL CHROMIUM SCREENSHOT SECONDS
"""

import base64
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import websocket  # websocket-client, installed in the virtualenv by ops_venv

TOKEN = "browser-check-token"
IMG = "<img src=x onerror=alert(1)>"
SCRIPT = "</script><script>window.__injected = 1; alert(2)</script>"
SVG = '"><svg onload=alert(3)>'
# Given in the target's URLs; the page must show neither.
SOURCE_SECRET = "src-s3cret-5wq"
DB_SECRET = "db-s3cret-8mz"
UTC_INSTANT = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} UTC$")


def profile(n, **fields):
    change = {
        "id": f"00000000-0000-4000-8000-{n:012d}",
        "name": f"User {n}",
        "email": f"user{n}@example.com",
        "mobile": f"+1555{n:07d}",
        "status": "active",
        "last_updated_at": "2025-07-01T10:00:00Z",
    }
    change.update(fields)
    return change


CHANGES = [profile(n) for n in range(1, 6)] + [
    profile(10, email=IMG),
    profile(11, name=SCRIPT, email="bad-email"),
    profile(12, name=SVG, mobile="12"),
    profile(13, email=SCRIPT),
    profile(14, status="inactive"),
]
LOCK = threading.Lock()


class Source(BaseHTTPRequestHandler):
    """Serves CHANGES with cursors, the way source_service does."""

    def do_GET(self):  # noqa: N802 (the http.server API)
        query = parse_qs(urlparse(self.path).query)
        with LOCK:
            head = len(CHANGES)
            since = int(query.get("since", [head])[0])
            limit = int(query.get("limit", ["1000"])[0])
            if since > head:
                self.answer(410, {"error": "cursor outside the log"}, {"X-Min-Cursor": "0"})
                return
            end = min(since + limit, head)
            page = CHANGES[since:end]
        headers = {"X-Next-Cursor": str(end), "X-Head-Cursor": str(head), "X-Source-Epoch": "browser-check"}
        self.answer(200, page, headers)

    def answer(self, status, body, headers):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what, check, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise SystemExit(f"browser-check: timed out waiting for {what}")


def get_json(url):
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return json.load(response)
    except OSError:
        return None


class DevTools:
    """A minimal Chrome DevTools Protocol client over one websocket."""

    def __init__(self, ws_url):
        self.ws = websocket.create_connection(ws_url, timeout=30, suppress_origin=True)
        self.next_id = 0
        self.events = []

    def call(self, method, **params):
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise SystemExit(f"browser-check: {method} failed: {message['error']}")
                return message.get("result", {})
            self.events.append(message)

    def evaluate(self, expression):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise SystemExit(f"browser-check: {expression!r} threw {result['exceptionDetails']}")
        return result["result"].get("value")


def start_chromium(chromium, workdir, processes):
    """A headless Chromium on a blank page, counting alerts; its DevTools client."""
    profile_dir = tempfile.mkdtemp(prefix="browser-check-")
    with open(os.path.join(workdir, "chromium.log"), "w") as log:
        processes.append(
            subprocess.Popen(
                [
                    chromium,
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-quic",
                    "--no-first-run",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--hide-scrollbars",
                    f"--user-data-dir={profile_dir}",
                    "--remote-debugging-port=0",
                    "--window-size=1280,900",
                    "about:blank",
                ],
                stdout=log,
                stderr=log,
            )
        )
    active = os.path.join(profile_dir, "DevToolsActivePort")
    wait_for("Chromium's DevTools port", lambda: os.path.exists(active) and open(active).read().strip())
    devtools_port = open(active).read().split()[0]
    pages = wait_for(
        "a Chromium page",
        lambda: [t for t in get_json(f"http://127.0.0.1:{devtools_port}/json/list") or [] if t.get("type") == "page"],
    )
    tools = DevTools(pages[0]["webSocketDebuggerUrl"])
    tools.call("Page.enable")
    tools.call("Runtime.enable")
    tools.call("Emulation.setDeviceMetricsOverride", width=1280, height=900, deviceScaleFactor=1, mobile=False)
    # Any alert, from wherever, is counted.
    tools.call(
        "Page.addScriptToEvaluateOnNewDocument",
        source="window.__alerts = 0; window.alert = function () { window.__alerts++; };",
    )
    return tools


def save_screenshot(tools, screenshot):
    """The whole page, however tall, as a PNG."""
    height = tools.evaluate("Math.ceil(document.documentElement.scrollHeight)")
    tools.call("Emulation.setDeviceMetricsOverride", width=1280, height=max(900, height), deviceScaleFactor=1, mobile=False)
    shot = tools.call("Page.captureScreenshot", format="png")
    with open(screenshot, "wb") as out:
        out.write(base64.b64decode(shot["data"]))


def check_times(tools, failures):
    """Relative times, the UTC instant in the title."""
    last = tools.evaluate("(e => ({text: e.textContent, title: e.title || ''}))(document.getElementById('last-success'))")
    if not re.fullmatch(r"\d+ s ago", last["text"]):
        failures.append(f"last success shows {last['text']!r}, not a relative time")
    if not UTC_INSTANT.match(last["title"]):
        failures.append(f"last success has title {last['title']!r}, not the UTC instant")
    received = tools.evaluate(
        "Array.from(document.querySelectorAll('tr.rejection td.received')).map(td => [td.textContent, td.title])"
    )
    if not received:
        failures.append("no rejection shows when it was received")
    for text, title in received:
        if not re.fullmatch(r"\d+ (s|min) ago", text) or not UTC_INSTANT.match(title):
            failures.append(f"a rejection's received time shows {text!r} (title {title!r})")
            break


def check_reasons(tools, status, failures):
    """Reasons by count, largest first, the ones never counted left out."""
    rejected = status["totals"]["rejected"]
    expected = [[r, str(n)] for r, n in sorted(rejected.items(), key=lambda rn: (-rn[1], rn[0])) if n > 0]
    shown = tools.evaluate(
        "Array.from(document.getElementById('reasons').rows).map(r => Array.from(r.cells).map(c => c.textContent))"
    )
    if shown != expected:
        failures.append(f"reasons shown {shown}, expected {expected} (by count, zeros left out)")


def check_serving(tools, source_url, database_url, failures):
    """The source and database named, without user-info or passwords."""
    source = source_url.replace(f"reader:{SOURCE_SECRET}@", "***@")
    database = urlparse(database_url)
    expected = {"source": source, "database": f"{database.hostname}:{database.port or 5432}{database.path}"}
    for element_id, text in expected.items():
        shown = tools.evaluate(f"(document.getElementById({element_id!r}) || {{}}).textContent")
        if shown != text:
            failures.append(f"#{element_id} shows {shown!r}, expected {text!r}")
    page = tools.evaluate("document.documentElement.outerHTML")
    for secret in (SOURCE_SECRET, DB_SECRET, "reader"):
        if secret in page:
            failures.append(f"the page shows {secret!r}")


def chart_points(tools):
    """How many points each chart line has."""
    return tools.evaluate(
        "Object.fromEntries(['fetched-line', 'synced-line', 'lag-line'].map(id =>"
        " [id, (document.querySelector('svg.chart #' + id) || {points: {numberOfItems: 0}}).points.numberOfItems]))"
    )


def with_password(url, user, password):
    """`url` with user-info `user:password`."""
    scheme, rest = url.split("://", 1)
    rest = rest.split("@", 1)[-1]
    return f"{scheme}://{user}:{password}@{rest}"


def shoot(url, chromium, screenshot, seconds):
    """Opens a running target's page, lets it poll for `seconds`, saves it."""
    processes = []
    workdir = tempfile.mkdtemp(prefix="browser-shot-")
    try:
        tools = start_chromium(chromium, workdir, processes)
        tools.call("Page.navigate", url=url)
        time.sleep(float(seconds))
        save_screenshot(tools, screenshot)
        print(f"browser-check: screenshot of {url} saved to {screenshot}")
        return 0
    finally:
        for process in processes:
            process.terminate()
            process.wait(timeout=10)


def main():
    if sys.argv[1:2] == ["shoot"]:
        return shoot(*sys.argv[2:6])
    binary, database_url, chromium, screenshot, workdir = sys.argv[1:6]
    database_url = with_password(database_url, urlparse(database_url).username or "postgres", DB_SECRET)
    os.makedirs(workdir, exist_ok=True)
    source = ThreadingHTTPServer(("127.0.0.1", 0), Source)
    threading.Thread(target=source.serve_forever, daemon=True).start()
    source_url = f"http://reader:{SOURCE_SECRET}@127.0.0.1:{source.server_address[1]}/users/changes"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {
        "PATH": os.environ.get("PATH", ""),
        "DATABASE_URL": database_url,
        "SOURCE_SERVICE_URL": source_url,
        "METRICS_ADDR": f"127.0.0.1:{port}",
        "SYNC_INTERVAL": "0.5",
        "ADMIN_TOKEN": TOKEN,
        "LOG_LEVEL": "info",
    }
    processes = []
    try:
        with open(os.path.join(workdir, "target.log"), "w") as log:
            processes.append(subprocess.Popen([binary], env=env, cwd=workdir, stdout=log, stderr=log))
        wait_for("the target to sync", lambda: (get_json(f"{base}/status") or {}).get("cursor") == len(CHANGES))

        tools = start_chromium(chromium, workdir, processes)
        tools.call("Page.navigate", url=f"{base}/")

        def shown(element_id):
            return tools.evaluate(f"(document.getElementById({element_id!r}) || {{}}).textContent")

        wait_for("the page to show the cursor", lambda: shown("cursor") == str(len(CHANGES)))
        failures = []
        if shown("state") not in ("idle", "syncing"):
            failures.append(f"state shows {shown('state')!r}")

        # The source moves on: the page follows without being reloaded.
        tools.evaluate("window.__same_document = 'yes'")
        with LOCK:
            CHANGES.extend(profile(n) for n in range(20, 23))
        wait_for("the page to follow the cursor", lambda: shown("cursor") == str(len(CHANGES)), timeout=20)
        if tools.evaluate("window.__same_document") != "yes":
            failures.append("the page reloaded instead of refreshing itself")
        if not tools.evaluate("document.getElementById('reasons').rows.length > 0"):
            failures.append("no rejections by reason shown")
        check_reasons(tools, get_json(f"{base}/status"), failures)
        check_serving(tools, source_url, database_url, failures)
        # A few polls later, both charts have lines.
        try:
            wait_for("the charts to draw", lambda: min(chart_points(tools).values()) >= 3, timeout=30)
        except SystemExit:
            failures.append(f"the charts have too few points: {chart_points(tools)}")

        # The token, typed in, lists the rejections.
        tools.evaluate("document.getElementById('token').focus()")
        tools.call("Input.insertText", text=TOKEN)
        tools.evaluate("document.querySelector('#token-form button').click()")
        wait_for("the rejections to be listed", lambda: tools.evaluate("document.querySelectorAll('tr.rejection').length") >= 4)
        check_times(tools, failures)
        payloads = tools.evaluate("Array.from(document.querySelectorAll('tr.rejection td.payload')).map(td => td.textContent)")
        for marker in (IMG, SCRIPT, SVG):
            expected = json.dumps(marker)[1:-1]
            if not any(expected in text for text in payloads):
                failures.append(f"no payload shows {marker!r} as text")
        injected = tools.evaluate(
            "({img: document.querySelectorAll('img').length, svg: document.querySelectorAll('svg:not(.chart)').length,"
            " scripts: document.querySelectorAll('script').length, injected: window.__injected || 0,"
            " alerts: window.__alerts})"
        )
        if injected != {"img": 0, "svg": 0, "scripts": 1, "injected": 0, "alerts": 0}:
            failures.append(f"markup from the source got into the page: {injected}")
        dialogs = [e for e in tools.events if e.get("method") == "Page.javascriptDialogOpening"]
        if dialogs:
            failures.append(f"dialogs opened: {dialogs}")

        save_screenshot(tools, screenshot)
        with open(os.path.join(workdir, "dom.html"), "w") as out:
            out.write(tools.evaluate("document.documentElement.outerHTML"))
        if failures:
            for failure in failures:
                print(f"browser-check: FAILED: {failure}", file=sys.stderr)
            return 1
        print(
            f"browser-check: page rendered, cursor followed to {len(CHANGES)}, relative times with UTC titles,"
            f" reasons by count, source and database masked, charts drawn ({chart_points(tools)}),"
            f" {len(payloads)} rejections shown as text, nothing injected"
        )
        print(f"browser-check: screenshot saved to {screenshot}")
        return 0
    finally:
        for process in reversed(processes):
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
        source.shutdown()


if __name__ == "__main__":
    sys.exit(main())
