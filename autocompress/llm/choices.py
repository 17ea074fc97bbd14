"""The language-model search choices: four space sections, beside the classification ones.

A ``causal_lm`` study searches these (``search_spaces/llm.yaml``); each section is read by one
step of :mod:`autocompress.llm.trial`, in this order:

* ``lm_student``: decoder layers dropped (chosen by block influence, ablation perplexity, the last
  ones or every other), attention heads and MLP neurons kept (by activation importance);
* ``lm_distill``: steps of distillation on the training text (KL on next-token distributions,
  optionally hidden states) that follow a depth or width cut;
* ``lm_prune``: magnitude, Wanda or SparseGPT on calibration text, unstructured or N:M;
* ``lm_quantize``: weight-only round-to-nearest or GPTQ, 2-8 bits, in groups, embeddings too.

``lm_prune.ratio`` and ``lm_quantize.bits`` may be searched per kind of linear layer
(``per_layer: true``: one value for each of ``q_proj`` ... ``down_proj``, mixed precision).
Defaults leave a technique off, so a hand-written Plan means the same as a sampled one.
"""

from __future__ import annotations

from autocompress.params import Param, Settings

LINEAR_KINDS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
FLOAT_BITS = 32
BIT_WIDTHS = (2, 3, 4, 5, 6, 8, FLOAT_BITS)
GROUP_SIZES = (32, 64, 128, 0)  # 0: one group per output channel

STUDENT = (
    Param("drop_layers", "int", 0, "decoder layers removed", low=0, high=256),
    Param("layer_choice", "choice", "influence",
          "which layers go: least block influence, least ablation perplexity, the last ones, "
          "or every other", values=("influence", "ablation", "last", "every_other")),
    Param("heads", "float", 1.0, "share of query heads kept in every KV group", low=0.1,
          high=1.0),
    Param("ffn", "float", 1.0, "share of MLP neurons kept", low=0.05, high=1.0),
)
DISTILL = (
    Param("steps", "int", 0, "distillation steps after a depth or width cut", low=0,
          high=100_000),
    Param("lr", "float", 1e-4, "AdamW learning rate of distillation", low=1e-7, high=1e-2),
    Param("temperature", "float", 1.0, "softmax temperature of the KL term", low=0.5,
          high=8.0),
    Param("hidden_weight", "float", 0.0, "weight of the hidden-state MSE term", low=0.0,
          high=10.0),
)
PRUNE = (
    Param("method", "choice", "wanda", "weight importance: |w|, Wanda's |w|*||x|| or SparseGPT",
          values=("magnitude", "wanda", "sparsegpt")),
    Param("pattern", "choice", "unstructured", "free sparsity, or N of every M weights kept",
          values=("unstructured", "2:4", "4:8")),
    Param("ratio", "float", 0.0, "share of weights removed (unstructured)", low=0.0, high=0.95,
          per_layer=True),
)
QUANTIZE = (
    Param("method", "choice", "rtn", "round to nearest, or GPTQ's Hessian-based rounding",
          values=("rtn", "gptq")),
    Param("bits", "choice", FLOAT_BITS, "weight bit width of the decoder's linear layers "
          "(32 = float, off)", values=BIT_WIDTHS, per_layer=True),
    Param("group_size", "choice", 128, "weights sharing a scale (0 = a row)",
          values=GROUP_SIZES),
    Param("scheme", "choice", "asymmetric", "integer grid with a zero point, or around zero",
          values=("asymmetric", "symmetric")),
    Param("act_order", "bool", False, "GPTQ: columns in order of decreasing Hessian diagonal"),
    Param("embeddings", "choice", FLOAT_BITS, "bit width of the token embedding (and the "
          "LM head tied to it), per row", values=(4, 6, 8, FLOAT_BITS)),
)

SECTIONS: dict[str, tuple[Param, ...]] = {"lm_student": STUDENT, "lm_distill": DISTILL,
                                          "lm_prune": PRUNE, "lm_quantize": QUANTIZE}
READERS = {section: Settings(section, params) for section, params in SECTIONS.items()}
