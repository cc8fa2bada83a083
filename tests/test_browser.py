"""The pages in a real headless Chromium against the real app (real detector, classifier, knowledge base and
answer backend), one test per feature so a failure names the feature. Screenshots (desktop 1280x800 and
phone 390x844) are written to ``test-artifacts/`` for a person to look at.

Which subsystem each test needs: photo → /detect (vision, species); chat and streaming → /get_response and
/models (llm); knowledge-base page and the hostile-document reply → /kb/* (kb, embedder) and /get_response.
"""
from __future__ import annotations

import json
import shutil
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from birdsdao import create_app
from birdsdao.config import PROJECT_ROOT

from .conftest import NATURAL, YOLO_WEIGHTS

pytestmark = pytest.mark.slow

ARTIFACTS = PROJECT_ROOT / "test-artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
WAIT = 60  # seconds; the first answer on a busy 2-core machine can be slow

# Runs before any page script: records dialogs instead of blocking on them, and CSP violations.
PROBE = """
window.__dialogs = [];
for (const name of ["alert", "confirm", "prompt"]) {
  window[name] = (message) => { window.__dialogs.push([name, String(message)]); return name === "confirm"; };
}
window.__csp = [];
document.addEventListener("securitypolicyviolation", (e) => {
  window.__csp.push(`${e.violatedDirective} ${e.blockedURI} ${e.sourceFile}:${e.lineNumber}`);
});
"""

HOSTILE = 'Hostile <img src=x onerror="window.__pwned=1"> and <script>window.__pwned=2</script> end'


@pytest.fixture(scope="module")
def live_server(tmp_path_factory):
    """The real app with every service, served by Werkzeug in a background thread."""
    from werkzeug.serving import make_server

    app = create_app({
        "TESTING": True,
        "INSTANCE_PATH": str(tmp_path_factory.mktemp("browser") / "instance"),
        "YOLO_WEIGHTS": str(YOLO_WEIGHTS),
        # The tests make their own small knowledge bases; building the bundled species one would only
        # compete for the 2 CPU cores.
        "KB_SPECIES_BUILD": "off",
    })
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join(5)


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="birdsdao-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run", "--window-size=1280,800", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_script_timeout(20)  # a renderer bug that loops must fail the test, not hang it
    driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": PROBE})
    ARTIFACTS.mkdir(exist_ok=True)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def page(browser, live_server):
    """Open a page on a clean slate (no stored chat or preferences) at desktop size."""

    def _open(path="/"):
        browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
        browser.get(live_server + "/healthz")
        browser.execute_script("localStorage.clear()")
        browser.get(live_server + path)
        wait_for(browser, lambda d: d.execute_script("return document.readyState") == "complete")
        return browser

    return _open


def wait_for(driver, condition, timeout=WAIT, message=""):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(condition, message)


def screenshot(driver, name):
    """Save the page at desktop size and at a phone's (390x844, touch, 2x) for a person to look at."""
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": 1280, "height": 800, "deviceScaleFactor": 1, "mobile": False})
    time.sleep(0.3)
    driver.save_screenshot(str(ARTIFACTS / f"{name}-desktop.png"))
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": 390, "height": 844, "deviceScaleFactor": 2, "mobile": True})
    time.sleep(0.3)  # let the layout and the canvas redraw at the new size
    driver.save_screenshot(str(ARTIFACTS / f"{name}-phone.png"))
    driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def assert_page_clean(driver):
    """No dialog opened, nothing injected ran, no CSP violation and no script error from our page."""
    assert driver.execute_script("return window.__dialogs") == []
    assert driver.execute_script("return window.__pwned === undefined")
    assert driver.execute_script("return window.__csp") == []
    severe = [e for e in driver.get_log("browser") if e["level"] == "SEVERE" and "/static/" in e["message"]]
    assert not severe, severe


def last_assistant(driver):
    return driver.execute_script("return document.querySelector('#messages li.msg-assistant:last-child')")


def ask(driver, text):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    box = driver.find_element(By.ID, "user-input")
    box.clear()
    box.send_keys(text)
    box.send_keys(Keys.ENTER)  # Enter sends (Shift+Enter would add a line)
    wait_for(driver, lambda d: (li := last_assistant(d)) is not None and li.get_attribute("data-status") != "streaming",
             message="no finished assistant reply")
    return last_assistant(driver)


# ---------------------------------------------------------------- page frame (no model needed)

