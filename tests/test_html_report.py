"""The HTML report from synthetic results: order of sections, every table and figure, no request leaving the page
(statically, and in headless Chromium driven over the DevTools protocol on a pipe: no extra dependency)."""

import html
import json
import os
import re
import select
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from test_report import SEEDS, _result, write_run, write_synthetic_results

from eatlib import html_report, plots, report
from eatlib.report import ResultsError

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
INSTALL_HINT = ("headless Chromium is not installed; on Debian/Ubuntu: `apt-get install -y chromium` "
                "(.ci/run does this), then re-run this test")

VERDICT = {
    "resnet": {"eat_vs_pgd_at": {"metric": "ami", "diff_mean": 0.0213, "ci95": [0.004, 0.039],
                                 "eval_ci95": [0.011, 0.031], "seeds": 5, "reading": "ahead"}},
    "mobilenet": {"eat_vs_pgd_at": {"metric": "ami", "diff_mean": -0.002, "ci95": [-0.02, 0.016],
                                    "eval_ci95": [-0.009, 0.005], "seeds": 5, "reading": "indistinguishable"}},
}


def _tiny_png(path: Path, width_in: float = 2.0) -> None:
    figure = plots._new_figure(width_in, 1.0)
    figure.subplots().plot([0, 1], [1, 0])
    plots.save_figure(figure, path)


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    """Synthetic results as the report stage leaves them: tables, figures (PNG + CSV), timings, params."""
    root = tmp_path_factory.mktemp("run") / "results"
    write_synthetic_results(root)
    for seed in SEEDS:   # PGD-AT at EAT's compute, on one architecture only
        write_run(root, _result(np.random.default_rng(10 + seed), "resnet", "pgd_at_matched", seed=seed))
    report.write_tables(root)
    plots.write_figures(root, seed=0)
    (root / "tables" / "sanity.md").write_text("# Sanity checks\n\n| check | result |\n|---|---|\n"
                                               "| attacks lower the score | pass |\n")
    (root / "tables" / "verdict.md").write_text("*Paired differences over seeds.*\n\n| arch | reading |\n"
                                                "|---|---|\n| resnet | ahead |\n")
    _tiny_png(root / "figures" / "tsne_resnet_eat.png")
    _tiny_png(root / "figures" / "training_resnet.png", 3.0)
    _tiny_png(root / "figures" / "verdict.png")
    (root / "timings.json").write_text(json.dumps(
        {"data": 12.0, "train/resnet/eat": 600.0, "train/resnet/pgd_at": 300.0, "attack/resnet/eat": 120.0,
         "report": 30.0, "total": 1062.0}))
    (root.parent / "params.yaml").write_text("seed: 0   # <the seed & co>\npipeline:\n  archs: [resnet]\n")
    return root


def _build(root: Path, verdict: dict | None = None) -> str:
    verdict_path = root / "verdict.json"
    verdict_path.unlink(missing_ok=True)
    if verdict is not None:
        verdict_path.write_text(json.dumps(verdict))
    try:
        return html_report.build_report(root, root.parent / "params.yaml")
    finally:
        verdict_path.unlink(missing_ok=True)


def _section_ids(page: str) -> list[str]:
    return re.findall(r'<section id="([^"]+)"', page)


def external_references(page: str) -> list[str]:
    """Every src / href / url() / @import target that is neither a data: URI nor an in-page '#' anchor."""
    targets = re.findall(r'\b(?:src|href|action|poster|srcset)\s*=\s*"([^"]*)"', page, flags=re.IGNORECASE)
    targets += re.findall(r"url\(\s*['\"]?([^'\")]*)", page) + re.findall(r"@import\s+['\"]([^'\"]+)", page)
    return [t for t in targets if not (t.startswith("data:") or t.startswith("#"))]


# ------------------------------------------------------------------------------------------------------ the content

def test_without_a_verdict_eat_against_pgd_at_leads(results):
    page = _build(results)
    assert _section_ids(page) == ["eat-vs-pgd-at", "tables", "figures", "parameters", "cost"]
    table = report.read_csv_table(results / "tables" / "main.csv")
    diff = table.loc["eat", ("resnet", "robust", "ami")] - table.loc["pgd_at", ("resnet", "robust", "ami")]
    focus = page.split('id="eat-vs-pgd-at"')[1].split("</section>")[0]
    assert f"{diff:+.3f}" in focus and "eat − pgd_at" in focus


