"""The /ui page in real headless Chromium (Debian's chromium + chromium-driver, via Selenium) against
a real `bentoml serve`: a photo's label equals POST /predict's, a text file shows its reason and the
page keeps working, the heatmap loads. Without a browser it fails with the command that installs one
(the page is part of the product; `.ci/run` installs it).
MASK_UI_SCREENSHOT=FILE (``make docs-ui``) also copies the screenshot there (docs/ui.png)."""
from __future__ import annotations

import contextlib
import os
import shutil
import sys
from pathlib import Path

import httpx
import pytest

from servers import serve_env as _env, bentoml_serve
from test_serve_subprocess import store_home  # noqa: F401  (fixture)
from test_service import LIMITS

pytestmark = pytest.mark.slow
DEMO_MODEL = Path(__file__).resolve().parents[1] / "demo" / "model.onnx"
CHROME_ARGS = ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
               "--disable-background-networking", "--disable-component-update", "--no-first-run",
               "--window-size=1280,900")


def _browser():
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver")
    if not (chromium and driver):
        pytest.fail("no chromium/chromedriver on PATH: apt-get install -y chromium chromium-driver "
                    "(.ci/run does)", pytrace=False)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for a in CHROME_ARGS:
        opts.add_argument(a)
    return webdriver.Chrome(service=Service(driver), options=opts)


@contextlib.contextmanager
def ui_page(url: str, timeout: float):
    """(driver, WebDriverWait(timeout)) on ``url``/ui/ once the model panel has loaded; quits the browser."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    driver = _browser()
    try:
        driver.set_page_load_timeout(30)
        driver.get(f"{url}/ui/")
        wait = WebDriverWait(driver, timeout)
        wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "#model-panel dl")))
        yield driver, wait
    finally:
        driver.quit()


def _sample(text: str, name: str, **labels) -> float:
    """Sum of the Prometheus samples ``name{labels...}`` on a /metrics page (0 when absent)."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.fixture(scope="module")
def ui_server(store_home, tmp_path_factory):  # noqa: F811
    """The test model from the store; for ``make docs-ui`` (MASK_UI_SCREENSHOT set) the shipped demo model,
    so the README's screenshot shows what `make serve` serves."""
    log = tmp_path_factory.mktemp("ui_serve") / "serve.log"
    env = _env(BENTOML_HOME=str(store_home))
    if os.environ.get("MASK_UI_SCREENSHOT"):   # the demo model with the shipped limits, as `make serve` runs it
        env = {k: v for k, v in env.items() if k not in LIMITS} | {"MASK_MODEL": str(DEMO_MODEL)}
    with bentoml_serve(sys.executable, env, log) as url:
        yield url


def test_page_labels_errors_and_heatmap(ui_server, synth_root, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC

    photo = sorted((synth_root / "eval" / "images").iterdir())[0]
    with httpx.Client(base_url=ui_server, timeout=60) as c:
        assert c.get("/ui/").status_code == 200, "GET /ui/ (the URL make serve prints) must answer 200"
        assert c.get("/ui").headers.get("location", "").endswith("/ui/"), "GET /ui must redirect to /ui/"
        want = c.post("/predict", files={"image": (photo.name, photo.read_bytes(), "image/jpeg")}).json()
    text = tmp_path / "notes.txt"
    text.write_text("not a photo\n")
    with ui_page(ui_server, 40) as (driver, wait):
        assert "CPUExecutionProvider" in driver.find_element(By.ID, "model-panel").text

        driver.find_element(By.ID, "files").send_keys(str(text))
        error = wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "#messages .error"))).text
        assert "not a recognised image" in error and "<" not in error and "Traceback" not in error, error

        driver.find_element(By.ID, "files").send_keys(str(photo))
        label = wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, ".result .label"))).text
        assert label == want["label"], f"page shows {label!r}, POST /predict says {want['label']!r}"
        assert len(driver.find_elements(By.CSS_SELECTOR, ".result .head-bars")) == 3, "three per-head bar charts"
        wait.until(lambda d: d.execute_script(
            "const i = document.querySelector('.result img.heatmap'); return i && i.complete && i.naturalWidth > 0"))
        assert not driver.find_elements(By.CSS_SELECTOR, ".result .error"), "heatmap must load without an error"
        shot = tmp_path / "ui.png"
        assert driver.save_screenshot(str(shot)), "screenshot failed"
    assert shot.stat().st_size > 10_000, "screenshot is suspiciously small"
    with httpx.Client(base_url=ui_server, timeout=30) as c:
        metrics = c.get("/metrics").text
    # this module's fresh server saw exactly two /predict answers (ours and the page's) and one /explain
    assert _sample(metrics, "mask_predictions_total", route="/predict", head="mask", value=want["mask"]) == 2, metrics[-3000:]
    assert _sample(metrics, "mask_prediction_confidence_count", route="/predict") == 2
    assert _sample(metrics, "mask_predictions_total", route="/explain", head="age", value=want["age"]) == 1
    target = os.environ.get("MASK_UI_SCREENSHOT")
    if target:
        shutil.copyfile(shot, target)


