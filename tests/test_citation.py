"""CITATION.cff: valid CFF 1.2.0 shape, the software's authors, and the paper as a reference."""
from pathlib import Path

import yaml

CFF = Path(__file__).resolve().parents[1] / "CITATION.cff"


def test_citation_names_the_software_and_cites_the_paper():
    cff = yaml.safe_load(CFF.read_text())
    assert cff["cff-version"] == "1.2.0" and cff["type"] == "software"
    assert cff["authors"] == [{"name": "fluentdream developers"}]
    paper = cff["references"][0]
    assert [a["family-names"] for a in paper["authors"]] == ["Thompson", "Straznickas", "Sklar"]
    assert paper["year"] == 2024 and "2402.01702" in paper["url"]
    assert paper["identifiers"][0]["value"] == "arXiv:2402.01702"
