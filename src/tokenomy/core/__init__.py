"""Types and pure helpers every layer shares: the call, its usage, deployments, errors, ids."""
