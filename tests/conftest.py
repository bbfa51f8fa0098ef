"""Shared by every test directory. Its presence puts tests/ on sys.path (pytest's prepend import
mode adds a rootless conftest's directory), so test modules share helpers such as scripted_server."""
