"""Where the repository is, wherever a test module sits, and the environment the servers
and commands under test run with."""

import os
from collections.abc import Mapping
from pathlib import Path

REPOSITORY = Path(__file__).parents[2]

# Put first on the servers' path: packages the test environment has and the deployed broker
# does not are not importable there (see as_deployed/pydantic).
AS_DEPLOYED = Path(__file__).parent / "as_deployed"


def deployed_environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment, unbuffered output, the path that leaves out the test-only
    packages (``AS_DEPLOYED``), and ``extra``."""
    path = os.pathsep.join(filter(None, [str(AS_DEPLOYED), os.environ.get("PYTHONPATH")]))
    return os.environ | {"PYTHONUNBUFFERED": "1", "PYTHONPATH": path} | dict(extra or {})
