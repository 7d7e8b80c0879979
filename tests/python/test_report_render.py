"""The HTML report renders in headless Chromium with every chart present.

A short demo run writes report.html; Chromium takes a screenshot of it, and the screenshot must show
each chart's own series colour (loss, eval loss, aux loss, learning rate, grad norm, throughput) and
the expert heat map's colours, i.e. every chart was drawn, not just the page. The same page, laid out
by Chromium, has no text (title, axis label, legend) running past the edge of its chart, where the
browser cuts it off."""
import html
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image

SOURCE = Path(os.environ.get("MOEFORGE_SOURCE_DIR", Path(__file__).resolve().parents[2]))
BINARY = os.environ.get("MOEFORGE_BINARY", str(SOURCE / "build/cpu-release/tools/cli/moeforge"))
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

SERIES = {"loss": (0x1F, 0x77, 0xB4), "eval_loss": (0xD6, 0x27, 0x28), "aux_loss": (0x94, 0x67, 0xBD),
          "learning rate": (0x2C, 0xA0, 0x2C), "grad norm": (0xFF, 0x7F, 0x0E), "tokens/s": (0x17, 0xBE, 0xCF)}


# Appended to the report: lists every SVG text whose laid-out box leaves its SVG, for --dump-dom.
CUT_TEXTS_SCRIPT = """<script>
const cut = [];
for (const svg of document.querySelectorAll('svg')) {
  const w = svg.width.baseVal.value, h = svg.height.baseVal.value;
  for (const t of svg.querySelectorAll('text')) {
    const b = t.getBBox();
    if (b.x < 0 || b.y < 0 || b.x + b.width > w + 0.5 || b.y + b.height > h + 0.5)
      cut.push(svg.id + ': ' + t.textContent);
  }
}
const out = document.createElement('pre');
out.id = 'cut-texts';
out.textContent = JSON.stringify(cut);
document.body.appendChild(out);
</script>"""


def count_near(pixels, colour, tol=30):
    return sum(1 for p in pixels if all(abs(a - b) <= tol for a, b in zip(p[:3], colour)))


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (scripts/bootstrap installs it)")
def test_report_renders_every_chart(tmp_path):
    subprocess.run([BINARY, "demo", "--output_dir", str(tmp_path / "demo"), "--max_steps", "6",
                    "--eval_questions", "2"], check=True, capture_output=True)
    report = tmp_path / "demo" / "model" / "report.html"
    shot = tmp_path / "report.png"
    subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--screenshot={shot}", "--window-size=1300,1500", report.as_uri()],
                   check=True, capture_output=True, timeout=120)
    image = Image.open(shot).convert("RGB")
    assert image.size == (1300, 1500)
    pixels = list(image.get_flattened_data())
    for name, colour in SERIES.items():
        assert count_near(pixels, colour) >= 8, f"the {name} series is not visible in the screenshot"
    reddish = sum(1 for r, g, b in pixels if r > 200 and g < 190 and b < 190)
    bluish = sum(1 for r, g, b in pixels if b > 200 and r < 190 and g < 190)
    assert reddish + bluish > 200, "the expert heat map is not visible in the screenshot"

    checked = tmp_path / "report-checked.html"
    checked.write_text(report.read_text() + CUT_TEXTS_SCRIPT)
    dom = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1300,1500",
                          "--dump-dom", checked.as_uri()], check=True, capture_output=True, text=True, timeout=120).stdout
    found = re.search(r'<pre id="cut-texts">(.*?)</pre>', dom, re.S)
    assert found, "the check script did not run"
    assert json.loads(html.unescape(found.group(1))) == [], "texts cut at their chart's edge"
