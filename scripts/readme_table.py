"""Copy the main results table (and the verdict table) into README.md, between their marker comments.

The table is ``results/tables/main.md`` as :func:`eatlib.report.write_tables` writes it: per defense, the mean over
its training seeds, ``mean ± sd`` over seeds for clean and worst-case AMI/ARI, and a ``seeds`` column.

    python scripts/readme_table.py [--readme README.md] [--table results/tables/main.md]

Only the text between ``<!-- results:main:start -->`` and ``<!-- results:main:end -->`` changes (and, when the
README has ``<!-- results:verdict:start/end -->`` and results/tables/verdict.md exists, between those;
likewise ``results:readings`` and results/verdict_readings/verdict_readings.md), so
running it twice changes nothing. The README is rewritten (atomically) only when its text changes. Standard
library only.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

START = "<!-- results:main:start -->"
END = "<!-- results:main:end -->"
ROOT = Path(__file__).resolve().parents[1]


class ReadmeTableError(RuntimeError):
    """README markers or the table file are missing or malformed."""


def replace_between_markers(text: str, content: str, *, where: str = "README", start: str = START,
                            end: str = END) -> str:
    """``text`` with everything between ``start`` and ``end`` (default :data:`START`, :data:`END`) replaced by
    ``content`` (one newline after the start marker, one before the end marker)."""
    START, END = start, end  # noqa: N806 (the messages below name the markers in use)
    for marker in (START, END):
        count = text.count(marker)
        if count != 1:
            raise ReadmeTableError(
                f"{where}: expected the marker {marker} exactly once, found it {count} times; put "
                f"{START} and {END} on their own lines where the results table belongs"
            )
    start, end = text.index(START) + len(START), text.index(END)
    if end < start:
        raise ReadmeTableError(f"{where}: {END} comes before {START}; swap them")
    return text[:start] + "\n" + content.strip("\n") + "\n" + text[end:]


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def update_readme(readme: str | Path, table: str | Path, *, name: str = "main") -> bool:
    """Copy ``table`` into ``readme`` between the ``results:<name>`` markers; returns whether the README
    changed."""
    readme, table = Path(readme), Path(table)
    if not table.is_file():
        raise ReadmeTableError(f"{table} does not exist; build it first (dvc repro, or eatlib.report.write_tables)")
    content = table.read_text(encoding="utf-8")
    if not content.strip():
        raise ReadmeTableError(f"{table} is empty; rebuild it (dvc repro, or eatlib.report.write_tables)")
    if not readme.is_file():
        raise ReadmeTableError(f"{readme} does not exist")
    old = readme.read_text(encoding="utf-8")
    new = replace_between_markers(old, content, where=str(readme), start=f"<!-- results:{name}:start -->",
                                  end=f"<!-- results:{name}:end -->")
    if new != old:
        _write_atomic(readme, new)
    return new != old


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readme", type=Path, default=ROOT / "README.md")
    parser.add_argument("--table", type=Path, default=ROOT / "results" / "tables" / "main.md")
    args = parser.parse_args(argv)
    try:
        changed = update_readme(args.readme, args.table)
        for name, table in (("verdict", args.table.parent / "verdict.md"),
                            ("readings", args.table.parent.parent / "verdict_readings" / "verdict_readings.md")):
            if table.is_file() and f"<!-- results:{name}:start -->" in args.readme.read_text(encoding="utf-8"):
                changed |= update_readme(args.readme, table, name=name)
    except ReadmeTableError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"{args.readme}: {'updated from' if changed else 'already matches'} {args.table}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
