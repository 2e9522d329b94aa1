import socket

import pytest

from sweep.errors import SweepError
from sweep.ui import check_port
from tests.postgres import free_port


@pytest.mark.parametrize("host", ["999.1.1.1", "192.0.2.1"])
def test_a_host_that_is_not_here_is_named(host):
    with pytest.raises(SweepError, match=rf"--host {host} is not an address of this"):
        check_port(host, free_port())


def test_a_port_in_use_suggests_another():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(SweepError, match=f"--port {port + 1}"):
            check_port("127.0.0.1", port)
