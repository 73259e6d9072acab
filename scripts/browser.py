"""Headless Chromium for the UI checks (swagger_ui_check.py, rabbitmq_admin_check.py):
Debian's browser, driven by playwright, which downloads no browser of its own."""


def launch(playwright):
    return playwright.chromium.launch(
        executable_path="/usr/bin/chromium",
        headless=True,
        args=[
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ],
    )