def test_pages_load_with_csp_and_without_errors(page, live_server):
    with urllib.request.urlopen(live_server + "/") as response:
        csp = response.headers["Content-Security-Policy"]
    assert "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
    driver = page("/")
    from selenium.webdriver.common.by import By

    # The modules ran: the prompt-type help is filled in by chat.js.
    wait_for(driver, lambda d: d.find_element(By.ID, "prompt-help").text != "")
    screenshot(driver, "chat-empty")
    assert_page_clean(driver)
    driver = page("/kb")
    wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#kb-rows tr"))
    assert_page_clean(driver)


def test_markdown_renderer_builds_only_whitelisted_nodes(page):
    """The renderer itself, fed hostile text and every construct it knows, in the real browser."""
    driver = page("/")
    result = driver.execute_async_script("""
        const done = arguments[arguments.length - 1];
        import("/static/js/markdown.js").then(({ renderMarkdown }) => {
          const text = arguments[0] + "\\n\\n**bold** and *it* and `code <b>x</b>` [1] [7]\\n- one\\n- two\\n1. first\\n\\n```\\n<script>x()</script>\\n```";
          const box = document.createElement("div");
          box.append(renderMarkdown(text, { citations: 2 }));
          document.body.append(box);
          const tags = [...box.querySelectorAll("*")].map((n) => n.tagName.toLowerCase());
          done({ tags, text: box.textContent, cites: [...box.querySelectorAll("button.cite")].map((b) => b.dataset.cite) });
        }).catch((e) => done({ error: String(e) }));
    """, HOSTILE)
    assert "error" not in result, result
    assert set(result["tags"]) <= {"p", "br", "strong", "em", "code", "button", "ul", "ol", "li", "pre", "h4"}
    assert {"strong", "em", "code", "ul", "ol", "pre"} <= set(result["tags"])
    assert '<img src=x onerror="window.__pwned=1">' in result["text"]
    assert "<script>window.__pwned=2</script>" in result["text"]
    assert result["cites"] == ["1"]  # [7] is beyond the two sources: left as plain text
    time.sleep(0.2)
    assert_page_clean(driver)


# ---------------------------------------------------------------- chat (needs the llm branch)

def test_send_message_shows_user_and_reply_bubbles(page):
    from selenium.webdriver.common.by import By

    driver = page("/")
    wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#model-type option[value]"))
    models = [o.text for o in driver.find_elements(By.CSS_SELECTOR, "#model-type option")]
    assert any("检索摘录（非生成式）" in m for m in models), models
    reply = ask(driver, "白头海雕吃什么？")
    assert reply.get_attribute("data-status") == "done", reply.text
    assert driver.find_element(By.CSS_SELECTOR, "#messages li.msg-user .bubble").text == "白头海雕吃什么？"
    assert reply.find_element(By.CSS_SELECTOR, ".bubble").text.strip()
    # The turn is kept in localStorage and sent as history next time.
    stored = json.loads(driver.execute_script("return localStorage.getItem('birdsdao.chat')"))
    assert [m["role"] for m in stored["messages"]] == ["user", "assistant"]
    driver.refresh()
    wait_for(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#messages li.msg")) == 2)
    screenshot(driver, "chat-reply")
    assert_page_clean(driver)


def test_streamed_reply_arrives_in_pieces_and_matches_the_plain_answer(page, live_server):
    from selenium.webdriver.common.by import By

    driver = page("/")
    wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#model-type option[value]"))
    # Watch the bubble while it streams: record each text length seen with the message still streaming.
    driver.execute_script("""
        window.__seen = [];
        new MutationObserver(() => {
          const li = document.querySelector('#messages li.msg-assistant:last-child');
          if (li) window.__seen.push([li.dataset.status, li.querySelector('.bubble').textContent.length]);
        }).observe(document.getElementById('messages'), { childList: true, subtree: true, characterData: true });
    """)
    question = "介绍一下白头海雕"
    reply = ask(driver, question)
    assert reply.get_attribute("data-status") == "done"
    seen = driver.execute_script("return window.__seen")
    assert any(status == "streaming" for status, _ in seen), seen
    assert int(reply.get_attribute("data-deltas")) >= 2, "the reply came in one piece"
    model = driver.execute_script("return document.getElementById('model-type').value")
    body = urllib.parse.urlencode({"user_input": question, "model_type": model, "prompt_type": "chat", "mode": "plain"}).encode()
    with urllib.request.urlopen(urllib.request.Request(live_server + "/get_response", data=body)) as response:
        plain = json.loads(response.read())["response"]
    streamed = driver.execute_script("return JSON.parse(localStorage.getItem('birdsdao.chat')).messages[1].text")
    assert streamed.strip() == plain.strip()
    assert_page_clean(driver)


def test_api_error_is_shown_as_a_sentence_and_page_stays_usable(page):
    from selenium.webdriver.common.by import By

    driver = page("/")
    # A knowledge base that does not exist: the server answers 404 unknown_kb.
    driver.execute_script("""
        const sel = document.getElementById('kb-name');
        const opt = document.createElement('option'); opt.value = 'no_such_kb'; opt.textContent = 'no_such_kb';
        sel.append(opt); sel.value = 'no_such_kb';
        document.querySelector('input[name=mode][value=kb]').click();
    """)
    reply = ask(driver, "测试")
    assert reply.get_attribute("data-status") == "error"
    notice = driver.find_element(By.ID, "notice")
    assert notice.is_displayed()
    assert "{" not in notice.text and "unknown_kb" not in notice.text and notice.text.strip()
    assert driver.find_element(By.ID, "send-btn").is_displayed()  # not stuck in "streaming"
    assert_page_clean(driver)


# ---------------------------------------------------------------- photo (needs the vision branch)

def test_photo_upload_draws_a_box_and_names_the_species(page):
    from selenium.webdriver.common.by import By

    driver = page("/")
    photo = NATURAL / "American_Robin" / "American_Robin.jpg"
    driver.find_element(By.ID, "photo-input").send_keys(str(photo))
    wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#detections .detection, #detections .not-bird"),
             message="no detection result")
    cards = driver.find_elements(By.CSS_SELECTOR, "#detections .detection")
    assert cards, driver.find_element(By.ID, "detections").text
    names = cards[0].find_elements(By.CSS_SELECTOR, ".species-name")
    assert 1 <= len(names) <= 5 and names[0].text.strip()
    assert "%" in cards[0].find_element(By.CSS_SELECTOR, ".conf").text
    # The canvas over the photo has coloured box pixels drawn on it.
    painted = driver.execute_script("""
        const c = document.getElementById('photo-canvas');
        const data = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let n = 0; for (let i = 3; i < data.length; i += 4) if (data[i] > 0) n++;
        return [c.width, c.height, n];
    """)
    assert painted[0] > 0 and painted[2] > 100, painted
    screenshot(driver, "chat-photo")
    assert_page_clean(driver)


