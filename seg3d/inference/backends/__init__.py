"""Inference runtimes behind one option (``--backend``); the registry arrives with the s10 seams."""
