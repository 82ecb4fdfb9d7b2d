"""Desired state and decisions: registry, bundles, tokens, autoscaler, keep-alive."""
