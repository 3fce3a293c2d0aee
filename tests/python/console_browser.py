#!/usr/bin/env python3
"""The compliance console in a real browser: headless Chromium driven over WebDriver
(Debian's chromium and chromium-driver, selenium from PyPI), against a collector filled by
`flopmeter demo --fast`. Launched by tests/console_browser.rs, which starts the collector and
checks the audit log from outside afterwards.

Usage: console_browser.py BASE_URL OUT_DIR ADMIN_TOKEN ADMIN_NAME HOSTILE_MODEL HOSTILE_RUN

Every check compares what the browser shows (visible text, the DOM after parsing) with the
collector's JSON API, never with the HTML string alone. Prints one JSON line with what it
did (the acknowledged alert) for the Rust side; exits non-zero on the first failed check.
"""

import http.server
import json
import math
import os
import re
import sys
import threading
import urllib.request

from selenium import webdriver
from selenium.common.exceptions import NoAlertPresentException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

BASE, OUT, TOKEN, ADMIN, HOSTILE_MODEL, HOSTILE_RUN = sys.argv[1:7]


def check(cond, what):
    if not cond:
        raise SystemExit(f"FAILED: {what}")
    print(f"ok: {what}", file=sys.stderr)


def api(path):
    with urllib.request.urlopen(BASE + path, timeout=30) as r:
        return json.load(r)


def exact(v):
    """A FLOP figure from the API, as an integer: a JSON number or a decimal string (the JSON
    API may move u128 figures to strings; both must compare)."""
    if isinstance(v, str):
        return int(v)
    if isinstance(v, float):
        raise SystemExit(f"FAILED: a float FLOP figure in the API cannot be exact: {v}")
    return int(v)


def shown_matches(text, value):
    """Whether a figure shown to two significant figures (`7.8e21`, `7.8×10^21`) is `value`
    rounded: within half a unit of its second significant figure."""
    m = re.fullmatch(r"\s*(\d(?:\.\d+)?)\s*(?:e|×\s*10\^?)\s*\+?(-?\d+)\s*", text)
    if not m:
        return False
    shown = float(m.group(1)) * 10 ** int(m.group(2))
    if value == 0:
        return shown == 0
    unit = 10 ** (math.floor(math.log10(value)) - 1)
    return abs(shown - value) <= unit / 2 + 1e-9 * value


def browser():
    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/bin/chromium"
    profile = os.path.join(OUT, "chromium-profile")
    for a in [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--window-size=1440,1000",
    ]:
        opts.add_argument(a)
    return webdriver.Chrome(service=Service(executable_path="/usr/bin/chromedriver"), options=opts)


def arrived(d, path):
    """Waits until the browser shows a page under `path` (after a form's navigation)."""
    WebDriverWait(d, 30).until(lambda d: d.current_url.split("?")[0].endswith(path))


def shot(d, name):
    # The whole page, not just the window: resize to the document's height first.
    h = d.execute_script("return document.documentElement.scrollHeight")
    d.set_window_size(1440, min(max(h, 800), 6000))
    d.save_screenshot(os.path.join(OUT, f"{name}.png"))
    d.set_window_size(1440, 1000)


def basics(d, page):
    """Accessibility basics on the page as the browser parsed it."""
    unlabelled = d.execute_script(
        """
        return [...document.querySelectorAll('input, select, textarea')]
          .filter(e => e.type !== 'hidden')
          .filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label'))
          .map(e => e.outerHTML);"""
    )
    check(unlabelled == [], f"{page}: every form control has a label {unlabelled}")
    levels = d.execute_script(
        "return [...document.querySelectorAll('h1,h2,h3,h4,h5,h6')].map(h => +h.tagName[1]);"
    )
    check(levels[:1] == [1] and levels.count(1) == 1, f"{page}: one h1, first ({levels})")
    check(
        all(b - a <= 1 for a, b in zip(levels, levels[1:])),
        f"{page}: heading levels never skip ({levels})",
    )
    silent = d.execute_script(
        """
        return [...document.querySelectorAll('.badge, tr[class^="u-"], section.alert')]
          .filter(e => !e.innerText.trim()
                       || (e.tagName === 'TR' && !e.querySelector('.badge')?.innerText.trim()))
          .map(e => e.outerHTML.slice(0, 120));"""
    )
    check(silent == [], f"{page}: every coloured status also says it in words {silent}")
    check(d.execute_script("return document.scripts.length") == 0, f"{page}: no script at all")
    try:
        d.switch_to.alert
        check(False, f"{page}: no JavaScript dialog opened")
    except NoAlertPresentException:
        pass