# Every word of the model panel's values (text between spaces, hyphens and the <wbr> break points the
# page puts after "/", "_", "," and ":") must sit on one line: the panel wraps between words, never inside one.
WORDS_SPLIT_ACROSS_LINES = """
const split = [], wrapped = [];
for (const dd of document.querySelectorAll('#model-panel dd')) {
  if (new Set(Array.from(dd.getClientRects ? dd.getClientRects() : []).map(r => r.top)).size > 1 ||
      dd.getBoundingClientRect().height > 1.5 * parseFloat(getComputedStyle(dd).lineHeight || 16)) wrapped.push(dd.textContent);
  const walker = document.createTreeWalker(dd, NodeFilter.SHOW_TEXT);
  for (let n = walker.nextNode(); n; n = walker.nextNode()) {
    const re = /[^\\s-]+/g;
    for (let m = re.exec(n.data); m; m = re.exec(n.data)) {
      const r = document.createRange();
      r.setStart(n, m.index); r.setEnd(n, m.index + m[0].length);
      const tops = new Set(Array.from(r.getClientRects()).filter(x => x.width > 0).map(x => Math.round(x.top)));
      if (tops.size > 1) split.push(m[0]);
    }
  }
}
return [split, wrapped];
"""


def test_page_several_photos_one_bad_and_word_wrap(ui_server, synth_root, tmp_path):
    """Several photos chosen at once, one of them not an image: every good photo gets its card and the
    bad file its own reason. The model panel, squeezed to force wrapping, breaks lines only between words."""
    from selenium.webdriver.common.by import By

    photos = sorted((synth_root / "eval" / "images").iterdir())[1:3]
    bad = tmp_path / "shopping-list.txt"
    bad.write_text("milk, eggs\n")
    with httpx.Client(base_url=ui_server, timeout=60) as c:
        want = sorted(c.post("/predict", files={"image": (p.name, p.read_bytes(), "image/jpeg")}).json()["label"]
                      for p in photos)
    with ui_page(ui_server, 60) as (driver, wait):
        # a long value: the metrics line and the source path must wrap, at word boundaries only
        driver.execute_script("document.querySelector('aside').style.width = '190px';"
                              "document.querySelector('main').style.gridTemplateColumns = 'minmax(0, 1fr) 190px';")
        split, wrapped = driver.execute_script(WORDS_SPLIT_ACROSS_LINES)
        assert wrapped, "the squeezed model panel should wrap at least one value onto several lines"
        assert split == [], f"words broken across lines in the model panel: {split}"

        driver.find_element(By.ID, "files").send_keys("\n".join(str(p) for p in [photos[0], bad, photos[1]]))
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".result .label")) == 2
                   and d.find_elements(By.CSS_SELECTOR, "#messages .error"))
        labels = sorted(e.text for e in driver.find_elements(By.CSS_SELECTOR, ".result .label"))
        errors = [e.text for e in driver.find_elements(By.CSS_SELECTOR, "#messages .error")]
    assert labels == want, f"the page shows {labels}, POST /predict says {want} for the two good photos"
    assert len(errors) == 1 and errors[0].startswith(bad.name) and "not a recognised image" in errors[0], errors