def test_the_focus_shows_means_sds_seeds_and_pgd_at_at_eats_compute(results):
    page = _build(results)
    focus = page.split('id="eat-vs-pgd-at"')[1].split("</section>")[0]
    table = report.read_csv_table(results / "tables" / "main.csv")
    mean, sd = table.loc["pgd_at", ("resnet", "worst", "ami")], table.loc["pgd_at", ("resnet", "worst", "ami_sd")]
    assert f"{mean:.3f} ± {sd:.3f}" in focus
    diff = table.loc["eat", ("resnet", "robust", "ari")] - table.loc["pgd_at_matched", ("resnet", "robust", "ari")]
    assert "PGD-AT (EAT&#x27;s compute)" in focus and "eat − pgd_at_matched" in focus and f"{diff:+.3f}" in focus
    resnet, mobilenet = focus.split('rowspan="5">resnet')[1], focus.split('rowspan="3">mobilenet')[1]
    assert "pgd_at_matched" in resnet.split("mobilenet")[0] and "pgd_at_matched" not in mobilenet.split("resnet")[0]
    assert '<td class="num">3</td></tr>' in focus   # the seeds column


def test_per_metric_verdict_entries_and_extra_keys_are_rendered(results):
    per_metric = {"resnet": {"eat_vs_pgd_at_matched": {
        "ami": {"diff_mean": 0.031, "ci95": [0.01, 0.05], "eval_ci95": [0.02, 0.04], "seeds": 3, "reading": "ahead",
                "p_value": 0.02},
        "ari": {"metric": "ari", "diff_mean": -0.004, "ci95": [-0.03, 0.02], "eval_ci95": [-0.01, 0.0],
                "seeds": 3, "reading": "indistinguishable"},
        "note": "paired over seeds"}}}
    verdict = page_section(_build(results, per_metric), "verdict")
    assert verdict.count("<tr><td>resnet</td><td>eat_vs_pgd_at_matched</td>") == 2
    assert "<td>AMI</td>" in verdict and "<td>ARI</td>" in verdict and "+0.031" in verdict and "-0.004" in verdict
    broken = json.loads(json.dumps(per_metric))
    del broken["resnet"]["eat_vs_pgd_at_matched"]["ari"]["eval_ci95"]
    with pytest.raises(ResultsError, match=r"'resnet\.eat_vs_pgd_at_matched\.ari\.eval_ci95' is missing"):
        _build(results, broken)
    with pytest.raises(ResultsError, match=r"'resnet\.x' must be an object with keys .* or one such object per"):
        _build(results, {"resnet": {"x": {"note": "nothing"}}})


def page_section(page: str, anchor: str) -> str:
    return page.split(f'id="{anchor}"')[1].split("</section>")[0]


def test_a_verdict_comes_first_with_its_intervals_and_readings(results):
    page = _build(results, VERDICT)
    assert _section_ids(page)[:2] == ["verdict", "eat-vs-pgd-at"]
    verdict = page.split('id="verdict"')[1].split("</section>")[0]
    assert "+0.021" in verdict and "[+0.004, +0.039]" in verdict and "[-0.009, +0.005]" in verdict
    assert '<span class="reading ahead">ahead</span>' in verdict
    assert '<span class="reading indistinguishable">' in verdict
    assert verdict.index("resnet") < verdict.index("mobilenet")   # as the verdict file orders them


