"""The README and docs/ as a user reads them: the code runs, the imports exist, the dataset file lists are what the
loaders read, the links resolve, and the glossary covers the terms the tables use."""

from __future__ import annotations

import ast
import fnmatch
import importlib
import importlib.util
import re
from pathlib import Path

import pytest
import torch
import yaml

from tests.fake_layouts import FAKE_LAYOUTS

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
ATTACK_SNIPPET_MARK = "adversarial = attack(images, index)"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def section(text: str, heading: str) -> str:
    """The body of the Markdown section ``## heading`` (up to the next ``## ``)."""
    start = text.index(f"## {heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def table_rows(text: str) -> list[list[str]]:
    """The cells of every body row of the Markdown tables in ``text`` (header and rule rows dropped)."""
    rows, previous = [], ""
    for line in text.splitlines():
        if line.startswith("|") and not re.fullmatch(r"\|[-:| ]+\|", line) and not previous.startswith("|"):
            previous = line  # a header row
            continue
        if line.startswith("|") and not re.fullmatch(r"\|[-:| ]+\|", line):
            rows.append([cell.strip() for cell in line.strip("|").split("|")])
        previous = line
    return rows


def header_cells(table_markdown: str) -> set[str]:
    """The column names of every table in a generated results table file."""
    names = set()
    lines = table_markdown.splitlines()
    for line, following in zip(lines, lines[1:], strict=False):
        if line.startswith("|") and re.fullmatch(r"\|[-:| ]+\|", following):
            names |= {cell.strip() for cell in line.strip("|").split("|")}
    return names


def expand_braces(path: str) -> list[str]:
    """``a/{b,c/}`` -> ``["a/b", "a/c/"]`` (one brace group, as the README writes them)."""
    match = re.fullmatch(r"(.*)\{(.*)\}", path)
    if not match:
        return [path]
    return [match.group(1) + part for part in match.group(2).split(",")]


# --------------------------------------------------------------------------------------------------------------
# The code


def test_attack_snippet_runs_as_written_and_attacks_within_budget(monkeypatch, tmp_path):
    blocks = [block for block in python_blocks(README.read_text()) if ATTACK_SNIPPET_MARK in block]
    assert len(blocks) == 1, f"README must hold one ```python block with `{ATTACK_SNIPPET_MARK}`"
    monkeypatch.chdir(tmp_path)  # a fresh folder: the snippet may not rely on files of a pipeline run
    namespace: dict = {}
    exec(compile(blocks[0], "README.md (attack snippet)", "exec"), namespace)

    images, adversarial, attack = namespace["images"], namespace["adversarial"], namespace["attack"]
    assert adversarial.shape == images.shape
    assert float(adversarial.min()) >= 0 and float(adversarial.max()) <= 1
    change = (adversarial - images).abs()
    assert float(change.max()) <= attack.eps + 1e-6, "the attack left its L-inf budget"
    assert float(change.max()) > attack.eps / 2, "the attack barely changed the images"
    with torch.no_grad():
        objective = attack.objective.batch(namespace["index"])
        before = objective(attack.model(images)).mean()
        after = objective(attack.model(adversarial)).mean()
    assert after > before, "the attack did not increase its own objective"

    assert namespace["headline"].steps == 20
    scores = namespace["result"]["attacks"]["pgd_centroid_random"]
    assert scores["perturbation"]["linf_max"] <= 8 / 255 + 1e-6
    assert {"nmi", "ami", "ari", "f1", "recall@1"} <= set(scores)


def test_every_readme_import_exists():
    for block in python_blocks(README.read_text()):
        for node in ast.walk(ast.parse(block)):
            if isinstance(node, ast.ImportFrom):
                module = importlib.import_module(node.module)
                for alias in node.names:
                    submodule = hasattr(module, "__path__") and importlib.util.find_spec(f"{node.module}.{alias.name}")
                    assert hasattr(module, alias.name) or submodule, (
                        f"README: `from {node.module} import {alias.name}`: {node.module} has no {alias.name}"
                    )
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    importlib.import_module(alias.name)


# --------------------------------------------------------------------------------------------------------------
# The paper datasets


def readme_dataset_paths() -> dict[str, tuple[list[str], str]]:
    """registry name -> (paths the README's dataset table names, relative to data/'s parent; download URL)."""
    datasets = {}
    for cells in table_rows(section(README.read_text(), "The paper datasets")):
        where, url = cells[1].strip("`"), cells[2]
        name = where.split("/")[1]
        datasets[name] = (expand_braces(where), url)
    return datasets


@pytest.mark.parametrize("name", sorted(FAKE_LAYOUTS))
def test_readme_names_every_file_the_loader_reads(name, tmp_path):
    # The fake layout is what the loader reads (it loads), so each of its files must be named in the README.
    layout = FAKE_LAYOUTS[name](tmp_path / "data")
    from eatlib.data import load_splits

    load_splits(name, tmp_path / "data")
    datasets = readme_dataset_paths()
    assert name in datasets, f"README's dataset table has no row for data/{name}/"
    paths, url = datasets[name]
    files = {p for p in paths if not p.endswith("/")}
    folders = [p for p in paths if p.endswith("/")]
    for index_file in layout.index_files:
        relative = index_file.relative_to(tmp_path).as_posix()
        assert relative in files, f"README's {name} row does not name {relative} (the loader requires it)"
    for image in layout.images:
        relative = image.relative_to(tmp_path).as_posix()
        assert any(fnmatch.fnmatch(relative, folder + "*") for folder in folders), (
            f"README's {name} row names no folder holding {relative}"
        )
    loader_url = importlib.import_module(f"eatlib.data.{name}").INFO.url.split()[0]
    assert url == loader_url, f"README's {name} download {url} differs from the loader's {loader_url}"


def test_readme_dataset_table_covers_every_paper_dataset():
    assert set(readme_dataset_paths()) == set(FAKE_LAYOUTS)


# --------------------------------------------------------------------------------------------------------------
# Links, the paper account and the glossary


def test_links_resolve_and_paper_md_is_not_referenced():
    for document in [README, *DOCS.glob("*.md")]:
        text = document.read_text()
        assert "PAPER.md" not in text, f"{document.name} points to PAPER.md, which is not in the repository"
        for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text):
            if not re.match(r"[a-z]+://", target):
                assert (document.parent / target).exists(), f"{document.name}: link to {target} resolves to nothing"
    readme = README.read_text()
    assert "(docs/paper.md)" in readme and "(docs/glossary.md)" in readme


