"""The two HTML pages and their static assets: served with the security headers, self-contained (no CDN,
works offline), no inline script or style the CSP would have to allow, and no HTML-injecting DOM calls."""
from __future__ import annotations

import re
from html.parser import HTMLParser

import pytest

from birdsdao.config import PROJECT_ROOT

STATIC = PROJECT_ROOT / "static"
PAGES = ("/", "/kb")


class _Collector(HTMLParser):
    """Everything in a page that loads or runs something: tags with their attributes."""

    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.inline_scripts: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        self._in_script = tag == "script"

    def handle_endtag(self, tag):
        self._in_script = False

    def handle_data(self, data):
        if self._in_script and data.strip():
            self.inline_scripts.append(data)


def _parse(html: str) -> _Collector:
    collector = _Collector()
    collector.feed(html)
    return collector


APP = {"services": []}


@pytest.mark.parametrize("path", PAGES)
def test_page_is_served_with_security_headers(client, path):
    r = client.get(path)
    assert r.status_code == 200 and r.mimetype == "text/html"
    csp = r.headers["Content-Security-Policy"]
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "object-src 'none'" in csp
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    assert r.headers["X-Frame-Options"] == "DENY"


@pytest.mark.parametrize("path", PAGES)
def test_page_has_no_inline_code_and_loads_only_own_assets(client, path):
    page = _parse(client.get(path).get_data(as_text=True))
    assert not page.inline_scripts, "inline <script> would need 'unsafe-inline'"
    assets = []
    for tag, attrs in page.tags:
        assert "style" not in attrs, f"inline style on <{tag}> is blocked by the CSP"
        assert not any(name.startswith("on") for name in attrs), f"inline handler on <{tag}>"
        for name in ("src", "href"):
            url = attrs.get(name)
            if url and tag in ("script", "link", "img"):
                assert url.startswith("/"), f"{url} is not served by the app (the page must work offline)"
                assets.append(url)
    assert any(a.endswith(".js") for a in assets) and any(a.endswith(".css") for a in assets)
    for url in assets:
        with client.get(url) as r:  # static files are streamed: close them
            assert r.status_code == 200, url
            assert r.headers["X-Content-Type-Options"] == "nosniff"
            if url.endswith(".js"):
                assert r.mimetype == "text/javascript", "module scripts need a JavaScript MIME type under nosniff"


def test_every_script_module_is_served_as_javascript(client):
    """Modules imported by other modules are not in the HTML; under nosniff each needs the right type."""
    for script in sorted(STATIC.rglob("*.js")):
        with client.get("/static/" + script.relative_to(STATIC).as_posix()) as r:
            assert r.status_code == 200 and r.mimetype == "text/javascript", script.name


def test_every_form_control_has_a_label(client):
    for path in PAGES:
        page = _parse(client.get(path).get_data(as_text=True))
        labelled = {attrs.get("for") for tag, attrs in page.tags if tag == "label"}
        for tag, attrs in page.tags:
            if tag in ("input", "select", "textarea") and attrs.get("type") not in ("radio", "checkbox", "hidden"):
                assert attrs.get("id") in labelled or "aria-label" in attrs, f"{path}: <{tag} id={attrs.get('id')}> has no label"
        assert any(tag == "html" and attrs.get("lang") == "zh-CN" for tag, attrs in page.tags)


def test_scripts_never_inject_html():
    """Model and document text must reach the DOM as text: no innerHTML & co. anywhere in our JS."""
    forbidden = re.compile(r"\binnerHTML\b|\bouterHTML\b|insertAdjacentHTML|document\.write|\beval\(|new Function\(|createContextualFragment")
    scripts = sorted(STATIC.rglob("*.js"))
    assert scripts
    for script in scripts:
        for number, line in enumerate(script.read_text(encoding="utf-8").splitlines(), 1):
            assert not forbidden.search(line), f"{script.name}:{number}: {line.strip()}"


def test_scripts_use_only_contract_routes():
    """The page talks to the routes of shared/API.md and nothing else (no third-party hosts)."""
    text = "\n".join(p.read_text(encoding="utf-8") for p in STATIC.rglob("*.js"))
    assert not re.search(r"https?://", text)
    used = set(re.findall(r"""["'`](/(?:detect|get_response|models|kb/[a-z_]+|species/[a-z]+))\b""", text))
    assert used >= {"/detect", "/get_response", "/models", "/kb/list", "/kb/create", "/kb/delete",
                    "/kb/upload", "/kb/docs", "/kb/delete_doc", "/kb/search", "/species/teach",
                    "/species/forget", "/species/taught"}


def test_cross_site_form_post_is_refused_unless_it_carries_the_token(make_app):
    client = make_app(services=[], API_TOKEN="s3cret").test_client()
    refused = client.post("/kb/create", data={"kb_name": "x"}, headers={"Sec-Fetch-Site": "cross-site"})
    assert refused.status_code == 403 and refused.json["code"] == "cross_site"
    refused = client.post("/kb/create", data={"kb_name": "x"}, headers={"Origin": "null"})
    assert refused.status_code == 403
    # A form-POST integration on another host that sends the token as a form field is let through the
    # cross-site check (it then reaches the route; 404/405/201 depending on which routes are merged).
    passed = client.post("/kb/create", data={"kb_name": "x", "token": "s3cret"}, headers={"Origin": "https://other.example"})
    assert passed.status_code != 403
    # The same-origin page itself passes the check.
    same = client.post("/kb/create", data={"kb_name": "x"}, headers={"Sec-Fetch-Site": "same-origin"})
    assert same.status_code != 403
