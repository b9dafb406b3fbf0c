"""Entry point of the temporary Prefect API server's subprocess (see ``TemporaryPrefectServer``).

The CLI binds the server's listening socket itself (port 0, so the kernel picks a free port and
holds it) and hands it over as an inherited file descriptor. Probing for a free port and letting
uvicorn bind it later leaves a window in which another process (a Dask worker, an outgoing
connection) can take the port; with the socket handed over there is no such window.

``uvicorn --fd`` would take the descriptor too, but it wraps it as an AF_UNIX socket, which
mis-reads a TCP socket's peer addresses; here the family is read from the descriptor.

Usage: ``python -m plmscreen.flows.prefect_api_process --fd N`` or ``--port P`` (bind P here).
"""
import socket
import sys

STARTUP_FAILURE = 3  # uvicorn's own exit code when the server does not start


def main(argv: list[str]) -> int:
    import uvicorn

    if len(argv) != 2 or argv[0] not in ("--fd", "--port"):
        print("usage: python -m plmscreen.flows.prefect_api_process --fd N | --port P", file=sys.stderr)
        return 2
    how, number = argv[0], int(argv[1])
    config = uvicorn.Config("prefect.server.api.server:create_app", factory=True, host="127.0.0.1",
                            port=number if how == "--port" else 0, log_level="error", lifespan="on")
    server = uvicorn.Server(config)
    if how == "--fd":
        server.run(sockets=[socket.socket(fileno=number)])  # family and type read from the descriptor
    else:
        server.run()
    return 0 if server.started else STARTUP_FAILURE


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