def dotted_keys(text: str) -> set[str]:
    """Backticked ``section.key[.key]`` names (optionally ``: value``) of params.yaml in ``text``."""
    top = set(yaml.safe_load((ROOT / "params.yaml").read_text()))
    keys = set()
    for code in re.findall(r"`([^`]+)`", text):
        key = code.split(":")[0].strip()
        if re.fullmatch(r"[a-z_]+(\.[a-z_0-9]+)+", key) and key.split(".")[0] in top:
            keys.add(key)
    return keys


def has_key(params: dict, key: str) -> bool:
    node = params
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def test_paper_md_decisions_name_real_params_keys():
    text = (DOCS / "paper.md").read_text()
    keys = dotted_keys(text)
    expected = {"defenses.eat.members", "defenses.eat.split", "defenses.eat.transfer", "defenses.eat.aggregate",
                "attacks.headline", "attacks.subset", "attacks.suite"}
    assert expected <= keys, f"docs/paper.md names none of {sorted(expected - keys)}"
    profiles = [yaml.safe_load((ROOT / name).read_text()) for name in ("params.yaml", "params-paper.yaml")]
    unknown = sorted(k for k in keys if not any(has_key(p, k) for p in profiles))
    assert not unknown, f"docs/paper.md names keys that are in neither params.yaml nor params-paper.yaml: {unknown}"


def glossary_terms() -> tuple[str, set[str]]:
    text = (DOCS / "glossary.md").read_text()
    terms = set()
    for cells in table_rows(text):
        for term in cells[0].split(","):
            terms.add(term.strip().strip("`").removesuffix(" ...").strip())
    return text, terms


def test_glossary_explains_the_defenses_and_attack_terms():
    text, terms = glossary_terms()
    pipeline = yaml.safe_load((ROOT / "params.yaml").read_text())["pipeline"]
    defenses = pipeline["compared"] + ["pgd_at_matched"] + pipeline["single_seed"] + pipeline["inference_defenses"]
    assert set(defenses) <= terms, f"docs/glossary.md misses defenses {sorted(set(defenses) - terms)}"
    attack_terms = {"PGD", "FGSM", "EOT", "eps", "headline", "worst case", "suite", "target"}
    assert attack_terms <= terms, f"docs/glossary.md misses {sorted(attack_terms - terms)}"


@pytest.mark.parametrize("table", ["main.md", "ablation.md"])
def test_glossary_explains_every_table_column(table):
    path = ROOT / "results" / "tables" / table
    if not path.is_file():
        pytest.skip(f"{path} is not generated yet (make repro)")
    _, terms = glossary_terms()
    prefixes = ("clean", "robust", "worst case")
    unexplained = sorted(
        column for column in header_cells(path.read_text())
        if column not in terms and not any(
            column.startswith(f"{p} ") and column[len(p) + 1:] in terms and p in terms for p in prefixes
        )
    )  # fmt: skip
    assert not unexplained, f"docs/glossary.md does not explain the {table} columns {unexplained}"
