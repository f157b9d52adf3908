"""Every DVC stage depends on the eatlib code its notebook runs, and each ablation variant on exactly the models it
reads: otherwise an edit leaves stale results looking current, or one retrained model re-runs unrelated stages."""

import ast
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "eatlib"


def module_file(name: str, root: Path) -> Path | None:
    """The file of module ``name`` (``a.b`` -> ``a/b.py`` or ``a/b/__init__.py``) under ``root``, if any."""
    base = root.joinpath(*name.split("."))
    return next((p for p in (base.with_suffix(".py"), base / "__init__.py") if p.is_file()), None)


def imported_names(tree: ast.AST, package: str) -> set[str]:
    """Dotted names ``tree`` imports anywhere (module level and inside functions). ``from a import b`` gives both
    ``a`` and ``a.b``, since ``b`` may be a submodule; relative imports resolve against ``package``."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            else:
                base = node.module
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def used_files(sources: list[str], root: Path = ROOT, package: str = PACKAGE) -> set[Path]:
    """Every file of ``package`` that code ``sources`` imports, transitively; importing ``a.b.c`` also runs the
    ``__init__.py`` of ``a`` and ``a.b``."""
    seen: dict[str, Path] = {}
    todo: list[str] = []

    def visit(name: str) -> None:
        parts = name.split(".")
        if parts[0] != package:
            return
        for depth in range(1, len(parts) + 1):
            module = ".".join(parts[:depth])
            path = module_file(module, root)
            if path is not None and module not in seen:
                seen[module] = path
                todo.append(module)

    for source in sources:
        for name in imported_names(ast.parse(source), ""):
            visit(name)
    while todo:
        module = todo.pop()
        path = seen[module]
        package_of = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for name in imported_names(ast.parse(path.read_text()), package_of):
            visit(name)
    return set(seen.values())


def notebook_code(path: Path) -> list[str]:
    cells = json.loads(path.read_text())["cells"]
    return ["".join(cell["source"]) for cell in cells if cell["cell_type"] == "code"]


def covered(path: Path, deps: list[str], root: Path = ROOT) -> bool:
    """A dep covers a file when it is that file or a folder above it."""
    relative = path.resolve().relative_to(root)
    return any(relative == Path(dep) or Path(dep) in relative.parents for dep in deps)


@pytest.fixture(scope="module")
def stages() -> dict[str, dict]:
    """name -> {"cmd", "deps"} of every stage of dvc.yaml, foreach/matrix and ${...} resolved by DVC itself."""
    from dvc.repo import Repo

    with Repo(str(ROOT)) as repo:
        return {stage.addressing: {"cmd": stage.cmd, "deps": [dep.def_path for dep in stage.deps]}
                for stage in repo.index.stages if getattr(stage, "cmd", None)}


def test_the_import_walker_follows_function_level_submodule_and_package_imports(tmp_path):
    pkg = tmp_path / PACKAGE
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "top.py").write_text("def f():\n    from eatlib.sub import leaf\n")
    (pkg / "sub" / "__init__.py").write_text("from .helper import x\n")
    (pkg / "sub" / "helper.py").write_text("x = 1\n")
    (pkg / "sub" / "leaf.py").write_text("import eatlib.other\n")
    (pkg / "other.py").write_text("")
    (pkg / "unused.py").write_text("")
    found = {p.relative_to(tmp_path).as_posix() for p in used_files(["from eatlib import top"], tmp_path)}
    assert found == {"eatlib/__init__.py", "eatlib/top.py", "eatlib/sub/__init__.py", "eatlib/sub/helper.py",
                     "eatlib/sub/leaf.py", "eatlib/other.py"}
    assert covered(tmp_path / "eatlib/sub/leaf.py", ["eatlib/sub"], tmp_path)
    assert not covered(tmp_path / "eatlib/sub/leaf.py", ["eatlib/su", "eatlib/top.py"], tmp_path)


def test_every_stage_depends_on_its_notebook_and_every_eatlib_file_it_runs(stages):
    notebook_stages, used = 0, {}  # notebook -> the eatlib files it runs (a notebook serves many stages)
    for name, stage in stages.items():
        # papermill's input notebook (its output lands under results/notebooks/)
        notebooks = re.findall(r"(?<![\w/])notebooks/\S+\.ipynb", stage["cmd"])
        if not notebooks:
            continue
        notebook_stages += 1
        for notebook in notebooks:
            assert notebook in stage["deps"], f"stage {name}: add its notebook {notebook} to its deps"
            if notebook not in used:
                used[notebook] = sorted(used_files(notebook_code(ROOT / notebook)))
            for path in used[notebook]:
                module = path.relative_to(ROOT).as_posix()
                assert covered(path, stage["deps"]), (
                    f"stage {name} runs {module} ({notebook} imports it, directly or through eatlib) but none of "
                    f"its deps covers it: add {module} or its folder to the stage's deps in dvc.yaml")
    assert notebook_stages >= 5


def variant_reads(params, name: str) -> set[str]:
    """The models and pretrained networks :func:`eatlib.pipeline.ablation` reads for variant ``name``."""
    from eatlib import pipeline

    arch, spec = params.ablation.arch, params.ablation.variants[name]
    main = pipeline.model_path(arch, spec.defense).as_posix()
    if spec.match_compute is not None:  # trains from the pretrained network for the other run's budget
        return {pipeline.pretrained_path(arch).as_posix(), main,
                pipeline.model_path(arch, spec.match_compute).as_posix()}
    if pipeline._same_training(params.variant_options(name), params.defense_options(spec.defense)):
        return {main}  # re-aggregates the main run's members
    return {pipeline.pretrained_path(arch).as_posix()}


def test_each_ablation_variant_depends_on_the_models_it_reads_and_no_others(stages):
    from eatlib.load import load_params

    params = load_params(ROOT / "params.yaml")
    arch = params.ablation.arch
    others = [a for a in params.pipeline.archs if a != arch]
    ablations = {name.partition("@")[2]: stage for name, stage in stages.items()
                 if "notebooks/05_ablation.ipynb" in stage["cmd"]}
    assert set(ablations) == set(params.ablation.variants)
    for variant, stage in ablations.items():
        artefacts = [d for d in stage["deps"] if d.startswith(("results/models", "results/pretrained"))]
        for dep in artefacts:
            assert dep.endswith(".pt"), f"ablation@{variant} depends on the folder {dep}: list the models it reads"
            assert not any(f"/{other}" in dep for other in others), (
                f"ablation@{variant} depends on {dep}, but ablation.arch is {arch}")
        for read in sorted(variant_reads(params, variant)):
            assert read in artefacts, (f"ablation@{variant} reads {read} but does not depend on it: add it to the "
                                       "ablation stage's deps in dvc.yaml")
