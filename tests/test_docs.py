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


def test_the_yaml_examples_in_the_docs_are_valid():
    """The market file layout, the limits section and the overnight workflow, as the docs
    show them, are accepted by the code that reads them."""
    import re

    import yaml

    from gpu_risk.limits import Limits
    from gpu_risk.store import market_from_dict
    from gpu_risk.workflow import load_config

    docs = Path(__file__).resolve().parents[1] / "docs"
    market = re.search(r"## Market files.*?```yaml\n(.*?)```", (docs / "data.md").read_text(), re.S).group(1)
    assert market_from_dict(yaml.safe_load(market)).sizes["instrument"] == 3
    limits = re.search(r"```yaml\n(limits:.*?)```", (docs / "operations.md").read_text(), re.S).group(1)
    parsed = Limits.model_validate(yaml.safe_load(limits)["limits"])
    assert parsed.shortfall[0].shock == -0.2 and parsed.accounts_below_1.warn == 20
    overnight = load_config(docs.parent / "workflows" / "overnight.yaml")
    assert overnight.limits is not None and overnight.limits.cascade_amplification.max == 10
