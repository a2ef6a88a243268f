"""Scraping a Prometheus endpoint in tests: samples by name and labels, parsed by prometheus-client's own parser."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(url: str) -> Samples:
    response = httpx.get(url, timeout=10.0)
    response.raise_for_status()
    assert response.headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """A sample's value; 0 for a labelled child not created yet (a counter that never moved)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def total(many: list[Samples], name: str, **labels: str) -> float:
    """The sum over several processes' scrapes (the workers)."""
    return sum(value(samples, name, **labels) for samples in many)
