"""Decoder language models: the causal-LM task, its calibration-based techniques and its measures.

Modules (one technique, one module; measurement apart from compression):

* ``text``: real public-domain books, split by document, tokenized into fixed-length sequences;
* ``smollm2``: the SmolLM2-135M-Instruct teacher, loaded once from its GGUF file and cached;
* ``calibrate``: per-layer input statistics (activation norms, Hessians) from calibration text;
* ``sparsify``: magnitude, Wanda and SparseGPT pruning, unstructured and N:M;
* ``weight_quant``: round-to-nearest and GPTQ weight-only quantization;
* ``structure``: dropping decoder layers, attention heads and MLP neurons;
* ``distill``: fine-tuning a compressed decoder towards its teacher on the text;
* ``measure``: perplexity, prefill latency, decode tokens per second, peak generation memory.
"""
