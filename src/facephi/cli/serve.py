"""`facephi serve`: the HTTP API and the web page on FastAPI + uvicorn."""

from __future__ import annotations

import argparse
import ipaddress

from facephi.config import add_arguments, from_args
from facephi.serve.config import ServeConfig


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="serve the model over HTTP, with a web page",
        description="POST /predict takes an image (Content-Type image/*, or multipart/form-data with a file "
                    "field: curl -F file=@photo.jpg http://127.0.0.1:8000/predict) or raw MediaPipe landmarks "
                    "as JSON ({\"landmarks\": [[x, y, z] x 478], \"image_size\": [W, H]}) and answers "
                    "{\"faces\": [...]} with the fields of `facephi predict --json`; GET /health; GET / is a web "
                    "page (photo upload, or the webcam with landmarks found in the browser). Images are read "
                    "in memory and never stored; only landmarks reach the model.",
    )
    add_arguments(p, ServeConfig)
    p.set_defaults(func=run)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run(args: argparse.Namespace) -> int:
    from facephi.serve.api import FacePhi
    from facephi.serve.app import create_app
    from facephi.serve.server import bind, make_server

    config = from_args(ServeConfig, args)
    sock = bind(config.host, config.port)  # a wrong --host or a port in use fails before the model loads
    try:
        model = FacePhi.from_pretrained(config.model, device=config.device, threads=config.threads,
                                        max_new_tokens=config.max_new_tokens, precision=config.precision,
                                        flag="--model")
        info = {"path": str(config.model) if config.model is not None else "default"}
        app = create_app(model, config.max_upload_bytes, config.timeout_s, info=info)
        sock.listen(2048)  # before the address is printed: a client that reads it is queued, not refused
        port = sock.getsockname()[1]
        shown = f"[{config.host}]" if ":" in config.host else config.host
        print(f"facephi serve: {model.kind} model ({info['path']}) on http://{shown}:{port}/ "
              f"(upload limit {config.max_upload_mb:g} MB, timeout {config.timeout_s:g} s); Ctrl+C stops", flush=True)
        if not is_loopback(config.host):
            print("facephi serve: warning: listening beyond this machine, without authentication or TLS; browsers "
                  "allow the webcam only on https:// or localhost pages", flush=True)
        server = make_server(app)
        try:
            server.run(sockets=[sock])
        finally:
            model.close()
    finally:
        sock.close()
    if server.interrupted:  # uvicorn re-raises the signal after its graceful shutdown; where that is lost
        raise KeyboardInterrupt  # (it returned normally), Ctrl+C still ends as every command's: exit 130
    return 0
