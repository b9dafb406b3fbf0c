"""One import namespace: everything installs under ``plmscreen``, and the library stays below the
flows and the CLI (it imports neither, nor Prefect or Dask)."""

import ast
import subprocess
import sys
import tomllib
import zipfile

from conftest import REPO

MAPPED = {"plmscreen.cli": "cli", "plmscreen.screening": "screening", "plmscreen.flows": "flows",
          "plmscreen.schema": "schema", "plmscreen.deploy": "deploy"}


def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def test_every_folder_is_a_listed_subpackage_of_plmscreen():
    setuptools = _pyproject()["tool"]["setuptools"]
    assert setuptools["package-dir"] == MAPPED
    listed = set(setuptools["packages"])
    on_disk = set()
    for package, folder in MAPPED.items():
        for init in (REPO / folder).rglob("__init__.py"):
            relative = init.parent.relative_to(REPO / folder)
            on_disk.add(".".join([package, *relative.parts]))
    assert on_disk <= listed, f"packages missing from pyproject.toml: {sorted(on_disk - listed)}"
    assert all(name.startswith("plmscreen.") for name in listed)
    assert _pyproject()["project"]["scripts"]["plmscreen"].startswith("plmscreen.cli.")


def test_the_wheel_installs_only_plmscreen_with_its_data(tmp_path):
    # Built from a copy of the checkout's files: setuptools builds in place (build/), and a stale
    # build/ from an older tree could put modules into the wheel that the source no longer has.
    import shutil

    files = subprocess.run(["git", "-C", str(REPO), "ls-files", "-co", "--exclude-standard"], capture_output=True,
                           text=True, check=True).stdout.split("\n")
    source = tmp_path / "src"
    for name in filter(None, files):
        if (REPO / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, source / name)
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(tmp_path), str(source)],
                           capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = tmp_path.glob("plmscreen-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert top == {"plmscreen"}, top
    for needed in ("plmscreen/screening/models/esm2_plmscreen_mini.pt", "plmscreen/schema/views/01_residues.sql",
                   "plmscreen/schema/migrations/versions/0001_initial.py", "plmscreen/cli/main.py",
                   "plmscreen/screening/store/layout.py"):
        assert any(name == needed or name.startswith(needed.rsplit("/", 1)[0] + "/") for name in names), needed
    assert "plmscreen/screening/models/esm2_plmscreen_mini.pt" in names


def _imports(path) -> set[str]:
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def test_the_library_never_imports_the_flows_the_cli_or_the_orchestrators():
    forbidden = ("plmscreen.flows", "plmscreen.cli", "prefect", "prefect_dask", "dask", "distributed")
    offenders = {}
    for path in (REPO / "screening").rglob("*.py"):
        bad = sorted(name for name in _imports(path) if name.split(".")[0] in {"prefect", "prefect_dask", "dask", "distributed"}
                     or any(name == f or name.startswith(f + ".") for f in forbidden))
        if bad:
            offenders[str(path.relative_to(REPO))] = bad
    assert not offenders, offenders


def test_no_old_top_level_names_are_imported_anywhere():
    old = {"screening", "schema", "flows", "deploy", "cli"}
    offenders = {}
    for folder in ("screening", "schema", "flows", "deploy", "cli", "tests", "bench", "validation"):
        for path in (REPO / folder).rglob("*.py"):
            bad = sorted(n for n in _imports(path) if n.split(".")[0] in old)
            if bad:
                offenders[str(path.relative_to(REPO))] = bad
    assert not offenders, offenders
