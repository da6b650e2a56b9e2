"""The web page in a real browser: headless Chromium from Debian's `chromium` package driven by Playwright
(executable_path=/usr/bin/chromium; Playwright never downloads a browser) against `sd35 serve` on the tiny
model. It types a prompt, queues it, sees per-step progress and the image, loads settings from the PNG,
and sees the >256 T5 token warning. Screenshots go to the test's tmp folder (and $SD35_TEST_ARTIFACTS)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from server_helpers import LiveServer

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WATCH_PROGRESS = """() => {
  window.__progress = [];
  const target = document.querySelector('#progress-steps');
  new MutationObserver(() => window.__progress.push(target.textContent))
    .observe(target, {childList: true, characterData: true, subtree: true});
}"""


def _save(shot: Path) -> None:
    artifacts = os.environ.get("SD35_TEST_ARTIFACTS")
    if artifacts:
        Path(artifacts).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(artifacts) / shot.name)


@pytest.fixture
def page(tmp_path: Path):
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed (.ci/install-browser.sh installs it)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (test extra)")
    with sync_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"),  # a new, empty user-data-dir
            executable_path=str(CHROMIUM),
            args=CHROMIUM_FLAGS,
            headless=True,
            viewport={"width": 1280, "height": 860},
        )
        try:
            yield context.new_page()
        finally:
            context.close()


def test_page_queues_a_prompt_shows_progress_and_the_image(live_server: LiveServer, page, tmp_path: Path) -> None:
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(f"{live_server.url}/")
    page.wait_for_selector("#conn.on")
    page.wait_for_function("document.querySelector('#sampler').options.length > 10")
    # the node list was read without error (model choices come in both COMBO formats)
    assert page.eval_on_selector("#message", "e => e.hidden || !e.classList.contains('error')"), page.inner_text(
        "#message"
    )
    assert page.is_checked("#slg")  # Skip Layer Guidance on by default, as the model card recommends
    before = page.locator(".card").count()
    page.fill("#prompt", "a lighthouse on a cliff at sunset")
    page.wait_for_function("document.querySelector('#tokens').textContent.startsWith('T5: 11 ')")
    page.fill("#negative", "blurry")
    page.fill("#width", "64")
    page.fill("#height", "64")
    page.fill("#steps", "24")
    page.uncheck("#randomize")
    page.fill("#seed", "12345")
    page.evaluate(WATCH_PROGRESS)
    page.click("#queue")
    page.wait_for_function("document.querySelector('#progress-steps').textContent.startsWith('step')", timeout=60000)
    page.screenshot(path=str(tmp_path / "server-page-progress.png"))
    page.wait_for_function(f"document.querySelectorAll('.card img').length > {before}", timeout=120000)
    page.wait_for_function("document.querySelector('.card img').complete")
    assert page.evaluate("document.querySelector('.card img').naturalWidth") == 64
    seen = page.evaluate("window.__progress")
    assert "step 24 / 24" in seen and any(s.startswith("step 1") for s in seen), seen
    card = page.locator(".card").first.inner_text()
    assert "a lighthouse on a cliff at sunset" in card and "64×64" in card and "24 steps" in card
    assert "seed 12345" in card and "blurry" in card
    shot = tmp_path / "server-page.png"
    page.screenshot(path=str(shot), full_page=True)
    _save(shot)
    _save(tmp_path / "server-page-progress.png")

    # load the settings back from the image's PNG metadata (the drop zone's file picker)
    src = page.get_attribute(".card img", "src")
    png = page.request.get(f"{live_server.url}{src}").body()
    (tmp_path / "result.png").write_bytes(png)
    page.fill("#prompt", "something else")
    page.fill("#seed", "1")
    page.set_input_files("#file", str(tmp_path / "result.png"))
    page.wait_for_function("document.querySelector('#seed').value === '12345'")
    assert page.input_value("#prompt") == "a lighthouse on a cliff at sunset"
    assert page.input_value("#steps") == "24" and page.input_value("#negative") == "blurry"

    page.fill("#prompt", "word " * 300)
    page.wait_for_selector("#token-warning:not([hidden])")
    assert "300 T5 tokens" in page.inner_text("#token-warning")
    assert errors == []
