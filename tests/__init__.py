"""ModelFleet's test suites; shared test code lives in tests/support (see docs/testing.md)."""
