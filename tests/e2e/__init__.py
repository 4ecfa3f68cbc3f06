"""Opt-in end-to-end tests against a real cluster (MODELFLEET_E2E_KUBECONFIG)."""
