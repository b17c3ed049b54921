"""Featurescope on Modal (app "featurescope"): the service on a GPU, and the sharded corpus build.

    modal secret create featurescope HF_TOKEN=hf_… FEATURESCOPE_API_KEY=…  # key optional with proxy auth
    modal deploy deploy/modal_app.py                                        # prints the service's URL

- `service`: backend/http/service.py's FastAPI app as an ASGI app on one GPU (FEATURESCOPE_MODAL_GPU at
  deploy time, default "L4"). One container at most, so its one GPU lock covers every request; it
  takes 32 requests at once (waiting ones queue on the lock, /health answers throughout).
- Auth: Modal proxy auth by default (callers send `Modal-Key` / `Modal-Secret`, a proxy auth token
  of the workspace; in the app: FEATURESCOPE_REMOTE_HEADERS), and our own key as well when the
  `featurescope` secret holds FEATURESCOPE_API_KEY. Deploying with FEATURESCOPE_MODAL_PROXY_AUTH=0
  makes the key the only lock, and the service refuses to start without it.
- Volume `featurescope-data` at /data: the Hugging Face cache (HF_HOME=/data/.huggingface) and
  Featurescope's data dir with the corpus stores (FEATURESCOPE_DATA_DIR=/data/featurescope).
- `corpus_shard(spec: dict) -> bytes`: one shard of a corpus store, built on a GPU container by
  `backend.corpus.shards.build_shard_bytes(spec)`. The corpus builder fans out with
  `modal.Function.from_name("featurescope", "corpus_shard").map(specs)` and merges the bytes.

`modal` is not a dependency of Featurescope; install it where you deploy (`pip install modal`).
The tests import this file with a stand-in `modal` module that records what is declared.
"""

from __future__ import annotations

import os
from pathlib import Path

import modal

APP_NAME = "featurescope"
GPU = os.environ.get("FEATURESCOPE_MODAL_GPU", "L4")
PROXY_AUTH = os.environ.get("FEATURESCOPE_MODAL_PROXY_AUTH", "1") != "0"
SHARD_CONTAINERS = int(os.environ.get("FEATURESCOPE_MODAL_SHARD_CONTAINERS", "8"))
DATA = "/data"
REPO = Path(__file__).resolve().parent.parent
IGNORE = ["**/__pycache__", "**/*.pyc"]

image = (
    modal.Image.debian_slim(python_version="3.11")
    .pip_install_from_requirements(str(REPO / "requirements.txt"))
    .env(
        {
            "HF_HOME": f"{DATA}/.huggingface",
            "FEATURESCOPE_DATA_DIR": f"{DATA}/featurescope",
            "FEATURESCOPE_MODAL_PROXY_AUTH": "1" if PROXY_AUTH else "0",
            "HF_HUB_DISABLE_TELEMETRY": "1",
        }
    )
    .add_local_dir(str(REPO / "backend"), "/root/backend", ignore=IGNORE)  # with catalog.yaml
)
if (REPO / "assets").is_dir():  # the demo pack, once it is in the repository
    image = image.add_local_dir(str(REPO / "assets"), "/root/assets", ignore=IGNORE)

app = modal.App(APP_NAME, image=image)
volume = modal.Volume.from_name("featurescope-data", create_if_missing=True)
secret = modal.Secret.from_name("featurescope")


@app.function(
    gpu=GPU, volumes={DATA: volume}, secrets=[secret], timeout=3600, scaledown_window=600, max_containers=1
)
@modal.concurrent(max_inputs=32)
@modal.asgi_app(requires_proxy_auth=PROXY_AUTH)
def service():
    """The HTTP service (the same app as `python -m backend.http.service`)."""
    from backend.http.service import create_app, service_key
    from backend.settings import get_settings

    settings = get_settings()
    if not PROXY_AUTH and service_key(settings) is None:
        raise RuntimeError(
            "Without Modal proxy auth the service needs FEATURESCOPE_API_KEY in the "
            "'featurescope' secret; refusing to serve an open endpoint."
        )
    return create_app(settings=settings)


@app.function(
    gpu=GPU, volumes={DATA: volume}, secrets=[secret], timeout=3600, max_containers=SHARD_CONTAINERS
)
def corpus_shard(spec: dict) -> bytes:
    """One shard of a corpus activation store, as bytes (see backend/corpus/shards.py)."""
    from backend.corpus.shards import build_shard_bytes

    return build_shard_bytes(spec)
