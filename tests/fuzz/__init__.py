"""Fuzz tests: schemathesis drives the running API from its own OpenAPI document."""
