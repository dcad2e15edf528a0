# Dash page modules register themselves with a running app at import; doctest collection must not import them.
collect_ignore_glob = ["app/pages/*.py", ".venv/*", "notebooks/*"]


def pytest_collection_modifyitems(session, config, items):
    """Modules holding a test marked ``slow`` run first, in their collected order, then everything else.

    README's test command runs two pytest-xdist workers, one module at a time each (``--dist loadscope
    --no-loadscope-reorder``): a 100-second module taken last would leave the other worker idle for most of it,
    so the long modules start while the short ones fill the gaps. Without xdist this only changes the order.
    """
    slow_modules = {item.nodeid.split("::", 1)[0] for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.nodeid.split("::", 1)[0] not in slow_modules)  # stable: False first
