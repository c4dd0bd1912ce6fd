#!/usr/bin/env python3
"""Drives the dashboard of a running Homeostat in headless Chromium.

    python tests/browser/dashboard.py --url http://127.0.0.1:PORT --token TOKEN \
        --out DIR --phase paths|thousand [--rule RULE] [--expect N]

--phase paths: signs in on the login page, waits for --expect decision rows
  (and one of --rule), filters by rule and by a search that matches nothing,
  opens a decision (SQL, rationale trace id, evidence rows), goes back and
  forth with the keyboard ("/", Enter, Esc), approves the first pending
  approval, waits for its action to have succeeded and for its row in the
  list to say so (an update in place, no duplicate row), and checks that an
  API error is shown in the view. Prints {"approved": ID, "decisions_seen":
  N, "last_update": {...}}.

--phase thousand: signs in, loads /#/decisions with --expect decisions on the
  server and reports how long the first render and each filter took, checking
  that every filter shows what it should. Prints {"rows", "first_render_ms",
  "filter_ms", "max_filter_ms", "round_ms", "max_round_ms"}; times are
  reported, not asserted.

Chromium is /usr/bin/chromium unless HOMEOSTAT_CHROMIUM names another. Every
wait is a Playwright wait (30 s by default), never a sleep. A failed check
leaves a screenshot in DIR, names the check on stderr and exits 1.

Waits are on selectors, not `wait_for_function`: Playwright polls a function
with `eval` inside the page, which the dashboard's CSP (no 'unsafe-eval')
refuses, as it should. `page.evaluate` goes through the DevTools protocol
and is not affected.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import Page, sync_playwright

TIMEOUT_MS = 30_000
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ROW = '[data-testid="decision-row"]'
VISIBLE_ROW = f"{ROW}:not([hidden])"
LOADED = 'body[data-decisions-loaded="true"]'


def nth_row(n: int) -> str:
    """Matches once the list holds at least n rows (rows are its only children)."""
    return f'[data-testid="decisions-list"] > {ROW}:nth-child({n})'


class CheckFailed(Exception):
    def __init__(self, check: str, message: str):
        super().__init__(message)
        self.check = check


class Run:
    """One browser session: the page, the screenshots and the step under way."""

    def __init__(self, page: Page, out: Path, base: str):
        self.page = page
        self.out = out
        self.base = base
        self.step = "start"
        self.shots = 0
        self.page_errors: list[str] = []
        self.csp_violations: list[str] = []
        page.on("pageerror", lambda e: self.page_errors.append(str(e)))
        page.on("console", self._console)

    def _console(self, msg) -> None:
        text = msg.text
        if msg.type == "error" and ("Content Security Policy" in text or "Refused to" in text):
            self.csp_violations.append(text)

    def shot(self, name: str) -> None:
        self.shots += 1
        self.page.screenshot(path=str(self.out / f"{self.shots:02d}-{name}.png"), full_page=False)

    def check(self, ok: bool, message: str) -> None:
        if not ok:
            raise CheckFailed(self.step, message)

    def clean(self) -> None:
        """No script error and nothing the CSP refused, so far."""
        self.check(not self.page_errors, f"script errors on the page: {self.page_errors}")
        self.check(not self.csp_violations, f"the CSP refused something: {self.csp_violations}")

    def visible_rows(self) -> list[dict]:
        return self.page.eval_on_selector_all(
            VISIBLE_ROW,
            "rows => rows.map(r => ({id: r.dataset.id, rule: r.dataset.rule, outcome: r.dataset.outcome}))",
        )

    def count_text(self) -> tuple[int, int]:
        text = self.page.locator('[data-testid="decisions-count"]').inner_text().strip()
        m = re.fullmatch(r"(\d+) of (\d+)", text)
        self.check(m is not None, f"decisions-count reads {text!r}, not 'N of M'")
        return int(m.group(1)), int(m.group(2))


def sign_in(run: Run, token: str | None) -> None:
    run.step = "login"
    page = run.page
    response = page.goto(run.base + "/")
    run.check(response is not None, "no response for /")
    if token:
        run.check(response.status == 401, f"/ answered {response.status} without a session, not 401")
        password = page.locator('input[name="token"]')
        run.check(password.count() == 1, "the login page has no input name=token")
        run.check(password.get_attribute("type") == "password", "the token input is not a password input")
        run.check(page.locator('button[type="submit"]').count() >= 1, "the login page has no submit button")
        run.shot("login")
        password.fill(token)
        with page.expect_navigation():
            page.locator('button[type="submit"]').click()
    page.wait_for_selector('[data-testid="decisions-list"], .login-error', state="attached")
    refused = page.locator(".login-error")
    run.check(refused.count() == 0, f"the token was refused: {refused.first.inner_text() if refused.count() else ''}")
    page.wait_for_selector(LOADED, state="attached")


def wait_rows(run: Run, at_least: int) -> int:
    if at_least > 0:
        run.page.wait_for_selector(nth_row(at_least), state="attached")
    return run.page.locator(ROW).count()


def phase_paths(run: Run, args) -> dict:
    page = run.page
    sign_in(run, args.token)

    run.step = "decisions"
    seen = wait_rows(run, args.expect)
    rule = args.rule or page.locator(ROW).first.get_attribute("data-rule")
    page.wait_for_selector(f'{ROW}[data-rule="{css_string(rule)}"]', state="attached")
    run.shot("decisions")
    run.clean()

    run.step = "filter-rule"
    shown_before, total = run.count_text()
    run.check(shown_before == total, f"with no filter the count reads {shown_before} of {total}")
    all_rules = page.eval_on_selector_all(ROW, "rows => rows.map(r => r.dataset.rule)")
    total = len(all_rules)
    page.select_option('[data-testid="filter-rule"]', rule)
    page.wait_for_selector(f'{VISIBLE_ROW}:not([data-rule="{css_string(rule)}"])', state="detached")
    rows = run.visible_rows()
    shown, total_after = run.count_text()
    run.check(len(rows) > 0, f"no row left visible after choosing rule {rule}")
    run.check(all(r["rule"] == rule for r in rows), f"rows of other rules are visible: {rows[:5]}")
    run.check(shown == len(rows), f"the count reads {shown} but {len(rows)} rows are visible")
    expected = sum(1 for r in page.eval_on_selector_all(ROW, "rows => rows.map(r => r.dataset.rule)") if r == rule)
    run.check(shown == expected, f"{shown} rows shown for {rule}, {expected} rows have that rule")
    if expected < total_after:
        run.check(shown < shown_before, f"the count did not change: {shown_before} then {shown}")
    run.shot("filter-rule")

    run.step = "search-nothing"
    page.fill('[data-testid="filter-search"]', "zz-no-decision-has-this-zz")
    page.wait_for_selector(VISIBLE_ROW, state="detached")
    run.check(run.count_text()[0] == 0, "the count is not 0 for a search that matches nothing")
    run.shot("search-nothing")
    page.fill('[data-testid="filter-search"]', "")
    page.wait_for_selector(VISIBLE_ROW, state="attached")

    run.step = "detail"
    first = page.locator(VISIBLE_ROW).first
    decision_id = first.get_attribute("data-id")
    first.click()
    detail = page.locator(f'[data-testid="decision-detail"][data-id="{css_string(decision_id)}"]')
    detail.wait_for(state="visible")
    sql = detail.locator('[data-testid="detail-sql"]').inner_text().strip()
    run.check(bool(sql), "detail-sql is empty")
    trace_id = detail.locator('[data-testid="detail-trace-id"]').inner_text().strip()
    run.check(re.fullmatch(r"[0-9a-f]{32}", trace_id) is not None, f"detail-trace-id reads {trace_id!r}")
    evidence_rows = detail.locator('[data-testid="detail-evidence"] tbody tr').count()
    run.check(evidence_rows >= 1, "detail-evidence has no row")
    for hook in ("detail-policy", "detail-host-calls", "detail-run-status", "detail-outcome"):
        run.check(detail.locator(f'[data-testid="{hook}"]').count() == 1, f"the detail has no {hook}")
    link = detail.locator('[data-testid="detail-trace-link"]')
    if link.count():
        href = link.get_attribute("href") or ""
        run.check(trace_id in href, f"detail-trace-link {href!r} does not name trace {trace_id}")
    run.shot("detail")
    run.clean()

    keyboard(run)

    run.step = "approve"
    page.locator('[data-testid="nav-approvals"]').click()
    page.wait_for_selector('[data-testid="approval-row"]')
    row = page.locator('[data-testid="approval-row"]').first
    approved = row.get_attribute("data-id")
    run.shot("approvals")
    row.locator('[data-testid="approve-button"]').click()
    page.wait_for_selector(f'[data-testid="approval-row"][data-id="{css_string(approved)}"]', state="detached")

    run.step = "approved-run"
    page.evaluate("id => { location.hash = '#/decisions/' + encodeURIComponent(id); }", approved)
    page.wait_for_selector(f'[data-testid="decision-detail"][data-id="{css_string(approved)}"]')
    page.wait_for_selector('[data-testid="decision-detail"] [data-testid="detail-run-status"]:text-is("succeeded")')
    run.shot("approved-run")
    run.clean()

    run.step = "approved-row"
    # The list took the change in (by an update, or the periodic full load):
    # the row says so, and is there once.
    page.evaluate("() => { location.hash = '#/decisions'; }")
    page.wait_for_selector(f'{ROW}[data-id="{css_string(approved)}"][data-status="succeeded"]', state="attached")
    ids = page.eval_on_selector_all(ROW, "rows => rows.map(r => r.dataset.id)")
    run.check(len(ids) == len(set(ids)), f"{len(ids) - len(set(ids))} duplicate rows in the list")
    last_update = page.evaluate("() => window.homeostatTimings.lastUpdate || null")
    run.check(isinstance(last_update, dict), f"homeostatTimings.lastUpdate is {last_update!r}")

    api_error(run)
    run.clean()
    return {"approved": approved, "decisions_seen": seen, "last_update": last_update}


def keyboard(run: Run) -> None:
    """ "/" focuses the search, Enter opens a row, Esc comes back to it."""
    page = run.page
    run.step = "keyboard"
    page.evaluate("() => { location.hash = '#/decisions'; }")
    page.wait_for_selector('[data-testid="decisions-list"]', state="visible")
    page.locator("body").press("/")
    focused = page.evaluate("() => document.activeElement && document.activeElement.dataset.testid")
    run.check(focused == "filter-search", f"'/' focused {focused!r}, not the search")
    page.keyboard.press("Escape")
    row = page.locator(VISIBLE_ROW).first
    decision_id = row.get_attribute("data-id")
    row.focus()
    page.keyboard.press("Enter")
    page.wait_for_selector(f'[data-testid="decision-detail"][data-id="{css_string(decision_id)}"]', state="visible")
    page.wait_for_selector('[data-testid="decision-detail"] .detail-title:focus')
    page.keyboard.press("Escape")
    page.wait_for_selector(f'{ROW}[data-id="{css_string(decision_id)}"]:focus')
    run.check(page.locator('[data-testid="decision-detail"]').is_hidden(), "Esc did not close the decision")
    run.shot("keyboard")


def api_error(run: Run) -> None:
    """An API error is said in the view, not left as a blank or stale view."""
    page = run.page
    run.step = "api-error"
    pattern = "**/api/v1/rules?*"
    page.route(pattern, lambda route: route.fulfill(status=500, content_type="application/json", body='{"error": "injected failure"}'))
    try:
        page.locator('[data-testid="nav-rules"]').click()
        page.wait_for_selector('[data-testid="rules-error"]:has-text("injected failure")', state="visible")
        run.shot("api-error")
    finally:
        page.unroute(pattern)
    page.wait_for_selector('[data-testid="rules-error"]', state="hidden")


# Applies one filter the way a person does (one input or change event) and
# measures until the frame after it has been painted.
ROUND_JS = """
async ([selector, value, eventName]) => {
  const el = document.querySelector(selector);
  const t0 = performance.now();
  el.value = value;
  el.dispatchEvent(new Event(eventName, { bubbles: true }));
  await new Promise(resolve => requestAnimationFrame(() => setTimeout(resolve, 0)));
  const rows = [...document.querySelectorAll('[data-testid="decision-row"]')];
  const visible = rows.filter(r => !r.hidden);
  return {
    round: performance.now() - t0,
    js: window.homeostatTimings.lastFilter,
    visible: visible.length,
    total: rows.length,
    rules: [...new Set(visible.map(r => r.dataset.rule))],
    outcomes: [...new Set(visible.map(r => r.dataset.outcome))],
    count: document.querySelector('[data-testid="decisions-count"]').textContent.trim(),
  };
}
"""


def phase_thousand(run: Run, args) -> dict:
    page = run.page
    sign_in(run, args.token)

    run.step = "first-render"
    # A new document, so that the first render is measured from navigation.
    page.goto("about:blank")
    page.goto(run.base + "/#/decisions")
    page.wait_for_selector(LOADED, state="attached")
    wait_rows(run, args.expect)
    run.check(page.locator(ROW).count() == args.expect, f"{page.locator(ROW).count()} rows, {args.expect} expected")
    timings = page.evaluate("() => ({...window.homeostatTimings})")
    first_render = timings.get("firstRender")
    run.check(isinstance(first_render, (int, float)), f"homeostatTimings.firstRender is {first_render!r}")
    rows = page.eval_on_selector_all(ROW, "rows => rows.map(r => ({rule: r.dataset.rule, outcome: r.dataset.outcome}))")
    total = len(rows)
    run.shot("thousand-loaded")

    by_rule: dict[str, int] = {}
    by_outcome: dict[str, int] = {}
    for r in rows:
        by_rule[r["rule"]] = by_rule.get(r["rule"], 0) + 1
        by_outcome[r["outcome"]] = by_outcome.get(r["outcome"], 0) + 1
    # The most common rule whose name is in no other rule's name, so that a
    # search for it can only find its own decisions.
    candidates = [n for n in sorted(by_rule, key=lambda n: -by_rule[n]) if not any(n in o for o in by_rule if o != n)]
    rule = candidates[0] if candidates else max(by_rule, key=by_rule.get)
    outcome = max(by_outcome, key=by_outcome.get)

    filter_ms: list[float] = []
    round_ms: list[float] = []

    def apply(step: str, selector: str, value: str, event: str) -> dict:
        run.step = step
        result = page.evaluate(ROUND_JS, [selector, value, event])
        filter_ms.append(result["js"])
        round_ms.append(result["round"])
        run.check(result["visible"] <= result["total"], f"{result['visible']} rows visible of {result['total']}")
        run.check(result["count"] == f"{result['visible']} of {result['total']}", f"the count reads {result['count']!r} with {result['visible']} rows visible")
        return result

    r = apply("filter-rule", '[data-testid="filter-rule"]', rule, "change")
    run.check(r["rules"] == [rule], f"rule filter {rule}: rows of {r['rules']} visible")
    run.check(r["visible"] == by_rule[rule], f"rule filter {rule}: {r['visible']} rows, {by_rule[rule]} expected")
    apply("clear-rule", '[data-testid="filter-rule"]', "", "change")

    r = apply("search-rule", '[data-testid="filter-search"]', rule, "input")
    run.check(r["rules"] == [rule], f"search {rule!r}: rows of {r['rules']} visible")
    run.check(r["visible"] == by_rule[rule], f"search {rule!r}: {r['visible']} rows, {by_rule[rule]} expected")
    r = apply("clear-search", '[data-testid="filter-search"]', "", "input")
    run.check(r["visible"] == total, f"after clearing the search {r['visible']} of {total} rows are visible")

    r = apply("filter-outcome", '[data-testid="filter-outcome"]', outcome, "change")
    run.check(r["outcomes"] == [outcome], f"outcome filter {outcome}: rows of {r['outcomes']} visible")
    run.check(r["visible"] == by_outcome[outcome], f"outcome filter {outcome}: {r['visible']} rows, {by_outcome[outcome]} expected")
    page.screenshot(path=str(run.out / "thousand.png"))
    r = apply("clear-outcome", '[data-testid="filter-outcome"]', "", "change")
    run.check(r["visible"] == total, f"with every filter cleared {r['visible']} of {total} rows are visible")

    run.step = "thousand"
    run.clean()
    return {
        "rows": total,
        "first_render_ms": round(first_render, 1),
        "first_frame_ms": ms(timings.get("firstFrame")),
        "fetch_ms": ms(timings.get("fetchMs")),
        "build_ms": ms(timings.get("buildMs")),
        "filter_ms": [round(x, 2) for x in filter_ms],
        "max_filter_ms": round(max(filter_ms), 2),
        "round_ms": [round(x, 1) for x in round_ms],
        "max_round_ms": round(max(round_ms), 1),
    }


def ms(value) -> float | None:
    return round(value, 1) if isinstance(value, (int, float)) else None


def css_string(value: str) -> str:
    """A value to put inside a double-quoted CSS attribute selector."""
    return value.replace("\\", "\\\\").replace('"', '\\"')


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="the instance, e.g. http://127.0.0.1:8480")
    parser.add_argument("--token", help="the API token; without it no login page is expected")
    parser.add_argument("--out", required=True, help="folder for the screenshots")
    parser.add_argument("--phase", required=True, choices=["paths", "thousand"])
    parser.add_argument("--rule", help="paths: a rule that has decisions (default: the newest decision's)")
    parser.add_argument("--expect", type=int, default=1, help="decisions to wait for (default 1)")
    args = parser.parse_args()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    chromium = os.environ.get("HOMEOSTAT_CHROMIUM", "/usr/bin/chromium")
    profile = tempfile.mkdtemp(prefix="homeostat-browser-")
    try:
        with sync_playwright() as p:
            context = p.chromium.launch_persistent_context(
                profile,
                executable_path=chromium,
                headless=True,
                args=CHROMIUM_ARGS,
                viewport={"width": 1440, "height": 900},
            )
            page = context.pages[0] if context.pages else context.new_page()
            page.set_default_timeout(TIMEOUT_MS)
            run = Run(page, out, args.url.rstrip("/"))
            try:
                result = phase_paths(run, args) if args.phase == "paths" else phase_thousand(run, args)
            except (CheckFailed, PlaywrightError) as e:
                check = e.check if isinstance(e, CheckFailed) else run.step
                try:
                    page.screenshot(path=str(out / f"failed-{check}.png"))
                except PlaywrightError:
                    pass
                print(f"dashboard check failed at step {check!r}: {e}", file=sys.stderr)
                if run.page_errors:
                    print(f"script errors on the page: {run.page_errors}", file=sys.stderr)
                return 1
            finally:
                context.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
