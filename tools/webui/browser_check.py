#!/usr/bin/env python3
"""Drive `blip2 serve`'s web page in headless Chromium and check what a user would see.

Starts the server on a tiny fixture, opens the page over the DevTools protocol (through
`--remote-debugging-pipe`: no websocket, no Python packages), and checks:

- the page names the checkpoint, backend and precision;
- choosing an image streams a caption equal to `blip2 caption`'s for the same file;
- a question typed and sent with Enter gets `blip2 ask`'s answer, and the image was encoded once
  (the server's image-cache counters: one miss, then a hit);
- a file too large for the server's body limit, a file that is not an image, and an option over
  the server's limits each show a readable message, not a broken page;
- on a phone-sized screen nothing overflows sideways;
- with a retrieval checkpoint, typed texts get match bars with `/v1/match`'s numbers;
- every request the page made went to the server itself (no CDN, no other origin).

A screenshot of each state goes to --out. Needs the `blip2` binary (`cargo build --release -p
blip2-cli`, or the README's test command, which builds it too) and Debian's `chromium`. Takes a
few seconds.

    python3 tools/webui/browser_check.py --out target/webui-check
"""

import argparse
import base64
import json
import os
import random
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"


def default_binary():
    target = os.environ.get("CARGO_TARGET_DIR", str(ROOT / "target"))
    return str(Path(target) / "release" / "blip2")


# ---------------------------------------------------------------- the DevTools protocol


class Browser:
    """Chromium, headless, spoken to over the DevTools pipe (fd 3 in, fd 4 out, NUL-ended)."""

    def __init__(self, chromium, profile):
        to_browser_r, self.to_browser = os.pipe()
        self.from_browser, from_browser_w = os.pipe()
        args = [
            chromium, "--headless=new", "--remote-debugging-pipe", "--no-sandbox",
            "--disable-gpu", "--no-first-run", "--no-default-browser-check",
            f"--user-data-dir={profile}", "about:blank",
        ]
        # bash puts the pipe ends where Chromium expects them.
        command = " ".join(f"'{a}'" for a in args)
        self.process = subprocess.Popen(
            ["bash", "-c", f"exec {command} 3<&{to_browser_r} 4>&{from_browser_w}"],
            pass_fds=(to_browser_r, from_browser_w),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        os.close(to_browser_r)
        os.close(from_browser_w)
        self.buffer = b""
        self.next_id = 0
        self.events = []
        self.session = None

    def _read_message(self, deadline):
        while b"\0" not in self.buffer:
            if time.monotonic() > deadline:
                raise TimeoutError("no answer from Chromium")
            chunk = os.read(self.from_browser, 1 << 16)
            if not chunk:
                raise RuntimeError("Chromium closed the DevTools pipe")
            self.buffer += chunk
        message, self.buffer = self.buffer.split(b"\0", 1)
        return json.loads(message)

    def send(self, method, params=None, session=True, timeout=30):
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params or {}}
        if session and self.session:
            message["sessionId"] = self.session
        os.write(self.to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]
            self.events.append(reply)

    def open(self, url, width, height, mobile=False):
        target = self.send("Target.createTarget", {"url": "about:blank"}, session=False)
        attached = self.send(
            "Target.attachToTarget", {"targetId": target["targetId"], "flatten": True},
            session=False,
        )
        self.session = attached["sessionId"]
        for domain in ("Page", "Runtime", "Network", "DOM"):
            self.send(f"{domain}.enable")
        self.viewport(width, height, mobile)
        self.send("Page.navigate", {"url": url})
        self.wait_for(f"location.href === {json.dumps(url)} && document.readyState === 'complete'",
                      f"{url} to load")

    def viewport(self, width, height, mobile=False):
        self.send("Emulation.setDeviceMetricsOverride", {
            "width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile,
        })

    def js(self, expression):
        result = self.send("Runtime.evaluate", {
            "expression": expression, "returnByValue": True, "awaitPromise": True,
        })
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression, what, timeout=60):
        """The first truthy value of `expression`; one that throws (the page not there yet)
        counts as not yet."""
        deadline = time.monotonic() + timeout
        last_error = None
        while time.monotonic() < deadline:
            try:
                value = self.js(expression)
            except RuntimeError as e:
                value, last_error = None, e
            if value:
                return value
            time.sleep(0.1)
        raise TimeoutError(f"waited {timeout} s for {what} (last error: {last_error})")

    def choose_file(self, path):
        node = self.send("Runtime.evaluate", {"expression": "document.getElementById('file')"})
        self.send("DOM.setFileInputFiles", {
            "files": [str(path)], "objectId": node["result"]["objectId"],
        })

    def type_and_enter(self, element_id, text):
        self.js(f"document.getElementById({json.dumps(element_id)}).focus()")
        self.send("Input.insertText", {"text": text})
        for kind in ("keyDown", "keyUp"):
            self.send("Input.dispatchKeyEvent", {
                "type": kind, "key": "Enter", "code": "Enter", "windowsVirtualKeyCode": 13,
                "text": "\r" if kind == "keyDown" else "",
            })

    def screenshot(self, path):
        """The page down to its last element (not the empty viewport below it)."""
        width, height = self.js(
            "[window.innerWidth, Math.min(document.documentElement.scrollHeight,"
            " Math.max(...[...document.querySelectorAll('main > *, header')]"
            ".map(e => e.getBoundingClientRect().bottom)) + 24)]")
        shot = self.send("Page.captureScreenshot", {
            "format": "png",
            "clip": {"x": 0, "y": 0, "width": width, "height": height, "scale": 1},
        })
        Path(path).write_bytes(base64.b64decode(shot["data"]))

    def requested_urls(self):
        return [
            e["params"]["request"]["url"]
            for e in self.events
            if e.get("method") == "Network.requestWillBeSent"
        ]

    def close(self):
        try:
            self.send("Browser.close", session=False, timeout=5)
        except Exception:
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()


