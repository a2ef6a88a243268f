"""The demo page's model suggestions are scenarios the demo model really has (a renamed scenario fails here)."""

from __future__ import annotations

import re
from importlib.resources import files

from demo.model import KNOWN_MODELS, parse_model


def suggestions() -> list[str]:
    page = files("api").joinpath("static/index.html").read_text(encoding="utf-8")
    datalist = re.search(r'<datalist id="models">(.*?)</datalist>', page, re.S)
    assert datalist, "the model input has no <datalist> of suggestions"
    return re.findall(r'<option value="([^"]+)"', datalist.group(1))


def test_every_suggestion_is_a_demo_model_scenario() -> None:
    names = suggestions()
    assert "demo" in names and "reasoning" in names
    for name in names:
        scenario = parse_model(name)  # raises for an unknown name or parameter
        assert scenario.name in KNOWN_MODELS or scenario.status is not None, name
