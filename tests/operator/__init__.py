"""The operator's pure core: CRD schema, manifests, traffic, rollout, retraining, configuration."""