def test_tell_me_about_this_bird_asks_with_the_species_label(page):
    from selenium.webdriver.common.by import By

    driver = page("/")
    photo = NATURAL / "American_Robin" / "American_Robin.jpg"
    driver.find_element(By.ID, "photo-input").send_keys(str(photo))
    button = wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#detections .ask-bird"))[0]
    name = driver.find_element(By.CSS_SELECTOR, "#detections .species-name").text
    button.click()
    wait_for(driver, lambda d: (li := last_assistant(d)) is not None and li.get_attribute("data-status") != "streaming")
    reply = last_assistant(driver)
    assert reply.get_attribute("data-status") == "done", reply.text
    question = driver.find_element(By.CSS_SELECTOR, "#messages li.msg-user .bubble").text
    assert name.split()[0] in question
    stored = json.loads(driver.execute_script("return localStorage.getItem('birdsdao.chat')"))
    assert stored["speciesLabel"] and stored["messages"][0]["extra"]["prompt_type"] == "species"
    screenshot(driver, "chat-photo-answer")
    assert_page_clean(driver)


# ---------------------------------------------------------------- knowledge bases (needs the kb branch)

def _upload(driver, files):
    from selenium.webdriver.common.by import By

    driver.find_element(By.ID, "upload-files").send_keys("\n".join(str(f) for f in files))
    driver.find_element(By.CSS_SELECTOR, "#upload-form button[type=submit]").click()
    wait_for(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#upload-list li[data-status]")) == len(files),
             message="uploads did not finish")
    return {li.get_attribute("data-file"): (li.get_attribute("data-status"), li.text)
            for li in driver.find_elements(By.CSS_SELECTOR, "#upload-list li")}


def _create_kb(driver, name):
    from selenium.webdriver.common.by import By

    driver.find_element(By.ID, "new-kb-name").send_keys(name)
    driver.find_element(By.ID, "new-kb-desc").send_keys("浏览器测试 browser test")
    driver.find_element(By.CSS_SELECTOR, "#create-form button[type=submit]").click()
    wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, f'#kb-rows tr[data-kb="{name}"]'))
    wait_for(driver, lambda d: d.find_element(By.ID, "kb-select").get_attribute("value") == name)


