"""The Helm chart: rendering, values, RBAC, the operator contract."""
