"""Write an HTML template for `dvc plots show` that works offline: vega, vega-lite and vega-embed inlined.

DVC's own page loads those three libraries from a CDN, so it is blank without network. This script fetches the
versions DVC 3 asks for with `npm pack` (once, needs network and npm), inlines them into a template, and tells
DVC to use it::

    python scripts/offline_plots_template.py            # writes .dvc/plots_offline.html (about 0.8 MB)
    dvc config plots.html_template plots_offline.html    # relative to .dvc/; or pass --html-template once

The template has no ``{scripts}`` placeholder, so DVC adds no CDN tags; it keeps ``{plot_divs}``.
"""

from __future__ import annotations

import argparse
import subprocess
import tarfile
import tempfile
from pathlib import Path

# The versions dvc-render 1.x puts in its CDN tags (dvc_render/vega.py); its templates use vega-lite v5.
LIBRARIES = {"vega": "5.20.2", "vega-lite": "5.2.0", "vega-embed": "6.18.2"}

PAGE = """<!DOCTYPE html>
<html>
<head>
<meta charset="utf-8">
{refresh_tag}
<title>DVC plots (offline)</title>
{libraries}
<style>table { border-spacing: 15px; }</style>
</head>
<body>
{plot_divs}
</body>
</html>
"""


def library_source(name: str, version: str, work: Path) -> str:
    """The minified browser build of ``name@version``, from the npm registry through `npm pack`."""
    subprocess.run(["npm", "pack", "--silent", f"{name}@{version}"], cwd=work, check=True,
                   stdout=subprocess.DEVNULL)
    with tarfile.open(work / f"{name}-{version}.tgz") as archive:
        source = archive.extractfile(f"package/build/{name}.min.js").read().decode("utf-8")
    if "</script" in source.lower():
        raise ValueError(f"{name}@{version} contains '</script' and cannot be inlined as is")
    return source


def template(sources: dict[str, str]) -> str:
    libraries = "\n".join(f"<script>/* {name}@{LIBRARIES[name]}, BSD-3-Clause, vega.github.io */\n{source}\n</script>"
                          for name, source in sources.items())
    # {refresh_tag} and {plot_divs} stay for DVC to fill in; the library code holds no such placeholder.
    return PAGE.replace("{libraries}", libraries)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(".dvc/plots_offline.html"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        sources = {name: library_source(name, version, Path(work)) for name, version in LIBRARIES.items()}
    args.out.write_text(template(sources))
    print(f"wrote {args.out}; use it with: dvc config plots.html_template {args.out.name}")


if __name__ == "__main__":
    main()
