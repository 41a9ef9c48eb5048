"""The status page in a real headless Chromium, driven over the DevTools protocol.

Run by scripts/browser-check.sh, which provides the database, the binary and
Chromium. This script starts a scripted cursor source whose changes carry
markup (`<img src=x onerror=...>`, `</script><script>...`), a target_service
syncing from it with an admin token, and Chromium; then checks that the page
renders, shows the live cursor (and follows it without a reload when the
source moves on), lists the rejections once the token is typed in, shows
their payloads as text, and that no injected element or script ran. It saves
a screenshot.

Arguments: TARGET_BINARY DATABASE_URL CHROMIUM SCREENSHOT WORKDIR
"""

import base64
import json
import os
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
    profile(12, name=SVG, status="inactive"),
    profile(13, email=SCRIPT),
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


def main():
    binary, database_url, chromium, screenshot, workdir = sys.argv[1:6]
    os.makedirs(workdir, exist_ok=True)
    source = ThreadingHTTPServer(("127.0.0.1", 0), Source)
    threading.Thread(target=source.serve_forever, daemon=True).start()
    source_url = f"http://127.0.0.1:{source.server_address[1]}/users/changes"
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

        # The token, typed in, lists the rejections.
        tools.evaluate("document.getElementById('token').focus()")
        tools.call("Input.insertText", text=TOKEN)
        tools.evaluate("document.querySelector('#token-form button').click()")
        wait_for("the rejections to be listed", lambda: tools.evaluate("document.querySelectorAll('tr.rejection').length") >= 4)
        payloads = tools.evaluate("Array.from(document.querySelectorAll('tr.rejection td.payload')).map(td => td.textContent)")
        for marker in (IMG, SCRIPT, SVG):
            expected = json.dumps(marker)[1:-1]
            if not any(expected in text for text in payloads):
                failures.append(f"no payload shows {marker!r} as text")
        injected = tools.evaluate(
            "({img: document.querySelectorAll('img').length, svg: document.querySelectorAll('svg').length,"
            " scripts: document.querySelectorAll('script').length, injected: window.__injected || 0,"
            " alerts: window.__alerts})"
        )
        if injected != {"img": 0, "svg": 0, "scripts": 1, "injected": 0, "alerts": 0}:
            failures.append(f"markup from the source got into the page: {injected}")
        dialogs = [e for e in tools.events if e.get("method") == "Page.javascriptDialogOpening"]
        if dialogs:
            failures.append(f"dialogs opened: {dialogs}")

        shot = tools.call("Page.captureScreenshot", format="png")
        with open(screenshot, "wb") as out:
            out.write(base64.b64decode(shot["data"]))
        with open(os.path.join(workdir, "dom.html"), "w") as out:
            out.write(tools.evaluate("document.documentElement.outerHTML"))
        if failures:
            for failure in failures:
                print(f"browser-check: FAILED: {failure}", file=sys.stderr)
            return 1
        print(f"browser-check: page rendered, cursor followed to {len(CHANGES)}, {len(payloads)} rejections shown as text, nothing injected")
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
