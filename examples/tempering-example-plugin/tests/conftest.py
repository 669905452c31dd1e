import pytest


@pytest.fixture
def tempering_plugins():
    """The plugin under test, for tempering's pytest kit (tempering.testing)."""
    return ["tempering_example_plugin"]
