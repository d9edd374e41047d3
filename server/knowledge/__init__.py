"""Operator knowledge: answers a caller can trust (README "Knowledge").

knowledge.py   the knowledge file: parsing with line-numbered errors (pure)
lexical.py     BM25 over the example questions (pure)
embedding.py   the sentence encoder: all-MiniLM-L6-v2 int8 ONNX, loaded lazily
retrieval.py   KnowledgeIndex: the caller's words -> scored entries, and the choice of path
specifics.py   the specifics guard: numbers, dates, phones, emails, URLs must be grounded
grounding.py   Grounding: a reply from the knowledge, a grounded model or the fallback
"""
