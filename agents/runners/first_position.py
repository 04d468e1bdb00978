"""A BERT document classifier's last layer for the first position only.

The classifier reads the last layer at one position: the pooler takes the first token's state. Every other position
of that layer (its query projection, attention output, feed-forward and layer norms) is computed and thrown away: five
sixths of a layer, about 14% of a six-layer MiniLM classifier's forward. :class:`FirstPositionLayer` computes the
layer for the first position alone; keys and values still come from every position, so the first position's state is
the full layer's (docs/performance/hot-path.md, "seventh session"). Only transformers' own BERT layers are replaced, and only when a probe
batch gives the full model's logits (:func:`with_first_position`), in a copy of the model that shares its weights: the
model the runner was given (a training loop's, say) keeps its own layers and its state dict's keys.
"""

from __future__ import annotations

import copy
from typing import Any

import torch


class FirstPositionLayer(torch.nn.Module):
    """``layer`` (a transformers ``BertLayer``, self-attention only) computed for position 0: output ``[batch, 1, hidden]``."""

    def __init__(self, layer: torch.nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, *_: Any, **__: Any) -> torch.Tensor:
        layer: Any = self.layer
        attention = layer.attention.self
        batch = hidden_states.shape[0]
        heads = (batch, -1, attention.num_attention_heads, attention.attention_head_size)
        first = hidden_states[:, :1]
        query = attention.query(first).view(heads).transpose(1, 2)
        key = attention.key(hidden_states).view(heads).transpose(1, 2)
        value = attention.value(hidden_states).view(heads).transpose(1, 2)
        # the first query's row of whatever mask the model built: [batch, 1, 1 or tokens, tokens] -> [batch, 1, 1, tokens]
        mask = None if attention_mask is None else attention_mask[:, :, :1, :]
        context = torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=attention.scaling)
        context = context.transpose(1, 2).reshape(batch, 1, -1)
        output: torch.Tensor = layer.feed_forward_chunk(layer.attention.output(context, first))
        return output


def _last_layers(model: torch.nn.Module) -> tuple[Any, int] | None:
    """The BERT encoder's layer list and the last one's index, when ``model`` is a BERT classifier whose pooler reads the
    first position; else None."""
    from transformers.models.bert.modeling_bert import BertForSequenceClassification, BertLayer

    if not isinstance(model, BertForSequenceClassification) or model.bert.pooler is None:
        return None
    layers = model.bert.encoder.layer
    last = len(layers) - 1
    if last < 0 or not isinstance(layers[last], BertLayer) or layers[last].add_cross_attention:
        return None
    return layers, last


def _with_last_layer(model: torch.nn.Module, layer: torch.nn.Module) -> torch.nn.Module:
    """A shallow copy of the BERT classifier ``model`` whose encoder's last layer is ``layer``: the module objects on the
    path to it (model, ``bert``, ``encoder``, its layer list) are copied, every other module and every weight shared."""
    out = copy.copy(model)
    out._modules = dict(model._modules)
    bert: Any = copy.copy(out._modules["bert"])
    bert._modules = dict(bert._modules)
    encoder: Any = copy.copy(bert._modules["encoder"])
    encoder._modules = dict(encoder._modules)
    layers = torch.nn.ModuleList(list(encoder._modules["layer"]))
    layers[len(layers) - 1] = layer
    encoder._modules["layer"] = layers
    bert._modules["encoder"] = encoder
    out._modules["bert"] = bert
    return out


def with_first_position(model: torch.nn.Module, mask: Any) -> torch.nn.Module | None:
    """``model`` with its last layer as :class:`FirstPositionLayer` (a copy sharing its weights; ``model`` is left as it
    is) when a padded probe batch gives the full model's logits, with ``mask(2D mask) -> mask`` (how the runner hands
    the model its padding); else None."""
    found = _last_layers(model)
    if found is None:
        return None
    layers, last = found
    pruned_model = _with_last_layer(model, FirstPositionLayer(layers[last]))
    config: Any = model.config
    ids = (torch.arange(32).reshape(2, 16) * 7 + 5) % int(config.vocab_size)
    padding = torch.ones(2, 16, dtype=torch.long)
    padding[1, 9:] = 0
    device = next(model.parameters()).device
    ids, padding = ids.to(device), padding.to(device)
    with torch.inference_mode():
        full = model(input_ids=ids, attention_mask=mask(padding)).logits.float()
        try:
            pruned = pruned_model(input_ids=ids, attention_mask=mask(padding)).logits.float()
        except (RuntimeError, ValueError, TypeError, IndexError, AttributeError):
            pruned = None
    tolerance = 1e-4 if next(model.parameters()).dtype == torch.float32 else 3e-2
    if pruned is None or pruned.shape != full.shape or not torch.allclose(pruned, full, rtol=tolerance, atol=tolerance):
        return None
    return pruned_model
