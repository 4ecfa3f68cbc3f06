"""The real operator against an emulated API server (see docs/testing.md)."""
