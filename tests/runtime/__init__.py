"""The runtime: batching, protocols, features, feedback, the trainer, the process."""
