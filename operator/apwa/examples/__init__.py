"""Example workers shipped with the package (and the example worker image)."""
