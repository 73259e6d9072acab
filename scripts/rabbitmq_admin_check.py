"""Answers a saga from RabbitMQ's admin panel as a person would, in headless Chromium
(Debian's, no downloaded browser): log in, Exchanges → the exchange → Publish message,
with the routing key and payload the README gives. Leaves a screenshot.

    rabbitmq_admin_check.py MANAGEMENT_URL EXCHANGE ROUTING_KEY PAYLOAD SCREENSHOT

Credentials: RABBITMQ_USER / RABBITMQ_PASSWORD (default guest / guest).
"""

import os
import sys
import urllib.parse

from playwright.sync_api import sync_playwright

from browser import launch as browser_of

url, exchange, routing_key, payload, screenshot = sys.argv[1:6]
user = os.environ.get("RABBITMQ_USER", "guest")
password = os.environ.get("RABBITMQ_PASSWORD", "guest")

with sync_playwright() as p:
    browser = browser_of(p)
    page = browser.new_page(viewport={"width": 1280, "height": 1600})
    page.goto(url)
    page.fill("input[name=username]", user, timeout=30000)
    page.fill("input[name=password]", password)
    page.click("input[type=submit][value=Login]")
    page.click("#tabs a[href='#/exchanges']", timeout=30000)
    # The list is paginated and filterable: filter on the name, as a person would with
    # a broker full of exchanges.
    page.fill("#exchanges-name", exchange)
    page.press("#exchanges-name", "Enter")
    link = f"#/exchanges/%2F/{urllib.parse.quote(exchange, safe='')}"
    page.click(f"a[href='{link}']", timeout=30000)
    page.click("#main h2:has-text('Publish message')")
    form = page.locator("form[action='#/exchanges/publish']")
    form.locator("input[name=routing_key]").fill(routing_key)
    form.locator("textarea[name=payload]").fill(payload)
    form.locator("input[type=submit][value='Publish message']").click()
    try:
        page.wait_for_selector("text=Message published", timeout=15000)
    except Exception:
        page.screenshot(path=screenshot, full_page=True)
        sys.exit(
            f"rabbitmq_admin_check: no 'Message published' after publishing to {exchange} (screenshot {screenshot})"
        )
    page.screenshot(path=screenshot, full_page=True)
    if page.locator("text=not routed").count():
        sys.exit(f"rabbitmq_admin_check: the panel published to {exchange}, but {routing_key!r} routed nowhere")
    browser.close()
print(f"rabbitmq_admin_check: published {routing_key} to {exchange} through {url}; screenshot {screenshot}")