@pytest.mark.parametrize(("mutate", "message"), [
    (lambda v: v["resnet"]["eat_vs_pgd_at"].pop("reading"), r"'resnet\.eat_vs_pgd_at\.reading' is missing"),
    (lambda v: v["resnet"]["eat_vs_pgd_at"].update(reading="better"), r"'better'; allowed: ahead, behind"),
    (lambda v: v["mobilenet"]["eat_vs_pgd_at"].update(ci95=[0.1]), r"'mobilenet\.eat_vs_pgd_at\.ci95' must be"),
    (lambda v: v.update(resnet=[]), r"'resnet' must be a non-empty object"),
    (lambda v: v["resnet"]["eat_vs_pgd_at"].update(seeds=0), r"'resnet\.eat_vs_pgd_at\.seeds' must be a positive"),
    (lambda v: v["resnet"]["eat_vs_pgd_at"].update(diff_mean="0.1"), r"\.diff_mean' must be a number"),
])
def test_a_malformed_verdict_names_the_key(results, mutate, message):
    verdict = json.loads(json.dumps(VERDICT))
    mutate(verdict)
    with pytest.raises(ResultsError, match=rf"verdict\.json: .*{message}"):
        _build(results, verdict)


def test_every_table_figure_and_the_params_and_cost_are_in_the_page(results):
    page = _build(results)
    pngs = sorted(p.name for p in (results / "figures").glob("*.png"))
    assert len(pngs) == 5
    assert page.count("<img ") == len(pngs)
    for name in pngs:
        assert f'<span class="file">{name}</span>' in page
    for name in ("main", "ablation"):
        caption = (results / "tables" / f"{name}.md").read_text().splitlines()[0].strip("*")
        assert html.escape(caption.split(".")[0]) in page
        assert f'id="table-{name}"' in page and f'download="{name}.csv"' in page
    # The verdict and sanity tables come right after the main table, before the ablation.
    assert page.index('id="table-main"') < page.index('id="table-verdict"') < page.index('id="table-sanity"') \
        < page.index('id="table-ablation"')
    sanity = page.split('id="table-sanity"')[1].split("<h3")[0]
    assert "<h4>Sanity checks</h4>" in sanity and "<td>attacks lower the score</td>\n<td>pass</td>" in sanity
    rows = page.split('id="table-main"')[1].split('id="table-verdict"')[0]
    assert rows.count('<tr class="member">') == 2 * 3          # eat's 3 members, per architecture
    assert "&lt;the seed &amp; co&gt;" in page                  # params.yaml, escaped
    assert "17.7 minutes" in page                               # 1062 s in all
    assert page.index('id="figure-verdict"') < page.index('id="figure-robustness-eps"') \
        < page.index('id="figure-training-resnet"') \
        < page.index('id="figure-tsne-resnet-eat"') < page.index('id="figure-ablation"')


def test_every_link_points_inside_the_page_and_the_build_is_deterministic(results):
    page = _build(results, VERDICT)
    assert external_references(page) == []
    ids = set(re.findall(r'\bid="([^"]+)"', page))
    anchors = re.findall(r'href="#([^"]*)"', page)
    assert len(anchors) > 10 and set(anchors) <= ids
    assert _build(results, VERDICT) == page


def test_the_committed_report_is_self_contained_and_shows_every_committed_figure():
    root = Path(__file__).resolve().parents[1] / "results"
    page = (root / "report.html").read_text()
    assert external_references(page) == []
    for figure in (root / "figures").glob("*.png"):
        assert f'<span class="file">{figure.name}</span>' in page, f"re-run the report stage: {figure.name} missing"


def test_the_static_check_catches_an_external_reference():
    page = '<img src="https://cdn.example/x.png"><a href="#top">t</a><div style="background:url(/a.png)">'
    assert external_references(page) == ["https://cdn.example/x.png", "/a.png"]


def test_write_report_needs_the_tables_and_writes_report_html(results, tmp_path):
    with pytest.raises(ResultsError, match=r"main\.md does not exist"):
        html_report.write_report(tmp_path, tmp_path / "params.yaml")
    path = html_report.write_report(results, results.parent / "params.yaml")
    assert path == results / "report.html" and path.read_text().startswith("<!DOCTYPE html>")


def test_png_size_reads_the_header(results):
    path = results / "figures" / "tsne_resnet_eat.png"
    assert html_report.png_size(path.read_bytes()) == (2 * plots.DPI, plots.DPI)
    with pytest.raises(ResultsError, match="not a PNG"):
        html_report.png_size(b"GIF89a" + bytes(30))


# ------------------------------------------------------------------------------------------------------ the browser

