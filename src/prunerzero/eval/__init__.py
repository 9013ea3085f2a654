"""Evaluation: perplexity (eval.perplexity) and zero-shot tasks (eval.zeroshot, needs lm-eval)."""
