"""Training the hypernetwork."""
