"""The review loop as a reviewer lives it: a real headless Chromium against the app on the embedded stack.

Tansu, a Faust worker subprocess with real (tiny) models, the sink on chdb, the review app:
a low-confidence note reaches the queue, the reviewer signs in, fixes the spans and the
document label from the keyboard, submits; the reviewed revision and the decision row are
read back from ClickHouse, and the training reader picks the reviewed note up.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.wait import WebDriverWait

from schemas.clinical_note import ClinicalNote
from schemas.codec import Codecs
from schemas.extraction import Entity, Extraction, ItemState, TaskKind
from schemas.review_task import ReasonKind, ReviewReason, ReviewTask
from streams.kafka.clients import ensure_topics, producer
from streams.learning.training_data import examples_from_clickhouse
from streams.query.endpoint import QueryServer
from streams.review.serving import start_review_server
from streams.runtime.broker import TansuBroker
from streams.runtime.sink_thread import SinkThread
from streams.runtime.workers import WorkerProcess
from streams.settings import Settings
from streams.sink.backend import ChdbBackend
from streams.waiting import poll_until
from tests.review_helpers import NOTE_TEXT, PASSWORDS, pending_note, review_settings

PLAIN = Codecs()  # plain single-object Avro: the codecs of a process without a schema registry

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

GOUT = (NOTE_TEXT.index("gout"), NOTE_TEXT.index("gout") + 4)


def _chromium() -> tuple[str, str]:
    browser, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if browser is None or driver is None:
        if os.environ.get("CI"):
            pytest.fail("chromium and chromedriver are missing: `make browser` installs them")
        pytest.skip("chromium/chromedriver not installed (`make browser`)")
    return browser, driver


@pytest.fixture
def chrome(tmp_path: Path) -> Iterator[WebDriver]:
    browser, driver_path = _chromium()
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(arg)
    options.add_argument(f"--user-data-dir={tmp_path / 'chrome-profile'}")
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    driver.implicitly_wait(0)
    yield driver
    driver.quit()


def _double_click_text(driver: WebDriver, start: int, end: int) -> None:
    """A real mouse double-click on the note text at [start, end) (the browser then selects that word)."""
    box = driver.find_element(By.ID, "note-text")
    offset = driver.execute_script(
        """
        const [box, start, end] = arguments;
        for (const seg of box.querySelectorAll('[data-start]')) {
          const s = Number(seg.dataset.start), node = seg.firstChild;
          if (node && s <= start && end <= s + node.length) {
            const r = document.createRange();
            r.setStart(node, start - s); r.setEnd(node, end - s);
            const a = r.getBoundingClientRect(), b = box.getBoundingClientRect();
            return [a.left + a.width / 2 - (b.left + b.width / 2), a.top + a.height / 2 - (b.top + b.height / 2)];
          }
        }
        return null;
        """,
        box,
        start,
        end,
    )
    assert offset is not None, "word not found in a plain text segment"
    ActionChains(driver).move_to_element_with_offset(box, int(offset[0]), int(offset[1])).double_click().perform()


def test_reviewer_fixes_a_note_in_the_browser_and_the_loop_closes(
    broker: TansuBroker, tiny_settings: Settings, database: ChdbBackend, chrome: WebDriver, tmp_path: Path
) -> None:
    tasks = [t.model_copy(update={"threshold": 0.99}) for t in tiny_settings.tasks]  # random tiny models: always review
    settings = review_settings(tiny_settings.model_copy(update={"tasks": tasks}))
    ensure_topics(settings, broker.bootstrap)
    sink = SinkThread(settings, broker.bootstrap, backend=database)
    worker = WorkerProcess(settings, broker.bootstrap, tmp_path / "worker.log")
    sink.start()
    worker.start()
    review = start_review_server(settings, database, broker.bootstrap, "127.0.0.1", 0)
    db = database.database
    try:
        note = ClinicalNote(
            note_id="ui-1",
            patient_id="MRN-424242",
            note_type="discharge_summary",
            created_at="2026-11-01T08:00:00Z",
            text=NOTE_TEXT,
            source="browser-test",
        )
        p = producer(settings, broker.bootstrap)
        p.send(settings.topics.notes, key=b"ui-1", value=PLAIN.of(ClinicalNote).encode(note))
        p.flush()
        p.close()

        def queued() -> bool:
            assert worker.alive(), (tmp_path / "worker.log").read_text()[-3000:]
            return bool(database.query(f"SELECT count() FROM {db}.review_queue").scalar())

        poll_until(queued, 120, "the note in the review queue", 0.5)
        assert database.query(f"SELECT note_id FROM {db}.review_queue").rows == [["ui-1"]]
        model_spans = database.query(f"SELECT length(entities) FROM {db}.extractions_final WHERE note_id = 'ui-1'").scalar()

        wait = WebDriverWait(chrome, 20)
        chrome.get(review.url + "/")
        wait.until(ec.presence_of_element_located((By.ID, "sign-in")))  # redirected to the sign-in page
        chrome.find_element(By.ID, "reviewer").send_keys("alice")
        chrome.find_element(By.ID, "password").send_keys(PASSWORDS["alice"], Keys.ENTER)
        wait.until(ec.text_to_be_present_in_element((By.ID, "who"), "alice"))
        wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#queue-list li[data-note-id='ui-1']")))

        body = chrome.find_element(By.TAG_NAME, "body")
        body.send_keys("n")  # take the oldest task
        wait.until(ec.text_to_be_present_in_element((By.ID, "note-text"), "gout"))
        assert chrome.find_element(By.ID, "note-text").text == NOTE_TEXT
        assert "MRN-424242" not in chrome.page_source  # the page never shows the patient id

        actions = ActionChains(chrome)
        for _ in range(model_spans):  # reject every model span: j focuses the next one, x deletes it
            actions.send_keys("j").send_keys("x").perform()
        assert chrome.find_elements(By.CSS_SELECTOR, "#note-text mark.ent") == []
        _double_click_text(chrome, *GOUT)
        assert chrome.execute_script("return window.getSelection().toString().trim()") == "gout"
        ActionChains(chrome).send_keys("1").perform()  # add the selection with label 1 (Disease)
        marks = chrome.find_elements(By.CSS_SELECTOR, "#note-text mark.ent")
        assert [m.text for m in marks] == ["gout"]
        ActionChains(chrome).key_down(Keys.SHIFT).send_keys("2").key_up(Keys.SHIFT).perform()  # document label 2: neuro
        chosen = chrome.find_element(By.CSS_SELECTOR, "button.doc-label.chosen").get_attribute("data-label")
        assert chosen == "neuro"
        ActionChains(chrome).key_down(Keys.CONTROL).send_keys(Keys.ENTER).key_up(Keys.CONTROL).perform()
        wait.until(ec.text_to_be_present_in_element((By.ID, "status"), "Saved: revision 1"))
        (tmp_path / "review.png").write_bytes(chrome.get_screenshot_as_png())

        poll_until(lambda: bool(database.query(f"SELECT count() FROM {db}.review_decisions").scalar()), 60, "the decision row", 0.3)
        row = database.query(
            f"SELECT revision, status, arrayMap(e -> (e.label, e.start, e.end, e.text), entities), arrayMap(d -> d.label, doc_labels) "
            f"FROM {db}.extractions_final WHERE note_id = 'ui-1'"
        ).rows
        assert row == [[1, "reviewed", [["Disease", *GOUT, "gout"]], ["neuro"]]]
        decision = database.query(
            f"SELECT reviewer_id, base_revision, changes.action FROM {db}.review_decisions FINAL WHERE note_id = 'ui-1'"
        ).rows
        reviewer, base, changes = decision[0]
        assert (reviewer, base) == ("alice", 0)
        assert changes.count("reject_span") == model_spans and changes.count("add_span") == 1
        assert ("set_document_label" in changes) or ("accept" in changes)
        assert database.query(f"SELECT count() FROM {db}.review_queue").scalar() == 0
    finally:
        review.stop()
        worker.stop()
        sink.stop()

    # ... and `ehrstream train --data clickhouse` reads it as a reviewed example (through the sink's endpoint)
    endpoint = QueryServer(database, settings.data_dir)
    endpoint.start()
    try:
        found = examples_from_clickhouse(settings, "disease", TaskKind.ner, floor=0.99)
    finally:
        endpoint.stop()
    assert found.reviewed == 1
    assert [(e.text, e.spans) for e in found.examples] == [(NOTE_TEXT, [(*GOUT, "Disease")])]
    log_text = (tmp_path / "worker.log").read_text()
    assert "MRN-424242" not in log_text and "gout" not in log_text


def _take_next_task(chrome: WebDriver, url: str, timeout_s: float) -> WebDriverWait[WebDriver]:
    """Sign in as alice on the review page and press n (take the next task); returns the wait for what follows."""
    wait = WebDriverWait(chrome, timeout_s)
    chrome.get(url + "/")
    wait.until(ec.presence_of_element_located((By.ID, "sign-in")))
    chrome.find_element(By.ID, "reviewer").send_keys("alice")
    chrome.find_element(By.ID, "password").send_keys(PASSWORDS["alice"], Keys.ENTER)
    wait.until(ec.text_to_be_present_in_element((By.ID, "who"), "alice"))
    chrome.find_element(By.TAG_NAME, "body").send_keys("n")
    return wait


def test_reviewer_sets_assertion_and_code_from_the_keyboard(
    broker: TansuBroker, tiny_settings: Settings, database: ChdbBackend, chrome: WebDriver
) -> None:
    """A span with its model assertion and three code candidates: ``s`` cycles the assertion, ``i`` opens the code
    picker, the second candidate is chosen; the decision carries both, with set_assertion and set_code changes."""
    from kafka import KafkaConsumer, TopicPartition

    from schemas.extraction import Assertion, Code
    from schemas.review_decision import ChangeAction, ReviewDecision
    from schemas.review_task import ReasonKind, ReviewReason
    from tests.review_helpers import pending_note, store_pending

    settings = review_settings(tiny_settings)
    extraction, task = pending_note("codes-1")
    codes = [
        Code(system="ICD10CM", code="J45.909", display="Unspecified asthma, uncomplicated", score=0.61),
        Code(system="ICD10CM", code="J45.901", display="Unspecified asthma with (acute) exacerbation", score=0.58),
        Code(system="ICD10CM", code="J45.20", display="Mild intermittent asthma, uncomplicated", score=0.5),
    ]
    disease = extraction.results[1]
    entity = disease.entities[0].model_copy(update={"assertion": Assertion.present, "assertion_cue": None, "codes": codes})
    results = [extraction.results[0], disease.model_copy(update={"entities": [entity]})]
    reasons = [
        *task.reasons,
        ReviewReason(task="disease", kind=ReasonKind.code, label="Disease", start=8, end=14, confidence=0.61, threshold=0.7),
    ]
    store_pending(database, (extraction.model_copy(update={"results": results}), task.model_copy(update={"reasons": reasons})))
    ensure_topics(settings, broker.bootstrap)
    review = start_review_server(settings, database, broker.bootstrap, "127.0.0.1", 0)
    try:
        wait = _take_next_task(chrome, review.url, 20)
        wait.until(ec.text_to_be_present_in_element((By.ID, "note-text"), "gout"))
        assert "2 flagged items (1 document label, 1 span)" in chrome.find_element(By.ID, "reasons").text
        row = chrome.find_element(By.CSS_SELECTOR, "#span-rows tr")
        assert row.find_element(By.CSS_SELECTOR, "td.why").text == "span 0.42 < 0.50; doubtful code 0.61 < 0.70"  # folded in
        assert row.find_element(By.CSS_SELECTOR, "td.code").text.startswith("J45.909 Unspecified asthma")
        ActionChains(chrome).send_keys("j").send_keys("s").perform()  # focus asthma; present -> absent
        assert chrome.find_element(By.CSS_SELECTOR, "#span-rows tr td.assertion").text == "absent"
        ActionChains(chrome).send_keys("i").perform()
        wait.until(ec.visibility_of_element_located((By.ID, "code-choice")))
        ActionChains(chrome).send_keys(Keys.ARROW_DOWN).send_keys(Keys.ENTER).perform()  # the second candidate
        assert chrome.find_element(By.ID, "code-picker").get_attribute("hidden") is not None
        assert chrome.find_element(By.CSS_SELECTOR, "#span-rows tr td.code").text.startswith("J45.901")
        ActionChains(chrome).key_down(Keys.SHIFT).send_keys("2").key_up(Keys.SHIFT).perform()  # document label: neuro
        ActionChains(chrome).key_down(Keys.CONTROL).send_keys(Keys.ENTER).key_up(Keys.CONTROL).perform()
        wait.until(ec.text_to_be_present_in_element((By.ID, "status"), "Saved: revision 1"))
    finally:
        review.stop()
    consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap, enable_auto_commit=False, consumer_timeout_ms=1500)
    topic = settings.topics.review_decisions
    parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or []]
    consumer.assign(parts)
    consumer.seek_to_beginning(*parts)
    (decision,) = [PLAIN.of(ReviewDecision).decode(m.value) for m in consumer]
    consumer.close()
    (reviewed,) = next(r for r in decision.results if r.task == "disease").entities
    assert (reviewed.assertion, reviewed.assertion_cue) == (Assertion.absent, "reviewer")
    assert [c.code for c in reviewed.codes] == ["J45.901", "J45.909", "J45.20"] and reviewed.codes[0].score == 1.0
    assert reviewed.codes[0].display == "Unspecified asthma with (acute) exacerbation"
    actions = [c.action for c in decision.changes if c.task == "disease"]
    assert actions == [ChangeAction.accept, ChangeAction.set_assertion, ChangeAction.set_code]


def _long_note(note_id: str) -> tuple[Extraction, ReviewTask]:
    """A note of about 95 KB with 738 entities and 409 review reasons (the size the issue measured on): one sentence
    repeated to that size; reasons on the document label, every other entity and some plain words (possible missed)."""
    sentence = "Patient with asthma and chronic gout, history of atrial fibrillation; denies chest pain or fever today. "
    text = sentence * (95_000 // len(sentence))
    words = [(m.start(), m.end()) for m in re.finditer(r"asthma|gout|fibrillation", text)][:738]
    entities = [Entity(label="Disease", start=a, end=b, text=text[a:b], confidence=0.6) for a, b in words]
    flagged = [
        ReviewReason(task="disease", kind=ReasonKind.entity, label="Disease", start=a, end=b, confidence=0.6, threshold=0.8)
        for a, b in words[::2]
    ]
    hints = [(m.start(), m.end()) for m in re.finditer(r"fever", text)][: 409 - 1 - len(flagged)]
    possible = [
        ReviewReason(task="disease", kind=ReasonKind.possible_entity, label="Disease", start=a, end=b, confidence=0.5, threshold=0.7)
        for a, b in hints
    ]
    extraction, task = pending_note(note_id, text)
    disease = extraction.results[1].model_copy(update={"entities": [e.model_copy(update={"state": ItemState.pending}) for e in entities]})
    extraction = extraction.model_copy(update={"results": [extraction.results[0], disease]})
    return extraction, task.model_copy(update={"reasons": [task.reasons[0], *flagged, *possible]})


def test_a_long_note_changes_only_what_each_key_touches(
    broker: TansuBroker, tiny_settings: Settings, database: ChdbBackend, chrome: WebDriver
) -> None:
    """95 KB, 738 spans, 409 reasons: the page leads from flagged item to flagged item (f), the reasons folded into
    their items, and a keypress (f, j, a) moves the focus and refreshes the one item it touched: a MutationObserver
    counts the nodes each press changes, added or removed, up to the next painted frame (a redraw of the note changes
    thousands). The time per key is printed, not asserted: speed is a number a run reports (`pytest -s -k long_note`)."""
    from tests.review_helpers import store_pending

    settings = review_settings(tiny_settings)
    extraction, task = _long_note("long-1")
    assert len(extraction.text.encode()) > 94_000 and len(task.reasons) == 409
    store_pending(database, (extraction, task))
    ensure_topics(settings, broker.bootstrap)
    review = start_review_server(settings, database, broker.bootstrap, "127.0.0.1", 0)
    try:
        wait = _take_next_task(chrome, review.url, 30)
        wait.until(ec.text_to_be_present_in_element((By.ID, "flag-summary"), "flagged items"))
        summary = chrome.find_element(By.ID, "flag-summary").text
        # 369 doubtful spans + 39 possible missed + the document label, one line instead of 409
        assert "409 flagged items (1 document label, 369 spans, 39 possible missed spans), 0 decided" in summary, summary
        marks = len(chrome.find_elements(By.CSS_SELECTOR, "#note-text [data-start]"))
        assert marks > 738, marks
        press = """
            const [key, done] = arguments;
            const touched = new Set();
            let churn = 0;
            const count = (records) => { for (const r of records) {
                touched.add(r.target); churn += r.addedNodes.length + r.removedNodes.length; } };
            const observer = new MutationObserver(count);
            observer.observe(document.body, { subtree: true, childList: true, attributes: true, characterData: true });
            const t0 = performance.now();
            document.dispatchEvent(new KeyboardEvent("keydown", { key, bubbles: true }));
            requestAnimationFrame(() => setTimeout(() => {
                const ms = performance.now() - t0;
                count(observer.takeRecords());
                observer.disconnect();
                done([touched.size, churn, ms]);
            }, 0));
        """
        changes: dict[str, list[tuple[int, int]]] = {}
        timings: dict[str, float] = {}
        for key in ("f", "j", "a"):
            presses = [chrome.execute_async_script(press, key) for _ in range(15)]
            changes[key] = [(touched, churn) for touched, churn, _ in presses]
            timings[key] = sorted(ms for _, _, ms in presses)[len(presses) // 2]
        print(f"\nlong note, ms per key (median of 15, to the next frame): {timings}; nodes touched, added+removed: {changes}")
        assert all(touched <= 30 and churn <= 60 for presses in changes.values() for touched, churn in presses), changes
        assert all(touched >= 2 for presses in changes.values() for touched, _ in presses), changes  # the focus moved
        # the path went where it should: f visits flagged items in reading order, a kept one and moved on
        focused = chrome.find_element(By.CSS_SELECTOR, "#note-text .focused")
        assert focused.is_displayed()
        assert "decided" in chrome.find_element(By.ID, "flag-summary").text
        assert not chrome.find_element(By.ID, "flag-summary").text.endswith(", 0 decided. f / Shift+F: next / previous flagged item.")
    finally:
        review.stop()
