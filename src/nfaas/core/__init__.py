"""Shared vocabulary: function specs, units, manifests. Imports nothing else of nfaas."""
