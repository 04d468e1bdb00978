"""Screenshot of the review page for the README, taken the way a user gets there.

Runs ``ehrstream up`` (embedded stack, default models, the review app with its local
development account), publishes ``samples/clinical_notes.jsonl``, signs in through
headless Chromium, takes the next task, focuses its first flagged item and saves the page.

    .venv/bin/python tools/review_screenshot.py docs/review-ui.png
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.wait import WebDriverWait

REPO = Path(__file__).resolve().parents[1]


def main(out: Path) -> None:
    data_dir = Path(tempfile.mkdtemp(prefix="ehrstream-shot-"))
    cli = [sys.executable, "-m", "streams.cli", "--data-dir", str(data_dir)]
    env = {**os.environ, "EHRSTREAM_REVIEW__PORT": "0"}
    up = subprocess.Popen([*cli, "up"], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # noqa: S603
    url = None
    try:
        assert up.stdout is not None
        for line in up.stdout:
            print(line.rstrip())
            match = re.search(r"review app on (http://\S+)", line)
            if match:
                url = match.group(1)
            if line.startswith("publish with"):
                break
        assert url is not None, "ehrstream up did not start the review app"
        subprocess.run([*cli, "publish", "samples/clinical_notes.jsonl"], cwd=REPO, check=True)  # noqa: S603
        login = dict(line.split(": ", 1) for line in (data_dir / "review-login.txt").read_text().splitlines())
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            result = subprocess.run(  # noqa: S603
                [*cli, "query", "SELECT count() FROM ehrstream.review_queue", "--json"], cwd=REPO, capture_output=True, text=True
            )
            if result.returncode == 0 and json.loads(result.stdout)["rows"][0][0] >= 5:
                break
            time.sleep(2)

        options = webdriver.ChromeOptions()
        options.binary_location = "/usr/bin/chromium"
        for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1440,1000"):
            options.add_argument(arg)
        driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
        try:
            wait = WebDriverWait(driver, 30)
            driver.get(url + "/")
            wait.until(ec.presence_of_element_located((By.ID, "sign-in")))
            driver.find_element(By.ID, "reviewer").send_keys(login["reviewer"])
            driver.find_element(By.ID, "password").send_keys(login["password"], Keys.ENTER)
            wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#queue-list li")))
            body = driver.find_element(By.TAG_NAME, "body")
            body.send_keys("n")
            wait.until(ec.visibility_of_element_located((By.ID, "note-text")))
            time.sleep(0.5)
            body.send_keys("f")  # the first flagged item, as a reviewer starts
            time.sleep(1.5)  # one queue refresh
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(driver.get_screenshot_as_png())
            print(f"wrote {out}")
            with urllib.request.urlopen(url + "/healthz", timeout=5) as resp:  # noqa: S310 (loopback)
                assert resp.status == 200
        finally:
            driver.quit()
    finally:
        up.send_signal(signal.SIGTERM)
        up.wait(timeout=60)


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/review-ui.png"))
