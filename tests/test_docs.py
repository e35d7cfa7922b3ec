"""The docs speak to users: no internal issue numbers or work history, no stale paths."""

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def test_docs_do_not_refer_to_internal_issues_or_work_history():
    pattern = re.compile(r"\bissue\s*#?\d+|\bcriterion\s+\d|\bsessions?\b|#\d{1,3}\b", re.I)
    found = [f"{doc.name}:{n}: {line.strip()}" for doc in DOCS
             for n, line in enumerate(doc.read_text().splitlines(), 1) if pattern.search(line)]
    assert not found, "\n".join(found)


def test_every_source_path_the_docs_name_exists():
    pattern = re.compile(r"`((?:gpu_risk|kernels|tests|benchmarks|workflows)/[\w/]+\.(?:py|yaml|sh))`")
    missing = [f"{doc.name}: {path}" for doc in DOCS for path in pattern.findall(doc.read_text())
               if not (REPO / path).exists()]
    assert not missing, "\n".join(missing)
