"""The explorer page and the JavaScript client in a real browser: headless Chromium
from Debian's `chromium` package, driven by Playwright (never a downloaded browser)."""

from __future__ import annotations

import queue
from collections.abc import Callable, Iterator

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from message_broker import Message, MessageBroker
from message_broker.sync import SyncBrokerClient

from support.peers import require_program

StartBroker = Callable[..., MessageBroker]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    chromium = require_program("chromium")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=chromium, headless=True, args=["--no-sandbox"]
        )
        yield browser
        browser.close()


@pytest.fixture
def web_broker(start_broker: StartBroker) -> MessageBroker:
    return start_broker(http_port=0)


@pytest.fixture
def page(browser: Browser, web_broker: MessageBroker) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    assert web_broker.http_url is not None
    page.goto(web_broker.http_url)
    yield page
    context.close()
    assert errors == [], errors


@pytest.fixture
def python_client(web_broker: MessageBroker) -> Iterator[Callable[[str], SyncBrokerClient]]:
    clients: list[SyncBrokerClient] = []

    def open_client(name: str) -> SyncBrokerClient:
        c = SyncBrokerClient(name, host="127.0.0.1", port=web_broker.port)
        assert c.connect()
        clients.append(c)
        return c

    yield open_client
    for c in clients:
        c.disconnect()


def test_a_page_speaks_json_rpc_over_the_websocket(
    page: Page, python_client: Callable[[str], SyncBrokerClient]
) -> None:
    python = python_client("python-side")
    python.subscribe("double", lambda m: m.payload * 2)
    heard: queue.Queue[Message] = queue.Queue()
    python.subscribe("from.page", heard.put)
    python.flush()
    result = page.evaluate(
        """async () => {
            const { connect, BrokerError, ErrorCode } = await import("/message-broker.js");
            const token = sessionStorage.getItem("message-broker-token");
            const client = await connect("in-browser", { token });
            const got = [];
            await client.subscribe(["to.page"], (m) => got.push([m.topic, m.payload, m.sender]));
            await client.publish("from.page", { hello: "python" });
            const doubled = await client.request("double", 21, { timeout: 5 });
            let noResponders = null;
            try { await client.request("nobody.here", 1); } catch (e) {
                noResponders = e instanceof BrokerError && e.code === ErrorCode.NO_RESPONDERS;
            }
            await client.publish("to.page", [1, 2, 3]);
            for (let i = 0; i < 100 && got.length === 0; i++) {
                await new Promise((r) => setTimeout(r, 20));
            }
            let refused = null;
            try { await connect("no-token", {}); } catch (e) { refused = e.code; }
            await client.close();
            return { doubled, noResponders, got, refused };
        }"""
    )
    assert result["doubled"] == 42
    assert result["noResponders"] is True
    assert result["got"] == [["to.page", [1, 2, 3], "in-browser"]]
    assert result["refused"] == -32013
    message = heard.get(timeout=5)
    assert (message.payload, message.sender) == ({"hello": "python"}, "in-browser")


def test_the_page_shows_a_new_client_within_two_seconds(
    page: Page, python_client: Callable[[str], SyncBrokerClient]
) -> None:
    expect(page.locator("#state")).to_have_text("live", timeout=10_000)
    newcomer = python_client("newcomer")
    newcomer.subscribe("news.#", lambda m: None)
    row = page.locator('#clients tr[data-client-id="newcomer"]')
    expect(row).to_be_visible(timeout=2000)
    expect(row).to_contain_text("news.#", timeout=2000)


def test_the_topic_tree_counts_messages(
    page: Page, python_client: Callable[[str], SyncBrokerClient]
) -> None:
    publisher = python_client("plant")
    for n in range(3):
        publisher.publish("plant.line1.temp", 20 + n)
    publisher.publish("plant.line2.temp", 30)
    publisher.flush()
    leaf = page.locator('#topic-tree li[data-topic="plant.line1.temp"]')
    expect(leaf).to_have_attribute("data-messages", "3", timeout=5000)
    expect(leaf).to_contain_text("22")
    expect(page.locator('#topic-tree li[data-topic="plant"]')).to_contain_text("4 msg")


