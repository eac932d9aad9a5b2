"""The export tests share the session bundle and exports of tests/conftest.py."""

from tests.conftest import TARGETS, all_tasks, as_response, env_dirs, free_port, mutant, tasks_of  # noqa: F401
