"""The bench's random-weight models (``ehrstream bench --models bert-base|tiny[-shared]``): speed only."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agents.config import TaskSettings
from schemas.extraction import TaskKind

#: the near-free models of ``--models tiny``: what everything around the model costs shows, not the model
TINY_BERT = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}


def random_bert_tasks(folder: Path, size: str) -> list[TaskSettings]:
    """Random-weight BERT token and document classifiers (speed only), with the packaged backbone's tokenizer: a
    5-class classifier and a 3-tag NER model, the two default task kinds. ``size``: ``bert-base`` or ``tiny``, each
    with ``-shared``: the NER model's backbone is the classifier's (two heads over one encoder, as tasks fine-tuned from
    one backbone with their encoder left alone are), so the workers run one pass through it per batch
    (:mod:`agents.runners.shared_trunk`)."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification, BertForTokenClassification

    from agents.model_dir import DEFAULT_BACKBONE, resolve_base

    tokenizer = AutoTokenizer.from_pretrained(resolve_base(DEFAULT_BACKBONE))
    size, shared = size.removesuffix("-shared"), size.endswith("-shared")
    tasks, backbone = [], None
    for name, kind, labels, cls in (
        ("condition", TaskKind.classification, ["a", "b", "c", "d", "e"], BertForSequenceClassification),
        ("disease", TaskKind.ner, ["O", "B-Disease", "I-Disease"], BertForTokenClassification),
    ):
        torch.manual_seed(0)
        shape: dict[str, Any] = dict(TINY_BERT) if size == "tiny" else {}
        maps: dict[str, Any] = {
            "num_labels": len(labels),
            "id2label": dict(enumerate(labels)),
            "label2id": {x: i for i, x in enumerate(labels)},
        }
        config = BertConfig(**shape, **maps)
        path = folder / f"{size}-{name}"
        model = cls(config)
        if shared and backbone is not None:
            model.bert.load_state_dict({k: v for k, v in backbone.items() if not k.startswith("pooler.")})
        backbone = backbone or model.bert.state_dict()
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)
        tasks.append(TaskSettings(name=name, kind=kind, model_dir=path, threshold=0.9))
    return tasks