def test_the_live_tail_follows_its_filter(
    page: Page, python_client: Callable[[str], SyncBrokerClient]
) -> None:
    publisher = python_client("tail-feed")
    page.fill("#tail-pattern", "wanted.#")
    page.click("#tail-apply")
    # The new filter's poll starts from now: publish until its marker shows.
    tail = page.locator("#tail tbody tr")
    for n in range(50):
        publisher.publish("other.topic", n)
        publisher.publish("wanted.topic", n)
        publisher.flush()
        if tail.count() > 0:
            break
        page.wait_for_timeout(100)
    publisher.publish("wanted.marker", "end")
    publisher.flush()
    expect(page.locator('#tail tr[data-topic="wanted.marker"]')).to_have_count(1, timeout=5000)
    topics = set(tail.evaluate_all("rows => rows.map(r => r.dataset.topic)"))
    assert topics == {"wanted.topic", "wanted.marker"}


def test_the_publish_form_reaches_a_python_subscriber(
    page: Page, python_client: Callable[[str], SyncBrokerClient]
) -> None:
    listener = python_client("listener")
    heard: queue.Queue[Message] = queue.Queue()
    listener.subscribe("form.test", heard.put)
    listener.flush()
    page.fill("#publish-topic", "form.test")
    page.fill("#publish-payload", '{"from": "the form", "n": 7}')
    page.click("#publish-send")
    expect(page.locator("#publish-result")).to_contain_text("1 recipient", timeout=5000)
    message = heard.get(timeout=5)
    assert message.payload == {"from": "the form", "n": 7}
    assert message.sender == "web"
    page.fill("#publish-payload", "{not json")
    page.click("#publish-send")
    expect(page.locator("#publish-result")).to_contain_text("not JSON")
    page.fill("#publish-topic", "system.forged")
    page.fill("#publish-payload", "1")
    page.click("#publish-send")
    expect(page.locator("#publish-result")).to_contain_text("reserved")


def test_what_clients_send_is_shown_as_text(
    page: Page, python_client: Callable[[str], SyncBrokerClient]
) -> None:
    hostile = python_client('<img src=x onerror="window.owned=1">')
    hostile.subscribe("<b>bold</b>", lambda m: None)
    # The tail's poll starts once the page is live: publish until its row shows.
    row = page.locator('#tail tr[data-topic="xss.topic"]')
    for _ in range(50):
        hostile.publish(
            "xss.topic", '<script>window.owned=2</script><img src=x onerror="window.owned=3">'
        )
        hostile.flush()
        if row.count() > 0:
            break
        page.wait_for_timeout(100)
    expect(row.first).to_be_visible(timeout=5000)
    expect(page.locator('#clients tr[data-client-id^="<img"]')).to_have_count(1, timeout=5000)
    expect(page.locator('#topic-tree li[data-topic="xss.topic"]')).to_have_count(1, timeout=5000)
    assert page.locator("main img, main script, main b").count() == 0
    assert page.evaluate("window.owned") is None
    expect(page.locator("#tail")).to_contain_text("<script>window.owned=2</script>")


def test_without_the_token_the_page_asks_for_it(
    browser: Browser, web_broker: MessageBroker
) -> None:
    context = browser.new_context()
    try:
        page = context.new_page()
        page.goto(f"http://127.0.0.1:{web_broker.http_port}/")
        expect(page.locator("#token-form")).to_be_visible()
        page.fill("#token-input", "f" * 64)
        page.click("#token-entry button")
        expect(page.locator("#token-error")).to_contain_text("wrong token", timeout=5000)
        page.fill("#token-input", web_broker.token or "")
        page.click("#token-entry button")
        expect(page.locator("#state")).to_have_text("live", timeout=5000)
        assert "token" not in page.url
    finally:
        context.close()


def test_the_fragment_token_leaves_the_address_bar(page: Page) -> None:
    expect(page.locator("#state")).to_have_text("live", timeout=10_000)
    assert "#token" not in page.url


def test_the_system_feed_shows_what_happened_before_the_page_opened(
    browser: Browser, web_broker: MessageBroker, python_client: Callable[[str], SyncBrokerClient]
) -> None:
    python_client("early-bird")
    context = browser.new_context()
    try:
        page = context.new_page()
        assert web_broker.http_url is not None
        page.goto(web_broker.http_url)
        system = page.locator("#system")
        expect(system).to_contain_text("system.client.connected", timeout=5000)
        expect(system).to_contain_text("early-bird")
    finally:
        context.close()
