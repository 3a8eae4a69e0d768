"""A user's mistake raised in a Ray actor's constructor ends a command in one ``error:`` line.

Ray's error for an actor whose creation failed keeps only the text of the constructor's traceback (no
exception object to unwrap), so the command rebuilds polyray's error from its last line; a bug there
keeps its traceback."""

from __future__ import annotations

import pytest
import typer

from polyray.cli.common import user_error_in, user_errors
from polyray.storage import NotOnThisNode, node_path


def test_a_missing_node_path_is_one_line_naming_cluster_storage(tmp_path):
    assert node_path(tmp_path) == str(tmp_path)
    with pytest.raises(NotOnThisNode) as err:
        node_path(tmp_path / "on-the-driver-only")
    message = str(err.value)
    assert message.startswith(f"{tmp_path / 'on-the-driver-only'}: not on node ") and "\n" not in message
    assert "set cluster.storage to a location every node reaches" in message


@pytest.mark.ray
def test_a_mistake_in_an_actors_constructor_is_one_line(ray_cluster, tmp_path, capsys):
    import ray

    # defined here: a test module is not importable on Ray's workers, a local class travels by value
    class _NeedsAModel:
        def __init__(self, path: str):
            self.path = node_path(path)

        def ready(self) -> bool:
            return True

    class _Buggy:
        def __init__(self):
            raise ZeroDivisionError("a bug, not a setting")

        def ready(self) -> bool:
            return True

    actor = ray.remote(num_cpus=0)(_NeedsAModel).remote(str(tmp_path / "on-the-driver-only"))
    with pytest.raises(ray.exceptions.RayActorError) as died:
        ray.get(actor.ready.remote(), timeout=120)
    assert isinstance(user_error_in(died.value), NotOnThisNode)
    with pytest.raises(typer.Exit) as info, user_errors():
        raise died.value
    assert info.value.exit_code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {tmp_path / 'on-the-driver-only'}: not on node ") and err.count("\n") == 1

    buggy = ray.remote(num_cpus=0)(_Buggy).remote()
    with pytest.raises(ray.exceptions.RayActorError) as died:
        ray.get(buggy.ready.remote(), timeout=120)
    assert user_error_in(died.value) is None  # a bug keeps its traceback
