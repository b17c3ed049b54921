"""One settings object for the app, the service and the CLI.

Values come from environment variables prefixed ``FEATURESCOPE_`` (``FEATURESCOPE_BACKEND=remote``,
``FEATURESCOPE_MAX_PROMPT_TOKENS=2048``); the UI layers Streamlit secrets on top (see app.py).
Every limit a user can hit is a field here, so an operator can raise or lower it.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent


class Limits(BaseSettings):
    """Input limits. Each one is checked before any work starts and named in the refusal."""

    model_config = SettingsConfigDict(env_prefix="FEATURESCOPE_", extra="ignore")

    max_text_chars: int = Field(20_000, ge=1, description="Characters of text per request.")
    max_prompt_tokens: int = Field(1024, ge=1, description="Tokens per analysed prompt.")
    max_k: int = Field(100, ge=1, description="Top-k features per token.")
    max_tracked_features: int = Field(64, ge=0, description="Tracked features per request.")
    max_steer_features: int = Field(32, ge=0, description="Interventions per steering request.")
    max_new_tokens: int = Field(256, ge=1, description="Tokens generated per steering run.")
    max_sweep_alphas: int = Field(16, ge=1, description="Alphas in one sweep.")
    max_experiment_passages: int = Field(64, ge=1, description="Passages in one experiment call (the CLI has none).")
    max_experiment_runs: int = Field(64, ge=1, description="Features x alphas in one experiment call.")
    max_feature_nodes: int = Field(10_000, ge=1, description="Feature nodes in a graph.")
    max_graph_prompt_tokens: int = Field(256, ge=1, description="Tokens of a graph prompt.")
    max_batch_size: int = Field(256, ge=1, description="Attribution batch size.")
    max_graph_logits: int = Field(50, ge=1, description="Logit nodes (max_n_logits) in a graph.")
    max_compare_models: int = Field(4, ge=1, description="Models in one comparison.")
    max_compare_sentences: int = Field(32, ge=1, description="Sentences in one comparison.")
    max_compare_terms: int = Field(32, ge=0, description="Domain terms in one comparison.")
    max_compare_term_chars: int = Field(100, ge=1, description="Characters of one domain term.")
    max_examples: int = Field(200, ge=1, description="Max-activating examples per feature.")
    max_quantiles: int = Field(20, ge=0, description="Activation bands sampled per feature.")
    max_context_tokens: int = Field(256, ge=0, description="Tokens of context on each side of an example.")
    max_explanation_chars: int = Field(2000, ge=1, description="Characters of a user's feature explanation.")
    max_body_bytes: int = Field(1_000_000, ge=1024, description="HTTP request body size.")
    lock_timeout_s: float = Field(120.0, gt=0, description="Wait for a busy model before 'busy'.")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FEATURESCOPE_", extra="ignore")

    backend: Literal["local", "remote"] = "local"
    remote_url: str | None = None
    api_key: SecretStr | None = None

    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    memory_budget_gb: float | None = Field(
        None, gt=0, description="Memory for loaded models; default: 90% of the device's."
    )
    max_loaded_models: int = Field(2, ge=1)

    default_model: str = "demo"
    catalog_path: Path | None = Field(None, description="Extra catalog YAML merged over ours.")
    data_dir: Path = Field(
        Path.home() / ".cache" / "featurescope",
        description="Where stores, built demo packs, saved explanations and graphs live.",
    )
    demo_dir: Path = Field(REPO_ROOT / "assets" / "demo", description="The offline demo pack.")
    demo_store_max_tokens: int = Field(
        300_000, ge=1, description="Tokens of the demo pack's corpus encoded when its corpus store is built "
                                   "on first use (about a minute on a CPU; the rest is left out, and results "
                                   "say so). `make demo-store` builds the stores over the whole corpus.")

    limits: Limits = Field(default_factory=Limits)
    graph_cache_gb: float = Field(4.0, ge=0, description="Disk kept for unpruned attribution graphs "
                                                         "(re-pruning without re-running); 0 disables.")

    # The remote backend's HTTP client (backend/http/remote.py).
    remote_timeout_s: float = Field(900.0, gt=0,
                                    description="Longest wait for a remote answer (graphs: minutes).")
    remote_connect_timeout_s: float = Field(10.0, gt=0, description="Wait for a connection to the remote.")
    remote_retries: int = Field(2, ge=0, le=10,
                                description="Retries of read-only calls when unreachable or busy.")
    remote_headers: dict[str, SecretStr] = Field(
        default_factory=dict,
        description='Extra headers as JSON, e.g. {"Modal-Key": "wk-…", "Modal-Secret": "ws-…"}.',
    )
    # The HTTP service (backend/http/service.py).
    upload_timeout_s: float = Field(300.0, gt=0, description="Upload of a graph to a signed_url.")
    # Who may open the app (components/gate.py): anyone ("none"), a shared password, or OIDC (st.login).
    app_auth: Literal["none", "password", "oidc"] = "none"
    app_password: SecretStr | None = Field(None, description="The shared password (hashed in memory).")
    app_password_hash: SecretStr | None = Field(
        None, description="Or its hash from `python -m components.gate`: pbkdf2_sha256$iterations$salt$hash."
    )
    app_oidc_provider: str | None = Field(None, description="The [auth.NAME] of secrets.toml; None: [auth].")
    app_allowed_emails: str = Field("", description="OIDC: comma-separated emails or @domains; empty: any.")
    app_max_upload_mb: int = Field(
        32, ge=1, le=1024,
        description="Largest file the app accepts in an upload (a graph JSON, an experiment CSV), in MB; "
        "sets Streamlit's server.maxUploadSize when the app starts (.streamlit/config.toml holds the same "
        "default for the moment before).",
    )

    def store_dir(self) -> Path:
        return self.data_dir / "stores"


@functools.cache
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment."""
    return Settings()
