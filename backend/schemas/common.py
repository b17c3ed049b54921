"""Shared pieces of the wire format: the base model, feature references and tokens."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class Request(BaseModel):
    """Base of every request: unknown fields are an error, so typos do not pass silently."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Result(BaseModel):
    """Base of every result: plain data only (lists, floats, strings), never tensors."""

    model_config = ConfigDict(extra="ignore")


class FeatureRef(BaseModel):
    """A feature, named the same way everywhere: model, SAE (or transcoder) set, layer, index."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str = Field(description="Catalog model id, e.g. 'gpt2-small'.")
    sae_set: str = Field(description="SAE set or transcoder set id of that model, e.g. 'res-jb'.")
    layer: int = Field(ge=0)
    index: int = Field(ge=0, description="Latent index within the layer's SAE.")

    def key(self) -> str:
        """Compact text form, `model/sae_set/layer/index`, used in URLs and the CLI."""
        return f"{self.model}/{self.sae_set}/{self.layer}/{self.index}"

    @classmethod
    def parse(cls, text: str) -> FeatureRef:
        parts = text.strip().split("/")
        if len(parts) != 4 or not parts[2].isdigit() or not parts[3].isdigit():
            raise ValueError(f"'{text}' is not a feature reference; write model/sae_set/layer/index.")
        return cls(model=parts[0], sae_set=parts[1], layer=int(parts[2]), index=int(parts[3]))


class LayerFeature(BaseModel):
    """A feature within a request that already names the model and SAE set."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    layer: int = Field(ge=0)
    index: int = Field(ge=0)

    @classmethod
    def parse(cls, text: str) -> LayerFeature:
        """'L:I' (layer:index), the form used in URLs and on the command line."""
        layer, sep, index = text.strip().partition(":")
        if not sep or not layer.strip().isdigit() or not index.strip().isdigit():
            raise ValueError(f"'{text}' is not a feature id; write layer:index, e.g. 3:1024.")
        return cls(layer=int(layer), index=int(index))

    def __str__(self) -> str:
        return f"{self.layer}:{self.index}"


class TokenInfo(BaseModel):
    position: int
    id: int
    text: str = Field(description="The token's text exactly as decoded (escape before showing).")
    special: bool = Field(False, description="BOS/EOS/padding and other special tokens.")
