"""The coordinator: reference bundles, the lab registry, the SuperLink, federated rounds and their reports."""
