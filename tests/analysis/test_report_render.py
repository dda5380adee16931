"""The HTML report renders in headless Chromium: a screenshot, and every figure loaded."""

import re
import shutil
import subprocess

import pytest
from synthetic import keys, write

from dead_directions.analysis import aggregate, report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# Every figure must have decoded: the page records, once loaded, how many <img> it has and
# how many of them are complete with a non-zero natural width.
CHECK = (
    "<script>window.addEventListener('load', () => {"
    "const imgs = [...document.images];"
    "const ok = imgs.filter(i => i.complete && i.naturalWidth > 0).length;"
    "document.body.setAttribute('data-images', imgs.length + ':' + ok);});</script>"
)


def _chromium(*args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    # --no-sandbox: CI and these machines run as root, where Chromium's sandbox refuses
    # to start; the page is our own file.
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)


@pytest.mark.skipif(
    CHROMIUM is None,
    reason="Chromium is not installed (Debian: `apt-get install -y chromium`; .ci/run installs "
    "it where it can)",
)
def test_html_report_renders_with_every_figure(tmp_path):
    cells = keys(families=("mlp",), sizes=("s", "m"), steps=(0, 10, 100), layers=("fc1", "fc2"))
    path = tmp_path / "s.zarr"
    write(path, cells, dead=True)
    frame = aggregate.aggregate(path, "threads")
    report.figures(frame, path, "mlp", report.figure_paths(tmp_path / "fig"), checkpoint=("m", 10))
    _, page = report.write_report(frame, {"mlp": tmp_path / "fig"}, tmp_path / "report.md")
    text = page.read_text()
    n_figures = text.count("<img ")
    assert n_figures == len(report.FIGURES)

    probed = tmp_path / "probed.html"
    probed.write_text(text.replace("</body>", CHECK + "</body>"))
    dom = _chromium("--virtual-time-budget=10000", "--dump-dom", probed.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    found = re.search(r'data-images="(\d+):(\d+)"', dom.stdout)
    assert found, "the load check did not run: " + dom.stdout[:500]
    assert found.groups() == (str(n_figures), str(n_figures))  # all loaded

    shot = tmp_path / "report.png"
    run = _chromium("--window-size=1200,2400", f"--screenshot={shot}", page.as_uri())
    assert run.returncode == 0, run.stderr[-2000:]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image

    pixels = matplotlib.image.imread(shot)
    assert pixels.shape[:2] == (2400, 1200)
    # Not a blank page: the figures and tables put many distinct colours on it.
    assert pixels[..., :3].std() > 0.05
