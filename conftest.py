# Dash page modules register themselves with a running app at import; doctest collection must not import them.
collect_ignore_glob = ["app/pages/*.py", ".venv/*", "notebooks/*"]