class Attacker(http.server.BaseHTTPRequestHandler):
    """Another origin on the same host (same *site*: the session cookie goes along)."""

    page = b""

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.end_headers()
        self.wfile.write(Attacker.page)

    def log_message(self, *a):
        pass


def main():
    os.makedirs(OUT, exist_ok=True)
    alerts = api("/api/v1/alerts")
    models = {m["model"]: m for m in api("/api/v1/models")}
    now_open = [a for a in alerts if a["status"] not in ("acknowledged", "dismissed")]
    check(len(now_open) >= 2, f"the demo left open alerts ({len(now_open)})")
    urgent = min(now_open, key=lambda a: a["deadline_ms"] if a["deadline_ms"] is not None else 2**62)

    d = browser()
    try:
        # The landing page: urgent model first, its deadline, band figures equal to the API's.
        d.get(BASE + "/ui/")
        shot(d, "models")
        basics(d, "models")
        rows = d.find_elements(By.CSS_SELECTOR, "table.models tbody tr")
        check(len(rows) == len(models), f"one row per model ({len(rows)} vs {len(models)})")
        first = rows[0].find_element(By.CSS_SELECTOR, "th a").text
        check(first == urgent["model"], f"most urgent model first: {first} (API: {urgent['model']})")
        times = rows[0].find_elements(By.CSS_SELECTOR, "td time")
        check(
            any(t.get_attribute("datetime") == urgent["deadline"] for t in times),
            f"first row shows the deadline {urgent['deadline']}",
        )
        check(
            any(urgent["deadline"][:10] in t.text for t in times),
            "the deadline's date is visible",
        )
        check("left" in rows[0].text, "time left is shown")
        names = set()
        for row in rows:
            name = row.find_element(By.CSS_SELECTOR, "th a").text
            names.add(name)
            figures = row.find_elements(By.CSS_SELECTOR, "td.num data")
            counted = models[name]["counted"]
            want = [exact(counted["central"]), exact(counted["low"]), exact(counted["high"])]
            got = [int(f.get_attribute("value")) for f in figures]
            check(got == want, f"{name}: band equals the API's counted figures {want}")
            for f, v in zip(figures, want):
                check(shown_matches(f.text, v), f"{name}: shown {f.text!r} is {v} to 2 sig. figs")
        check(HOSTILE_MODEL in names, "the hostile model name renders as text in the table")

        # Hostile names on their own page: text, not markup.
        link = [r for r in rows if r.find_element(By.CSS_SELECTOR, "th a").text == HOSTILE_MODEL]
        link[0].find_element(By.CSS_SELECTOR, "th a").click()
        check(d.find_element(By.TAG_NAME, "h1").text == f"Model {HOSTILE_MODEL}", "hostile model title is text")
        runs = [e.text for e in d.find_elements(By.CSS_SELECTOR, "tbody th")]
        check(HOSTILE_RUN in runs, f"hostile run name renders as text ({runs})")
        check(
            d.execute_script("return document.querySelectorAll('[onmouseover]').length") == 0,
            "no element grew an onmouseover attribute",
        )
        basics(d, "hostile model")
        shot(d, "hostile-model")

        # One model: chart, alerts with history, the report downloads.
        d.get(BASE + "/ui/models/" + urllib.request.quote(urgent["model"], safe=""))
        shot(d, "model")
        basics(d, "model")
        check(len(d.find_elements(By.CSS_SELECTOR, "svg.chart polygon.band")) == 1, "chart with a shaded band")
        check(len(d.find_elements(By.CSS_SELECTOR, "svg.chart line.level")) >= 1, "chart with a threshold line")
        body = d.find_element(By.TAG_NAME, "main").text
        check(urgent["threshold"] in body and "History (audit log)" in body, "alert history shown")
        check("clock started" in body, "the clock start is in the history")
        report = api("/api/v1/models/" + urllib.request.quote(urgent["model"], safe="") + "/report")
        check(report["computation"]["counted_text"].split(" ")[0] in body, "Annex XI computation figure")
        for fmt in ("txt", "csv", "json"):
            href = d.find_element(By.CSS_SELECTOR, f'a[href$="/report.{fmt}"]').get_attribute("href")
            with urllib.request.urlopen(href, timeout=30) as r:
                text = r.read().decode()
            check(urgent["model"] in text, f"report.{fmt} downloads")

        # Alerts without a login: no forms.
        d.get(BASE + "/ui/alerts")
        basics(d, "alerts (logged out)")
        check(len(d.find_elements(By.CSS_SELECTOR, "form[action='/ui/alerts/ack']")) == 0, "no forms without credentials")

        # Log in with the named admin token.
        d.get(BASE + "/ui/login?next=/ui/alerts")
        basics(d, "login")
        d.find_element(By.ID, "token").send_keys(TOKEN)
        d.find_element(By.CSS_SELECTOR, "form[action='/ui/login'] button").click()
        arrived(d, "/ui/alerts")
        check(f"{ADMIN} (admin)" in d.find_element(By.CSS_SELECTOR, "header").text, "logged in as the named admin")
        cookie = d.get_cookie("flopmeter_session")
        check(cookie and cookie["httpOnly"] and cookie.get("sameSite") == "Strict", f"session cookie HttpOnly, SameSite=Strict ({cookie})")
        check(d.execute_script("return document.cookie") == "", "the session cookie is invisible to scripts")
        shot(d, "alerts")
        basics(d, "alerts")

        # A cross-site POST without the CSRF token is refused, and changes nothing.
        other = [a for a in now_open if (a["model"], a["threshold"]) != (urgent["model"], urgent["threshold"])][0]
        Attacker.page = (
            "<!doctype html><title>totally unrelated</title>"
            f'<form method="post" action="{BASE}/ui/alerts/ack">'
            f'<input name="model" value="{other["model"]}">'
            f'<input name="threshold" value="{other["threshold"]}">'
            '<input name="reference" value="forged"><button id="go">go</button></form>'
        ).encode()
        srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Attacker)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        try:
            d.get(f"http://127.0.0.1:{srv.server_address[1]}/")
            d.find_element(By.ID, "go").click()
            arrived(d, "/ui/alerts/ack")
            check("CSRF token is missing or wrong" in d.page_source, "cross-site POST refused for its missing CSRF token")
        finally:
            srv.shutdown()
        after = {(a["model"], a["threshold"]): a for a in api("/api/v1/alerts")}
        check(after[(other["model"], other["threshold"])]["status"] == other["status"], "the forged POST changed nothing")

        # Acknowledge the most urgent alert through the form.
        d.get(BASE + "/ui/alerts")
        reference = "AI Office receipt GPAI-CONSOLE-0016"
        forms = d.find_elements(By.CSS_SELECTOR, "form[action='/ui/alerts/ack']")
        target = [
            f for f in forms
            if f.find_element(By.NAME, "model").get_attribute("value") == urgent["model"]
            and f.find_element(By.NAME, "threshold").get_attribute("value") == urgent["threshold"]
        ]
        check(len(target) == 1, "an acknowledge form for the urgent alert")
        label = target[0].find_element(By.TAG_NAME, "label").text
        check(label == "Notification reference", f"the reference field is labelled ({label!r})")
        target[0].find_element(By.NAME, "reference").send_keys(reference)
        target[0].find_element(By.TAG_NAME, "button").click()
        WebDriverWait(d, 30).until(lambda d: "done=acknowledged" in d.current_url)
        notice = d.find_element(By.CSS_SELECTOR, ".notice.ok").text
        check("acknowledged" in notice, f"the page confirms ({notice!r})")
        after = {(a["model"], a["threshold"]): a for a in api("/api/v1/alerts")}
        acked = after[(urgent["model"], urgent["threshold"])]
        check(acked["status"] == "acknowledged", "the API shows it acknowledged")
        check(f"by {ADMIN} " in (acked["acknowledged"] or "") and reference in acked["acknowledged"], f"acknowledged by {ADMIN} with the reference ({acked['acknowledged']})")

        # The audit page: verify on demand, the acknowledgement under the actor's name.
        d.get(BASE + "/ui/audit")
        basics(d, "audit")
        d.find_element(By.CSS_SELECTOR, "form[action='/ui/audit'] button").click()
        WebDriverWait(d, 30).until(lambda d: "verify=1" in d.current_url)
        check("Verified: OK" in d.find_element(By.TAG_NAME, "main").text, "audit verify on demand")
        rows = d.find_elements(By.CSS_SELECTOR, "section[aria-labelledby=recent] tbody tr")
        mine = [r.text for r in rows if " acknowledged " in f" {r.text} " and urgent["model"] in r.text]
        check(any(ADMIN in r for r in mine), f"audit log names {ADMIN} for the acknowledgement")
        shot(d, "audit")
        with urllib.request.urlopen(BASE + "/ui/audit/export.jsonl", timeout=30) as r:
            lines = [json.loads(l) for l in r.read().decode().splitlines()]
        check(any(e["kind"] == "acknowledged" and e["actor"] == ADMIN for e in lines), "export has it")
    finally:
        d.quit()
    print(json.dumps({"model": urgent["model"], "threshold": urgent["threshold"], "reference": reference}))


if __name__ == "__main__":
    main()
