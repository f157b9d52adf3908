"""What every pipeline stage pays before its first cell: the environment `make env` builds keeps two costs out
(benchmarks/startup.py measures them)."""

import subprocess
import sys

import nbformat
import pytest


def test_papermill_starts_without_the_lark_iri_parsers_and_still_validates_notebooks():
    # nbformat imports jsonschema's format checkers; with rfc3987-syntax installed that is ~1.9 s per stage.
    done = subprocess.run([sys.executable, "-c", "import sys, papermill.cli; print('rfc3987_syntax' in sys.modules)"],
                          capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False", "run `make env` (it uninstalls rfc3987-syntax; see the Makefile)"
    nbformat.validate(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("1")]))
    broken = nbformat.v4.new_notebook()
    broken.cells.append(nbformat.from_dict({"cell_type": "code", "id": "c", "source": "1"}))  # no outputs
    with pytest.raises(nbformat.ValidationError):
        nbformat.validate(broken)


def test_dvc_reads_its_lock_file_with_the_c_yaml_parser():
    from ruamel.yaml import YAML

    parser = YAML(typ="safe").Parser  # what dvc.utils.serialize.parse_yaml uses, several times per stage
    assert "clib" in parser.__module__, f"{parser}: install ruamel.yaml.clib (requirements.txt)"
    assert YAML(typ="safe").load("a: [1, {b: 2}]") == {"a": [1, {"b": 2}]}
