"""The operator's decisions, as pure functions: nothing here talks to the API, to pods or to kopf.

Inputs are plain data (ModelVersion objects and their children as dicts, observations,
the configuration, the time); outputs are manifests, plans and statuses. The shell
(`modelfleet_operator.shell`) reads the cluster, calls these, and writes the results.
"""
