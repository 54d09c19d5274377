"""The prompt rule of Eq. 2 / 12: tags from a tagger, then the quality template; degradation words masked.

template.py (template, degradation words, clean_tags), taggers.py (none, file; registry), clip_tagger.py,
dape.py, cache.py (tags by file hash), rule.py (PromptRule, mismatch, tagger_from_rule, measure_tagger).
"""
