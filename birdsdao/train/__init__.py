"""Reproducible training recipes (``python -m birdsdao.train <command>``): train a YOLOv8 species classifier
or detector, prune it (BatchNorm-scale sparsity → channel removal → fine-tune), evaluate any species model,
export to ONNX, P-tune/LoRA a causal LM on bird Q&A, and score answers with BLEU/ROUGE-L/chrF.

Model code here never imports Flask; every command writes under its ``--out`` folder (default ``runs/``).
"""
