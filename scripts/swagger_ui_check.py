"""Tries Swagger UI as a person would, in headless Chromium (Debian's, no downloaded
browser): every route of the contract is listed, and "Try it out" on
POST /api/v1/products/ answers 204. Leaves a screenshot.

    swagger_ui_check.py http://127.0.0.1:8000 target/artifacts/swagger-ui.png
"""

import json
import sys
import uuid

from playwright.sync_api import sync_playwright

from browser import launch as browser_of

ROUTES = [
    ("GET", "/healthcheck"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("POST", "/api/v1/products"),
    ("GET", "/api/v1/products"),
    ("GET", "/api/v1/products/{productName}"),
    ("PUT", "/api/v1/products/{productID}/productName"),
    ("POST", "/api/v1/address"),
    ("POST", "/api/v1/users"),
    ("POST", "/api/v1/orders"),
    ("GET", "/api/v1/orders"),
    ("GET", "/api/v1/orders/{orderID}"),
    ("GET", "/api/v1/orders/user/{userID}"),
    ("DELETE", "/api/v1/orders"),
]

base, screenshot = sys.argv[1], sys.argv[2]
with sync_playwright() as p:
    browser = browser_of(p)
    page = browser.new_page(viewport={"width": 1280, "height": 2400})
    page.goto(f"{base}/docs")
    page.wait_for_selector(".opblock", timeout=20000)
    listed = set()
    for block in page.query_selector_all(".opblock"):
        method = block.query_selector(".opblock-summary-method").inner_text().strip().upper()
        path = block.query_selector(".opblock-summary-path").inner_text().strip().replace("\u200b", "")
        listed.add((method, path))
    missing = [route for route in ROUTES if route not in listed]
    if missing:
        sys.exit(f"swagger_ui_check: not listed in Swagger UI: {missing} (listed: {sorted(listed)})")

    block = page.locator(".opblock-post", has=page.locator(".opblock-summary-path", has_text="/api/v1/products")).first
    block.locator(".opblock-summary").click()
    block.locator("button.try-out__btn").click()
    body = {
        "productID": str(uuid.uuid4()),
        "price": 100,
        "discount": 10,
        "description": "tried from Swagger UI",
        "name": f"Swagger {uuid.uuid4().hex[:8]}",
    }
    block.locator("textarea.body-param__text").fill(json.dumps(body, indent=2))
    block.locator("button.execute").click()
    status = block.locator(".live-responses-table tr.response .response-col_status").first
    status.wait_for(timeout=10000)
    answered = status.inner_text().strip()
    page.screenshot(path=screenshot, full_page=True)
    browser.close()
    if not answered.startswith("204"):
        sys.exit(f"swagger_ui_check: Try it out answered {answered!r}, not 204")
print(f"swagger_ui_check: {len(ROUTES)} routes listed; Try it out answered 204; screenshot {screenshot}")
