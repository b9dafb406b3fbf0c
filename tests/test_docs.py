"""What the documentation promises exists: links resolve, nothing cited lives outside the
repository, and documented defaults are the code's."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DOCS = sorted({*REPO.glob("*.md"), *REPO.glob("docs/*.md"), *REPO.glob("bench/README.md"), *REPO.glob("deploy/*.md"),
               *REPO.glob("examples/*.md"), *REPO.glob("screening/models/*.md"), *REPO.glob("validation/README.md")})
CODE_DIRS = ("screening", "flows", "schema", "deploy", "bench", "validation", "training")
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(doc):
    missing = [target for target in LINK.findall(doc.read_text())
               if "://" not in target and not target.startswith("mailto:") and not (doc.parent / target).exists()]
    assert not missing, f"{doc.relative_to(REPO)} links to missing files: {missing}"


def test_code_and_docs_cite_nothing_outside_the_repository():
    """Users have no ../shared/; the science notes and data sources ship in docs/."""
    offenders = []
    for path in [p for d in CODE_DIRS for p in (REPO / d).rglob("*.py")] + DOCS:
        text = path.read_text()
        for pattern in ("/work/", "../shared", "shared/docs", "shared/data"):
            if pattern in text:
                offenders.append(f"{path.relative_to(REPO)}: {pattern}")
    assert not offenders, offenders
    assert (REPO / "docs" / "science.md").read_text().startswith("# The science plmscreen screens for")


def test_prefect_yaml_entry_points_and_instructions_are_real():
    text = (REPO / "deploy" / "prefect.yaml").read_text()
    assert "prefect --no-prompt deploy --all --prefect-file deploy/prefect.yaml" in text
    assert "cd deploy" not in text
    for deployment in yaml.safe_load(text)["deployments"]:
        path, flow_name = deployment["entrypoint"].split(":")
        source = (REPO / path).read_text()  # relative to the repository root, where deploy runs
        assert re.search(rf"^(def {flow_name}\(|{flow_name} = )", source, re.M), deployment["name"]
    for doc in re.findall(r"\b(deploy/[\w.-]+\.md)\b", text):
        assert (REPO / doc).exists(), doc


def test_documented_cpu_batch_default_is_the_codes():
    from plmscreen.screening.score.scorer import CPU_BATCH_TOKENS

    assert f"CPU default is now {CPU_BATCH_TOKENS}" in (REPO / "bench" / "README.md").read_text()
    assert f"defaults to {CPU_BATCH_TOKENS} on CPU" in (REPO / "README.md").read_text()