class DevTools:
    """Headless Chromium driven over ``--remote-debugging-pipe``: JSON messages, NUL-terminated, on fds 3 / 4."""

    FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-default-apps",
             "--disable-extensions", "--mute-audio",
             # Any request that still tried to leave would fail: no name resolves, the proxy is a dead port.
             "--host-resolver-rules=MAP * ~NOTFOUND", "--proxy-server=127.0.0.1:9", "--remote-debugging-pipe")

    def __init__(self, profile: Path):
        child_in, self._out = os.pipe()
        self._in, child_out = os.pipe()
        # Chromium reads commands on fd 3 and answers on fd 4.
        self.process = subprocess.Popen(
            ["bash", "-c", f'exec 3<&{child_in} 4>&{child_out}; exec "$0" "$@"', CHROMIUM, *self.FLAGS,
             f"--user-data-dir={profile}"],
            pass_fds=(child_in, child_out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(child_in)
        os.close(child_out)
        self._buffer, self._next_id, self.events = b"", 0, []

    def _receive(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([self._in], [], [], remaining)[0]:
                raise TimeoutError("Chromium did not answer over the DevTools pipe in time")
            chunk = os.read(self._in, 1 << 20)
            if not chunk:
                raise RuntimeError("Chromium closed the DevTools pipe (did it start? run it by hand to see why)")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def call(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 30):
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._out, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._receive(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]
            self.events.append(reply)

    def wait_for(self, method: str, timeout: float = 30) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            for i, event in enumerate(self.events):
                if event.get("method") == method:
                    return self.events.pop(i)
            self.events.append(self._receive(deadline))

    def open(self, url: str) -> tuple[str, list[str]]:
        """Load ``url`` in a new tab; returns (session id, URL of every network request the page made)."""
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        self.call("Network.enable", session=session)
        self.call("Page.enable", session=session)
        self.events.clear()
        self.call("Page.navigate", {"url": url}, session=session)
        self.wait_for("Page.loadEventFired")
        time.sleep(0.3)   # let late requests (fonts, lazy images) show up before counting them
        self.call("Runtime.evaluate", {"expression": "1"}, session=session)   # drains pending events
        requests = [e["params"]["request"]["url"] for e in self.events
                    if e.get("method") == "Network.requestWillBeSent" and e.get("sessionId") == session]
        return session, requests

    def evaluate(self, expression: str, session: str):
        result = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                "awaitPromise": True}, session=session)
        return result["result"]["value"]

    def close(self):
        try:
            self.call("Browser.close", timeout=5)
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
        os.close(self._in)
        os.close(self._out)


PAGE_PROBE = """(async () => {
  const images = [...document.images];
  await Promise.all(images.map(i => i.decode().catch(() => null)));
  return {images: images.map(i => [i.id || i.alt, i.complete, i.naturalWidth]),
          resources: performance.getEntriesByType('resource').map(e => e.name),
          sections: [...document.querySelectorAll('section')].map(s => s.id)};
})()"""


@pytest.fixture
def browser(tmp_path):
    if CHROMIUM is None:
        pytest.skip(INSTALL_HINT)
    devtools = DevTools(tmp_path / "profile")
    yield devtools
    devtools.close()


def test_in_chromium_every_figure_loads_and_no_request_leaves(results, browser, tmp_path):
    page = tmp_path / "report.html"
    page.write_text(_build(results, VERDICT))
    session, requests = browser.open(page.as_uri())
    probe = browser.evaluate(PAGE_PROBE, session)
    assert len(probe["images"]) == 5
    assert all(complete and width > 0 for _, complete, width in probe["images"]), probe["images"]
    assert probe["resources"] == []
    assert [url for url in requests if not url.startswith("data:") and url != page.as_uri()] == []
    assert probe["sections"][0] == "verdict"

    # The same checks do see a request that leaves, and a figure that does not load.
    leaky = tmp_path / "leaky.html"
    leaky.write_text('<!DOCTYPE html><html><body><img src="http://cdn.invalid/x.png" alt="x"></body></html>')
    session, requests = browser.open(leaky.as_uri())
    probe = browser.evaluate(PAGE_PROBE, session)
    assert "http://cdn.invalid/x.png" in requests
    assert probe["images"] == [["x", True, 0]]
