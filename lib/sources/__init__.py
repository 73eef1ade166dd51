"""Closed forms, bounds and tables quoted from one source each.

One module per source, named after its bibliography key; each function names the
equation, lemma or table it implements. The general tools these use live in the layers.
"""
