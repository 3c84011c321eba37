"""The HTML report in a real browser: headless Chromium (Debian's ``chromium`` package) shows its tables and
decodes every image, the dataset filter hides the other sections, and the console stays silent (no
script error, no blocked resource). Skips when Chromium is not installed, unless
``PRUNEKIT_REQUIRE_CHROMIUM=1`` (set by ``.ci/run`` and ``make test-browser``, which install it)."""
import json
import os
import re
import shutil
import subprocess

import pytest

from prunekit.report.build import write_report
from tests.test_report import _row, _tiny_run

BROWSERS = ("chromium", "chromium-browser", "google-chrome")

# Appended to a copy of the page: after load, report what the browser sees into the DOM, then filter.
PROBE = """<script>
window.addEventListener("load", function () {
  var images = Array.prototype.slice.call(document.images);
  var result = {images: images.length,
                decoded: images.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length,
                tables: document.querySelectorAll("table").length,
                rows: document.querySelectorAll("tbody tr").length};
  var select = document.getElementById("filter-dataset");
  select.value = "mnist";
  select.dispatchEvent(new Event("change"));
  result.visible = Array.prototype.slice.call(document.querySelectorAll("section.report-section"))
    .filter(function (s) { return !s.hidden; }).map(function (s) { return s.id; });
  result.shown = document.getElementById("shown").textContent;
  var out = document.createElement("pre");
  out.id = "probe";
  out.textContent = JSON.stringify(result);
  document.body.appendChild(out);
});
</script>"""


def _browser() -> str:
    found = os.environ.get("PRUNEKIT_CHROMIUM") or next(filter(None, map(shutil.which, BROWSERS)), None)
    if found is None:
        if os.environ.get("PRUNEKIT_REQUIRE_CHROMIUM") == "1":
            pytest.fail("Chromium is required here (PRUNEKIT_REQUIRE_CHROMIUM=1) but not installed")
        pytest.skip("Chromium not installed (make chromium, or make test-browser)")
    return found


def _command(*args: str, tmp_path) -> list[str]:
    cmd = [_browser(), "--headless", "--disable-gpu", "--no-first-run", "--hide-scrollbars",
           f"--user-data-dir={tmp_path / 'profile'}", *args]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.insert(1, "--no-sandbox")  # Chromium refuses to run as root with its sandbox
    return cmd


def screenshot(page, out, tmp_path, size: tuple[int, int] = (1100, 1500)):
    """A real headless-Chromium screenshot of ``page`` (PNG at ``out``); returns its pixels (H x W x 3)."""
    from matplotlib import image

    done = subprocess.run(_command(f"--window-size={size[0]},{size[1]}", f"--screenshot={out}",
                                   "--virtual-time-budget=5000", page.resolve().as_uri(), tmp_path=tmp_path),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and out.is_file(), done.stderr[-2000:]
    return image.imread(out)[:, :, :3]


def render(page, tmp_path) -> tuple[dict, list[str]]:
    """(what the probe saw, console lines) for ``page`` rendered headless."""
    probed = tmp_path / f"probed-{page.name}"
    probed.write_text(page.read_text().replace("</body>", PROBE + "</body>"))
    cmd = _command("--enable-logging=stderr", "--v=0", "--virtual-time-budget=5000", "--dump-dom", probed.as_uri(),
                   tmp_path=tmp_path)
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    match = re.search(r'<pre id="probe">(.*?)</pre>', done.stdout, re.S)
    assert match, f"the page's scripts did not run: {done.stdout[-1000:]}"
    console = [line for line in done.stderr.splitlines() if ":CONSOLE" in line]
    return json.loads(match.group(1).replace("&quot;", '"')), console


@pytest.fixture
def report(tmp_path):
    run, _ = _tiny_run(tmp_path, "runs/r/magnitude-x", 0.9)
    rows = [_row("d0", "dense", 0.0, 0, 92.5), _row("d1", "dense", 0.0, 1, 92.1),
            _row("m0", "magnitude", 0.9, 0, 90.0, run_dir=str(run)), _row("m1", "magnitude", 0.9, 1, 91.0),
            _row("x0", "dense", 0.0, 0, 98.0, recipe="other", dataset="mnist", model="lenet300_100"),
            _row("x1", "random", 0.9, 0, 95.0, recipe="other", dataset="mnist", model="lenet300_100")]
    return write_report(rows, tmp_path / "out")


def test_browser_shows_tables_images_and_filters_silently(report, tmp_path):
    seen, console = render(report.html, tmp_path)
    assert console == []
    # accuracy plots of both sections + the masks of the first one's magnitude runs; all decoded
    assert seen["images"] == 3 and seen["decoded"] == 3
    assert seen["tables"] == 2 and seen["rows"] == 4
    mnist = next(s.slug for s in report.sections if s.dataset == "mnist")
    assert seen["visible"] == [mnist] and seen["shown"] == "1 of 2 sections shown"


def test_browser_check_catches_errors_and_external_resources(report, tmp_path):
    """The same check fails a page with a script error, a broken image and an external resource."""
    broken = tmp_path / "broken.html"
    broken.write_text(report.html.read_text().replace(
        "</main>", '<img src="data:image/png;base64,AAAA"><img src="https://example.com/x.png">'
                   "<script>undefinedFunction();</script></main>"))
    seen, console = render(broken, tmp_path)
    assert seen["images"] == 5 and seen["decoded"] == 3
    assert any("undefinedFunction is not defined" in line for line in console)
    assert any("Content Security Policy" in line and "example.com" in line for line in console)


def test_screenshot_shows_the_family_figures(tmp_path):
    """A section holding several papers' methods opens with one figure per family; in a real screenshot
    the figures are drawn (coloured pixels of the methods' colours), not blank or broken images."""
    from prunekit.report import plots

    rows = [_row(f"d{s}", "dense", 0.0, s, 97.0) for s in (0, 1)]
    for method, accs in (("dpai", (90.0, 80.0)), ("snip", (89.0, 70.0)), ("granet", (96.0, 94.0)),
                         ("rigl", (95.0, 90.0)), ("bip", (96.5, 95.0)), ("imp", (96.0, 95.5))):
        rows += [_row(f"{method}{p}{s}", method, p, s, acc + s) for p, acc in zip((0.8, 0.95), accs) for s in (0, 1)]
    report = write_report(rows, tmp_path / "out")
    slug = report.sections[0].slug
    assert [p.name for p in report.figures if p.suffix == ".png"][:3] == [
        f"{slug}-family-DPaI.png", f"{slug}-family-GraNet.png", f"{slug}-family-BiP.png"]
    seen, console = render(report.html, tmp_path)
    assert console == [] and seen["images"] == seen["decoded"] >= 4 and seen["tables"] == 1
    pixels = screenshot(report.html, tmp_path / "shot.png", tmp_path)
    assert pixels.shape[:2] == (1500, 1100)
    red = plots.color("DPaI")  # DPaI drawn bold in its family figure and in the all-methods one
    close = (abs(pixels - red).max(axis=2) < 0.12).sum()
    assert close > 500  # its lines are on the page
    assert (pixels.min(axis=2) < 0.9).mean() > 0.05  # not a blank page