# ---------------------------------------------------------------- the server and the CLI


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, binary, model, extra, log):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # From the repository root, so that the page names the fixture as the README does.
        self.process = subprocess.Popen(
            [binary, "serve", "--model", shown(model), "--port", str(self.port), *extra],
            stdout=log, stderr=log, cwd=ROOT,
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited ({self.process.returncode}); see {log.name}")
            try:
                with urllib.request.urlopen(self.url + "/ready", timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError):
                pass
            time.sleep(0.2)
        raise TimeoutError("the server did not become ready")

    def get(self, path):
        with urllib.request.urlopen(self.url + path, timeout=30) as r:
            return r.read().decode()

    def post(self, path, body):
        request = urllib.request.Request(
            self.url + path, data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as r:
            return json.loads(r.read())

    def metric(self, name):
        for line in self.get("/metrics").splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        raise KeyError(name)

    def stop(self):
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()


def shown(path):
    """`path` relative to the repository when inside it."""
    try:
        return str(Path(path).resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def cli_json(binary, *args):
    out = subprocess.run([binary, *args, "--json"], check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


# ---------------------------------------------------------------- test images


def png(width, height, pixels):
    """A PNG (8-bit RGB) from row-major RGB bytes."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    rows = b"".join(
        b"\0" + pixels[y * width * 3:(y + 1) * width * 3] for y in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(rows, 1)) + chunk(b"IEND", b""))


def noise_png(path, side, seed):
    """Random pixels: a PNG that does not compress (about 3 bytes per pixel)."""
    rng = random.Random(seed)
    path.write_bytes(png(side, side, rng.randbytes(side * side * 3)))


# ---------------------------------------------------------------- the checks


class Check:
    def __init__(self):
        self.failures = []
        self.passed = 0

    def __call__(self, condition, what):
        if condition:
            self.passed += 1
            print(f"ok    {what}")
        else:
            self.failures.append(what)
            print(f"FAIL  {what}")


def text_of(browser, element_id):
    return browser.js(f"document.getElementById({json.dumps(element_id)}).textContent")


def error_shown(browser):
    return browser.js("(e => e.hidden ? '' : e.textContent)(document.getElementById('error'))")


def check_generation(args, browser, check, out, log):
    image = FIXTURES / "images" / "rgb_96x64.png"
    question = "what is in the picture?"
    # Large enough for the page and its JSON, too small for an uncompressible 700 px PNG.
    limit = 1_000_000
    server = Server(args.blip2, args.model, ["--max-body-bytes", str(limit)], log)
    try:
        expected_caption = cli_json(args.blip2, "caption", "--model", str(args.model), str(image))
        expected_answer = cli_json(
            args.blip2, "ask", "--model", str(args.model), str(image), "--question", question)
        browser.open(server.url + "/", 900, 900)
        label = browser.wait_for(
            "(t => t.includes(' · ') && t)(document.getElementById('model').textContent)",
            "the model line")
        check(shown(args.model) in label and "flex" in label and "f32" in label,
              f"the page names the checkpoint, backend and precision: {label!r}")
        browser.screenshot(out / "1-empty.png")

        # Count the caption's updates: a streamed caption grows piece by piece.
        browser.js("window.captionUpdates = 0; new MutationObserver(r => { window.captionUpdates += r.length })"
                   ".observe(document.getElementById('caption'), {childList: true, characterData: true})")
        browser.choose_file(image)
        caption = browser.wait_for(
            "(c => c.dataset.done && c.textContent)(document.getElementById('caption'))",
            "the caption")
        want = json_text(expected_caption)
        check(caption == want, f"the streamed caption is the CLI's: {caption!r} vs {want!r}")
        updates = browser.js("window.captionUpdates")
        check(updates > 2, f"the caption arrived in pieces ({updates} updates)")
        timings = text_of(browser, "timings")
        check("encode" in timings and "generate" in timings, f"timings shown: {timings!r}")
        browser.screenshot(out / "2-caption.png")

        browser.type_and_enter("question", question)
        answer = browser.wait_for(
            "(li => li && li.dataset.done && li.querySelector('.a').textContent)"
            "(document.querySelector('#answers li'))", "the answer")
        want = json_text(expected_answer)
        check(answer == want, f"the answer is the CLI's: {answer!r} vs {want!r}")
        hits = server.metric("blip2_image_cache_hits_total")
        misses = server.metric("blip2_image_cache_misses_total")
        check((hits, misses) == (1, 1),
              f"the image was encoded once for a caption and a question (hits {hits}, misses {misses})")
        check("reused" in text_of(browser, "timings"),
              f"the timings say the encoding was reused: {text_of(browser, 'timings')!r}")
        browser.screenshot(out / "3-question.png")

        big = Path(tempfile.mkdtemp()) / "noise_700.png"
        noise_png(big, 700, seed=1)
        browser.choose_file(big)
        error = browser.wait_for(
            "(e => !e.hidden && e.textContent)(document.getElementById('error'))",
            "the size error")
        check("at most" in error, f"an oversized file shows the limit: {error!r}")
        browser.screenshot(out / "4-too-large.png")

        not_image = big.with_name("notes.txt")
        not_image.write_text("not an image")
        browser.choose_file(not_image)
        error = browser.wait_for(
            "(e => !e.hidden && e.textContent.includes('not an image') && e.textContent)"
            "(document.getElementById('error'))", "the not-an-image error")
        check("notes.txt" in error, f"a file that is not an image is named: {error!r}")

        # An option over the server's limit: the server's own message.
        browser.js("document.getElementById('options').open = true;"
                   "document.getElementById('max-tokens').value = '100000'")
        browser.js("document.getElementById('caption-button').click()")
        error = browser.wait_for(
            "(e => !e.hidden && e.textContent.includes('limit') && e.textContent)"
            "(document.getElementById('error'))", "the server's error")
        check("max_tokens" in error, f"the server's refusal is readable: {error!r}")
        check(browser.js("!document.getElementById('caption-button').disabled"),
              "the page stays usable after an error")
        browser.screenshot(out / "5-server-error.png")

        browser.js("document.getElementById('max-tokens').value = ''")
        browser.viewport(390, 844, mobile=True)
        browser.js("document.getElementById('options').open = false")
        overflow = browser.js("document.documentElement.scrollWidth - window.innerWidth")
        check(overflow <= 0, f"nothing overflows a 390 px screen ({overflow} px)")
        browser.screenshot(out / "6-phone.png")
        check_origins(browser, server, check)
    finally:
        server.stop()


def check_retrieval(args, browser, check, out, log):
    image = FIXTURES / "images" / "rgb_96x64.png"
    texts = ["a red square", "two dogs on a beach", "noise"]
    server = Server(args.blip2, args.retrieval_model, [], log)
    try:
        browser.open(server.url + "/", 900, 900)
        browser.wait_for("!document.getElementById('retrieval').hidden", "the retrieval form")
        browser.choose_file(image)
        browser.wait_for("!document.getElementById('match-button').disabled", "the image")
        browser.js(f"document.getElementById('texts').value = {json.dumps(chr(10).join(texts))}")
        browser.js("document.getElementById('match-button').click()")
        browser.wait_for("!document.getElementById('scores').hidden", "the scores")
        shown = browser.js(
            "[...document.querySelectorAll('#scores tbody tr')].map("
            "r => [...r.querySelectorAll('td')].map(c => c.textContent))")
        data = base64.b64encode(image.read_bytes()).decode()
        api = server.post("/v1/match", {"images": [data], "texts": texts})
        want = [[t, f"{api['itm'][0][j] * 100:.1f} %", f"{api['itc'][0][j]:.3f}"]
                for j, t in enumerate(texts)]
        check(shown == want, f"the match bars show /v1/match's scores: {shown} vs {want}")
        browser.screenshot(out / "7-match.png")
        check_origins(browser, server, check)
    finally:
        server.stop()


def check_origins(browser, server, check):
    urls = browser.requested_urls()
    foreign = [u for u in urls
               if not (u.startswith(server.url + "/") or u.startswith(("data:", "blob:")))
               and u != "about:blank"]
    check(urls and not foreign, f"all {len(urls)} requests went to the server ({foreign or 'none elsewhere'})")
    browser.events.clear()


def json_text(cli_output):
    """The text of `blip2 caption/ask --json`'s single result."""
    (result,) = cli_output["results"]
    return result["text"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blip2", default=default_binary(), help="the blip2 binary")
    parser.add_argument("--model", type=Path, default=FIXTURES / "tiny-opt")
    parser.add_argument("--retrieval-model", type=Path, default=FIXTURES / "tiny-itm")
    parser.add_argument("--chromium", default="chromium")
    parser.add_argument("--out", type=Path, default=ROOT / "target" / "webui-check")
    args = parser.parse_args()
    # The servers run from the repository root.
    args.model, args.retrieval_model = args.model.resolve(), args.retrieval_model.resolve()
    if os.sep in args.blip2:
        args.blip2 = str(Path(args.blip2).resolve())
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    check = Check()
    with tempfile.TemporaryDirectory() as profile, open(args.out / "server.log", "w") as log:
        browser = Browser(args.chromium, profile)
        try:
            check_generation(args, browser, check, args.out, log)
            check_retrieval(args, browser, check, args.out, log)
        finally:
            browser.close()
    took = time.monotonic() - start
    print(f"{check.passed} passed, {len(check.failures)} failed in {took:.1f} s; "
          f"screenshots in {args.out}")
    sys.exit(1 if check.failures else 0)


if __name__ == "__main__":
    main()
