"""The operator's I/O: kopf's watches, the in-memory cache they feed, the per-model work
queue, the API writes and the HTTP questions to runtime pods.

Every decision is delegated to `modelfleet_operator.core`; this package only reads,
calls, and writes what differs.
"""