def test_kb_page_uploads_files_with_results_and_finds_them_in_search(page, tmp_path):
    from selenium.webdriver.common.by import By

    driver = page("/kb")
    _create_kb(driver, "birds_test")
    good = tmp_path / "puffin.md"
    good.write_text("# 北极海鹦\n北极海鹦（Atlantic Puffin）在北大西洋的海岛悬崖上筑巢，以小鱼为食，喙在繁殖季节呈鲜艳的橙色。\n", encoding="utf-8")
    second = tmp_path / "crane.txt"
    second.write_text("丹顶鹤是大型涉禽，头顶有红色裸皮，冬季在盐城等湿地越冬。\n", encoding="utf-8")
    bad = tmp_path / "binary.exe"
    bad.write_bytes(b"MZ\x90\x00" * 100)
    results = _upload(driver, [good, second, bad])
    assert results["puffin.md"][0] == "added", results
    assert results["crane.txt"][0] == "added", results
    assert results["binary.exe"][0] in ("rejected", "error") and "—" in results["binary.exe"][1], results
    progress = driver.execute_script("return [...document.querySelectorAll('#upload-list progress')].map(p => p.value)")
    assert progress[:2] == [1, 1]
    docs = {tr.get_attribute("data-doc") for tr in driver.find_elements(By.CSS_SELECTOR, "#doc-rows tr[data-doc]")}
    assert {"puffin.md", "crane.txt"} <= docs
    driver.find_element(By.ID, "search-query").send_keys("海鹦吃什么")
    driver.find_element(By.CSS_SELECTOR, "#search-form button").click()
    hits = wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#search-hits li"))
    assert "puffin.md" in hits[0].text and "小鱼" in hits[0].text
    screenshot(driver, "kb")
    # Delete one document (the confirm() is answered "yes" by the probe and recorded).
    driver.find_element(By.CSS_SELECTOR, '#doc-rows tr[data-doc="crane.txt"] button').click()
    wait_for(driver, lambda d: not d.find_elements(By.CSS_SELECTOR, '#doc-rows tr[data-doc="crane.txt"]'))
    assert [kind for kind, _ in driver.execute_script("return window.__dialogs")] == ["confirm"]


def test_hostile_document_quoted_in_a_reply_renders_as_text_and_runs_nothing(page, tmp_path):
    from selenium.webdriver.common.by import By

    driver = page("/kb")
    _create_kb(driver, "hostile")
    doc = tmp_path / "hostile.txt"
    doc.write_text(f"红隼的小知识。{HOSTILE}\n红隼在城市高楼上筑巢。\n", encoding="utf-8")
    assert _upload(driver, [doc])["hostile.txt"][0] == "added"
    driver.get(driver.current_url.rsplit("/kb", 1)[0] + "/")
    wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, '#kb-name option[value="hostile"]'))
    driver.execute_script("document.getElementById('kb-name').value = 'hostile';"
                          "document.querySelector('input[name=mode][value=kb]').click();")
    reply = ask(driver, "红隼 onerror script")
    assert reply.get_attribute("data-status") == "done", reply.text
    text = reply.text
    # The hostile markup is on screen as text (in the reply or, at least, in its cited source) ...
    if "onerror" not in text:
        reply.find_element(By.CSS_SELECTOR, ".sources summary").click()
        reply.find_element(By.CSS_SELECTOR, ".source-link").click()
        text = driver.find_element(By.ID, "source-text").text
    assert "<img src=x onerror=" in text and "<script>" in text
    # ... and nothing it describes exists or ran.
    assert not driver.find_elements(By.CSS_SELECTOR, "#messages img, #messages script, dialog img, dialog script")
    assert_page_clean(driver)


def test_citation_marker_opens_the_source_snippet(page):
    from selenium.webdriver.common.by import By

    driver = page("/")
    wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#kb-name option"))
    driver.execute_script("document.querySelector('input[name=mode][value=kb]').click();")
    reply = ask(driver, "白头海雕生活在哪里？")
    assert reply.get_attribute("data-status") == "done", reply.text
    sources = reply.find_elements(By.CSS_SELECTOR, ".sources .source-link")
    assert sources, "a knowledge-base answer lists its sources"
    marker = (reply.find_elements(By.CSS_SELECTOR, ".bubble button.cite") or [None])[0]
    opener = marker or (reply.find_element(By.CSS_SELECTOR, ".sources summary").click() or sources[0])
    opener.click()
    dialog = driver.find_element(By.ID, "source-dialog")
    wait_for(driver, lambda d: dialog.is_displayed())
    assert driver.find_element(By.ID, "source-title").text.startswith("[1]")
    assert driver.find_element(By.ID, "source-text").text.strip()
    screenshot(driver, "chat-citation")
    assert_page_clean(driver)
