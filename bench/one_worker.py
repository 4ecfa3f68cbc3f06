"""How every comparison server of the benchmark runs: one uvicorn worker, uvloop, httptools, no access log.

The same settings as ModelFleet's own server, so that the servers differ only in
what their application does.
"""

from __future__ import annotations

from typing import Any

import uvicorn


def run(app: Any, host: str, port: int) -> None:
    uvicorn.run(
        app,
        host=host,
        port=port,
        workers=1,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
        server_header=False,
    )
